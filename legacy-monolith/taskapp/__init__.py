"""Task Management System -- the legacy monolith.

    gunicorn -w 2 -b 127.0.0.1:5000 'taskapp:create_app()'
"""
import logging
import os

from flask import Flask, jsonify

from . import config as _config
from . import errors
from .db import close_db, init_schema

log = logging.getLogger("taskapp")


def create_app(config=None):
    """App factory. `config` (dict) overrides values read from TASKAPP_* env vars."""
    app = Flask(__name__)
    app.config.update(_config.from_env())
    if config:
        app.config.update(config)
    if app.config["JWT_SECRET"] == _config.DEV_JWT_SECRET:
        log.warning("TASKAPP_JWT_SECRET not set: using the insecure development default")
    os.makedirs(app.config["DATA_DIR"], exist_ok=True)
    init_schema(app.config["DB_PATH"])

    errors.register(app)
    app.teardown_appcontext(close_db)

    from .api import bp as api_bp
    from .internal import bp as internal_bp
    app.register_blueprint(api_bp)
    app.register_blueprint(internal_bp)

    @app.get("/healthz")
    def healthz():
        return jsonify({"status": "ok"})

    app.extensions["taskapp_worker"] = None
    if app.config["NOTIFY_WORKER"]:
        from .notifications import Worker
        w = Worker(app.config)
        w.start()
        app.extensions["taskapp_worker"] = w
    app.extensions["taskapp_consumer"] = None
    if app.config["COMMENTS_SERVICE_URL"]:
        from .feed_consumer import Consumer
        c = Consumer(app.config)
        c.start()
        app.extensions["taskapp_consumer"] = c
    return app
