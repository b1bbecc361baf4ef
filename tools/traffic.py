#!/usr/bin/env python3
"""Traffic generator for the strangler proxy (stdlib only, Python 3.11).

Logs in as several seeded users (user0001.. / password123) against --base-url
(normally the proxy), then replays a realistic mix of reads and writes:
list users, get user, list projects, list tasks of a project, get task, list
comments of a task, get comment, post comment, patch own comment, patch task
status, create task. Every request carries `X-User-Id: <id>` and every response
is checked (expected status codes, JSON parses, expected shape).

Prints one summary JSON line:
  {"requests":N,"ok":N,"failed":N,"by_status":{...},"errors":[first few], ...}
and exits 1 if any request failed unexpectedly.

  python3 tools/traffic.py --base-url http://127.0.0.1:8080 --requests 500 --concurrency 4 --seed 1
  python3 tools/traffic.py --duration 30 --users 8
  python3 tools/traffic.py --duration 3600 --progress 10   # a running summary every 10 s
"""
from __future__ import annotations

import argparse
import base64
import http.client
import json
import random
import sys
import threading
import time
import urllib.parse
from collections import Counter

# (operation, weight)
MIX = [
    ("list_users", 10),
    ("get_user", 10),
    ("list_projects", 8),
    ("list_tasks", 12),
    ("get_task", 12),
    ("list_comments", 14),
    ("get_comment", 12),
    ("post_comment", 8),
    ("patch_comment", 5),
    ("patch_task_status", 5),
    ("create_task", 4),
]
# a resource this run created may take a moment to reach a service that follows
# the monolith's change feed: a 404 for it within this window is "lagged", not failed
SYNC_GRACE_S = 5.0
MAX_ERRORS = 10
# 421 Misdirected Request: neither side took the write (comments mid-handover,
# see docs/runbook.md "Moving writes"); nothing was done, so send it again shortly
MISDIRECTED_RETRY_S = 0.2
MISDIRECTED_GIVE_UP_S = 10.0


class Client:
    """One keep-alive HTTP connection (one per thread)."""

    def __init__(self, base_url: str, timeout: float):
        u = urllib.parse.urlsplit(base_url)
        if u.scheme not in ("http", "https"):
            raise SystemExit(f"unsupported URL scheme in {base_url!r}")
        self.https = u.scheme == "https"
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or (443 if self.https else 80)
        self.prefix = u.path.rstrip("/")
        self.timeout = timeout
        self.conn = None

    def _connect(self):
        cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        self.conn = cls(self.host, self.port, timeout=self.timeout)

    def request(self, method, path, headers=None, body=None):
        """Returns (status, content_type, body bytes). Retries once on a stale connection."""
        data = None if body is None else json.dumps(body).encode()
        hdrs = dict(headers or {})
        if data is not None:
            hdrs["Content-Type"] = "application/json"
        for attempt in (0, 1):
            if self.conn is None:
                self._connect()
            try:
                self.conn.request(method, self.prefix + path, body=data, headers=hdrs)
                resp = self.conn.getresponse()
                raw = resp.read()
                if resp.getheader("Connection", "").lower() == "close":
                    self.conn.close()
                    self.conn = None
                return resp.status, resp.getheader("Content-Type", ""), raw
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                    http.client.CannotSendRequest, http.client.ResponseNotReady):
                self.conn.close()
                self.conn = None
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")


def jwt_sub(token: str) -> int:
    payload = token.split(".")[1]
    payload += "=" * (-len(payload) % 4)
    return int(json.loads(base64.urlsafe_b64decode(payload))["sub"])


