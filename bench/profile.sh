#!/usr/bin/env bash
# Where strangler's time goes on a small proxied GET: callgrind on a short run
# (perf has no hardware counters in this VM: `perf stat -e instructions` says
# <not supported>). Usage: bench/profile.sh [routes] (default 1).
# Writes bench/results/profile-<routes>/callgrind.out and a top-25 summary.
set -euo pipefail
cd "$(dirname "$0")/.."
routes="${1:-1}"
out="bench/results/profile-$routes"; mkdir -p "$out"
{
  echo 'listen: "127.0.0.1:29080"'; echo 'admin: "127.0.0.1:29081"'; echo 'upstream_header: ""'
  echo 'upstreams:'; echo '  up:'; echo '    targets: ["http://127.0.0.1:29000"]'
  echo 'routes:'
  for ((i = 0; i < routes - 1; i++)); do echo "  - {name: r$i, prefix: /svc$i/api, upstream: up}"; done
  echo '  - {name: all, prefix: /, upstream: up}'
} > "$out/routes.yaml"
bench/upstream/target/release/bench-upstream 127.0.0.1:29000 1 2>/dev/null & up=$!
valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.out" \
  target/release/strangler serve --config "$out/routes.yaml" --threads 1 --log-level warn 2>"$out/valgrind.log" & vg=$!
for _ in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:29081/healthz && break; sleep 0.2; done
wrk -t1 -c8 -d10s "http://127.0.0.1:29080/svc$((routes / 2))/api/users/7" > "$out/wrk.txt"
cat "$out/wrk.txt"
kill -TERM $vg; wait $vg || true
kill $up; wait $up 2>/dev/null || true
requests=$(grep -oE '^ +[0-9]+ requests' "$out/wrk.txt" | tr -dc 0-9)
echo "requests: $requests" > "$out/summary.txt"
callgrind_annotate --inclusive=no "$out/callgrind.out" 2>/dev/null | head -45 >> "$out/summary.txt"
callgrind_annotate --inclusive=yes "$out/callgrind.out" 2>/dev/null | head -60 | tail -45 > "$out/inclusive.txt"
cat "$out/summary.txt"
