#!/usr/bin/env bash
# `make fuzz`: runs each cargo-fuzz target for N seconds (default 60).
#   scripts/fuzz.sh [seconds] [target...]     targets: config path_router diff
# Uses the nightly toolchain (cargo-fuzz needs -Zsanitizer); installs
# cargo-fuzz when missing. Without nightly, falls back to the same checks as a
# plain seeded random loop on stable (fuzz/src/bin_loop.rs).
# Crashes are kept in fuzz/artifacts/<target>/; copy them into
# tests/hostile.rs (`fuzz_regressions`) once fixed. Exits non-zero on a crash.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-60}"; shift || true
targets=("$@"); [ ${#targets[@]} -eq 0 ] && targets=(config path_router diff)
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz
  cargo +nightly fuzz build -O
  marker=$(mktemp); trap 'rm -f "$marker"' EXIT
  for t in "${targets[@]}"; do
    echo "== fuzz $t for ${seconds}s" >&2
    mkdir -p "corpus/$t"
    cargo +nightly fuzz run -O "$t" "corpus/$t" -- -max_total_time="$seconds" -print_final_stats=1 2>&1 \
      | grep -E "^(Done|stat::number_of_executed_units|==|SUMMARY|thread '|.*panicked)|Failing input" || true
    new=$(find "artifacts/$t" -newer "$marker" -type f 2>/dev/null || true)
    if [ -n "$new" ]; then
      echo "CRASH in $t: $new" >&2
      exit 1
    fi
  done
else
  echo "no nightly toolchain: running the checks as a plain random loop (stable)" >&2
  cargo run --release --no-default-features --bin loop -- "$seconds" "${targets[@]}"
fi
