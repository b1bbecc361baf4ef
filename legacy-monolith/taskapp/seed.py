"""Deterministic seed data.

    python -m taskapp.seed --db PATH [--users 200 --projects 50 --tasks 5000 --comments 20000]
    python -m taskapp.seed --db PATH --small

The database file (and its -wal/-shm) is REPLACED. Everything derives from
random.Random(42) and a fixed base timestamp, so two runs produce identical
databases (`sqlite3 db .dump` is byte-identical). Every seeded user has the
password "password123"; its hash is computed once with a FIXED salt (so it is
deterministic) in werkzeug's pbkdf2 format and reused for every user.
Seeding also writes one `events` 'create' row per seeded entity (so a feed
follower starting at after=0 sees all data) but no activity_log rows.
"""
import argparse
import datetime as _dt
import hashlib
import os
import random
import sys
import time

from . import serialize
from .db import connect, init_schema
from .jsonutil import TS_FORMAT, dumps_compact

SEED_PASSWORD = "password123"
_SALT = "seedsalt42seedsa"
_ITER = 600000
BASE = _dt.datetime(2024, 1, 1, 9, 0, 0)

FIRST = ["Ada", "Alan", "Grace", "Linus", "Barbara", "Ken", "Dennis", "Margaret", "Edsger", "Donald",
         "Frances", "John", "Radia", "Tim", "Hedy", "Guido", "Bjarne", "Niklaus", "Sophie", "Anders"]
LAST = ["Lovelace", "Turing", "Hopper", "Torvalds", "Liskov", "Thompson", "Ritchie", "Hamilton",
        "Dijkstra", "Knuth", "Allen", "McCarthy", "Perlman", "Berners-Lee", "Lamarr", "Rossum"]
WORDS = ("migrate legacy billing service database schema endpoint refactor cache invoice report "
         "customer dashboard export import queue worker retry timeout deploy review login token "
         "search index backup restore audit metrics alert latency upgrade dependency").split()
VERBS = ["Fix", "Add", "Remove", "Investigate", "Document", "Refactor", "Test", "Migrate", "Optimize"]


def seed_password_hash():
    dk = hashlib.pbkdf2_hmac("sha256", SEED_PASSWORD.encode(), _SALT.encode(), _ITER).hex()
    return f"pbkdf2:sha256:{_ITER}${_SALT}${dk}"


def _ts(dt):
    return dt.strftime(TS_FORMAT)


