#!/usr/bin/env bash
# `make release-pgo`: strangler built with profile-guided optimisation, then
# laid out again by BOLT from a second profile: the build `make bench` measures
# and the container image ships (Dockerfile).
#
# Why: a proxied GET runs few instructions spread over many cache lines; with
# a profile, LLVM lays the hot paths out together and moves the error paths and
# rarely taken branches out of them, so the CPU's instruction cache misses far
# less. LLVM does so within each function; BOLT, on the linked binary, orders
# the basic blocks and functions across the whole program, hot ones on as few
# pages and cache lines as possible (bench/NOTES.md, sessions 9 and 10: the
# figures).
#
# How: 1. build strangler instrumented (-Cprofile-generate); 2. run it under
# the training load (`bench/run.py --train`: the benchmark's traffic, a few
# seconds of each kind, strangler alone); 3. merge the raw profiles with
# llvm-profdata; 4. build again with -Cprofile-use. Both builds name the host
# target (--target), so RUSTFLAGS reaches strangler's crates and not the build
# scripts or proc macros, and each has its own directory under Cargo's target
# directory (pgo-generate/, pgo-use/), so the plain release build is left as it
# is. The optimised build keeps its relocations (--emit-relocs) for BOLT:
# 5. `llvm-bolt -instrument`; 6. the same training load again; 7. merge the
# per-process profiles (merge-fdata) and let llvm-bolt reorder the binary. The
# result is copied to <target dir>/pgo/strangler. CARGO_TARGET_DIR is honoured.
# PGO_BOLT=0 skips steps 5-7 (the PGO build alone).
#
# llvm-profdata: rustup's `llvm-tools` component when installed (the exact LLVM
# of rustc); else Debian's newest llvm-NN (>= 19, installed when missing: 19
# reads the raw profiles of rustc 1.95's LLVM 22 and writes an indexed profile
# it accepts). llvm-bolt and merge-fdata: Debian's bolt-19 (installed when
# missing; run from /usr/lib/llvm-19/bin, where llvm-bolt finds its
# instrumentation runtime). Needs wrk, h2load, openssl and curl for the
# training load (installed when missing, as `make bench` does).
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for tool in wrk:wrk h2load:nghttp2-client openssl:openssl curl:curl; do
  command -v "${tool%%:*}" >/dev/null || need+=("${tool##*:}")
done
[ ${#need[@]} -eq 0 ] || scripts/apt-install.sh "${need[@]}"

host="$(rustc -vV | sed -n 's/^host: //p')"
profdata="$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata"
if [ ! -x "$profdata" ]; then
  profdata="$(ls -d /usr/lib/llvm-*/bin/llvm-profdata 2>/dev/null | sort -t- -k2 -n | tail -1)"
  if [ -z "$profdata" ] || [ "$(echo "$profdata" | sed 's|/usr/lib/llvm-\([0-9]*\)/.*|\1|')" -lt 19 ]; then
    scripts/apt-install.sh llvm-19
    profdata=/usr/lib/llvm-19/bin/llvm-profdata
  fi
fi
bolt="${PGO_BOLT:-1}"
bolt_dir=/usr/lib/llvm-19/bin
if [ "$bolt" != 0 ] && [ ! -x "$bolt_dir/llvm-bolt" ]; then
  scripts/apt-install.sh bolt-19
fi

target="$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
profiles="$target/pgo-profiles"
rm -rf "$profiles"
mkdir -p "$profiles" "$target/pgo"
build() { # $1: the build's directory under the target directory; $2: RUSTFLAGS
  RUSTFLAGS="$2" cargo build --release --locked --target "$host" --target-dir "$target/$1" \
    -p strangler --bin strangler
}

steps=7; [ "$bolt" = 0 ] && steps=4
train() { # $1: the binary to train
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  STRANGLER_BIN="$1" BENCH_PORT_BASE=27000 python3 bench/run.py --train
}

echo "pgo: 1/$steps the instrumented build" >&2
build pgo-generate "-Cprofile-generate=$profiles"
(cd bench/upstream && cargo build --release)
echo "pgo: 2/$steps the training load (bench/run.py --train)" >&2
train "$target/pgo-generate/$host/release/strangler"
echo "pgo: 3/$steps merging $(ls "$profiles"/*.profraw | wc -l) raw profiles with $profdata" >&2
"$profdata" merge -o "$profiles/strangler.profdata" "$profiles"/*.profraw
echo "pgo: 4/$steps the optimised build" >&2
relocs=""; [ "$bolt" = 0 ] || relocs=" -Clink-arg=-Wl,--emit-relocs" # BOLT rewrites it from its relocations
build pgo-use "-Cprofile-use=$profiles/strangler.profdata$relocs"
optimised="$target/pgo-use/$host/release/strangler"
if [ "$bolt" = 0 ]; then
  install -m 0755 "$optimised" "$target/pgo/strangler"
  echo "pgo: $target/pgo/strangler (PGO_BOLT=0: no BOLT)" >&2
  exit 0
fi
echo "pgo: 5/$steps the BOLT-instrumented binary" >&2
"$bolt_dir/llvm-bolt" "$optimised" -o "$profiles/strangler-bolt-instrumented" -instrument \
  -instrumentation-file="$profiles/bolt" -instrumentation-file-append-pid >/dev/null
echo "pgo: 6/$steps the training load again" >&2
train "$profiles/strangler-bolt-instrumented"
echo "pgo: 7/$steps merging $(ls "$profiles"/bolt.*.fdata | wc -l) BOLT profiles; the reordered binary" >&2
"$bolt_dir/merge-fdata" "$profiles"/bolt.*.fdata >"$profiles/strangler.fdata" 2>/dev/null
# The layout BOLT's own guide recommends: blocks in ext-tsp order, functions
# in cdsort order (hot callers next to their callees), cold blocks split out
# of their functions, identical functions folded.
"$bolt_dir/llvm-bolt" "$optimised" -o "$target/pgo/strangler.new" -data="$profiles/strangler.fdata" \
  -reorder-blocks=ext-tsp -reorder-functions=cdsort -split-functions -split-all-cold -split-eh \
  -icf=1 -use-gnu-stack -dyno-stats >"$profiles/bolt.log" 2>&1 || { cat "$profiles/bolt.log" >&2; exit 1; }
grep -E ': (taken branches|executed instructions) \(' "$profiles/bolt.log" | sed 's/^ */pgo: BOLT: /' >&2 || true
chmod 0755 "$target/pgo/strangler.new"
mv "$target/pgo/strangler.new" "$target/pgo/strangler"
echo "pgo: $target/pgo/strangler (PGO and BOLT)" >&2
