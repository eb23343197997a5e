// Which wasm functions a cold isolate compiles, and how long V8 takes for each: starts Switchboard on a
// fresh workerd with V8's `--trace-wasm-compilation-times`, makes the first `GET /healthz` and then the
// first WebSocket connect (to its welcome), and lists each phase's compiled functions by Liftoff time,
// named from the build's wasm name section. The build must keep its names:
//
//   SWITCHBOARD_KEEP_NAMES=1 CARGO_TARGET_DIR=/tmp/named-target bash scripts/build.sh   # into build/
//   node bench/micro/coldstart-trace.mjs [build-dir=build] [top=25]
//
// A named build is optimized with wasm-opt -O instead of -Oz, so its functions are close to, not the
// same as, the release's. Not part of run.sh; see BENCHMARKS.md, "The Rust floor".
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { spawnSync } from "node:child_process";
import { Miniflare } from "miniflare";
import WebSocket from "ws";
import { ROOT, mint, serverOptions } from "../servers.mjs";

const build = path.resolve(process.argv[2] || path.join(ROOT, "build"));
const top = Number(process.argv[3] || 25);
const hardStop = setTimeout(() => {
  console.error("coldstart-trace: gave up after 120 s");
  process.exit(2);
}, 120000);

// Function index -> name, from binaryen's function map (imports first, as in V8's numbering).
const wasmOpt = path.join(ROOT, "node_modules", ".bin", "wasm-opt");
const map = spawnSync(wasmOpt, ["--all-features", "--print-function-map", path.join(build, "index_bg.wasm"), "-o", "/dev/null"], {
  encoding: "utf8",
  maxBuffer: 1 << 26,
});
if (map.status !== 0) {
  console.error(`coldstart-trace: wasm-opt could not read ${build}/index_bg.wasm: ${(map.stderr || "").trim()}`);
  process.exit(2);
}
const names = new Map();
for (const line of map.stdout.split("\n")) {
  const m = line.match(/^(\d+):(.*)$/);
  if (m) names.set(Number(m[1]), m[2].replace(/::h[0-9a-f]{16}$/, ""));
}
// A stripped build names only its imports; Rust's own functions have paths (`a::b`) when named.
if (![...names.values()].some((n) => n.includes("::"))) {
  console.error("coldstart-trace: this build has no function names; build it with SWITCHBOARD_KEEP_NAMES=1");
  process.exit(2);
}

process.env.MINIFLARE_WORKERD_V8_FLAGS = "--trace-wasm-compilation-times";
const secret = crypto.randomBytes(32).toString("hex");
const options = serverOptions("switchboard", secret, build);
let phase = "startup";
const compiled = [];
options.handleRuntimeStdio = (stdout, stderr) => {
  const read = (chunk) => {
    for (const line of chunk.toString().split("\n")) {
      const m = line.match(/Compiled function \S+#(\d+) using (\w+), took (\d+) μs and \d+ bytes; bodysize (\d+)/);
      if (m) compiled.push({ phase, index: Number(m[1]), tier: m[2], us: Number(m[3]), body: Number(m[4]) });
    }
  };
  stdout.on("data", read);
  stderr.on("data", read);
};
const mf = new Miniflare(options);
const settle = () => new Promise((r) => setTimeout(r, 400));
try {
  const url = (await mf.ready).toString().replace(/\/$/, "");
  await settle();
  phase = "first request";
  await (await fetch(`${url}/healthz`)).text();
  await settle();
  phase = "first connect";
  const token = mint(secret, { userId: "cold", exp: Math.floor(Date.now() / 1000) + 600 });
  const ws = new WebSocket(`${url.replace(/^http/, "ws")}/?token=${token}`);
  await new Promise((resolve, reject) => {
    ws.once("message", resolve);
    ws.once("error", reject);
  });
  await settle(); // compiles still reported after the welcome
  phase = "after"; // the close below is not part of the connect
  ws.terminate();
  await settle();
} finally {
  await mf.dispose();
}

if (compiled.length === 0) {
  console.error("coldstart-trace: V8 reported no compiles (does this workerd accept --trace-wasm-compilation-times?)");
  process.exit(2);
}
for (const p of ["startup", "first request", "first connect"]) {
  const rows = compiled.filter((c) => c.phase === p);
  const sum = (k) => rows.reduce((a, c) => a + c[k], 0);
  console.log(`\n${p}: ${rows.length} functions compiled, ${sum("body")} bytes of wasm, ${(sum("us") / 1000).toFixed(1)} ms of compile`);
  if (p === "startup") continue;
  console.log(`${"µs".padStart(6)} ${"bytes".padStart(6)}  function`);
  for (const c of rows.sort((a, b) => b.us - a.us).slice(0, top)) {
    console.log(`${String(c.us).padStart(6)} ${String(c.body).padStart(6)}  ${(names.get(c.index) || `#${c.index}`).slice(0, 140)}`);
  }
}
clearTimeout(hardStop);
