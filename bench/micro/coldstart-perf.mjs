// Where a cold isolate's first request and first WebSocket connect spend their CPU: starts each server
// on a fresh workerd, attaches `perf record` (every thread, 20 kHz) once Miniflare is ready, makes the
// first `GET /healthz` and the first connect (to its welcome), and sorts the samples into kinds: V8
// compiling wasm (Liftoff, lazily, on a function's first call), V8 parsing and compiling JS, the
// kernel, the allocator, copies, SQLite, GC, and the rest. Needs `perf` and perf_event access.
//
//   node bench/micro/coldstart-perf.mjs [samples=3]
//
// Each kind is summed over `samples` fresh processes per server. Not part of run.sh (the cold start
// times there come from bench/coldstart.mjs); see BENCHMARKS.md, "fourth round".
import crypto from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { spawn, spawnSync } from "node:child_process";
import WebSocket from "ws";
import { mint, requirePerf, startServer } from "../servers.mjs";

requirePerf("coldstart-perf.mjs");
const samples = Number(process.argv[2] || 3);
const hardStop = setTimeout(() => {
  console.error("coldstart-perf: gave up after 240 s");
  process.exit(2);
}, 240000);

const KINDS = [
  ["wasm compile (Liftoff)", /wasm::|Liftoff|WasmFull|WasmCompile|Assembler|SafepointTable|RelocIterator|JitPage|ConstPool|SourcePositionTable/],
  ["JS parse and compile", /Scanner|Parser|Parse|Bytecode|Compiler|Preparse|AstNode|AstValue|Scope::|Keyword|CalculateLineEnds|interpreter::/],
  ["kernel", /\[k\]/],
  ["allocator", /tcmalloc|TCMalloc|malloc|free/],
  ["memcpy / memset", /mem(move|cpy|set)/],
  ["SQLite", /sqlite|btree|pager|Pager/],
  ["GC", /Heap|Mark|Scaveng|Sweep|GC/],
];


async function once(name) {
  const secret = crypto.randomBytes(16).toString("hex");
  const server = await startServer(name, secret);
  const data = path.join(os.tmpdir(), `switchboard-coldstart-${process.pid}-${name}.data`);
  const perf = spawn("perf", ["record", "-q", "-F", "20000", "-p", String(server.pid), "-o", data], { stdio: "ignore" });
  try {
    await new Promise((r) => setTimeout(r, 700)); // perf attaches
    const r = await fetch(`${server.url}/healthz`);
    await r.text();
    const token = mint(secret, { userId: "cold", exp: Math.floor(Date.now() / 1000) + 600 });
    const ws = new WebSocket(`${server.url.replace(/^http/, "ws")}/?token=${token}`);
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("no welcome within 20 s")), 20000);
      ws.once("message", () => (clearTimeout(timer), resolve()));
      ws.once("error", (e) => (clearTimeout(timer), reject(e)));
    });
    ws.terminate();
    await new Promise((r) => setTimeout(r, 200));
  } finally {
    perf.kill("SIGINT");
    await new Promise((r) => perf.once("exit", r));
    await server.mf.dispose();
  }
  const report = spawnSync("perf", ["report", "-i", data, "--stdio", "--no-children", "-n", "--sort", "sym", "--percent-limit", "0"], {
    encoding: "utf8",
    maxBuffer: 1 << 26,
  }).stdout;
  fs.rmSync(data, { force: true });
  const kinds = new Map();
  for (const line of report.split("\n")) {
    const m = line.match(/^\s*[\d.]+%\s+(\d+)\s+(.*)$/);
    if (!m) continue;
    const kind = KINDS.find(([, re]) => re.test(m[2]))?.[0] || "other";
    kinds.set(kind, (kinds.get(kind) || 0) + Number(m[1]));
  }
  return kinds;
}

const totals = {};
for (const name of ["switchboard", "reference"]) {
  const sum = new Map();
  for (let i = 0; i < samples; i++) for (const [k, n] of await once(name)) sum.set(k, (sum.get(k) || 0) + n);
  totals[name] = sum;
}
const kinds = [...KINDS.map(([k]) => k), "other"];
const all = (name) => [...totals[name].values()].reduce((a, b) => a + b, 0);
console.log(`first request + first connect on a fresh workerd, perf samples at 20 kHz, summed over ${samples} processes`);
console.log(`${"kind".padEnd(24)} ${"switchboard".padStart(11)} ${"reference".padStart(10)} ${"excess".padStart(7)}`);
for (const k of kinds) {
  const s = totals.switchboard.get(k) || 0;
  const r = totals.reference.get(k) || 0;
  console.log(`${k.padEnd(24)} ${String(s).padStart(11)} ${String(r).padStart(10)} ${String(s - r).padStart(7)}`);
}
console.log(`${"total".padEnd(24)} ${String(all("switchboard")).padStart(11)} ${String(all("reference")).padStart(10)} ${String(all("switchboard") - all("reference")).padStart(7)}`);
clearTimeout(hardStop);