def _sentence(rng, lo, hi):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def seed(path, users=200, projects=50, tasks=5000, comments=20000):
    for suffix in ("", "-wal", "-shm", "-journal"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    init_schema(path)
    rng = random.Random(42)
    pw = seed_password_hash()
    events = []

    def ev(entity, obj, created):
        events.append((entity, obj["id"], "create", dumps_compact(obj), created))

    user_rows = []
    for i in range(1, users + 1):
        created = _ts(BASE + _dt.timedelta(minutes=37 * i))
        full = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
        r = {"id": i, "username": f"user{i:04d}", "email": f"user{i:04d}@example.com",
             "password_hash": pw, "full_name": full, "created_at": created, "updated_at": created}
        user_rows.append(r)
        ev("user", serialize.user(r), created)

    project_rows, member_rows, members_of = [], [], {}
    mid = 0
    for p in range(1, projects + 1):
        owner = rng.randint(1, users)
        created = _ts(BASE + _dt.timedelta(days=10, hours=5 * p))
        r = {"id": p, "name": f"Project {p:03d}: {_sentence(rng, 1, 3).title()}",
             "description": _sentence(rng, 5, 15), "owner_id": owner,
             "created_at": created, "updated_at": created}
        project_rows.append(r)
        ev("project", serialize.project(r), created)
        others = rng.sample([u for u in range(1, users + 1) if u != owner], min(users - 1, rng.randint(2, 8)))
        members_of[p] = [owner] + others
        for uid, role in [(owner, "owner")] + [(u, "member") for u in others]:
            mid += 1
            m = {"id": mid, "project_id": p, "user_id": uid, "role": role, "added_at": created}
            member_rows.append(m)
            ev("project_member", serialize.member(m), created)

    task_rows = []
    for t in range(1, tasks + 1):
        p = rng.randint(1, projects)
        created_dt = BASE + _dt.timedelta(days=20, minutes=11 * t)
        created = _ts(created_dt)
        status = rng.choices(["todo", "in_progress", "done"], weights=[4, 2, 3])[0]
        assignee = rng.choice(members_of[p]) if rng.random() < 0.8 else None
        due = (created_dt.date() + _dt.timedelta(days=rng.randint(3, 900))).isoformat() \
            if rng.random() < 0.7 else None
        updated_dt = created_dt + _dt.timedelta(hours=rng.randint(0, 200))
        r = {"id": t, "project_id": p, "title": f"{rng.choice(VERBS)} {_sentence(rng, 2, 5)}",
             "description": _sentence(rng, 0, 30), "status": status,
             "priority": rng.choice(["low", "medium", "high"]), "assignee_id": assignee,
             "creator_id": rng.choice(members_of[p]), "due_date": due,
             "completed_at": _ts(updated_dt) if status == "done" else None,
             "created_at": created, "updated_at": _ts(updated_dt)}
        task_rows.append(r)
        ev("task", serialize.task(r), created)

    comment_rows = []
    for c in range(1, comments + 1):
        t = task_rows[rng.randint(0, tasks - 1)] if tasks else None
        if t is None:
            break
        created = _ts(BASE + _dt.timedelta(days=25, minutes=3 * c))
        r = {"id": c, "task_id": t["id"], "author_id": rng.randint(1, users),
             "body": _sentence(rng, 3, 40).capitalize() + ".", "created_at": created, "updated_at": created}
        comment_rows.append(r)
        ev("comment", serialize.comment(r), created)

    def cols(rows, names):
        return [tuple(r[n] for n in names) for r in rows]

    conn = connect(path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        specs = [
            ("users", ["id", "username", "email", "password_hash", "full_name", "created_at", "updated_at"],
             user_rows),
            ("projects", ["id", "name", "description", "owner_id", "created_at", "updated_at"], project_rows),
            ("project_members", ["id", "project_id", "user_id", "role", "added_at"], member_rows),
            ("tasks", ["id", "project_id", "title", "description", "status", "priority", "assignee_id",
                       "creator_id", "due_date", "completed_at", "created_at", "updated_at"], task_rows),
            ("comments", ["id", "task_id", "author_id", "body", "created_at", "updated_at"], comment_rows),
        ]
        for table, names, rows in specs:
            conn.executemany(f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                             cols(rows, names))
        conn.executemany("INSERT INTO events (entity, entity_id, op, payload, created_at) VALUES (?, ?, ?, ?, ?)",
                         events)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    finally:
        conn.close()
    return {"users": len(user_rows), "projects": len(project_rows), "project_members": len(member_rows),
            "tasks": len(task_rows), "comments": len(comment_rows), "events": len(events)}


SMALL = {"users": 10, "projects": 3, "tasks": 40, "comments": 100}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m taskapp.seed", description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", required=True, help="sqlite path (replaced)")
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--projects", type=int, default=50)
    ap.add_argument("--tasks", type=int, default=5000)
    ap.add_argument("--comments", type=int, default=20000)
    ap.add_argument("--small", action="store_true", help="tiny preset for tests: %s" % SMALL)
    a = ap.parse_args(argv)
    sizes = dict(SMALL) if a.small else {"users": a.users, "projects": a.projects, "tasks": a.tasks,
                                        "comments": a.comments}
    if sizes["users"] < 2 or sizes["projects"] < 1:
        ap.error("need at least 2 users and 1 project")
    t0 = time.monotonic()
    counts = seed(a.db, **sizes)
    print(f"seeded {a.db}: {counts} in {time.monotonic() - t0:.2f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
