"""Projects and project membership."""
from flask import g, jsonify

from .. import errors, serialize
from ..db import get_db, record_write, write_tx, emit_event
from ..jsonutil import now_ts
from ..web import MISSING, created, json_body, paginate, req_enum, req_str
from . import bp
from .attachments import delete_files_later, remove_attachment_rows


def get_project_row(db, project_id):
    row = db.execute("SELECT * FROM projects WHERE id = ?", (project_id,)).fetchone()
    if row is None:
        raise errors.not_found("project", project_id)
    return row


def is_member(db, project_id, user_id):
    return db.execute("SELECT 1 FROM project_members WHERE project_id = ? AND user_id = ?",
                      (project_id, user_id)).fetchone() is not None


def require_member(db, project_id):
    if not is_member(db, project_id, g.user_id):
        raise errors.forbidden(f"you are not a member of project {project_id}")


def require_owner(db, project_row):
    if project_row["owner_id"] != g.user_id:
        raise errors.forbidden(f"only the owner can modify project {project_row['id']}")


@bp.get("/projects")
def list_projects():
    return paginate("SELECT * FROM projects", (), serialize.project)


@bp.post("/projects")
def create_project():
    data = json_body()
    name = req_str(data, "name", 1, 200, strip_check=True)
    description = req_str(data, "description", 0, 5000, required=False)
    if description is MISSING:
        description = ""
    with write_tx() as db:
        ts = now_ts()
        pid = db.execute(
            "INSERT INTO projects (name, description, owner_id, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
            (name, description, g.user_id, ts, ts)).lastrowid
        out = serialize.project(get_project_row(db, pid))
        record_write(db, g.user_id, "project", pid, "create", out, project_id=pid, details={"name": name})
        mid = db.execute(
            "INSERT INTO project_members (project_id, user_id, role, added_at) VALUES (?, ?, 'owner', ?)",
            (pid, g.user_id, ts)).lastrowid
        m = serialize.member(db.execute("SELECT * FROM project_members WHERE id = ?", (mid,)).fetchone())
        record_write(db, g.user_id, "project_member", mid, "create", m, project_id=pid,
                     details={"user_id": g.user_id, "role": "owner"})
    return created(out)


@bp.get("/projects/<int:project_id>")
def get_project(project_id):
    return jsonify(serialize.project(get_project_row(get_db(), project_id)))


@bp.patch("/projects/<int:project_id>")
def update_project(project_id):
    require_owner(get_db(), get_project_row(get_db(), project_id))
    data = json_body()
    name = req_str(data, "name", 1, 200, required=False, strip_check=True)
    description = req_str(data, "description", 0, 5000, required=False)
    sets, params, changed = [], [], []
    if name is not MISSING:
        sets.append("name = ?"); params.append(name); changed.append("name")
    if description is not MISSING:
        sets.append("description = ?"); params.append(description); changed.append("description")
    with write_tx() as db:
        if sets:
            db.execute(f"UPDATE projects SET {', '.join(sets)}, updated_at = ? WHERE id = ?",
                       (*params, now_ts(), project_id))
            out = serialize.project(get_project_row(db, project_id))
            record_write(db, g.user_id, "project", project_id, "update", out, project_id=project_id,
                         details={"fields": changed})
        else:
            out = serialize.project(get_project_row(db, project_id))
    return jsonify(out)


def delete_task_rows(db, task_ids, ts):
    """Delete tasks and their comments/attachments, one delete event per row.
    Returns the attachment storage names to unlink after commit."""
    storage = []
    for tid in task_ids:
        for (cid,) in db.execute("SELECT id FROM comments WHERE task_id = ? ORDER BY id", (tid,)).fetchall():
            db.execute("DELETE FROM comments WHERE id = ?", (cid,))
            emit_event(db, "comment", cid, "delete", {"id": cid}, ts)
        storage += remove_attachment_rows(db, tid, ts)
        db.execute("DELETE FROM tasks WHERE id = ?", (tid,))
        emit_event(db, "task", tid, "delete", {"id": tid}, ts)
    return storage


@bp.delete("/projects/<int:project_id>")
def delete_project(project_id):
    require_owner(get_db(), get_project_row(get_db(), project_id))
    with write_tx() as db:
        ts = now_ts()
        task_ids = [r[0] for r in db.execute("SELECT id FROM tasks WHERE project_id = ? ORDER BY id",
                                             (project_id,)).fetchall()]
        storage = delete_task_rows(db, task_ids, ts)
        for (mid,) in db.execute("SELECT id FROM project_members WHERE project_id = ? ORDER BY id",
                                 (project_id,)).fetchall():
            db.execute("DELETE FROM project_members WHERE id = ?", (mid,))
            emit_event(db, "project_member", mid, "delete", {"id": mid}, ts)
        db.execute("DELETE FROM projects WHERE id = ?", (project_id,))
        record_write(db, g.user_id, "project", project_id, "delete", {"id": project_id},
                     project_id=project_id, details={"tasks_deleted": len(task_ids)})
    delete_files_later(storage)
    return "", 204


@bp.get("/projects/<int:project_id>/members")
def list_members(project_id):
    get_project_row(get_db(), project_id)
    return paginate("SELECT * FROM project_members WHERE project_id = ?", (project_id,), serialize.member)


@bp.post("/projects/<int:project_id>/members")
def add_member(project_id):
    require_owner(get_db(), get_project_row(get_db(), project_id))
    data = json_body()
    if "user_id" not in data:
        raise errors.validation("user_id", "user_id is required")
    user_id = data["user_id"]
    if not isinstance(user_id, int) or isinstance(user_id, bool):
        raise errors.validation("user_id", "user_id must be an integer")
    role = req_enum(data, "role", ("member",))
    role = "member" if role is MISSING else role
    with write_tx() as db:
        if db.execute("SELECT 1 FROM users WHERE id = ?", (user_id,)).fetchone() is None:
            raise errors.validation("user_id", f"user {user_id} does not exist")
        if is_member(db, project_id, user_id):
            raise errors.conflict(f"user {user_id} is already a member of project {project_id}", field="user_id")
        mid = db.execute(
            "INSERT INTO project_members (project_id, user_id, role, added_at) VALUES (?, ?, ?, ?)",
            (project_id, user_id, role, now_ts())).lastrowid
        out = serialize.member(db.execute("SELECT * FROM project_members WHERE id = ?", (mid,)).fetchone())
        record_write(db, g.user_id, "project_member", mid, "create", out, project_id=project_id,
                     details={"user_id": user_id, "role": role})
    return created(out)
