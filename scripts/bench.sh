#!/usr/bin/env bash
# `make bench`: strangler vs nginx vs HAProxy vs the upstream alone, on loopback.
# Installs nginx, haproxy, wrk and h2load (nghttp2-client) when missing
# (scripts/apt-install.sh), builds
# strangler (release) and the benchmark upstream, then runs bench/run.py, which
# prints one Markdown table and writes its raw output to bench/raw/<timestamp>/
# (git-ignored). From a clean commit it also keeps RESULTS.md + summary.json in
# bench/results/<timestamp>/ and renders bench/RESULTS.md; from a working tree
# with changes, nothing outside bench/raw/. The binaries are found through
# `cargo metadata`, so CARGO_TARGET_DIR is honoured.
# BENCH_QUICK=1 (one short run per measurement) for a smoke test; BENCH_SECONDS=N per run.
set -euo pipefail
cd "$(dirname "$0")/.."
# h2load (nghttp2-client) runs issue 16's headline measurement (h2load --h1 -c50 -n200000).
need=()
for tool in nginx:nginx haproxy:haproxy wrk:wrk h2load:nghttp2-client openssl:openssl curl:curl lscpu:util-linux; do
  command -v "${tool%%:*}" >/dev/null || need+=("${tool##*:}")
done
[ ${#need[@]} -eq 0 ] || scripts/apt-install.sh "${need[@]}"
cargo build --release -p strangler --bin strangler
(cd bench/upstream && cargo build --release)
# 10,000 idle connections need more descriptors (client and proxy).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec python3 bench/run.py "$@"
