#!/usr/bin/env bash
# Runs every test: installs what is missing, host unit tests, the release wasm build, then the
# end-to-end suite against that build in workerd (Miniflare): the API and its specs, the JS client, the
# server SDKs (Node and Python) and the CLI, and one smoke test through `wrangler dev`.
# Pass test files to run only those e2e files: scripts/test.sh tests/ws.test.mjs
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
# shellcheck source=env.sh
. scripts/env.sh

echo "== unit tests (host)"
cargo test --lib --quiet

echo "== release build"
bash scripts/build.sh >/tmp/switchboard-build.log 2>&1 || { cat /tmp/switchboard-build.log; exit 1; }
# The size budget (README: Contributing) is enforced here, measured as bench/coldstart.mjs does (gzip -9).
# 350 KB since issue 15 (presence, the event shards, metrics: about 48 KB); issue 12's target of 300 KB
# is reported by the benchmark, not enforced (BENCHMARKS.md, "Budget").
gz=$(node -e 'process.stdout.write(String(require("zlib").gzipSync(require("fs").readFileSync("build/index_bg.wasm"), { level: 9 }).length))')
echo "wasm bytes: $(wc -c < build/index_bg.wasm) raw, $gz gzip (budget 350000)"
if [ "$gz" -gt 350000 ]; then echo "the release wasm is over its 350 KB gzip budget" >&2; exit 1; fi

echo "== JavaScript client and server SDK builds"
node clients/js/build.mjs
node clients/server/build.mjs

echo "== end-to-end tests (workerd): the API and its specs, the client SDK, the server SDKs (Node, Python) and CLI, real-browser tests (Chromium)"
if [ $# -gt 0 ]; then
  files=("$@")
else
  files=(tests/*.test.mjs clients/js/test/*.test.mjs clients/server/test/*.test.mjs clients/python/test/*.test.mjs tests/browser/*.test.mjs)
fi
node --test --test-concurrency=1 --test-timeout=180000 "${files[@]}"
