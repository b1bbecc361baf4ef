#!/usr/bin/env bash
# `make bench`: strangler vs nginx vs HAProxy vs the upstream alone, on loopback,
# and issue 16's targets as PASS/FAIL lines (1 and 2 workers, same run).
# Installs nginx, haproxy, wrk and h2load (nghttp2-client) when missing
# (scripts/apt-install.sh), builds strangler (profile-guided: scripts/pgo.sh,
# the build the image ships; STRANGLER_BUILD=release measures the plain
# release build instead) and the benchmark
# upstream, then runs bench/run.py: it prints the targets' table last, writes
# everything it makes to the git-ignored bench/raw/<timestamp>/ and the report
# to bench/RESULTS.md (the latest run), headed by the exact commit, or by a loud
# DIRTY banner when the working tree had changes. The binaries are found through
# `cargo metadata`, so CARGO_TARGET_DIR is honoured.
# `--quick` (or BENCH_QUICK=1): a smoke run, every step with short loads (~3 min);
# not results, and bench/RESULTS.md is left alone. BENCH_SECONDS=N per timed run.
set -euo pipefail
cd "$(dirname "$0")/.."
# h2load (nghttp2-client) runs issue 16's headline measurement (h2load --h1 -c50, 1M requests: see H2LOAD_N in bench/run.py).
need=()
for tool in nginx:nginx haproxy:haproxy wrk:wrk h2load:nghttp2-client openssl:openssl curl:curl lscpu:util-linux; do
  command -v "${tool%%:*}" >/dev/null || need+=("${tool##*:}")
done
[ ${#need[@]} -eq 0 ] || scripts/apt-install.sh "${need[@]}"
if [ "${STRANGLER_BUILD:-pgo}" = pgo ]; then
  scripts/pgo.sh
else
  cargo build --release -p strangler --bin strangler
fi
(cd bench/upstream && cargo build --release)
# 10,000 idle connections need more descriptors (client and proxy).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec python3 bench/run.py "$@"
