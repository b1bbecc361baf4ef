"""File attachments on tasks, stored under $TASKAPP_DATA_DIR/attachments/."""
import hashlib
import os
import secrets

from flask import current_app, g, jsonify, request, send_file
from werkzeug.utils import secure_filename

from .. import errors, serialize
from ..db import emit_event, get_db, record_write, write_tx
from ..jsonutil import now_ts
from ..web import created
from . import bp


def storage_dir():
    d = os.path.join(current_app.config["DATA_DIR"], "attachments")
    os.makedirs(d, exist_ok=True)
    return d


def remove_attachment_rows(db, task_id, ts):
    """Delete a task's attachment rows (emitting events); return storage names."""
    names = []
    for r in db.execute("SELECT id, storage_name FROM attachments WHERE task_id = ? ORDER BY id",
                        (task_id,)).fetchall():
        db.execute("DELETE FROM attachments WHERE id = ?", (r["id"],))
        emit_event(db, "attachment", r["id"], "delete", {"id": r["id"]}, ts)
        names.append(r["storage_name"])
    return names


def delete_files_later(names):
    """Unlink files after the DB transaction committed (best effort)."""
    for n in names:
        try:
            os.remove(os.path.join(storage_dir(), n))
        except OSError:
            pass


def get_attachment_row(db, attachment_id):
    row = db.execute("SELECT * FROM attachments WHERE id = ?", (attachment_id,)).fetchone()
    if row is None:
        raise errors.not_found("attachment", attachment_id)
    return row


@bp.post("/tasks/<int:task_id>/attachments")
def upload_attachment(task_id):
    from .projects import require_member
    from .tasks import get_task_row
    db = get_db()
    task = get_task_row(db, task_id)
    require_member(db, task["project_id"])
    f = request.files.get("file")  # may raise 413 (MAX_CONTENT_LENGTH)
    if f is None:
        raise errors.validation("file", "file is required (multipart/form-data field 'file')")
    filename = secure_filename(f.filename or "") or "upload.bin"
    content_type = f.mimetype or "application/octet-stream"
    storage_name = secrets.token_hex(16)
    path = os.path.join(storage_dir(), storage_name)
    f.save(path)
    size = os.path.getsize(path)
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(65536), b""):
            h.update(chunk)
    try:
        with write_tx() as db:
            aid = db.execute(
                "INSERT INTO attachments (task_id, uploader_id, filename, content_type, size, sha256,"
                " storage_name, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (task_id, g.user_id, filename, content_type, size, h.hexdigest(), storage_name,
                 now_ts())).lastrowid
            out = serialize.attachment(get_attachment_row(db, aid))
            record_write(db, g.user_id, "attachment", aid, "create", out, project_id=task["project_id"],
                         details={"task_id": task_id, "filename": filename, "size": size})
    except BaseException:
        delete_files_later([storage_name])
        raise
    return created(out)


@bp.get("/attachments/<int:attachment_id>")
def download_attachment(attachment_id):
    row = get_attachment_row(get_db(), attachment_id)
    path = os.path.join(storage_dir(), row["storage_name"])
    if not os.path.exists(path):
        raise errors.not_found("attachment file", attachment_id)
    return send_file(os.path.abspath(path), mimetype=row["content_type"], as_attachment=True,
                     download_name=row["filename"], etag=row["sha256"], conditional=True)


@bp.get("/attachments/<int:attachment_id>/meta")
def attachment_meta(attachment_id):
    return jsonify(serialize.attachment(get_attachment_row(get_db(), attachment_id)))


@bp.delete("/attachments/<int:attachment_id>")
def delete_attachment(attachment_id):
    from .projects import require_member
    db = get_db()
    row = get_attachment_row(db, attachment_id)
    task = db.execute("SELECT project_id FROM tasks WHERE id = ?", (row["task_id"],)).fetchone()
    require_member(db, task["project_id"])
    with write_tx() as db:
        db.execute("DELETE FROM attachments WHERE id = ?", (attachment_id,))
        record_write(db, g.user_id, "attachment", attachment_id, "delete", {"id": attachment_id},
                     project_id=task["project_id"], details={"task_id": row["task_id"]})
    delete_files_later([row["storage_name"]])
    return "", 204
