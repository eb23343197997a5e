# Sourced by the other scripts after scripts/setup.sh: puts Node 22 and the cargo tools on PATH and
# points worker-build at the local wasm-bindgen, wasm-opt and esbuild so it never tries to download.
_sb_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -f "$_sb_root/.tools/node-dir" ]; then
  PATH="$(cat "$_sb_root/.tools/node-dir"):$PATH"
fi
PATH="$HOME/.cargo/bin:$_sb_root/node_modules/.bin:$PATH"
export PATH
export WASM_BINDGEN_BIN="${WASM_BINDGEN_BIN:-$(command -v wasm-bindgen)}"
export WASM_OPT_BIN="${WASM_OPT_BIN:-$_sb_root/node_modules/.bin/wasm-opt}"
export ESBUILD_BIN="${ESBUILD_BIN:-$_sb_root/node_modules/@esbuild/linux-x64/bin/esbuild}"
unset _sb_root
