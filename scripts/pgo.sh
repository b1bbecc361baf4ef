#!/usr/bin/env bash
# `make release-pgo`: strangler built with profile-guided optimisation, the build
# `make bench` measures and the container image ships (Dockerfile).
#
# Why: a proxied GET runs few instructions spread over many cache lines; with
# a profile, LLVM lays the hot paths out together and moves the error paths and
# rarely taken branches out of them, so the CPU's instruction cache misses far
# less (bench/NOTES.md, session 9: the figures).
#
# How: 1. build strangler instrumented (-Cprofile-generate); 2. run it under
# the training load (`bench/run.py --train`: the benchmark's traffic, a few
# seconds of each kind, strangler alone); 3. merge the raw profiles with
# llvm-profdata; 4. build again with -Cprofile-use. Both builds name the host
# target (--target), so RUSTFLAGS reaches strangler's crates and not the build
# scripts or proc macros, and each has its own directory under Cargo's target
# directory (pgo-generate/, pgo-use/), so the plain release build is left as it
# is. The binary is copied to <target dir>/pgo/strangler. CARGO_TARGET_DIR is
# honoured.
#
# llvm-profdata: rustup's `llvm-tools` component when installed (the exact LLVM
# of rustc); else Debian's newest llvm-NN (>= 19, installed when missing: 19
# reads the raw profiles of rustc 1.95's LLVM 22 and writes an indexed profile
# it accepts). Needs wrk, h2load, openssl and curl for the training load
# (installed when missing, as `make bench` does).
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

target="$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
profiles="$target/pgo-profiles"
rm -rf "$profiles"
mkdir -p "$profiles" "$target/pgo"
build() { # $1: the build's directory under the target directory; $2: RUSTFLAGS
  RUSTFLAGS="$2" cargo build --release --locked --target "$host" --target-dir "$target/$1" \
    -p strangler --bin strangler
}

echo "pgo: 1/4 the instrumented build" >&2
build pgo-generate "-Cprofile-generate=$profiles"
(cd bench/upstream && cargo build --release)
echo "pgo: 2/4 the training load (bench/run.py --train)" >&2
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
STRANGLER_BIN="$target/pgo-generate/$host/release/strangler" BENCH_PORT_BASE=27000 python3 bench/run.py --train
echo "pgo: 3/4 merging $(ls "$profiles"/*.profraw | wc -l) raw profiles with $profdata" >&2
"$profdata" merge -o "$profiles/strangler.profdata" "$profiles"/*.profraw
echo "pgo: 4/4 the optimised build" >&2
build pgo-use "-Cprofile-use=$profiles/strangler.profdata"
install -m 0755 "$target/pgo-use/$host/release/strangler" "$target/pgo/strangler"
echo "pgo: $target/pgo/strangler" >&2
