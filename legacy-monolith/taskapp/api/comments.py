"""Comments on tasks.

Rules (see CONTRACT.md): any authenticated user may read and create
comments on any existing task; only the author may PATCH/DELETE.
Writes are taken only while this side owns comments (ownership.py): the
blueprint answers 421 before authentication, and each write checks again
inside its transaction, so none commits after a handover.
"""
from flask import g, jsonify

from .. import errors, notifications, serialize
from ..db import get_db, record_write, write_tx
from ..jsonutil import now_ts
from ..ownership import require_local_owner
from ..web import created, json_body, paginate, req_str
from . import bp
from .tasks import get_task_row

BODY_MAX = 10000


def get_comment_row(db, comment_id):
    row = db.execute("SELECT * FROM comments WHERE id = ?", (comment_id,)).fetchone()
    if row is None:
        raise errors.not_found("comment", comment_id)
    return row


def _body(data):
    return req_str(data, "body", 1, BODY_MAX, strip_check=True)


@bp.get("/tasks/<int:task_id>/comments")
def list_comments(task_id):
    get_task_row(get_db(), task_id)
    return paginate("SELECT * FROM comments WHERE task_id = ?", (task_id,), serialize.comment)


@bp.post("/tasks/<int:task_id>/comments")
def create_comment(task_id):
    task = get_task_row(get_db(), task_id)
    body = _body(json_body())
    with write_tx() as db:
        require_local_owner(db)
        ts = now_ts()
        cid = db.execute("INSERT INTO comments (task_id, author_id, body, created_at, updated_at)"
                         " VALUES (?, ?, ?, ?, ?)", (task_id, g.user_id, body, ts, ts)).lastrowid
        out = serialize.comment(get_comment_row(db, cid))
        record_write(db, g.user_id, "comment", cid, "create", out, project_id=task["project_id"],
                     details={"task_id": task_id})
        notifications.comment_added(db, out)
    return created(out)


@bp.get("/comments/<int:comment_id>")
def get_comment(comment_id):
    return jsonify(serialize.comment(get_comment_row(get_db(), comment_id)))


def _owned(comment_id):
    db = get_db()
    row = get_comment_row(db, comment_id)
    if row["author_id"] != g.user_id:
        raise errors.forbidden(f"only the author can modify comment {comment_id}")
    return row


def _project_of(db, task_id):
    r = db.execute("SELECT project_id FROM tasks WHERE id = ?", (task_id,)).fetchone()
    return r["project_id"] if r else None


@bp.patch("/comments/<int:comment_id>")
def update_comment(comment_id):
    row = _owned(comment_id)
    body = _body(json_body())
    with write_tx() as db:
        require_local_owner(db)
        db.execute("UPDATE comments SET body = ?, updated_at = ? WHERE id = ?", (body, now_ts(), comment_id))
        out = serialize.comment(get_comment_row(db, comment_id))
        record_write(db, g.user_id, "comment", comment_id, "update", out,
                     project_id=_project_of(db, row["task_id"]), details={"task_id": row["task_id"]})
    return jsonify(out)


@bp.delete("/comments/<int:comment_id>")
def delete_comment(comment_id):
    row = _owned(comment_id)
    with write_tx() as db:
        require_local_owner(db)
        db.execute("DELETE FROM comments WHERE id = ?", (comment_id,))
        record_write(db, g.user_id, "comment", comment_id, "delete", {"id": comment_id},
                     project_id=_project_of(db, row["task_id"]), details={"task_id": row["task_id"]})
    return "", 204
