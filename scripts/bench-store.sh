#!/usr/bin/env bash
# `make bench` step: the primary's p99 with the PostgreSQL store on, against
# shadowing off (target: within 10%), at a fixed rate on loopback. A store of
# its own (scripts/pg-lib.sh), the benchmark upstream as primary and as
# candidate (equal answers: every request is compared and written), h2load
# at STORE_BENCH_RATE req/s (default 2000) for STORE_BENCH_SECONDS (10) per
# run, the median of three runs per mode. Modes: off (no shadow), log (shadow
# to the diff log), store (shadow to the log and the store).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/apt-install.sh nghttp2-client curl
scripts/pg-bin.sh >/dev/null || scripts/apt-install.sh postgresql
PG_BIN="$(scripts/pg-bin.sh)"
export PG_BIN
# shellcheck source=scripts/pg-lib.sh
source scripts/pg-lib.sh
RATE="${STORE_BENCH_RATE:-2000}"
SECONDS_PER_RUN="${STORE_BENCH_SECONDS:-10}"
CLIENTS=20
target_dir() { cargo metadata --format-version 1 --no-deps --manifest-path "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])'; }
cargo build --release -p strangler --bin strangler
(cd bench/upstream && cargo build --release)
STRANGLER="$(target_dir Cargo.toml)/release/strangler"
UPSTREAM="$(target_dir bench/upstream/Cargo.toml)/release/bench-upstream"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/strangler-store-bench.XXXXXX")"
chmod 755 "$WORK"   # the server's user (nobody, as root) reaches its directory inside
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pg_stop "$WORK/pg"
  rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_up() { for _ in $(seq 1 100); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.1; done; echo "$1 did not come up" >&2; exit 1; }

PG_PORT=$(free_port)
pg_start "$WORK/pg" "$PG_PORT" bench
UP_PORT=$(free_port); CAND_PORT=$(free_port); PROXY_PORT=$(free_port); ADMIN_PORT=$(free_port)
"$UPSTREAM" "127.0.0.1:$UP_PORT" 1 >/dev/null 2>&1 & pids+=($!)
"$UPSTREAM" "127.0.0.1:$CAND_PORT" 1 >/dev/null 2>&1 & pids+=($!)
wait_up "http://127.0.0.1:$UP_PORT/small"; wait_up "http://127.0.0.1:$CAND_PORT/small"

config() { # MODE
  echo "listen: \"127.0.0.1:$PROXY_PORT\""
  echo "admin: \"127.0.0.1:$ADMIN_PORT\""
  echo 'upstream_header: ""'
  if [ "$1" != off ]; then
    echo "shadow:"
    echo "  log: $WORK/shadow-diffs-$1.jsonl"
    [ "$1" = store ] && echo "  store: postgres://strangler:bench@127.0.0.1:$PG_PORT/strangler?sslmode=disable"
  fi
  echo "upstreams:"
  echo "  up: {targets: [\"http://127.0.0.1:$UP_PORT\"]}"
  echo "  candidate: {targets: [\"http://127.0.0.1:$CAND_PORT\"]}"
  echo "routes:"
  if [ "$1" = off ]; then
    echo "  - {name: all, prefix: /, upstream: up}"
  else
    echo "  - {name: all, prefix: /, upstream: up, shadow: {upstream: candidate, sample: 1.0, timeout: 3s}}"
  fi
}

p99_of_run() { # MODE RUN: the p99 (ms) of one run
  local log="$WORK/$1-$2.tsv"
  h2load --h1 -c"$CLIENTS" -m1 -t1 --rps=$((RATE / CLIENTS)) -D "$SECONDS_PER_RUN" --log-file="$log" \
    "http://127.0.0.1:$PROXY_PORT/small" > "$WORK/$1-$2.txt"
  awk '$2 ~ /^2/ { print $3 / 1000.0 }' "$log" | sort -n | awk '{ v[NR] = $1 } END { i = int(NR * 0.99); if (i < 1) i = 1; printf "%.3f\n", v[i] }'
}

declare -A P99
for mode in off log store; do
  config "$mode" > "$WORK/$mode.yaml"
  "$STRANGLER" serve --config "$WORK/$mode.yaml" --threads 1 >"$WORK/$mode.log" 2>&1 & proxy=$!
  wait_up "http://127.0.0.1:$ADMIN_PORT/readyz"
  h2load --h1 -c"$CLIENTS" -m1 -t1 --rps=$((RATE / CLIENTS)) -D 3 "http://127.0.0.1:$PROXY_PORT/small" >/dev/null
  runs=()
  for run in 1 2 3; do runs+=("$(p99_of_run "$mode" "$run")"); done
  P99[$mode]=$(printf '%s\n' "${runs[@]}" | sort -n | sed -n 2p)
  extra=""
  if [ "$mode" = store ]; then
    m=$(curl -fsS "http://127.0.0.1:$ADMIN_PORT/metrics")
    extra="; written $(echo "$m" | awk '/^strangler_store_records_written_total/ {print $2}'), dropped $(echo "$m" | awk '/^strangler_shadow_records_dropped_total\{reason="store_unavailable"\}/ {print $2}')"
  fi
  echo "shadow $mode @ $RATE req/s: primary p99 ${P99[$mode]} ms (runs: ${runs[*]})$extra"
  kill -TERM "$proxy"; wait "$proxy" 2>/dev/null || true
done
verdict=$(awk -v on="${P99[store]}" -v off="${P99[off]}" 'BEGIN { r = on / off; printf "%s (%.0f%% of shadowing off)", (r <= 1.10 ? "PASS" : "FAIL"), r * 100 }')
echo "target: the primary's p99 with the PostgreSQL store on within 10% of shadowing off: $verdict"
