#!/usr/bin/env bash
# Profile-guided release build of rustng: target/pgo/release/rustng (`make release-pgo`).
#
# 1. an instrumented build (target/pgo-gen) runs the benchmark's RustNg scenarios for a few
#    seconds each (`scripts/bench.py --training`: plain HTTP/1.1 and h2c, the header filter,
#    headers + router), writing its profile;
# 2. the profile is merged with the toolchain's own llvm-profdata (rustup's llvm-tools: it must
#    match rustc's LLVM, which the distribution's llvm-profdata does not);
# 3. the release build uses it (target/pgo).
#
# Why: LLVM lays out and inlines the request path from where the time really goes. Measured
# under callgrind, the profile took 21 % of the instructions off a plain proxied request and
# 18 % off the wasm host's share of a filtered one (docs/BENCHMARKS.md, session 13).
#
# The profile file is named after its content, so that a new profile rebuilds the final binary
# (cargo does not track the file itself) and an unchanged one does not. Training runs again
# only when the instrumented binary changed.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO=${CARGO:-cargo}
data=target/pgo-data
mkdir -p "$data"
data=$(cd "$data" && pwd)

rustup component add llvm-tools >/dev/null 2>&1 || true
host=$(rustc -vV | sed -n 's/^host: //p')
profdata="$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata"
if [[ ! -x $profdata ]]; then
  echo "pgo: $profdata missing: rustup component add llvm-tools" >&2
  exit 1
fi

echo "pgo: instrumented build (target/pgo-gen)"
RUSTFLAGS="-Cprofile-generate=$data/raw" \
  $CARGO build --release -p rustng --bins --example h3load --target-dir target/pgo-gen
gen=target/pgo-gen/release/rustng

merged=$data/merged.profdata
if [[ ! -f $merged || $gen -nt $merged ]]; then
  echo "pgo: training run"
  rm -rf "$data/raw"
  python3 scripts/bench.py --rustng "$gen" --training
  if ! compgen -G "$data/raw/*.profraw" >/dev/null; then
    echo "pgo: the training run left no profile in $data/raw" >&2
    exit 1
  fi
  "$profdata" merge -o "$merged.tmp" "$data/raw"
  mv "$merged.tmp" "$merged"
fi

sum=$(sha256sum "$merged" | cut -c1-16)
profile=$data/rustng-$sum.profdata
[[ -f $profile ]] || cp "$merged" "$profile"
find "$data" -maxdepth 1 -name 'rustng-*.profdata' ! -name "rustng-$sum.profdata" -delete

echo "pgo: release build with the profile (target/pgo)"
# A profile a little older than the code is normal while developing: the functions that
# changed are optimized without it, which LLVM reports one by one.
RUSTFLAGS="-Cprofile-use=$profile -Cllvm-args=-no-pgo-warn-mismatch" \
  $CARGO build --release -p rustng --bins --example h3load --target-dir target/pgo
echo "pgo: target/pgo/release/rustng"
