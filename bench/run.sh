#!/usr/bin/env bash
# The benchmark suite's entry point (`npm run bench`). Runs every scenario against Switchboard and the
# reference Worker and writes bench/results/latest.json (+ a timestamped copy and latest.txt).
#
#   bash bench/run.sh                 # full mode, 1 run
#   bash bench/run.sh --runs 3        # full mode, medians of 3 runs (what BENCHMARKS.md reports)
#   bash bench/run.sh --quick         # every scenario with small counts (not for figures)
#   bash bench/run.sh --smoke         # CI smoke (.ci/run): ~950 checked publishes, wasm budget enforced
#   BENCH_NO_BUILD=1 bash bench/run.sh --quick   # use the existing build/ as it is
#   bash bench/run.sh --against DIR --runs 3 --scenarios rtt   # A/B: build/ against another build in DIR,
#                                     # which takes the reference's place (ratios are build/ / DIR)
#
# Any other flag goes to the generator (bench/target/release/switchboard-bench --help).
# Exits non-zero if any publish or socket misbehaved.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
log() { printf '[bench] %s\n' "$*" >&2; }

bash scripts/setup.sh
. scripts/env.sh

# BENCH_BUILD_DIR=<dir> benchmarks a build made elsewhere (e.g. an older commit's), as it is.
if [ -n "${BENCH_BUILD_DIR:-}" ]; then
  BENCH_NO_BUILD=1
  src_build="$BENCH_BUILD_DIR"
  # Recorded as config.build (and said in the printout): the "switchboard" columns are that build.
  export SWITCHBOARD_BENCH_BUILD_FROM="$BENCH_BUILD_DIR"
  log "the \"switchboard\" columns are the build in $BENCH_BUILD_DIR"
else
  src_build=build
fi
if [ "${BENCH_NO_BUILD:-}" != "1" ]; then
  log "building the release Worker (scripts/build.sh)"
  bash scripts/build.sh
fi
log "building the load generator"
cargo build --release --quiet --manifest-path bench/Cargo.toml

# --against DIR: the reference's place goes to the Switchboard build in DIR (an A/B of two builds).
args=()
against=""
prev=""
for a in "$@"; do
  if [ "$prev" = "--against" ]; then
    against="$a"
  elif [[ "$a" == --against=* ]]; then
    against="${a#--against=}"
  elif [ "$a" != "--against" ]; then
    args+=("$a")
  fi
  prev="$a"
done
if [ "$prev" = "--against" ] || { [ -z "$against" ] && [[ " $* " == *" --against"* ]]; }; then
  log "--against needs a directory holding another build (a copy of build/)"
  exit 2
fi
set -- "${args[@]+"${args[@]}"}"

# Benchmark a snapshot of build/, so a rebuild while we run cannot mix two versions.
snap="$(mktemp -d "${TMPDIR:-/tmp}/switchboard-bench.XXXXXX")"
trap 'rm -rf "$snap"' EXIT
cp -R "$src_build"/. "$snap/"
export BENCH_BUILD_DIR="$snap"
if [ -n "$against" ]; then
  [ -f "$against/index.js" ] || { log "--against $against: no index.js there"; exit 2; }
  against_snap="$(mktemp -d "${TMPDIR:-/tmp}/switchboard-bench-against.XXXXXX")"
  trap 'rm -rf "$snap" "$against_snap"' EXIT
  cp -R "$against"/. "$against_snap/"
  export SWITCHBOARD_BENCH_AGAINST="$against_snap" SWITCHBOARD_BENCH_AGAINST_FROM="$against"
  log "A/B: the reference's place goes to the build in $against; ratios are this build / that one"
fi
BENCH_NODE="$(command -v node)"
export BENCH_NODE

mkdir -p bench/results
log "machine, wasm size and cold start"
timeout 300 node bench/coldstart.mjs > "$snap/extra.json"

# The generator's cap: 30 minutes per run asked for (a full run is ~7 min on a quiet machine, several
# times that on a loaded one), unless BENCH_TIMEOUT says otherwise.
runs="${BENCH_RUNS:-1}"
prev=""
for a in "$@"; do
  case "$prev" in --runs) runs="$a" ;; esac
  case "$a" in --runs=*) runs="${a#--runs=}" ;; esac
  prev="$a"
done
case "$runs" in '' | *[!0-9]*) runs=1 ;; esac
[ "$runs" -ge 1 ] || runs=1

stamp="$(date -u +%Y%m%dT%H%M%SZ)"
rm -f bench/results/latest.json bench/results/latest.txt # never report an older run's results
status=0
timeout "${BENCH_TIMEOUT:-$((1800 * runs))}" bench/target/release/switchboard-bench "$@" \
  --extra "$snap/extra.json" --out bench/results/latest.json | tee bench/results/latest.txt || status=$?
if [ -f bench/results/latest.json ]; then
  cp bench/results/latest.json "bench/results/$stamp.json"
  cp bench/results/latest.txt "bench/results/$stamp.txt"
  log "results: bench/results/latest.json (copy: bench/results/$stamp.json)"
fi
exit "$status"
