"""Configuration from environment variables (read once, in create_app)."""
import os

DEV_JWT_SECRET = "dev-insecure-jwt-secret-do-not-use-in-production"


def _int(name, default):
    v = os.environ.get(name)
    return int(v) if v not in (None, "") else default


def _float(name, default):
    v = os.environ.get(name)
    return float(v) if v not in (None, "") else default


def _bool(name, default):
    v = os.environ.get(name)
    if v in (None, ""):
        return default
    return v.strip().lower() in ("1", "true", "yes", "on")


def from_env():
    """Return a dict of Flask config keys built from TASKAPP_* variables."""
    return {
        # sqlite database path
        "DB_PATH": os.environ.get("TASKAPP_DB", "taskapp.db"),
        # attachments are stored under DATA_DIR/attachments/
        "DATA_DIR": os.environ.get("TASKAPP_DATA_DIR", "data"),
        # HS256 secret. The default is for development ONLY.
        "JWT_SECRET": os.environ.get("TASKAPP_JWT_SECRET", DEV_JWT_SECRET),
        "JWT_TTL_SECONDS": _int("TASKAPP_JWT_TTL", 86400),
        "SMTP_HOST": os.environ.get("TASKAPP_SMTP_HOST", "127.0.0.1"),
        "SMTP_PORT": _int("TASKAPP_SMTP_PORT", 2525),
        "MAIL_FROM": os.environ.get("TASKAPP_MAIL_FROM", "taskapp@localhost"),
        # Flask's own request size limit (bytes); exceeding it -> 413 JSON.
        "MAX_CONTENT_LENGTH": _int("TASKAPP_MAX_UPLOAD", 10 * 1024 * 1024),
        # if set, /internal/* requires header X-Internal-Token with this value
        "INTERNAL_TOKEN": os.environ.get("TASKAPP_INTERNAL_TOKEN") or None,
        # background notification worker
        "NOTIFY_WORKER": _bool("TASKAPP_NOTIFY_WORKER", True),
        "NOTIFY_POLL_SECONDS": _float("TASKAPP_NOTIFY_POLL", 1.0),
        # the comments service, whose change feed (GET /internal/events) this monolith
        # consumes while the service owns comment writes; unset = no consumer
        "COMMENTS_SERVICE_URL": (os.environ.get("COMMENTS_SERVICE_URL") or "").rstrip("/") or None,
        # consumer: poll interval when the feed is idle, longest back-off while the service
        # is down or answers an error, events asked for per request
        "CONSUMER_POLL_SECONDS": _float("TASKAPP_CONSUMER_POLL", 0.2),
        "CONSUMER_MAX_BACKOFF_SECONDS": _float("TASKAPP_CONSUMER_MAX_BACKOFF", 5.0),
        "CONSUMER_BATCH": _int("TASKAPP_CONSUMER_BATCH", 500),
    }
