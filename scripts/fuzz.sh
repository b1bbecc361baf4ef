#!/usr/bin/env bash
# Runs the cargo-fuzz targets side by side for N seconds each (default 60):
# `make fuzz` runs 60 s per target; `make test` 20 s with FUZZ_PROFILE=dev.
#   [FUZZ_PROFILE=dev] scripts/fuzz.sh [seconds] [target...]
#   targets: config path_router diff h1_answer h1_request
# FUZZ_PROFILE=dev builds unoptimized, with debug assertions: about half the
# build CPU of the default optimized build, at ~10x fewer inputs per second.
# Uses the nightly toolchain (cargo-fuzz needs -Zsanitizer); installs a pinned
# cargo-fuzz when missing. Without nightly, falls back to the same checks as a
# plain seeded random loop on stable (fuzz/src/bin_loop.rs).
# Seed inputs (both runners start from the same ones, listed once, in seeds_of below):
# the files in fuzz/seeds/<target>/, and for the config loader the repo's own configs
# (routes.yaml, k8s/base/routes.yaml) as they are now, not copies. The corpus (fuzz/corpus/) and crashes
# (fuzz/artifacts/<target>/) are git-ignored; copy a crash into tests/hostile.rs (`fuzz_regressions`) once
# fixed. Exits non-zero on a crash (or a failed build), zero otherwise.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-60}"; shift || true
targets=("$@"); [ ${#targets[@]} -eq 0 ] && targets=(config path_router diff h1_answer h1_request)
root=$(cd .. && pwd)
# Seed files and directories of target $1, one a line.
seeds_of() {
  echo "seeds/$1"
  if [ "$1" = config ]; then echo "$root/routes.yaml"; echo "$root/k8s/base/routes.yaml"; fi
}
cargo_fuzz_version=0.13.2
case "${FUZZ_PROFILE:-release}" in
  release) fuzz_mode=-O; loop_mode=--release ;;
  dev) fuzz_mode=-D; loop_mode= ;;
  *) echo "FUZZ_PROFILE must be release or dev" >&2; exit 2 ;;
esac
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --version "$cargo_fuzz_version" --locked
  cargo +nightly fuzz build "$fuzz_mode"
  # The targets run side by side (each for $seconds), each into its own log.
  marker=$(mktemp); logs=$(mktemp -d); trap 'rm -rf "$marker" "$logs"' EXIT
  echo "== fuzz ${targets[*]} for ${seconds}s each" >&2
  pids=()
  for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    # The seeds start a fresh clone from known shapes; libFuzzer reads every corpus directory given
    # and writes new inputs only into the first (git-ignored) one; single files go in -seed_inputs.
    mapfile -t seeds < <(seeds_of "$t")
    dirs=(); files=()
    for s in "${seeds[@]}"; do if [ -d "$s" ]; then dirs+=("$s"); else files+=("$s"); fi; done
    extra=(); [ ${#files[@]} -gt 0 ] && extra=("-seed_inputs=$(IFS=,; echo "${files[*]}")")
    cargo +nightly fuzz run "$fuzz_mode" "$t" "corpus/$t" "${dirs[@]}" -- "${extra[@]}" \
      -max_total_time="$seconds" -print_final_stats=1 >"$logs/$t" 2>&1 &
    pids+=($!)
  done
  failed=0
  for i in "${!targets[@]}"; do
    t=${targets[$i]}; status=0
    wait "${pids[$i]}" || status=$?   # cargo-fuzz's exit status
    echo "== $t" >&2
    grep -E "^(Done|stat::number_of_executed_units|==|SUMMARY|thread '|.*panicked)|Failing input" "$logs/$t" >&2 || true
    new=$(find "artifacts/$t" -newer "$marker" -type f 2>/dev/null || true)
    if [ "$status" -ne 0 ] || [ -n "$new" ]; then
      { grep -A1 " panicked at " "$logs/$t" || true; tail -n 50 "$logs/$t"; } >&2
      echo "FUZZ FAILURE in $t (exit $status): ${new:-no crash file}" >&2
      failed=1
    fi
  done
  exit "$failed"
else
  echo "no nightly toolchain: running the checks as a plain random loop (stable)" >&2
  for t in "${targets[@]}"; do
    mapfile -t seeds < <(seeds_of "$t")
    cargo run $loop_mode --no-default-features --bin loop -- "$seconds" "$t" "${seeds[@]}"
  done
fi
