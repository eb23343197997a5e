#!/usr/bin/env bash
# Builds the Rust floor (bench/floor/build/index.js + wasm) the way scripts/build.sh builds
# Switchboard: worker-build --release, then wasm-opt -Oz (with --low-memory-unused) without the name
# section.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
bash ../../scripts/setup.sh
# shellcheck source=../../scripts/env.sh
. ../../scripts/env.sh
worker-build --release
wasm-opt -Oz --low-memory-unused --strip-debug --strip-producers \
  --enable-mutable-globals --enable-sign-ext --enable-nontrapping-float-to-int --enable-bulk-memory \
  --enable-multivalue --enable-reference-types --enable-exception-handling \
  build/index_bg.wasm -o build/index_bg.wasm
