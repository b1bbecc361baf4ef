"""Request helpers: JSON body parsing, field validation, pagination, auth."""
import datetime as _dt
import json
import re
import time

import jwt
from flask import current_app, g, jsonify, request

from . import errors
from .db import get_db

DEFAULT_PER_PAGE = 20
MAX_PER_PAGE = 100

_MISSING = object()


# ---------------------------------------------------------------- JSON body
def json_body():
    """Parse the request body as a JSON object regardless of Content-Type.

    empty / not JSON  -> 400 bad_request "malformed JSON body"
    JSON but not {...} -> 400 bad_request "JSON body must be an object"
    """
    raw = request.get_data(cache=True)
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise errors.bad_request("malformed JSON body")
    if not isinstance(data, dict):
        raise errors.bad_request("JSON body must be an object")
    return data


def req_str(data, field, min_len=1, max_len=200, required=True, strip_check=False):
    """Validate a string field. Returns the value, or _MISSING when absent and optional."""
    if field not in data:
        if required:
            raise errors.validation(field, f"{field} is required")
        return _MISSING
    v = data[field]
    if not isinstance(v, str):
        raise errors.validation(field, f"{field} must be a string")
    n = len(v.strip()) if strip_check else len(v)
    if n < min_len:
        if min_len == 1:
            raise errors.validation(field, f"{field} must not be empty")
        raise errors.validation(field, f"{field} must be at least {min_len} characters")
    if len(v) > max_len:
        raise errors.validation(field, f"{field} must be at most {max_len} characters")
    return v


def req_enum(data, field, allowed, required=False):
    if field not in data:
        if required:
            raise errors.validation(field, f"{field} is required")
        return _MISSING
    v = data[field]
    if not isinstance(v, str) or v not in allowed:
        raise errors.validation(field, f"{field} must be one of: {', '.join(allowed)}")
    return v


def req_int_or_null(data, field):
    if field not in data:
        return _MISSING
    v = data[field]
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool):
        raise errors.validation(field, f"{field} must be an integer or null")
    return v


def req_date_or_null(data, field):
    if field not in data:
        return _MISSING
    v = data[field]
    if v is None:
        return None
    if isinstance(v, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", v):
        try:
            _dt.date.fromisoformat(v)
            return v
        except ValueError:
            pass
    raise errors.validation(field, f"{field} must be a date in YYYY-MM-DD format or null")


MISSING = _MISSING


# -------------------------------------------------------------- query args
def int_arg(name, default=None, minimum=None):
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        v = int(raw)
    except ValueError:
        raise errors.validation(name, f"{name} must be an integer")
    if minimum is not None and v < minimum:
        raise errors.validation(name, f"{name} must be >= {minimum}")
    return v


def paginate(sql, params, serializer):
    """Run `sql` (a SELECT without ORDER BY/LIMIT) and answer the page envelope.

    ?page (>=1, default 1) & ?per_page (>=1, default 20, values above 100 are
    clamped to 100). Results ordered by id ascending.
    """
    page = int_arg("page", 1, 1)
    per_page = min(int_arg("per_page", DEFAULT_PER_PAGE, 1), MAX_PER_PAGE)
    db = get_db()
    total = db.execute(f"SELECT COUNT(*) FROM ({sql})", params).fetchone()[0]
    rows = db.execute(f"{sql} ORDER BY id ASC LIMIT ? OFFSET ?",
                      (*params, per_page, (page - 1) * per_page)).fetchall()
    return jsonify({"items": [serializer(r) for r in rows], "page": page,
                    "per_page": per_page, "total": total})


def created(obj):
    resp = jsonify(obj)
    resp.status_code = 201
    return resp


# -------------------------------------------------------------------- auth
def issue_token(user_id, username):
    now = int(time.time())
    claims = {"sub": str(user_id), "username": username, "iat": now,
              "exp": now + current_app.config["JWT_TTL_SECONDS"]}
    return jwt.encode(claims, current_app.config["JWT_SECRET"], algorithm="HS256")


def authenticate():
    """Sets g.user_id / g.username from the bearer token or raises 401."""
    header = request.headers.get("Authorization", "")
    if not header:
        raise errors.unauthorized("missing bearer token")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise errors.unauthorized("missing bearer token")
    try:
        claims = jwt.decode(token.strip(), current_app.config["JWT_SECRET"], algorithms=["HS256"],
                            options={"require": ["exp", "iat", "sub"]})
    except jwt.ExpiredSignatureError:
        raise errors.unauthorized("token expired")
    except jwt.InvalidTokenError:
        raise errors.unauthorized("invalid token")
    try:
        uid = int(claims["sub"])
    except (TypeError, ValueError):
        raise errors.unauthorized("invalid token")
    row = get_db().execute("SELECT id, username FROM users WHERE id = ?", (uid,)).fetchone()
    if row is None:
        raise errors.unauthorized("invalid token")
    g.user_id = row["id"]
    g.username = row["username"]
