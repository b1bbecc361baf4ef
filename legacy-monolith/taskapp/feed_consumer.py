"""Consumer of the comments service's change feed: ONE per monolith.

While the comments service owns comment writes (ownership.py), its own
`GET /internal/events` feed (same JSON shape as ours) carries them. This
consumer applies them to the local `comments` table so everything the
monolith still does with comments keeps working (reads, activity feed,
report counts, notification mail, task/project cascades), and applies the
service's 'ownership'/'handover' event that hands comment writes back.

* One per monolith, not per gunicorn worker: every worker starts the thread,
  but only the one holding an exclusive flock on `<TASKAPP_DB>.consumer.lock`
  polls; the others retry the lock every LOCK_RETRY_SECONDS, so when that
  worker dies (the kernel drops its lock) another one takes over. Even two
  consumers at once would be safe: each batch re-reads the cursor inside its
  BEGIN IMMEDIATE and skips what is already applied.
* Resumable: the cursor (`feed_cursors.applied_event_id`) is advanced in the
  same transaction as the rows it applied; a restart asks for `after=<cursor>`.
* A service that is down or answers an error is retried with exponential
  back-off (poll interval doubling up to TASKAPP_CONSUMER_MAX_BACKOFF); the
  error is stored in `feed_cursors.last_error` (shown by GET /internal/ownership)
  and logged once per change. An event that cannot be applied stops the
  consumer at that event (retried with back-off) rather than skipping data.
* No echo: applied comment changes write NO `events` rows (they would go
  back to the service). They do write `activity_log` rows, as our own writes
  do, and one 'comment_added' notification per new comment (keyed by id).
"""
import fcntl
import json
import logging
import os
import sqlite3
import threading
import urllib.error
import urllib.parse
import urllib.request

from werkzeug.http import parse_date

from . import notifications, ownership
from .db import connect, log_activity
from .jsonutil import TS_FORMAT, now_ts

log = logging.getLogger("taskapp.feed_consumer")

SOURCE = "comments"
LOCK_RETRY_SECONDS = 1.0
HTTP_TIMEOUT_SECONDS = 5.0


class FeedError(Exception):
    """The feed could not be read or an event could not be applied (message says which)."""


# ------------------------------------------------------------------ reading
def fetch_page(base_url, token, after, limit):
    """GET {base_url}/internal/events?after=&limit= -> list of events (validated shape)."""
    url = f"{base_url}/internal/events?" + urllib.parse.urlencode({"after": after, "limit": limit})
    req = urllib.request.Request(url, headers={"Accept": "application/json",
                                               "User-Agent": f"taskapp-feed-consumer/{os.getpid()}"})
    if token:
        req.add_header("X-Internal-Token", token)
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_SECONDS) as r:
            raw = r.read()
    except urllib.error.HTTPError as e:
        raise FeedError(f"GET {url} answered {e.code}: {e.read(200).decode('utf-8', 'replace')}") from None
    except (urllib.error.URLError, OSError) as e:
        raise FeedError(f"GET {url} failed: {getattr(e, 'reason', e)}") from None
    try:
        doc = json.loads(raw)
        events = doc["events"]
        if not isinstance(events, list):
            raise TypeError("events is not a list")
        for ev in events:
            _check_event(ev)
    except (ValueError, KeyError, TypeError) as e:
        raise FeedError(f"GET {url}: not a change feed page ({e})") from None
    return sorted(events, key=lambda ev: ev["id"])


def _check_event(ev):
    if not isinstance(ev, dict):
        raise TypeError("an event is not an object")
    for key, kind in (("id", int), ("entity", str), ("entity_id", int), ("op", str), ("payload", dict)):
        if not isinstance(ev.get(key), kind) or isinstance(ev.get(key), bool):
            raise TypeError(f"event {ev.get('id')!r}: {key} must be {kind.__name__}")


