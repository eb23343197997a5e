#!/usr/bin/env bash
# Builds the release Worker (build/index.js + wasm) with worker-build. wrangler runs this as its
# build command; the tests run it once before starting workerd.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
# shellcheck source=env.sh
. scripts/env.sh
worker-build --release
