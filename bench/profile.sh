#!/usr/bin/env bash
# Where strangler's time goes on a small proxied GET: valgrind's callgrind with
# its cache simulator (cachegrind's: I1, D1 and last-level misses) on one worker
# (`--threads 1`), counted over the measured load only (zeroed after a warm-up).
# perf has no hardware counters on this VM (`perf stat -e instructions true`:
# <not supported>), so cycles are estimated from the simulated misses (see
# bench/NOTES.md), and the CPU time itself is measured by bench/run.py from
# /proc/PID/stat.
#
# Usage: bench/profile.sh [routes] (default 1). Environment:
#   PROXY=strangler|nginx which proxy is profiled (default strangler; nginx: one process, no master,
#                         the configuration bench/run.py gives it)
#   BUILD=pgo|release|quick which build of strangler (default pgo: scripts/pgo.sh's, the one `make bench`
#                         measures; `quick` has symbols and builds faster)
#   ACCESS_LOG=off|file   the access log (default off; `file`: each proxy's default format into a file)
#   SECONDS_MEASURED=N    seconds of load counted (default 10)
#   VALGRIND_EXTRA=...    more callgrind options (`--dump-instr=yes`: costs per call site)
# Needs strangler's build and bench/upstream's release build (scripts/bench.sh makes both);
# finds them through `cargo metadata`, so CARGO_TARGET_DIR is honoured.
# Writes bench/raw/profile-<routes>-<access log>/ (git-ignored): callgrind.out, summary.txt
# (instructions and misses per proxied GET, then the top functions) and inclusive.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
routes="${1:-1}"
build="${BUILD:-pgo}"
access_log="${ACCESS_LOG:-off}"
measured="${SECONDS_MEASURED:-10}"
proxy="${PROXY:-strangler}"
out="bench/raw/profile-$proxy-$routes-$access_log"; rm -rf "$out"; mkdir -p "$out/conf"
# strangler's config has a directory of its own: strangler watches it, and the access log written
# beside the config would wake the watcher at each write and add its thread to the profile.
# Cargo's target directory for a build run in directory $1, as scripts/bench.sh builds there.
target_dir() {
  (cd "$1" && cargo metadata --format-version 1 --no-deps) |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])'
}
strangler="$(target_dir .)/$build/strangler"
upstream="$(target_dir bench/upstream)/release/bench-upstream"
{
  if [ "$access_log" = off ]; then echo 'access_log: off'; else echo "access_log: {path: $PWD/$out/access.log}"; fi
  echo 'listen: "127.0.0.1:29080"'; echo 'admin: "127.0.0.1:29081"'; echo 'upstream_header: ""'
  echo 'upstreams:'; echo '  up:'; echo '    targets: ["http://127.0.0.1:29000"]'
  echo 'routes:'
  for ((i = 0; i < routes - 1; i++)); do echo "  - {name: r$i, prefix: /svc$i/api, upstream: up}"; done
  echo '  - {name: all, prefix: /, upstream: up}'
} > "$out/conf/routes.yaml"
nginx_conf() {
  cat <<NGINX
worker_processes 1; master_process off; daemon off;
pid $PWD/$out/nginx.pid; error_log $PWD/$out/error.log warn;
events { worker_connections 1024; }
http {
  $(if [ "$access_log" = off ]; then echo "access_log off;"; else echo "access_log $PWD/$out/access.log;"; fi)
  keepalive_requests 10000000; keepalive_timeout 300s;
  client_body_temp_path $PWD/$out/body; proxy_temp_path $PWD/$out/proxy;
  fastcgi_temp_path $PWD/$out/fcgi; uwsgi_temp_path $PWD/$out/uwsgi; scgi_temp_path $PWD/$out/scgi;
  proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header Host \$http_host;
  proxy_set_header X-Forwarded-For \$remote_addr; proxy_buffering off; proxy_request_buffering off;
  upstream up { server 127.0.0.1:29000; keepalive 256; keepalive_requests 10000000; }
  server { listen 127.0.0.1:29080; location / { proxy_pass http://up; } }
}
NGINX
}
"$upstream" 127.0.0.1:29000 1 2>/dev/null & up=$!
# Whatever happens, nothing is left holding the fixed ports for the next run.
trap 'kill "$up" ${vg:+"$vg"} 2>/dev/null || true' EXIT
if [ "$proxy" = nginx ]; then
  nginx_conf > "$out/nginx.conf"
  command=(nginx -c "$PWD/$out/nginx.conf")
  ready=http://127.0.0.1:29080/
else
  command=("$strangler" serve --config "$out/conf/routes.yaml" --threads 1 --log-level warn)
  ready=http://127.0.0.1:29081/healthz
fi
valgrind --tool=callgrind --cache-sim=yes ${VALGRIND_EXTRA:-} --callgrind-out-file="$out/callgrind.out" \
  "${command[@]}" 2>"$out/valgrind.log" & vg=$!
for _ in $(seq 100); do curl -s -o /dev/null "$ready" && break; sleep 0.2; done
url="http://127.0.0.1:29080/svc$((routes / 2))/api/users/7"
wrk -t1 -c8 -d3s "$url" > "$out/warm-up.txt"
callgrind_control -z "$vg" > /dev/null 2>&1
wrk -t1 -c8 -d"${measured}s" "$url" > "$out/wrk.txt"
callgrind_control -d "$vg" > /dev/null 2>&1
kill -TERM $vg; wait $vg || true
kill "$up" 2>/dev/null || true; wait "$up" 2>/dev/null || true
requests=$(grep -oE '^ +[0-9]+ requests' "$out/wrk.txt" | tr -dc 0-9)
# The dump taken right after the measured load (callgrind.out.1), not the final one.
dump=$(ls "$out"/callgrind.out.1 2>/dev/null | head -1)
[ -n "$dump" ] || dump="$out/callgrind.out"
{
  echo "proxy: $proxy; build: $build; access log: $access_log; routes: $routes; requests counted: $requests"
  python3 - "$dump" "$requests" <<'PY'
import sys
events, totals = None, None
for line in open(sys.argv[1]):
    if line.startswith("events:"):
        events = line.split()[1:]
    elif line.startswith("summary:") or line.startswith("totals:"):
        totals = [int(x) for x in line.split()[1:]]
n = int(sys.argv[2])
per = {e: t / n for e, t in zip(events, totals)}
# Ir: instructions; I1mr/D1mr/D1mw: first-level misses; ILmr/DLmr/DLmw: last-level misses.
l1 = per.get("I1mr", 0) + per.get("D1mr", 0) + per.get("D1mw", 0)
ll = per.get("ILmr", 0) + per.get("DLmr", 0) + per.get("DLmw", 0)
print(f"per proxied GET: {per['Ir']:,.0f} instructions, {per.get('Dr', 0) + per.get('Dw', 0):,.0f} data accesses, "
      f"{per.get('I1mr', 0):,.0f} I1 misses, {per.get('D1mr', 0) + per.get('D1mw', 0):,.0f} D1 misses, {ll:,.1f} LL misses")
# Cycle estimate as in cachegrind's docs: 1 per instruction, +10 per L1 miss, +100 per LL miss.
print(f"estimated cycles per GET (Ir + 10 x L1 misses + 100 x LL misses): {per['Ir'] + 10 * l1 + 100 * ll:,.0f}")
PY
  # (A reader that stops early is fine: `|| true` keeps pipefail from ending the script on SIGPIPE.)
  { callgrind_annotate --inclusive=no "$dump" 2>/dev/null || true; } | head -50
} > "$out/summary.txt"
{ callgrind_annotate --inclusive=yes "$dump" 2>/dev/null || true; } | head -70 | tail -55 > "$out/inclusive.txt"
cat "$out/summary.txt"