# ----------------------------------------------------------------- applying
def apply_page(conn, events):
    """Apply events after the stored cursor in ONE transaction with the new cursor.
    Returns how many were applied (events at or below the cursor are replays). An event
    that cannot be applied is undone alone (savepoint): the events before it and the
    cursor are committed, then FeedError names it."""
    failure = None
    conn.execute("BEGIN IMMEDIATE")
    try:
        cursor = conn.execute("SELECT applied_event_id FROM feed_cursors WHERE source = ?",
                              (SOURCE,)).fetchone()[0]
        applied = 0
        for ev in events:
            if ev["id"] <= cursor:
                continue
            conn.execute("SAVEPOINT event")
            try:
                apply_event(conn, ev)
            except (ValueError, KeyError, TypeError, sqlite3.IntegrityError) as e:
                conn.execute("ROLLBACK TO event")
                failure = FeedError(f"event {ev['id']} ({ev['entity']}/{ev['op']}) cannot be applied: {e}")
                break
            conn.execute("RELEASE event")
            cursor = ev["id"]
            applied += 1
        if applied:
            conn.execute("UPDATE feed_cursors SET applied_event_id = ?, updated_at = ? WHERE source = ?",
                         (cursor, now_ts(), SOURCE))
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    if failure:
        raise failure
    return applied


def apply_event(db, ev):
    """One event of the service's feed, inside the caller's transaction. Unknown entities are ignored."""
    if ev["entity"] == "ownership" and ev["op"] == "handover":
        if ownership.apply_handover(db, ev["payload"]):
            log.warning("comments ownership applied from the service's feed: %s", ev["payload"])
    elif ev["entity"] == "comment":
        apply_comment(db, ev)


def apply_comment(db, ev):
    """Upsert or delete one comment by id; activity row when something changed; mail on create."""
    cid, op, p = ev["entity_id"], ev["op"], ev["payload"]
    ts = _stored_ts(ev.get("created_at")) or now_ts()
    row = db.execute("SELECT * FROM comments WHERE id = ?", (cid,)).fetchone()
    if op == "delete":
        if row is not None:
            db.execute("DELETE FROM comments WHERE id = ?", (cid,))
            _activity(db, row["author_id"], "delete", cid, row["task_id"], ts)
        return
    if op not in ("create", "update"):
        raise ValueError(f"unknown op {op!r}")
    c = _comment_from_payload(cid, p)
    if row is not None and (row["body"], row["updated_at"]) == (c["body"], c["updated_at"]):
        return  # a replay of what is already here
    if not _exists(db, "tasks", c["task_id"]) or not _exists(db, "users", c["author_id"]):
        # the task was deleted here meanwhile: the owner deletes the comment when it applies
        # our task delete, and its comment delete event finds nothing left here
        log.info("comment %s skipped: task %s or user %s is gone", cid, c["task_id"], c["author_id"])
        return
    db.execute("INSERT INTO comments (id, task_id, author_id, body, created_at, updated_at)"
               " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET body = excluded.body,"
               " updated_at = excluded.updated_at",
               (cid, c["task_id"], c["author_id"], c["body"], c["created_at"], c["updated_at"]))
    verb = "create" if op == "create" and row is None else "update"
    _activity(db, c["author_id"], verb, cid, c["task_id"], ts)
    if op == "create":
        notifications.comment_added(db, c)


def _comment_from_payload(cid, p):
    c = {"id": cid}
    for key in ("task_id", "author_id"):
        if not isinstance(p.get(key), int) or isinstance(p.get(key), bool):
            raise ValueError(f"payload.{key} must be an integer")
        c[key] = p[key]
    if not isinstance(p.get("body"), str):
        raise ValueError("payload.body must be a string")
    c["body"] = p["body"]
    for key in ("created_at", "updated_at"):
        c[key] = _stored_ts(p.get(key))
        if c[key] is None:
            raise ValueError(f"payload.{key} must be an RFC 822 date")
    return c


