"""Reports. "Overdue" = due_date < today (UTC) and status != 'done'.
The project report also counts the comments on the project's tasks."""
import datetime as _dt

from flask import jsonify

from ..db import get_db
from . import bp
from .projects import get_project_row
from .users import get_user_row


def _today():
    return _dt.datetime.now(_dt.timezone.utc).date().isoformat()


@bp.get("/reports/projects/<int:project_id>")
def project_report(project_id):
    db = get_db()
    get_project_row(db, project_id)
    by_status = {"todo": 0, "in_progress": 0, "done": 0}
    by_priority = {"low": 0, "medium": 0, "high": 0}
    for r in db.execute("SELECT status, COUNT(*) AS n FROM tasks WHERE project_id = ? GROUP BY status",
                        (project_id,)):
        by_status[r["status"]] = r["n"]
    for r in db.execute("SELECT priority, COUNT(*) AS n FROM tasks WHERE project_id = ? GROUP BY priority",
                        (project_id,)):
        by_priority[r["priority"]] = r["n"]
    total = sum(by_status.values())
    overdue = db.execute("SELECT COUNT(*) FROM tasks WHERE project_id = ? AND status != 'done'"
                         " AND due_date IS NOT NULL AND due_date < ?", (project_id, _today())).fetchone()[0]
    pct = round(100.0 * by_status["done"] / total, 1) if total else 0.0
    # comments taken by the comments service count too: feed_consumer.py applies them here
    comments = db.execute("SELECT COUNT(*) FROM comments JOIN tasks ON tasks.id = comments.task_id"
                          " WHERE tasks.project_id = ?", (project_id,)).fetchone()[0]
    return jsonify({"project_id": project_id, "total_tasks": total, "by_status": by_status,
                    "by_priority": by_priority, "completion_percentage": pct, "overdue": overdue,
                    "total_comments": comments})


@bp.get("/reports/users/<int:user_id>/workload")
def user_workload(user_id):
    db = get_db()
    get_user_row(db, user_id)
    by_status = {"todo": 0, "in_progress": 0}
    by_priority = {"low": 0, "medium": 0, "high": 0}
    for r in db.execute("SELECT status, priority, COUNT(*) AS n FROM tasks WHERE assignee_id = ?"
                        " AND status != 'done' GROUP BY status, priority", (user_id,)):
        by_status[r["status"]] += r["n"]
        by_priority[r["priority"]] += r["n"]
    overdue = db.execute("SELECT COUNT(*) FROM tasks WHERE assignee_id = ? AND status != 'done'"
                         " AND due_date IS NOT NULL AND due_date < ?", (user_id, _today())).fetchone()[0]
    return jsonify({"user_id": user_id, "open_tasks": sum(by_status.values()), "by_status": by_status,
                    "by_priority": by_priority, "overdue": overdue})
