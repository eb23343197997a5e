// Where a server's CPU goes: runs a publish workload against one fresh server with the V8 sampling
// profiler on (through workerd's inspector) and prints self time grouped by function and by kind
// (wasm / JS glue / runtime builtins / GC). Not part of run.sh; see BENCHMARKS.md "Profile".
//
//   node bench/profile.mjs [switchboard|reference] [sockets=1] [publishes=2000] [payloadBytes=0]
//
// The release wasm has no name section, so wasm functions show as wasm-function[N]; the JS glue
// (wasm-bindgen imports) and runtime builtins keep their names.
import crypto from "node:crypto";
import fs from "node:fs";
import { Miniflare } from "miniflare";
import WebSocket from "ws";
import { spawn, spawnSync } from "node:child_process";
import { mint as mintWith, requirePerf, serverOptions, startServer } from "./servers.mjs";

const [name = "switchboard", socketsArg = "1", nArg = "2000", padArg = "0"] = process.argv.slice(2);
const sockets = Number(socketsArg);
const n = Number(nArg);
const pad = "x".repeat(Math.max(0, Number(padArg) - 20));
const secret = crypto.randomBytes(16).toString("hex");
const hardStop = setTimeout(() => {
  console.error("profile: gave up after 300 s");
  process.exit(2);
}, 300000);

const mint = (claims) => mintWith(secret, claims);
const exp = Math.floor(Date.now() / 1000) + 3600;

// PROFILE_PERF=1: no JS sampler; `perf record` samples the server's workerd process instead (every
// thread, native frames included: SQLite, the kernel, V8's compiler and GC threads), and the report is
// CPU by thread and by shared object and symbol. Needs `perf` (linux-perf) and perf_event access.
const perfMode = process.env.PROFILE_PERF === "1";
let mf, url, call, cdp, workerdPid;
if (perfMode) {
  requirePerf("PROFILE_PERF=1");
  const started = await startServer(name, secret);
  ({ mf, url, pid: workerdPid } = started);
} else {
  mf = new Miniflare({ ...serverOptions(name, secret), inspectorPort: 0 });
  url = (await mf.ready).toString().replace(/\/$/, "");
  const inspector = await mf.getInspectorURL();
  const targets = await (await fetch(`http://${inspector.host}/json/list`)).json();
  const target = targets.find((t) => String(t.id).includes(name) || String(t.title).includes(name)) || targets[0];
  cdp = new WebSocket(target.webSocketDebuggerUrl.replace("localhost", "127.0.0.1"));
  await new Promise((r, j) => (cdp.once("open", r), cdp.once("error", j)));
  let nextId = 1;
  const waiting = new Map();
  cdp.on("message", (d) => {
    const m = JSON.parse(d.toString());
    if (m.id && waiting.has(m.id)) {
      waiting.get(m.id)(m);
      waiting.delete(m.id);
    }
  });
  call = (method, params = {}) =>
    new Promise((resolve) => {
      const id = nextId++;
      waiting.set(id, resolve);
      cdp.send(JSON.stringify({ id, method, params }));
    });
}

// Clients that ack at once. PROFILE_CHANNEL=1: each socket is its own user, joined to one channel,
// and the publishes go to the channel (the cost per member delivery).
const channel = process.env.PROFILE_CHANNEL === "1" ? "prof-ch" : null;
const user = "prof";
const clients = [];
for (let i = 0; i < sockets; i++) {
  const claims = channel ? { userId: `${user}-${i}`, channels: [channel], exp } : { userId: user, exp };
  const ws = new WebSocket(`${url.replace(/^http/, "ws")}/?token=${mint(claims)}`);
  await new Promise((r, j) => {
    ws.once("message", r);
    ws.once("error", j);
  });
  if (channel) ws.send(JSON.stringify({ type: "join", channel, id: 1 }));
  else ws.send(JSON.stringify({ type: "subscribe", filters: [{ type: "bench" }], id: 1 }));
  await new Promise((r) => ws.once("message", r));
  ws.on("message", (d) => {
    const s = d.toString();
    const k = s.indexOf('"envelopeId":"');
    if (k >= 0) {
      const id = s.slice(k + 14, s.indexOf('"', k + 14));
      ws.send(`{"type":"ack","envelopeId":"${id}","result":{"s":${i}}}`);
    }
  });
  clients.push(ws);
}
const auth = `Bearer ${mint({ scope: "publish", exp })}`;
async function publish(i) {
  const r = await fetch(`${url}/publish`, {
    method: "POST",
    headers: { authorization: auth, "content-type": "application/json" },
    body: `{${channel ? `"channel":"${channel}"` : `"userId":"${user}"`},"type":"bench","payload":{"n":${i},"pad":"${pad}"},"timeoutMs":5000}`,
  });
  const j = await r.json();
  const acked = channel ? j.totals?.acked : j.acks?.length;
  if (r.status !== 200 || j.clientCount !== sockets || acked !== sockets) throw new Error(JSON.stringify(j).slice(0, 300));
}
// Warm-up (tier-up): PROFILE_WARMUP publishes (default 200) before the measured ones.
for (let i = 0; i < Number(process.env.PROFILE_WARMUP || Math.min(200, n)); i++) await publish(i);

