#!/usr/bin/env bash
# Builds the release Worker (build/index.js + wasm) with worker-build, then puts src/entry.mjs in
# front of worker-build's output (renamed build/glue.mjs). wrangler runs this as its
# build command; the tests run it once before starting workerd.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
# shellcheck source=env.sh
. scripts/env.sh
worker-build --release

# worker-build keeps the wasm name section (readable stack traces) and optimizes with -O. The release
# artifact drops the names and is optimized for size, which keeps it under the 350 KB (gzip) budget
# (see BENCHMARKS.md). SWITCHBOARD_KEEP_NAMES=1 keeps them, for debugging a panic in `wrangler tail`.
# --low-memory-unused lets wasm-opt fold constant additions into loads' and stores' offsets (2 KB of
# gzip): it assumes nothing is read or written below address 1024. That holds: Rust's linker puts
# the stack first, growing down from 1 MiB toward 0, and the static data above it, so only a stack
# over 1023 KiB deep would reach that low.
if [ "${SWITCHBOARD_KEEP_NAMES:-}" != "1" ]; then
  wasm-opt -Oz --low-memory-unused --strip-debug --strip-producers \
    --enable-mutable-globals --enable-sign-ext --enable-nontrapping-float-to-int --enable-bulk-memory \
    --enable-multivalue --enable-reference-types --enable-exception-handling \
    build/index_bg.wasm -o build/index_bg.wasm
fi

# The entry module: worker-build's output becomes build/glue.mjs, and src/entry.mjs (which makes the
# Durable Object classes RPC-capable) becomes build/index.js, what wrangler.toml and the tests load.
mv build/index.js build/glue.mjs
cp src/entry.mjs build/index.js
