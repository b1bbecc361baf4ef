"""SQLite access: one connection per request (flask.g), explicit transactions.

Connections are opened in autocommit mode (isolation_level=None); every
write goes through `write_tx()`, which runs BEGIN IMMEDIATE ... COMMIT, so
the row change, its `events` row (outbox) and its `activity_log` row are
committed atomically or not at all.
"""
import contextlib
import json
import os
import re
import sqlite3
import time

from flask import current_app, g

from .jsonutil import dumps_compact, now_ts

SCHEMA_PATH = os.path.join(os.path.dirname(__file__), "schema.sql")


def connect(path):
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def init_schema(path):
    """Create the schema if missing (idempotent; safe with several workers)."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    with open(SCHEMA_PATH, encoding="utf-8") as f:
        schema = f.read()
    # Several gunicorn workers may start at once: retry if the file is locked.
    for attempt in range(50):
        conn = connect(path)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("BEGIN IMMEDIATE")
            migrate(conn, schema)
            conn.execute("COMMIT")
            conn.executescript("BEGIN IMMEDIATE;\n" + schema + "\nCOMMIT;")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or attempt == 49:
                raise
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            time.sleep(0.1)
        finally:
            conn.close()


def migrate(conn, schema):
    """Bring a file made by an older schema.sql up to date, inside the caller's
    transaction and before the schema runs (idempotent; a new file has nothing to do).

    * notifications.dedup_key (one notification per key, e.g. per new comment);
    * events.op accepting 'handover': SQLite cannot alter a CHECK, so the table
      is rebuilt from schema.sql's definition, keeping every id and the
      AUTOINCREMENT sequence (feed cursors elsewhere stay valid)."""
    tables = dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'").fetchall())
    if "notifications" in tables:
        cols = {r["name"] for r in conn.execute("PRAGMA table_info(notifications)")}
        if "dedup_key" not in cols:
            conn.execute("ALTER TABLE notifications ADD COLUMN dedup_key TEXT")
    if "events" in tables and "'handover'" not in tables["events"]:
        m = re.search(r"CREATE TABLE IF NOT EXISTS events \((.*?)\n\);", schema, re.S)
        seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        conn.execute(f"CREATE TABLE events_migrated ({m.group(1)}\n)")
        conn.execute("INSERT INTO events_migrated (id, entity, entity_id, op, payload, created_at)"
                     " SELECT id, entity, entity_id, op, payload, created_at FROM events ORDER BY id")
        conn.execute("DROP TABLE events")
        conn.execute("ALTER TABLE events_migrated RENAME TO events")
        if seq is not None:
            conn.execute("DELETE FROM sqlite_sequence WHERE name = 'events'")
            conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('events', ?)", (seq[0],))


def get_db():
    if "db" not in g:
        g.db = connect(current_app.config["DB_PATH"])
    return g.db


def close_db(exc=None):
    db = g.pop("db", None)
    if db is not None:
        db.close()


@contextlib.contextmanager
def write_tx():
    """BEGIN IMMEDIATE ... COMMIT; rollback on any exception."""
    db = get_db()
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    else:
        db.execute("COMMIT")


def emit_event(db, entity, entity_id, op, payload, ts=None):
    """Outbox row. payload: resource dict (create/update) or {"id": n} (delete)."""
    db.execute(
        "INSERT INTO events (entity, entity_id, op, payload, created_at) VALUES (?, ?, ?, ?, ?)",
        (entity, entity_id, op, dumps_compact(payload), ts or now_ts()),
    )


def log_activity(db, actor_id, action, entity_type, entity_id, project_id=None, details=None, ts=None):
    db.execute(
        "INSERT INTO activity_log (actor_id, action, entity_type, entity_id, project_id, details, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (actor_id, action, entity_type, entity_id, project_id,
         json.dumps(details or {}, sort_keys=True, default=str), ts or now_ts()),
    )


def record_write(db, actor_id, entity, entity_id, op, payload, project_id=None, details=None):
    """Every API write calls this inside its write_tx(): event + activity."""
    ts = now_ts()
    emit_event(db, entity, entity_id, op, payload, ts)
    log_activity(db, actor_id, f"{entity}.{op}", entity, entity_id, project_id, details, ts)
