"""/internal/* : service-to-service endpoints (no user token).

If TASKAPP_INTERNAL_TOKEN is set, requests must carry the header
X-Internal-Token with that exact value, else 401.
"""
import hmac
import json

from flask import Blueprint, current_app, jsonify, request

from . import errors
from .db import get_db
from .jsonutil import parse_ts
from .web import int_arg

bp = Blueprint("internal", __name__, url_prefix="/internal")

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


@bp.before_request
def _check_token():
    expected = current_app.config.get("INTERNAL_TOKEN")
    if expected:
        got = request.headers.get("X-Internal-Token", "")
        if not hmac.compare_digest(got.encode(), expected.encode()):
            raise errors.unauthorized("missing or invalid X-Internal-Token")


@bp.get("/events")
def events():
    after = int_arg("after", 0, 0)
    limit = min(int_arg("limit", DEFAULT_LIMIT, 1), MAX_LIMIT)
    rows = get_db().execute("SELECT * FROM events WHERE id > ? ORDER BY id ASC LIMIT ?",
                            (after, limit)).fetchall()
    items = [{"id": r["id"], "entity": r["entity"], "entity_id": r["entity_id"], "op": r["op"],
              "payload": json.loads(r["payload"]), "created_at": parse_ts(r["created_at"])} for r in rows]
    return jsonify({"events": items, "next_after": rows[-1]["id"] if rows else after})
