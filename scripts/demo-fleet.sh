#!/usr/bin/env bash
# `make demo-fleet`: the demo as a fleet. Two proxy replicas share port 8080
# (SO_REUSEPORT: the kernel spreads connections between them, as a Service
# spreads them between pods; admin on 9901 and 9902) and one PostgreSQL store
# (a server of its own in a temporary directory, on 127.0.0.1:${DEMO_PG_PORT:-25432}),
# next to the normal demo's monolith and services. Each replica writes its
# records to the store (and to demo-data/shadow-diffs-proxy-N.jsonl); noise
# learned by one is used by both; `make report` reads the store while this
# runs. Ctrl-C stops everything, the store included.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
DATA="$ROOT/demo-data"
PORT="${DEMO_PG_PORT:-25432}"
PASSWORD="demo-fleet-secret"
PG_BIN="$(scripts/pg-bin.sh)" || { echo "PostgreSQL is missing: run make system-deps" >&2; exit 1; }
export PG_BIN
# shellcheck source=scripts/pg-lib.sh
source scripts/pg-lib.sh
mkdir -p "$DATA"
PGDIR="$(mktemp -d "${TMPDIR:-/tmp}/strangler-demo-pg.XXXXXX")"
stop_store() {
  rm -f "$DATA/fleet-store"
  pg_stop "$PGDIR"
  rm -rf "$PGDIR"
}
trap stop_store EXIT
echo "starting the fleet store (PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PORT)..."
pg_start "$PGDIR" "$PORT" "$PASSWORD"
printf '%s\n' "$PASSWORD" > "$DATA/fleet-store-password"
chmod 600 "$DATA/fleet-store-password"
STORE="postgres://strangler@127.0.0.1:$PORT/strangler?sslmode=disable"

proxies=()
for n in 1 2; do
  config="$DATA/fleet-routes-$n.yaml"
  # routes.yaml, with this replica's admin port, diff log and the store.
  sed -e "s|^admin: \"127.0.0.1:9901\"|admin: \"127.0.0.1:990$n\"|" \
      -e "s|^  log: ./demo-data/shadow-diffs.jsonl|  log: ./demo-data/shadow-diffs-proxy-$n.jsonl\n  store: $STORE\n  password_file: ./demo-data/fleet-store-password|" \
      routes.yaml > "$config"
  grep -q "store: $STORE" "$config" || { echo "could not add the store to $config" >&2; exit 1; }
  proxies+=("$config:990$n:proxy-$n")
done
# `make report` reads the store while the fleet runs (the password from the file).
echo "$STORE" > "$DATA/fleet-store"

DEMO_PROXIES="${proxies[*]}" DEMO_PROXY_ARGS="--threads 2" DEMO_BANNER="
The demo runs as a fleet: proxy-1 (admin :9901) and proxy-2 (admin :9902) share :8080 and the
store $STORE.
  make report                                          # the fleet's report, read from the store
  curl -s localhost:9902/metrics | grep strangler_store" scripts/demo.sh
