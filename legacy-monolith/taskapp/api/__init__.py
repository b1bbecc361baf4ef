"""The /api blueprint. All endpoints require a bearer token except PUBLIC."""
from flask import Blueprint, request

from ..web import authenticate

bp = Blueprint("api", __name__, url_prefix="/api")

PUBLIC = {"api.register", "api.login"}


@bp.before_request
def _require_token():
    if request.endpoint in PUBLIC:
        return None
    authenticate()
    return None


from . import users, projects, tasks, comments, attachments, activity, reports  # noqa: E402,F401
