"""Activity log (audit trail) query endpoint."""
import json

from .. import errors
from ..jsonutil import parse_ts
from ..web import int_arg, paginate
from . import bp


def _activity(r):
    return {
        "id": r["id"],
        "actor_id": r["actor_id"],
        "action": r["action"],
        "entity_type": r["entity_type"],
        "entity_id": r["entity_id"],
        "project_id": r["project_id"],
        "details": json.loads(r["details"]),
        "created_at": parse_ts(r["created_at"]),
    }


@bp.get("/activity")
def list_activity():
    sql, params = "SELECT * FROM activity_log WHERE 1 = 1", []
    project = int_arg("project")
    if project is not None:
        sql += " AND project_id = ?"; params.append(project)
    user = int_arg("user")
    if user is not None:
        sql += " AND actor_id = ?"; params.append(user)
    return paginate(sql, tuple(params), _activity)


_ = errors
