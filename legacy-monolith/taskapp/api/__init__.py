"""The /api blueprint. All endpoints require a bearer token except PUBLIC."""
from flask import Blueprint, request

from ..db import get_db
from ..ownership import require_local_owner
from ..web import authenticate

bp = Blueprint("api", __name__, url_prefix="/api")

PUBLIC = {"api.register", "api.login"}
COMMENT_WRITES = {"api.create_comment", "api.update_comment", "api.delete_comment"}
READ_METHODS = ("GET", "HEAD", "OPTIONS")


@bp.before_request
def _misdirected_comment_write():
    """421 for a comment write while the comments service owns them. Runs right after
    routing, before authentication: a 421 says "not processed, retry on the owner"."""
    if request.endpoint in COMMENT_WRITES and request.method not in READ_METHODS:
        require_local_owner(get_db())
    return None


@bp.before_request
def _require_token():
    if request.endpoint in PUBLIC:
        return None
    authenticate()
    return None


from . import users, projects, tasks, comments, attachments, activity, reports  # noqa: E402,F401