const perfData = `/tmp/switchboard-perf-${process.pid}.data`;
let perf;
if (perfMode) {
  perf = spawn("perf", ["record", "-q", "-F", "1999", "-p", String(workerdPid), "-o", perfData], { stdio: "ignore" });
  await new Promise((r) => setTimeout(r, 500)); // perf attaches
} else {
  await call("Profiler.enable");
  await call("Profiler.setSamplingInterval", { interval: Number(process.env.PROFILE_INTERVAL_US || 200) });
  await call("Profiler.start");
}
// PROFILE_CONNECTS=1: profile opening `publishes` more sockets instead of publishing, to one other
// user, or PROFILE_CONNECTS_PER_USER per user (10: the idle scenario's shape, a new hub every 10).
const connects = process.env.PROFILE_CONNECTS === "1";
const perUser = Number(process.env.PROFILE_CONNECTS_PER_USER || 0);
const t0 = performance.now();
if (connects) {
  for (let i = 0; i < n; i++) {
    const ws = new WebSocket(`${url.replace(/^http/, "ws")}/?token=${mint({ userId: perUser ? `prof-connect-${Math.floor(i / perUser)}` : "prof-connect", exp })}`);
    await new Promise((r, j) => (ws.once("message", r), ws.once("error", j)));
    clients.push(ws);
  }
} else {
  for (let i = 0; i < n; i++) await publish(i);
}
const wall = performance.now() - t0;
if (perfMode) {
  perf.kill("SIGINT");
  await new Promise((r) => perf.once("exit", r));
  const report = (sort) =>
    spawnSync("perf", ["report", "-i", perfData, "--stdio", "--no-children", "-n", "--sort", sort, "--percent-limit", process.env.PROFILE_PERF_LIMIT || "0.7"], {
      encoding: "utf8",
      maxBuffer: 64 << 20,
    }).stdout.split("\n").filter((l) => l && (!l.startsWith("#") || l.startsWith("# Samples"))).slice(0, Number(process.env.PROFILE_TOP || 30));
  console.log(`server=${name} ${connects ? "connects" : "publishes"}=${n} payload=${padArg}B wall=${wall.toFixed(0)}ms (perf, every thread)`);
  for (const sort of ["comm", "dso", "dso,sym"]) console.log(`by ${sort}:\n${report(sort).join("\n")}`);
  if (process.env.PROFILE_PERF_KEEP) console.log(`perf data kept: ${perfData}`);
  else fs.rmSync(perfData, { force: true });
  await finish();
}
const { result } = await call("Profiler.stop");
const profile = result.profile;

