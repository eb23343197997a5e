// Everything run.sh reports besides the scenarios, as one JSON object on stdout:
//   machine (cores, CPU model, memory), wasm (release wasm raw and gzip -9 size, whole upload gzip),
//   coldstart (per server, median of BENCH_COLDSTART_SAMPLES fresh workerd processes: time until
//   Miniflare is ready = process up + isolate + modules compiled, then the first HTTP request
//   (GET /healthz) and the first WebSocket connect + welcome (instantiates the Durable Object)).
import crypto from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import zlib from "node:zlib";
import WebSocket from "ws";
import { ROOT, mint, startServer } from "./servers.mjs";

const build = process.env.BENCH_BUILD_DIR || path.join(ROOT, "build");
const samples = Number(process.env.BENCH_COLDSTART_SAMPLES || 5);

function firstConnect(url, secret) {
  const token = mint(secret, { userId: "cold", exp: Math.floor(Date.now() / 1000) + 600 });
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${url.replace(/^http/, "ws")}/?token=${token}`);
    const timer = setTimeout(() => {
      ws.terminate();
      reject(new Error("no welcome within 20 s"));
    }, 20000);
    ws.once("message", (d) => {
      clearTimeout(timer);
      const f = JSON.parse(d.toString());
      ws.terminate();
      f.type === "welcome" ? resolve() : reject(new Error(`first frame ${d}`));
    });
    ws.once("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
  });
}

const median = (v) => {
  const s = [...v].sort((a, b) => a - b);
  const n = s.length;
  return n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
};
const r1 = (x) => Math.round(x * 10) / 10;

const coldstart = {};
for (const name of ["switchboard", "reference"]) {
  const ready = [];
  const first = [];
  const second = [];
  const connect = [];
  for (let i = 0; i < samples; i++) {
    const secret = crypto.randomBytes(16).toString("hex");
    const t0 = performance.now();
    const s = await startServer(name, secret, build);
    try {
      const t1 = performance.now();
      const r = await fetch(`${s.url}/healthz`, { signal: AbortSignal.timeout(20000) });
      await r.text();
      const t2 = performance.now();
      await (await fetch(`${s.url}/healthz`, { signal: AbortSignal.timeout(20000) })).text();
      const t3 = performance.now();
      await firstConnect(s.url, secret);
      const t4 = performance.now();
      if (r.status !== 200) throw new Error(`${name} /healthz answered ${r.status}`);
      ready.push(t1 - t0);
      first.push(t2 - t1);
      second.push(t3 - t2);
      connect.push(t4 - t3);
    } finally {
      await s.mf.dispose();
    }
  }
  coldstart[name] = {
    ready_ms: r1(median(ready)),
    first_request_ms: r1(median(first)),
    second_request_ms: r1(median(second)),
    first_connect_ms: r1(median(connect)),
    samples,
  };
}

const gz = (buf) => zlib.gzipSync(buf, { level: 9 }).length;
const wasm = fs.readFileSync(path.join(build, "index_bg.wasm"));
// The entry module and, when the build has one, worker-build's glue behind it.
const js = Buffer.concat(["index.js", "glue.mjs"].filter((f) => fs.existsSync(path.join(build, f))).map((f) => fs.readFileSync(path.join(build, f))));
const cpuModel = (fs.readFileSync("/proc/cpuinfo", "utf8").match(/^model name\s*:\s*(.*)$/m) || [])[1] || os.cpus()[0]?.model;
const out = {
  machine: {
    nproc: os.availableParallelism(),
    cpu_model: cpuModel,
    mem_total_mb: Math.round(os.totalmem() / 1048576),
    kernel: os.release(),
    node: process.version,
  },
  wasm: {
    raw_bytes: wasm.length,
    gzip_bytes: gz(wasm),
    js_raw_bytes: js.length,
    bundle_gzip_bytes: gz(wasm) + gz(js),
  },
  coldstart,
};
process.stdout.write(JSON.stringify(out) + "\n");
process.exit(0);