class World:
    """What the generator knows about the data (shared by threads)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.user_ids: list[int] = []
        self.project_ids: list[int] = []
        self.members: dict[int, set[int]] = {}          # project -> user ids
        self.tasks: dict[int, int] = {}                 # task id -> project id
        self.comments: dict[int, int] = {}              # comment id -> author id
        self.created_at: dict[tuple[str, int], float] = {}  # (kind, id) -> time this run created it

    def fresh(self, kind, ident):
        t = self.created_at.get((kind, ident))
        return t is not None and time.monotonic() - t < SYNC_GRACE_S


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests = 0
        self.ok = 0
        self.failed = 0
        self.lagged = 0
        self.misdirected = 0
        self.by_status = Counter()
        self.by_op = Counter()
        self.errors: list[dict] = []

    def record(self, op, method, path, status, ok, why=None, lagged=False):
        with self.lock:
            self.requests += 1
            self.by_status[str(status)] += 1
            self.by_op[op] += 1
            if lagged:
                self.lagged += 1
            if ok:
                self.ok += 1
            else:
                self.failed += 1
                if len(self.errors) < MAX_ERRORS:
                    self.errors.append({"op": op, "method": method, "path": path, "status": status, "error": why})


class Session:
    def __init__(self, username, token, uid):
        self.username, self.token, self.uid = username, token, uid

    def headers(self):
        return {"Authorization": f"Bearer {self.token}", "X-User-Id": str(self.uid)}


def call(client, stats, op, sess, method, path, expect, body=None, shape=None, lag_ok=False):
    """Send, check, record. Returns parsed JSON (or None)."""
    give_up = time.monotonic() + MISDIRECTED_GIVE_UP_S
    while True:
        try:
            status, ctype, raw = client.request(method, path, sess.headers(), body)
        except Exception as e:  # network error: counts as a failure
            stats.record(op, method, path, "error", False, f"{type(e).__name__}: {e}")
            return None
        if status != 421 or time.monotonic() >= give_up:
            break
        with stats.lock:
            stats.misdirected += 1
        time.sleep(MISDIRECTED_RETRY_S)
    if status not in expect:
        if lag_ok and status == 404:
            stats.record(op, method, path, status, True, lagged=True)
            return None
        stats.record(op, method, path, status, False,
                     f"expected {sorted(expect)}, got {status}: {raw[:200].decode('utf-8', 'replace')}")
        return None
    data = None
    if raw:
        if not ctype.startswith("application/json"):
            stats.record(op, method, path, status, False, f"Content-Type {ctype!r} is not JSON")
            return None
        try:
            data = json.loads(raw)
        except ValueError as e:
            stats.record(op, method, path, status, False, f"invalid JSON: {e}")
            return None
        if status < 300 and shape:
            missing = [k for k in shape if k not in data]
            if missing:
                stats.record(op, method, path, status, False, f"missing keys {missing}")
                return None
    elif status != 204:
        stats.record(op, method, path, status, False, "empty body")
        return None
    stats.record(op, method, path, status, True)
    return data


PAGE = ("items", "page", "per_page", "total")
USER = ("created_at", "email", "full_name", "id", "updated_at", "username")
COMMENT = ("author_id", "body", "created_at", "id", "task_id", "updated_at")
TASK = ("id", "project_id", "status", "title")


def discover(base_url, timeout, world: World, sessions):
    """Learn users, projects, members, some tasks and comments (not counted)."""
    c = Client(base_url, timeout)
    s = sessions[0]

    def pages(path):
        page = 1
        while True:
            sep = "&" if "?" in path else "?"
            status, _, raw = c.request("GET", f"{path}{sep}page={page}&per_page=100", s.headers())
            if status != 200:
                raise SystemExit(f"discovery: GET {path} -> {status}: {raw[:200]!r}")
            d = json.loads(raw)
            yield from d["items"]
            if page * d["per_page"] >= d["total"]:
                return
            page += 1

    world.user_ids = [u["id"] for u in pages("/api/users")]
    world.project_ids = [p["id"] for p in pages("/api/projects")]
    for pid in world.project_ids:
        world.members[pid] = {m["user_id"] for m in pages(f"/api/projects/{pid}/members")}
        for t in pages(f"/api/projects/{pid}/tasks"):
            world.tasks[t["id"]] = pid
    for tid in list(world.tasks)[:20]:
        for cm in pages(f"/api/tasks/{tid}/comments"):
            world.comments[cm["id"]] = cm["author_id"]


def one_request(op, rng, client, stats, world: World, sess: Session):
    with world.lock:
        users = list(world.user_ids)
        projects = list(world.project_ids)
        tasks = list(world.tasks.items())
        comments = list(world.comments.items())
        own_comments = [cid for cid, a in comments if a == sess.uid]
        my_projects = [p for p in projects if sess.uid in world.members.get(p, ())]
    pp = rng.choice([5, 10, 20, 50])
    if op == "list_users":
        call(client, stats, op, sess, "GET", f"/api/users?page={rng.randint(1, 3)}&per_page={pp}", {200}, shape=PAGE)
    elif op == "get_user" and users:
        call(client, stats, op, sess, "GET", f"/api/users/{rng.choice(users)}", {200}, shape=USER)
    elif op == "list_projects":
        call(client, stats, op, sess, "GET", f"/api/projects?per_page={pp}", {200}, shape=PAGE)
    elif op == "list_tasks" and projects:
        d = call(client, stats, op, sess, "GET", f"/api/projects/{rng.choice(projects)}/tasks?per_page={pp}", {200}, shape=PAGE)
        if d:
            with world.lock:
                for t in d["items"]:
                    world.tasks[t["id"]] = t["project_id"]
    elif op == "get_task" and tasks:
        tid, _ = rng.choice(tasks)
        call(client, stats, op, sess, "GET", f"/api/tasks/{tid}", {200}, shape=TASK, lag_ok=world.fresh("task", tid))
    elif op == "list_comments" and tasks:
        tid, _ = rng.choice(tasks)
        d = call(client, stats, op, sess, "GET", f"/api/tasks/{tid}/comments?per_page={pp}", {200}, shape=PAGE,
                 lag_ok=world.fresh("task", tid))
        if d:
            with world.lock:
                for cm in d["items"]:
                    world.comments[cm["id"]] = cm["author_id"]
    elif op == "get_comment" and comments:
        cid, _ = rng.choice(comments)
        call(client, stats, op, sess, "GET", f"/api/comments/{cid}", {200}, shape=COMMENT, lag_ok=world.fresh("comment", cid))
    elif op == "post_comment" and tasks:
        tid, _ = rng.choice(tasks)
        body = {"body": f"{sess.username} says: {rng.choice(['LGTM', 'needs work', 'ça marche', 'on it', 'blocked?'])} #{rng.randint(1, 10**6)}"}
        d = call(client, stats, op, sess, "POST", f"/api/tasks/{tid}/comments", {201}, body=body, shape=COMMENT,
                 lag_ok=world.fresh("task", tid))
        if d:
            with world.lock:
                world.comments[d["id"]] = sess.uid
                world.created_at[("comment", d["id"])] = time.monotonic()
    elif op == "patch_comment" and own_comments:
        cid = rng.choice(own_comments)
        call(client, stats, op, sess, "PATCH", f"/api/comments/{cid}", {200}, body={"body": f"edited {rng.randint(1, 10**6)}"},
             shape=COMMENT, lag_ok=world.fresh("comment", cid))
    elif op == "patch_task_status" and tasks:
        tid, pid = rng.choice(tasks)
        expect = {200} if sess.uid in world.members.get(pid, ()) else {403}
        call(client, stats, op, sess, "PATCH", f"/api/tasks/{tid}", expect,
             body={"status": rng.choice(["todo", "in_progress", "done"])}, shape=TASK if expect == {200} else None,
             lag_ok=world.fresh("task", tid))
    elif op == "create_task" and my_projects:
        pid = rng.choice(my_projects)
        body = {"title": f"traffic task {rng.randint(1, 10**6)}", "priority": rng.choice(["low", "medium", "high"]),
                "description": "created by tools/traffic.py"}
        d = call(client, stats, op, sess, "POST", f"/api/projects/{pid}/tasks", {201}, body=body, shape=TASK)
        if d:
            with world.lock:
                world.tasks[d["id"]] = pid
                world.created_at[("task", d["id"])] = time.monotonic()
    else:
        # precondition missing (e.g. no own comment yet): fall back to a cheap read
        call(client, stats, "list_users", sess, "GET", "/api/users?per_page=5", {200}, shape=PAGE)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base-url", default="http://127.0.0.1:8080", help="proxy (or monolith) base URL")
    ap.add_argument("--users", type=int, default=5, help="how many seeded users to log in as (user0001..)")
    ap.add_argument("--password", default="password123")
    ap.add_argument("--requests", type=int, help="total requests to send (default 200 if --duration is not given)")
    ap.add_argument("--duration", type=float, help="run for this many seconds")
    ap.add_argument("--concurrency", type=int, default=4, help="worker threads")
    ap.add_argument("--seed", type=int, default=0, help="random seed (deterministic request choice per thread)")
    ap.add_argument("--timeout", type=float, default=10.0, help="per-request timeout, seconds")
    ap.add_argument("--rate", type=float, default=0.0, help="requests per second across all workers (0 = as fast as possible)")
    ap.add_argument("--progress", type=float, default=0.0,
                    help="also print the running summary every this many seconds (0 = only at the end)")
    args = ap.parse_args(argv)
    if args.requests is None and args.duration is None:
        args.requests = 200
    if args.concurrency < 1 or args.users < 1:
        ap.error("--concurrency and --users must be >= 1")

    # log in (not counted in the summary; failure is fatal)
    c = Client(args.base_url, args.timeout)
    sessions = []
    for i in range(1, args.users + 1):
        name = f"user{i:04d}"
        try:
            status, _, raw = c.request("POST", "/api/auth/login", {"X-User-Id": "0"},
                                       {"username": name, "password": args.password})
        except OSError as e:
            print(json.dumps({"requests": 0, "ok": 0, "failed": 1, "by_status": {},
                              "errors": [{"op": "login", "error": f"{type(e).__name__}: {e}"}]}))
            return 1
        if status != 200:
            print(json.dumps({"requests": 0, "ok": 0, "failed": 1, "by_status": {str(status): 1},
                              "errors": [{"op": "login", "user": name, "status": status,
                                          "error": raw[:200].decode("utf-8", "replace")}]}))
            return 1
        tok = json.loads(raw)["token"]
        sessions.append(Session(name, tok, jwt_sub(tok)))

    world = World()
    discover(args.base_url, args.timeout, world, sessions)

    stats = Stats()
    ops, weights = zip(*MIX)
    counter = {"n": 0}
    counter_lock = threading.Lock()
    deadline = time.monotonic() + args.duration if args.duration else None
    started = time.monotonic()

    def worker(idx):
        rng = random.Random(args.seed * 1000 + idx)
        client = Client(args.base_url, args.timeout)
        while True:
            if deadline is not None and time.monotonic() >= deadline:
                return
            with counter_lock:
                if args.requests is not None and counter["n"] >= args.requests:
                    return
                counter["n"] += 1
            if args.rate > 0:
                time.sleep(args.concurrency / args.rate)
            sess = sessions[rng.randrange(len(sessions))]
            op = rng.choices(ops, weights)[0]
            try:
                one_request(op, rng, client, stats, world, sess)
            except Exception as e:  # a bug in the generator must not hang the run
                stats.record(op, "?", "?", "error", False, f"{type(e).__name__}: {e}")

    def summary():
        elapsed = time.monotonic() - started
        return {
            "requests": stats.requests,
            "ok": stats.ok,
            "failed": stats.failed,
            "by_status": dict(sorted(stats.by_status.items())),
            "errors": stats.errors,
            "by_op": dict(sorted(stats.by_op.items())),
            "lagged_404": stats.lagged,
            "misdirected_retried": stats.misdirected,
            "elapsed_s": round(elapsed, 3),
            "rps": round(stats.requests / elapsed, 1) if elapsed > 0 else None,
        }

    done = threading.Event()

    def report_progress():
        # A long run (the demo's background traffic) shows it is alive.
        while not done.wait(args.progress):
            print(json.dumps({"progress": True, **summary()}, separators=(",", ":")), flush=True)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(args.concurrency)]
    for t in threads:
        t.start()
    if args.progress > 0:
        threading.Thread(target=report_progress, daemon=True).start()
    for t in threads:
        t.join()
    done.set()
    print(json.dumps(summary(), separators=(",", ":")), flush=True)
    return 1 if stats.failed else 0


if __name__ == "__main__":
    sys.exit(main())
