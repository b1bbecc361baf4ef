#!/usr/bin/env bash
# `make soak`: the long soak tests (release build): 100 config rewrites in 10 s
# under load, upstream deaths x5, SIGTERM drain, a million requests with RSS and
# fd checks. The short versions run in the normal `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
STRANGLER_SOAK=long exec cargo test --release -p strangler --test tests soak:: -- --nocapture --test-threads=1 "$@"
