"""/internal/* : service-to-service endpoints (no user token).

If TASKAPP_INTERNAL_TOKEN is set, requests must carry the header
X-Internal-Token with that exact value, else 401.

    GET  /internal/events               the change feed (transactional outbox)
    GET  /internal/ownership            who owns comment writes, and the consumer's cursor
    POST /internal/ownership/comments   {"owner": "comments"} hands comment writes over
"""
import hmac
import json

from flask import Blueprint, current_app, jsonify, request

from . import errors, ownership
from .db import get_db
from .feed_consumer import SOURCE as CONSUMER_SOURCE
from .jsonutil import parse_ts
from .web import int_arg, json_body, req_enum

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


@bp.get("/ownership")
def get_ownership():
    db = get_db()
    cur = db.execute("SELECT * FROM feed_cursors WHERE source = ?", (CONSUMER_SOURCE,)).fetchone()
    st = ownership.state(db)
    return jsonify({
        "features": {st["feature"]: {k: st[k] for k in ("owner", "epoch", "high_water")}},
        # this side's cursor in the comments service's feed (compare with its newest event id)
        "applied_event_id": cur["applied_event_id"],
        "consumer": {"service_url": current_app.config.get("COMMENTS_SERVICE_URL"),
                     "last_error": cur["last_error"], "last_error_at": parse_ts(cur["last_error_at"]),
                     "applied_at": parse_ts(cur["updated_at"])},
    })


@bp.post("/ownership/comments")
def hand_over_comments():
    owner = req_enum(json_body(), "owner", ownership.OWNERS, required=True)
    return jsonify(ownership.hand_over(owner))
