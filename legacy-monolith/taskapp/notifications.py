"""E-mail notifications: a queue table + a background worker thread.

Requests never talk SMTP. A write that should notify somebody inserts a row
into `notifications` inside its own transaction (`enqueue`). Every app
instance (every gunicorn worker process) runs one daemon thread that polls
the table, claims ONE row at a time atomically and sends it:

    BEGIN IMMEDIATE;                     -- takes SQLite's single write lock
    SELECT id ... WHERE status='pending' AND next_attempt_at <= now ORDER BY id LIMIT 1;
    UPDATE notifications SET status='sending', claimed_by=?, claimed_at=?
     WHERE id=? AND status='pending';
    COMMIT;

Because BEGIN IMMEDIATE serialises writers across processes, two workers
can never claim the same row. Rows stuck in 'sending' for more than
STALE_SECONDS (worker died mid-send) go back to 'pending'. Failures are
retried with back-off up to MAX_ATTEMPTS, then marked 'failed'.
"""
import datetime as _dt
import logging
import os
import smtplib
import socket
import threading
from email.message import EmailMessage

from .db import connect
from .jsonutil import TS_FORMAT, now_ts

log = logging.getLogger("taskapp.notifications")

MAX_ATTEMPTS = 5
STALE_SECONDS = 300


def enqueue(db, kind, recipient_id, subject, body, dedup_key=None):
    """Queue one mail inside the caller's transaction. With a dedup_key, a second
    enqueue under the same key is a no-op (exactly once per key)."""
    row = db.execute("SELECT email FROM users WHERE id = ?", (recipient_id,)).fetchone()
    if row is None:
        return
    ts = now_ts()
    db.execute(
        "INSERT OR IGNORE INTO notifications (kind, recipient_id, to_addr, subject, body, next_attempt_at,"
        " created_at, dedup_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (kind, recipient_id, row["email"], subject, body, ts, ts, dedup_key))


def comment_added(db, comment):
    """One mail per new comment, whichever side took the write: to the task's assignee,
    or to its creator when unassigned (the author too, like self-assignment).
    Keyed 'comment_added:<id>', so a comment applied twice from a feed mails once."""
    task = db.execute("SELECT id, project_id, title, assignee_id, creator_id FROM tasks WHERE id = ?",
                      (comment["task_id"],)).fetchone()
    if task is None:
        return
    recipient = task["assignee_id"] if task["assignee_id"] is not None else task["creator_id"]
    enqueue(db, "comment_added", recipient,
            f"[taskapp] New comment on task #{task['id']}: {task['title']}",
            f"User {comment['author_id']} commented on task #{task['id']} \"{task['title']}\" "
            f"in project {task['project_id']}:\n\n{comment['body']}\n",
            dedup_key=f"comment_added:{comment['id']}")


def _ts_in(seconds):
    return (_dt.datetime.now(_dt.timezone.utc) + _dt.timedelta(seconds=seconds)).strftime(TS_FORMAT)


def claim_one(conn, worker_id):
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("UPDATE notifications SET status = 'pending', claimed_by = NULL"
                     " WHERE status = 'sending' AND claimed_at <= ?", (_ts_in(-STALE_SECONDS),))
        row = conn.execute("SELECT id FROM notifications WHERE status = 'pending' AND next_attempt_at <= ?"
                           " ORDER BY id LIMIT 1", (now_ts(),)).fetchone()
        if row is None:
            conn.execute("COMMIT")
            return None
        cur = conn.execute("UPDATE notifications SET status = 'sending', claimed_by = ?, claimed_at = ?,"
                           " attempts = attempts + 1 WHERE id = ? AND status = 'pending'",
                           (worker_id, now_ts(), row["id"]))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    if cur.rowcount != 1:
        return None
    return conn.execute("SELECT * FROM notifications WHERE id = ?", (row["id"],)).fetchone()


def send_mail(config, to_addr, subject, body):
    msg = EmailMessage()
    msg["From"] = config["MAIL_FROM"]
    msg["To"] = to_addr
    msg["Subject"] = subject
    msg.set_content(body)
    with smtplib.SMTP(config["SMTP_HOST"], config["SMTP_PORT"], timeout=10) as s:
        s.send_message(msg)


def process_one(conn, config, worker_id):
    """Claim and send at most one notification. Returns True if one was handled."""
    n = claim_one(conn, worker_id)
    if n is None:
        return False
    try:
        send_mail(config, n["to_addr"], n["subject"], n["body"])
    except Exception as e:  # noqa: BLE001 - any failure is retried
        log.warning("notification %s failed: %s", n["id"], e)
        status = "failed" if n["attempts"] >= MAX_ATTEMPTS else "pending"
        conn.execute("UPDATE notifications SET status = ?, last_error = ?, next_attempt_at = ?,"
                     " claimed_by = NULL WHERE id = ?",
                     (status, str(e)[:500], _ts_in(2 ** n["attempts"]), n["id"]))
    else:
        conn.execute("UPDATE notifications SET status = 'sent', sent_at = ?, last_error = NULL WHERE id = ?",
                     (now_ts(), n["id"]))
    return True


class Worker(threading.Thread):
    def __init__(self, config):
        super().__init__(name="taskapp-notify", daemon=True)
        self.config = dict(config)
        self.stop_event = threading.Event()
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"

    def run(self):
        conn = connect(self.config["DB_PATH"])
        try:
            while not self.stop_event.is_set():
                try:
                    while process_one(conn, self.config, self.worker_id):
                        if self.stop_event.is_set():
                            return
                except Exception:  # noqa: BLE001 - keep the thread alive
                    log.exception("notification worker error")
                self.stop_event.wait(self.config["NOTIFY_POLL_SECONDS"])
        finally:
            conn.close()

    def stop(self):
        self.stop_event.set()