def _stored_ts(rfc822):
    """'Tue, 25 Nov 2026 20:26:10 GMT' -> '2026-11-25 20:26:10' (None if absent or unparseable)."""
    d = parse_date(rfc822) if isinstance(rfc822, str) else None
    return d.strftime(TS_FORMAT) if d else None


def _exists(db, table, ident):
    return db.execute(f"SELECT 1 FROM {table} WHERE id = ?", (ident,)).fetchone() is not None


def _activity(db, actor_id, verb, cid, task_id, ts):
    t = db.execute("SELECT project_id FROM tasks WHERE id = ?", (task_id,)).fetchone()
    log_activity(db, actor_id, f"comment.{verb}", "comment", cid, t["project_id"] if t else None,
                 {"task_id": task_id}, ts)


# ------------------------------------------------------------------- thread
class Consumer(threading.Thread):
    """Polls the service's feed while holding the per-database lock (see the module doc)."""

    def __init__(self, config):
        super().__init__(name="taskapp-feed-consumer", daemon=True)
        self.config = dict(config)
        self.base_url = config["COMMENTS_SERVICE_URL"]
        self.stop_event = threading.Event()
        self.lock_path = os.path.abspath(config["DB_PATH"]) + ".consumer.lock"
        self._lock_file = None
        self._error = object()  # unknown until the first poll: clear or record it then

    def run(self):
        conn = None
        failures = 0
        try:
            while not self.stop_event.is_set():
                if self._lock_file is None and not self._try_lock():
                    self.stop_event.wait(LOCK_RETRY_SECONDS)
                    continue
                try:
                    conn = conn or connect(self.config["DB_PATH"])
                    got = self.poll_once(conn)
                    failures = 0
                    self._set_error(conn, None)
                    if got:
                        continue  # ask again at once: more may wait (the service may clamp `limit`)
                    delay = self.config["CONSUMER_POLL_SECONDS"]
                except Exception as e:  # noqa: BLE001 - the consumer must outlive any failure
                    failures += 1
                    self._set_error(conn, str(e) if isinstance(e, FeedError) else f"{type(e).__name__}: {e}")
                    delay = min(self.config["CONSUMER_MAX_BACKOFF_SECONDS"],
                                self.config["CONSUMER_POLL_SECONDS"] * 2 ** min(failures, 16))
                self.stop_event.wait(delay)
        finally:
            if conn is not None:
                conn.close()
            if self._lock_file is not None:
                self._lock_file.close()

    def poll_once(self, conn):
        """One page after the stored cursor. Returns True when it held new events."""
        cursor = conn.execute("SELECT applied_event_id FROM feed_cursors WHERE source = ?",
                              (SOURCE,)).fetchone()[0]
        events = fetch_page(self.base_url, self.config.get("INTERNAL_TOKEN"), cursor,
                            self.config["CONSUMER_BATCH"])
        return apply_page(conn, events) > 0 if events else False

    def _try_lock(self):
        f = open(self.lock_path, "a")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            return False
        self._lock_file = f
        log.info("feed consumer of %s runs in pid %s", self.base_url, os.getpid())
        return True

    def _set_error(self, conn, message):
        """Record the consumer's state in feed_cursors when it changes (one log line per change)."""
        if message == self._error or conn is None:
            return
        if message is not None:
            log.warning("feed consumer: %s (retrying with back-off)", message)
        elif isinstance(self._error, str):
            log.warning("feed consumer recovered: %s", self.base_url)
        # (the first poll of this process also clears an error a previous process left)
        try:
            conn.execute("UPDATE feed_cursors SET last_error = ?, last_error_at = ? WHERE source = ?",
                         (message, now_ts() if message else None, SOURCE))
            self._error = message
        except Exception:  # noqa: BLE001 - a busy database only delays the status
            log.exception("feed consumer could not record its status")

    def stop(self):
        self.stop_event.set()
