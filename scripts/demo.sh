#!/usr/bin/env bash
# `make demo`: the whole strangler-fig migration on one machine.
# Starts the SMTP sink, the legacy monolith (gunicorn, seeded SQLite), the
# extracted `users` and `comments` services (backfilled, then following the
# monolith's change feed; the monolith follows the comments service's feed
# in turn) and the proxy with the root routes.yaml. Ctrl-C stops everything;
# nothing is left running. `make migrate` walks comments across meanwhile.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
DATA="$ROOT/demo-data"
BIN="${STRANGLER_BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/release}"
PY="${TASKAPP_PYTHON:-$ROOT/.venv/bin/python}"
export TASKAPP_PYTHON="$PY"
mkdir -p "$DATA/attachments" "$DATA/mail"
export TASKAPP_DB="$DATA/monolith.db" TASKAPP_DATA_DIR="$DATA/attachments"
export TASKAPP_JWT_SECRET="${TASKAPP_JWT_SECRET:-demo-secret-change-me}"
export TASKAPP_SMTP_HOST=127.0.0.1 TASKAPP_SMTP_PORT=2525
export MONOLITH_URL=http://127.0.0.1:5000
export USERS_DB="$DATA/users.db" COMMENTS_DB="$DATA/comments.db"
# The shared secret of every /internal/* endpoint (feeds, ownership): the
# monolith and both services read it; `make migrate` sends it.
export TASKAPP_INTERNAL_TOKEN="${TASKAPP_INTERNAL_TOKEN:-demo-internal-token}"
# The monolith follows the comments service's feed (the writes it takes once
# it owns comments, see `make migrate`); one consumer per monolith.
if [ -x "$BIN/comments" ]; then export COMMENTS_SERVICE_URL=http://127.0.0.1:7002; fi

pids=()
stopping=0
stop() {
  stopping=1
  trap - INT TERM EXIT
  echo; echo "stopping..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  echo "all stopped."
}
trap stop INT TERM EXIT

wait_http() { # url name
  for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.2
  done
  echo "$2 did not come up ($1)" >&2; exit 1
}

if [ ! -f "$TASKAPP_DB" ]; then
  echo "seeding the monolith database (200 users, 50 projects, 5,000 tasks, 20,000 comments)..."
  (cd legacy-monolith && "$PY" -m taskapp.seed --db "$TASKAPP_DB")
fi

(cd legacy-monolith && exec "$PY" -m taskapp.smtp_sink --port 2525 --out "$DATA/mail") > "$DATA/smtp.log" 2>&1 &
pids+=($!)
legacy-monolith/run.sh 5000 > "$DATA/monolith.log" 2>&1 &
pids+=($!)
wait_http http://127.0.0.1:5000/healthz monolith

for svc in users comments; do
  if [ -x "$BIN/$svc" ]; then
    db_var="$(echo "$svc" | tr a-z A-Z)_DB"
    [ -f "${!db_var}" ] || "$BIN/$svc" backfill --from "$TASKAPP_DB" > "$DATA/$svc-backfill.log" 2>&1
    port=7001; [ "$svc" = comments ] && port=7002
    "$BIN/$svc" serve > "$DATA/$svc.log" 2>&1 &
    pids+=($!)
    wait_http "http://127.0.0.1:$port/healthz" "$svc"
  fi
done

# One proxy with routes.yaml; `make demo-fleet` passes several replicas as
# DEMO_PROXIES="CONFIG:ADMIN_PORT:NAME ..." (extra flags in DEMO_PROXY_ARGS).
for proxy in ${DEMO_PROXIES:-routes.yaml:9901:proxy}; do
  IFS=: read -r config admin_port name <<<"$proxy"
  # shellcheck disable=SC2086
  POD_NAME="$name" "$BIN/strangler" serve --config "$config" ${DEMO_PROXY_ARGS:-} > "$DATA/$name.log" 2>&1 &
  pids+=($!)
  wait_http "http://127.0.0.1:$admin_port/readyz" "$name"
done

[ -n "${DEMO_BANNER:-}" ] && echo "$DEMO_BANNER"
cat <<MSG

strangler demo is up. Logs and data are in demo-data/.
  proxy          http://127.0.0.1:8080     (routes: routes.yaml, edit it live)
  admin          http://127.0.0.1:9901     (/healthz /readyz /metrics /config /explain /upstreams /shadow)
  monolith       http://127.0.0.1:5000     (Flask + gunicorn, SQLite at demo-data/monolith.db)
  users          http://127.0.0.1:7001     (extracted Rust service)
  comments       http://127.0.0.1:7002     (extracted Rust service)
  SMTP sink      127.0.0.1:2525            (mail lands in demo-data/mail/)

Try:
  TOKEN=\$(curl -s -X POST localhost:8080/api/auth/login -H 'content-type: application/json' \\
      -d '{"username":"user0001","password":"password123"}' | $PY -c 'import json,sys; print(json.load(sys.stdin)["token"])')
  curl -si localhost:8080/api/users/1 -H "Authorization: Bearer \$TOKEN"      # X-Strangler-Upstream tells who answered
  curl -s 'localhost:9901/explain?method=GET&path=/api/tasks/7/comments'
  $PY tools/traffic.py --base-url http://127.0.0.1:8080 --duration 30 --concurrency 4
  curl -s localhost:9901/metrics | grep strangler_requests_total
  curl -s localhost:9901/shadow                                   # live shadow-diff summary
  make report                                                     # demo-data/shadow-report.html
  make migrate                     # walk comments over to the service, reads and writes (ARGS=--rollback: back)

Ctrl-C stops everything.
MSG
if [ -f tools/traffic.py ] && [ "${DEMO_TRAFFIC:-1}" = 1 ]; then
  "$PY" tools/traffic.py --base-url http://127.0.0.1:8080 --duration 86400 --concurrency 2 --rate 20 --progress 10 > "$DATA/traffic.log" 2>&1 &
  pids+=($!)
  echo "(background traffic: demo-data/traffic.log; DEMO_TRAFFIC=0 to switch it off)"
fi
status=0
wait -n "${pids[@]}" || status=$?
# Ctrl-C reaches the children too; one may exit (0, 130 or 143) a moment
# before the trap runs. Only another exit is worth a word.
if [ "$stopping" = 0 ] && [ "$status" != 0 ] && [ "$status" != 130 ] && [ "$status" != 143 ]; then
  echo "a demo process exited with status $status; see demo-data/*.log" >&2
fi
