"""Auth (register/login) and user profiles."""
import re

from flask import g, jsonify
from werkzeug.security import check_password_hash, generate_password_hash

from .. import errors, serialize
from ..db import get_db, record_write, write_tx
from ..jsonutil import now_ts
from ..web import MISSING, created, issue_token, json_body, paginate, req_str
from . import bp

USERNAME_RE = re.compile(r"[A-Za-z0-9_.\-]{3,32}")
EMAIL_RE = re.compile(r"[^@\s]+@[^@\s]+")


def _validate_email(data, required):
    email = req_str(data, "email", 3, 254, required=required)
    if email is MISSING:
        return MISSING
    if not EMAIL_RE.fullmatch(email):
        raise errors.validation("email", "email must be a valid email address")
    return email.lower()


def _validate_password(data, required):
    pw = req_str(data, "password", 8, 128, required=required)
    return pw


def get_user_row(db, user_id):
    row = db.execute("SELECT * FROM users WHERE id = ?", (user_id,)).fetchone()
    if row is None:
        raise errors.not_found("user", user_id)
    return row


@bp.post("/auth/register")
def register():
    data = json_body()
    username = req_str(data, "username", 3, 32)
    if not USERNAME_RE.fullmatch(username):
        raise errors.validation("username", "username may contain only letters, digits, '_', '.' and '-'")
    email = _validate_email(data, True)
    password = _validate_password(data, True)
    full_name = req_str(data, "full_name", 0, 100, required=False)
    if full_name is MISSING:
        full_name = ""
    pw_hash = generate_password_hash(password)
    with write_tx() as db:
        if db.execute("SELECT 1 FROM users WHERE username = ?", (username,)).fetchone():
            raise errors.conflict(f"username {username!r} is already taken", field="username")
        if db.execute("SELECT 1 FROM users WHERE email = ?", (email,)).fetchone():
            raise errors.conflict(f"email {email!r} is already registered", field="email")
        ts = now_ts()
        cur = db.execute(
            "INSERT INTO users (username, email, password_hash, full_name, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?)", (username, email, pw_hash, full_name, ts, ts))
        uid = cur.lastrowid
        out = serialize.user(get_user_row(db, uid))
        record_write(db, uid, "user", uid, "create", out, details={"username": username})
    return created(out)


@bp.post("/auth/login")
def login():
    data = json_body()
    username = req_str(data, "username", 1, 32)
    password = req_str(data, "password", 1, 128)
    row = get_db().execute("SELECT * FROM users WHERE username = ?", (username,)).fetchone()
    if row is None or not check_password_hash(row["password_hash"], password):
        raise errors.unauthorized("invalid username or password")
    return jsonify({"token": issue_token(row["id"], row["username"])})


@bp.get("/users")
def list_users():
    return paginate("SELECT * FROM users", (), serialize.user)


@bp.get("/users/<int:user_id>")
def get_user(user_id):
    return jsonify(serialize.user(get_user_row(get_db(), user_id)))


@bp.patch("/users/<int:user_id>")
def update_user(user_id):
    get_user_row(get_db(), user_id)
    if user_id != g.user_id:
        raise errors.forbidden("you can only modify your own profile")
    data = json_body()
    email = _validate_email(data, False)
    full_name = req_str(data, "full_name", 0, 100, required=False)
    password = _validate_password(data, False)
    sets, params, changed = [], [], []
    if email is not MISSING:
        sets.append("email = ?"); params.append(email); changed.append("email")
    if full_name is not MISSING:
        sets.append("full_name = ?"); params.append(full_name); changed.append("full_name")
    if password is not MISSING:
        sets.append("password_hash = ?"); params.append(generate_password_hash(password)); changed.append("password")
    with write_tx() as db:
        if email is not MISSING and db.execute(
                "SELECT 1 FROM users WHERE email = ? AND id != ?", (email, user_id)).fetchone():
            raise errors.conflict(f"email {email!r} is already registered", field="email")
        if sets:
            db.execute(f"UPDATE users SET {', '.join(sets)}, updated_at = ? WHERE id = ?",
                       (*params, now_ts(), user_id))
            out = serialize.user(get_user_row(db, user_id))
            record_write(db, g.user_id, "user", user_id, "update", out, details={"fields": changed})
        else:
            out = serialize.user(get_user_row(db, user_id))
    return jsonify(out)
