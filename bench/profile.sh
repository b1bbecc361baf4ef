#!/usr/bin/env bash
# Where strangler's time goes on a small proxied GET: callgrind on a short run
# (perf has no hardware counters in this VM: `perf stat -e instructions` says
# <not supported>). Usage: bench/profile.sh [routes] (default 1).
# Needs the release builds that scripts/bench.sh makes (strangler and bench/upstream);
# finds them through `cargo metadata`, so CARGO_TARGET_DIR is honoured.
# Writes bench/raw/profile-<routes>/ (git-ignored): callgrind.out, a top-25
# summary with the instructions per proxied GET, and the inclusive view.
set -euo pipefail
cd "$(dirname "$0")/.."
routes="${1:-1}"
out="bench/raw/profile-$routes"; mkdir -p "$out"
# Cargo's target directory for a build run in directory $1, as scripts/bench.sh builds there.
target_dir() {
  (cd "$1" && cargo metadata --format-version 1 --no-deps) |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])'
}
strangler="$(target_dir .)/release/strangler"
upstream="$(target_dir bench/upstream)/release/bench-upstream"
{
  echo 'listen: "127.0.0.1:29080"'; echo 'admin: "127.0.0.1:29081"'; echo 'upstream_header: ""'
  echo 'upstreams:'; echo '  up:'; echo '    targets: ["http://127.0.0.1:29000"]'
  echo 'routes:'
  for ((i = 0; i < routes - 1; i++)); do echo "  - {name: r$i, prefix: /svc$i/api, upstream: up}"; done
  echo '  - {name: all, prefix: /, upstream: up}'
} > "$out/routes.yaml"
"$upstream" 127.0.0.1:29000 1 2>/dev/null & up=$!
valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.out" \
  "$strangler" serve --config "$out/routes.yaml" --threads 1 --log-level warn 2>"$out/valgrind.log" & vg=$!
for _ in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:29081/healthz && break; sleep 0.2; done
wrk -t1 -c8 -d10s "http://127.0.0.1:29080/svc$((routes / 2))/api/users/7" > "$out/wrk.txt"
cat "$out/wrk.txt"
kill -TERM $vg; wait $vg || true
kill $up; wait $up 2>/dev/null || true
requests=$(grep -oE '^ +[0-9]+ requests' "$out/wrk.txt" | tr -dc 0-9)
total=$(callgrind_annotate "$out/callgrind.out" 2>/dev/null | grep -m1 'PROGRAM TOTALS' | awk '{gsub(",", "", $1); print $1}')
{
  echo "requests: $requests"
  # The whole process (start-up and shutdown included) over the requests served.
  [ -n "$total" ] && [ "${requests:-0}" -gt 0 ] && echo "instructions per request: $((total / requests))"
  callgrind_annotate --inclusive=no "$out/callgrind.out" 2>/dev/null | head -45
} > "$out/summary.txt"
callgrind_annotate --inclusive=yes "$out/callgrind.out" 2>/dev/null | head -60 | tail -45 > "$out/inclusive.txt"
cat "$out/summary.txt"