// Self time per node from samples/timeDeltas.
const self = new Map();
const byId = new Map(profile.nodes.map((nd) => [nd.id, nd]));
for (let i = 0; i < profile.samples.length; i++) {
  const id = profile.samples[i];
  self.set(id, (self.get(id) || 0) + (profile.timeDeltas[i + 1] ?? 0));
}
const kindOf = (cf) => {
  if (cf.functionName.startsWith("(")) return cf.functionName;
  if (cf.url.startsWith("wasm://") || /^(wasm-function|\$)/.test(cf.functionName)) return "wasm";
  if (cf.url.endsWith("index.js") || cf.url.includes("/index.js")) return "js glue (index.js)";
  if (cf.url.includes("worker.js")) return "reference js";
  if (!cf.url) return "runtime builtins";
  return "other js";
};
const byFn = new Map();
const byKind = new Map();
let busy = 0;
for (const [id, us] of self) {
  const cf = byId.get(id).callFrame;
  const kind = kindOf(cf);
  byKind.set(kind, (byKind.get(kind) || 0) + us);
  if (kind !== "(idle)" && kind !== "(root)") busy += us;
  const key = `${cf.functionName || "(anonymous)"}  [${kind}${cf.url && !cf.url.startsWith("wasm") ? " " + cf.url.split("/").pop() + ":" + cf.lineNumber : ""}]`;
  byFn.set(key, (byFn.get(key) || 0) + us);
}
const per = (us) => (us / 1000 / n).toFixed(3);
console.log(`server=${name} sockets=${sockets} ${connects ? "connects" : "publishes"}=${n} payload=${padArg}B wall=${wall.toFixed(0)}ms`);
console.log(`isolate busy (non-idle samples): ${(busy / 1000).toFixed(1)} ms = ${per(busy)} ms/publish (JS thread only)`);
console.log("by kind (ms per publish, share of busy):");
for (const [k, us] of [...byKind].sort((a, b) => b[1] - a[1])) {
  if (k === "(idle)" || k === "(root)") continue;
  console.log(`  ${per(us).padStart(8)}  ${((100 * us) / busy).toFixed(1).padStart(5)}%  ${k}`);
}
console.log("top functions by self time (ms per publish, share of busy):");
for (const [k, us] of [...byFn].sort((a, b) => b[1] - a[1]).slice(0, Number(process.env.PROFILE_TOP || 30))) {
  if (k.startsWith("(idle)") || k.startsWith("(root)")) continue;
  console.log(`  ${per(us).padStart(8)}  ${((100 * us) / busy).toFixed(1).padStart(5)}%  ${k}`);
}
// PROFILE_CALLERS=setTimeout,exec: who calls these (the stack above each sample, 5 frames deep).
const parent = new Map();
for (const nd of profile.nodes) for (const c of nd.children || []) parent.set(c, nd.id);
for (const target of (process.env.PROFILE_CALLERS || "").split(",").filter(Boolean)) {
  const stacks = new Map();
  for (const [id, us] of self) {
    if (byId.get(id).callFrame.functionName !== target) continue;
    const frames = [];
    for (let p = parent.get(id); p !== undefined && frames.length < 5; p = parent.get(p)) {
      const cf = byId.get(p).callFrame;
      if (cf.functionName === "(root)") break;
      frames.push(`${cf.functionName || "(anonymous)"}${cf.url && !cf.url.startsWith("wasm") ? "@" + cf.url.split("/").pop() + ":" + cf.lineNumber : ""}`);
    }
    const key = frames.join(" < ");
    stacks.set(key, (stacks.get(key) || 0) + us);
  }
  console.log(`callers of ${target} (ms per publish):`);
  for (const [k, us] of [...stacks].sort((a, b) => b[1] - a[1]).slice(0, 8)) console.log(`  ${per(us).padStart(8)}  ${k}`);
}
// PROFILE_TOTAL=switchboard:: : total (inclusive) time of every function whose name contains it, the
// builtins and glue it calls included, counted once per sample however deep it recurses. With a
// build that keeps its names (SWITCHBOARD_KEEP_NAMES=1), this says which Rust code owns the time.
if (process.env.PROFILE_TOTAL) {
  const total = new Map();
  for (const [id, us] of self) {
    const seen = new Set();
    for (let p = id; p !== undefined; p = parent.get(p)) {
      const fn = byId.get(p).callFrame.functionName;
      if (fn.includes(process.env.PROFILE_TOTAL) && !seen.has(fn)) {
        seen.add(fn);
        total.set(fn, (total.get(fn) || 0) + us);
      }
    }
  }
  console.log(`total time of functions matching ${process.env.PROFILE_TOTAL} (ms per publish, share of busy):`);
  for (const [k, us] of [...total].sort((a, b) => b[1] - a[1]).slice(0, Number(process.env.PROFILE_TOP || 30))) {
    console.log(`  ${per(us).padStart(8)}  ${((100 * us) / busy).toFixed(1).padStart(5)}%  ${k.slice(0, 160)}`);
  }
}
// PROFILE_CALLEES=__wbg_log: where the time under these functions goes (self time of what they call).
for (const target of (process.env.PROFILE_CALLEES || "").split(",").filter(Boolean)) {
  const under = new Map();
  for (const [id, us] of self) {
    let p = id;
    while (p !== undefined && !byId.get(p).callFrame.functionName.includes(target)) p = parent.get(p);
    if (p === undefined) continue;
    const cf = byId.get(id).callFrame;
    const key = `${cf.functionName || "(anonymous)"}${cf.url && !cf.url.startsWith("wasm") ? "@" + cf.url.split("/").pop() + ":" + cf.lineNumber : ""}`;
    under.set(key, (under.get(key) || 0) + us);
  }
  console.log(`under ${target} (self time, ms per publish):`);
  for (const [k, us] of [...under].sort((a, b) => b[1] - a[1]).slice(0, 12)) console.log(`  ${per(us).padStart(8)}  ${k.slice(0, 160)}`);
}
await finish();

/** Closes the clients, the inspector connection (V8 sampler mode) and the server, and exits. */
async function finish() {
  for (const ws of clients) ws.terminate();
  cdp?.terminate();
  await mf.dispose();
  clearTimeout(hardStop);
  process.exit(0);
}
