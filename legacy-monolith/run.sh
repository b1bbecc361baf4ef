#!/usr/bin/env bash
# Start the legacy monolith under gunicorn in the foreground.
#   legacy-monolith/run.sh [PORT]        (default 5000)
# Env: TASKAPP_DB, TASKAPP_DATA_DIR, TASKAPP_JWT_SECRET, TASKAPP_SMTP_HOST,
#      TASKAPP_SMTP_PORT, TASKAPP_MAX_UPLOAD, TASKAPP_INTERNAL_TOKEN,
#      COMMENTS_SERVICE_URL (set: one worker follows the comments service's feed),
#      TASKAPP_CONSUMER_POLL, TASKAPP_CONSUMER_MAX_BACKOFF, TASKAPP_CONSUMER_BATCH,
#      TASKAPP_WORKERS (default 2), TASKAPP_BIND_HOST (default 127.0.0.1),
#      TASKAPP_PYTHON (python with requirements installed; default: the venv
#      at legacy-monolith/.venv if present, else /tmp/venv-mono, else python3)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PORT="${1:-${PORT:-5000}}"
if [ -n "${TASKAPP_PYTHON:-}" ]; then PY="$TASKAPP_PYTHON"
elif [ -x "$HERE/.venv/bin/python" ]; then PY="$HERE/.venv/bin/python"
elif [ -x /tmp/venv-mono/bin/python ]; then PY=/tmp/venv-mono/bin/python
else PY=python3; fi
# no cd: relative TASKAPP_DB / TASKAPP_DATA_DIR stay relative to the caller's cwd
export PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m gunicorn -w "${TASKAPP_WORKERS:-2}" -b "${TASKAPP_BIND_HOST:-127.0.0.1}:$PORT" \
    --access-logfile - 'taskapp:create_app()'
