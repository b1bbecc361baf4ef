"""Tasks inside projects."""
from flask import g, jsonify, request

from .. import errors, serialize
from ..db import get_db, record_write, write_tx
from ..jsonutil import now_ts
from ..notifications import enqueue
from ..web import (MISSING, created, int_arg, json_body, paginate, req_date_or_null, req_enum,
                   req_int_or_null, req_str)
from . import bp
from .attachments import delete_files_later
from .projects import delete_task_rows, get_project_row, is_member, require_member

STATUSES = ("todo", "in_progress", "done")
PRIORITIES = ("low", "medium", "high")


def get_task_row(db, task_id):
    row = db.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
    if row is None:
        raise errors.not_found("task", task_id)
    return row


def _check_assignee(db, project_id, assignee_id):
    if assignee_id is None:
        return
    if not is_member(db, project_id, assignee_id):
        raise errors.validation("assignee_id", f"user {assignee_id} is not a member of project {project_id}")


def _notify(db, task, old, actor_id):
    """Queue e-mails: assignment (assignee changed to a user) and completion."""
    if task["assignee_id"] is not None and (old is None or old["assignee_id"] != task["assignee_id"]):
        enqueue(db, "task_assigned", task["assignee_id"],
                f"[taskapp] You were assigned task #{task['id']}: {task['title']}",
                f"Task #{task['id']} \"{task['title']}\" in project {task['project_id']} "
                f"was assigned to you by user {actor_id}.\n")
    if task["status"] == "done" and old is not None and old["status"] != "done":
        recipients = []
        for uid in (task["creator_id"], task["assignee_id"]):
            if uid is not None and uid not in recipients:
                recipients.append(uid)
        for uid in recipients:
            enqueue(db, "task_completed", uid,
                    f"[taskapp] Task #{task['id']} completed: {task['title']}",
                    f"Task #{task['id']} \"{task['title']}\" in project {task['project_id']} "
                    f"was marked done by user {actor_id}.\n")


@bp.get("/projects/<int:project_id>/tasks")
def list_tasks(project_id):
    get_project_row(get_db(), project_id)
    sql, params = "SELECT * FROM tasks WHERE project_id = ?", [project_id]
    status = request.args.get("status")
    if status is not None:
        if status not in STATUSES:
            raise errors.validation("status", f"status must be one of: {', '.join(STATUSES)}")
        sql += " AND status = ?"; params.append(status)
    priority = request.args.get("priority")
    if priority is not None:
        if priority not in PRIORITIES:
            raise errors.validation("priority", f"priority must be one of: {', '.join(PRIORITIES)}")
        sql += " AND priority = ?"; params.append(priority)
    assignee = int_arg("assignee")
    if assignee is not None:
        sql += " AND assignee_id = ?"; params.append(assignee)
    return paginate(sql, tuple(params), serialize.task)


@bp.post("/projects/<int:project_id>/tasks")
def create_task(project_id):
    db = get_db()
    get_project_row(db, project_id)
    require_member(db, project_id)
    data = json_body()
    title = req_str(data, "title", 1, 200, strip_check=True)
    description = req_str(data, "description", 0, 10000, required=False)
    status = req_enum(data, "status", STATUSES)
    priority = req_enum(data, "priority", PRIORITIES)
    assignee_id = req_int_or_null(data, "assignee_id")
    due_date = req_date_or_null(data, "due_date")
    description = "" if description is MISSING else description
    status = "todo" if status is MISSING else status
    priority = "medium" if priority is MISSING else priority
    assignee_id = None if assignee_id is MISSING else assignee_id
    due_date = None if due_date is MISSING else due_date
    with write_tx() as db:
        _check_assignee(db, project_id, assignee_id)
        ts = now_ts()
        tid = db.execute(
            "INSERT INTO tasks (project_id, title, description, status, priority, assignee_id, creator_id,"
            " due_date, completed_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (project_id, title, description, status, priority, assignee_id, g.user_id, due_date,
             ts if status == "done" else None, ts, ts)).lastrowid
        row = get_task_row(db, tid)
        out = serialize.task(row)
        record_write(db, g.user_id, "task", tid, "create", out, project_id=project_id,
                     details={"title": title})
        _notify(db, row, None, g.user_id)
    return created(out)


@bp.get("/tasks/<int:task_id>")
def get_task(task_id):
    return jsonify(serialize.task(get_task_row(get_db(), task_id)))


@bp.patch("/tasks/<int:task_id>")
def update_task(task_id):
    db = get_db()
    old = get_task_row(db, task_id)
    require_member(db, old["project_id"])
    data = json_body()
    fields = {
        "title": req_str(data, "title", 1, 200, required=False, strip_check=True),
        "description": req_str(data, "description", 0, 10000, required=False),
        "status": req_enum(data, "status", STATUSES),
        "priority": req_enum(data, "priority", PRIORITIES),
        "assignee_id": req_int_or_null(data, "assignee_id"),
        "due_date": req_date_or_null(data, "due_date"),
    }
    fields = {k: v for k, v in fields.items() if v is not MISSING}
    with write_tx() as db:
        old = get_task_row(db, task_id)
        if "assignee_id" in fields:
            _check_assignee(db, old["project_id"], fields["assignee_id"])
        if fields:
            ts = now_ts()
            sets = [f"{k} = ?" for k in fields] + ["updated_at = ?"]
            params = list(fields.values()) + [ts]
            if "status" in fields and fields["status"] != old["status"]:
                sets.append("completed_at = ?")
                params.append(ts if fields["status"] == "done" else None)
            db.execute(f"UPDATE tasks SET {', '.join(sets)} WHERE id = ?", (*params, task_id))
            row = get_task_row(db, task_id)
            out = serialize.task(row)
            changes = {k: {"from": old[k], "to": row[k]} for k in fields if old[k] != row[k]}
            record_write(db, g.user_id, "task", task_id, "update", out, project_id=old["project_id"],
                         details={"changes": changes})
            _notify(db, row, old, g.user_id)
        else:
            out = serialize.task(old)
    return jsonify(out)


@bp.delete("/tasks/<int:task_id>")
def delete_task(task_id):
    db = get_db()
    row = get_task_row(db, task_id)
    require_member(db, row["project_id"])
    with write_tx() as db:
        ts = now_ts()
        storage = delete_task_rows(db, [task_id], ts)
        # delete_task_rows already emitted the task delete event; add the activity row
        from ..db import log_activity
        log_activity(db, g.user_id, "task.delete", "task", task_id, row["project_id"],
                     {"title": row["title"]}, ts)
    delete_files_later(storage)
    return "", 204
