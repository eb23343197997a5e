// The permessage-deflate scenarios (issue 12: "one where the client negotiates permessage-deflate, as
// browsers do"). The Rust generator's tokio-tungstenite has no deflate, so the generator runs this
// driver for `rtt_deflate`, `fanout100_deflate` and `idle_deflate` against a server it already
// started (bench/serve.mjs), and reads one JSON line from stdout:
//   {"metrics": {...same names as the Rust scenarios...}, "errors": N, "error_samples": [...]}
//
//   node bench/deflate.mjs --mode sequential|idle --url http://127.0.0.1:PORT --secret S --pid PID
//     --user NAME [--sockets N] [--n N] [--pad BYTES] [--per-user N] [--hibernate-s N] [--concurrency N]
//     [--deflate 0]   (0: the same driver without the extension, a control for the driver's own cost)
//
// The client is `ws` with permessage-deflate offered the way browsers offer it
// (`permessage-deflate; client_max_window_bits`) and `threshold: 0`, so it compresses every frame it
// sends (acks, subscribes) as browsers do; `ws` would otherwise leave frames under 1 KiB plain. Every
// socket must have negotiated the extension (the `sec-websocket-extensions` response header): a socket
// without it is an error, since the scenario would then measure plain frames.
//
// Measured exactly as the Rust generator measures (BENCHMARKS.md "Method"): the server's workerd
// process CPU (sum of /proc/PID/task/*/schedstat) over the measured publishes only (connects and a
// warm-up of 10% / 5-100 publishes excluded), RSS from /proc/PID/status, latency on the client
// (publish = request written -> response read; delivery = request written -> envelope decoded).
// Every publish answer is checked as the Rust generator checks it (status 200, clientCount, one ack
// and one result per socket with the right connection ids and results, nothing pending or closed),
// and every socket must have received exactly one envelope per publish and nothing unexpected.
// Every wait has a timeout; the generator also kills this process after 600 s.
import crypto from "node:crypto";
import fs from "node:fs";
import http from "node:http";
import WebSocket from "ws";

function args() {
  const a = process.argv.slice(2);
  const o = { sockets: 1, n: 100, pad: 0, "per-user": 10, "hibernate-s": 0, concurrency: 32, deflate: 1 };
  for (let i = 0; i < a.length; i += 2) {
    const k = a[i].replace(/^--/, "");
    const v = a[i + 1];
    if (v === undefined) throw new Error(`--${k} needs a value`);
    o[k] = /^\d+$/.test(v) && k !== "secret" && k !== "user" ? Number(v) : v;
  }
  for (const k of ["mode", "url", "secret", "pid", "user"]) if (o[k] === undefined) throw new Error(`--${k} is required`);
  return o;
}

const b64 = (x) => Buffer.from(JSON.stringify(x)).toString("base64url");
function mint(secret, claims) {
  const data = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
  return `${data}.${crypto.createHmac("sha256", secret).update(data).digest("base64url")}`;
}
const exp = () => Math.floor(Date.now() / 1000) + 3600;

/** CPU time of every thread of `pid` in ns, as bench/src/servers.rs reads it. */
function cpuNs(pid) {
  let total = 0n;
  for (const t of fs.readdirSync(`/proc/${pid}/task`)) {
    try {
      total += BigInt(fs.readFileSync(`/proc/${pid}/task/${t}/schedstat`, "utf8").split(" ")[0]);
    } catch {} // a thread that ended between the listing and the read
  }
  return Number(total);
}
const rssKb = (pid) => Number((fs.readFileSync(`/proc/${pid}/status`, "utf8").match(/^VmRSS:\s+(\d+)/m) || [])[1] || 0);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const withTimeout = (p, ms, what) =>
  Promise.race([p, new Promise((_, rej) => setTimeout(() => rej(new Error(`${what} timed out after ${ms} ms`)), ms).unref())]);

class Errors {
  count = 0;
  samples = [];
  add(e) {
    this.count++;
    if (this.samples.length < 10) this.samples.push(String(e));
  }
}

/** Browser-like offer; see the header. */
const DEFLATE = { threshold: 0, clientMaxWindowBits: true };

/**
 * Connects as `user`, checks that permessage-deflate was negotiated, waits for `welcome`, subscribes
 * to `{"type":"bench"}` and waits for `ok`; from then on acks every envelope at once with
 * `{"s": number}` and calls `onDelivery(envelopeId, at)`.
 */
function connect(o, user, number, onDelivery) {
  const token = mint(o.secret, { userId: user, exp: exp() });
  const ws = new WebSocket(`${o.url.replace(/^http/, "ws")}/?token=${token}`, { perMessageDeflate: o.deflate ? DEFLATE : false });
  const sock = { ws, number, user, connectionId: null, received: 0, unexpected: 0, closing: false, rawBytes: 0 };
  let extensions = "";
  ws.on("upgrade", (res) => (extensions = String(res.headers["sec-websocket-extensions"] || "")));
  const ready = new Promise((resolve, reject) => {
    let stage = "welcome";
    ws.on("error", (e) => (stage === "open" ? sock.unexpected++ : reject(e)));
    ws.on("close", () => {
      if (stage !== "open") reject(new Error(`closed before ${stage}`));
      else if (!sock.closing) sock.unexpected++;
    });
    ws.on("message", (data, isBinary) => {
      const at = performance.now();
      const text = data.toString();
      if (stage === "welcome") {
        const negotiated = /permessage-deflate/.test(extensions) && /permessage-deflate/.test(ws.extensions);
        if (negotiated !== Boolean(o.deflate)) {
          return reject(new Error(`permessage-deflate not negotiated (sec-websocket-extensions: "${extensions}")`));
        }
        const f = JSON.parse(text);
        if (f.type !== "welcome" || !f.connectionId) return reject(new Error(`first frame was not welcome: ${text}`));
        sock.connectionId = f.connectionId;
        stage = "ok";
        ws.send(JSON.stringify({ type: "subscribe", filters: [{ type: "bench" }], id: 1 }));
        return;
      }
      if (stage === "ok") {
        if (text !== '{"type":"ok","id":1}') return reject(new Error(`subscribe answered ${text}`));
        stage = "open";
        return resolve(sock);
      }
      let id;
      try {
        id = isBinary ? undefined : JSON.parse(text).envelopeId;
      } catch {}
      if (typeof id !== "string") {
        sock.unexpected++;
        return;
      }
      sock.received++;
      sock.rawBytes += data.length;
      onDelivery?.(id, at);
      ws.send(`{"type":"ack","envelopeId":"${id}","result":{"s":${number}}}`);
    });
  });
  return withTimeout(ready, 30000, `connect ${user}`).catch((e) => {
    ws.terminate();
    throw e;
  });
}

/** Connects `jobs` ([user, number]) `concurrency` at a time; sockets sorted by number. */
async function connectMany(o, jobs, onDelivery) {
  const out = [];
  let next = 0;
  const worker = async () => {
    while (next < jobs.length) {
      const [user, number] = jobs[next++];
      out.push(await connect(o, user, number, onDelivery));
    }
  };
  await Promise.all(Array.from({ length: Math.min(o.concurrency, jobs.length) }, worker));
  return out.sort((a, b) => a.number - b.number);
}

async function closeAll(socks) {
  await Promise.all(
    socks.map(
      (s) =>
        new Promise((resolve) => {
          s.closing = true;
          if (s.ws.readyState === WebSocket.CLOSED) return resolve();
          const t = setTimeout(() => (s.ws.terminate(), resolve()), 2000);
          s.ws.once("close", () => (clearTimeout(t), resolve()));
          s.ws.close(1000);
        }),
    ),
  );
}

/** One keep-alive connection for POST /publish, as the Rust generator's `Http`. */
function publisher(o) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const auth = `Bearer ${mint(o.secret, { sub: "bench", scope: "publish", exp: exp() })}`;
  const url = new URL("/publish", o.url);
  const post = (body) =>
    new Promise((resolve, reject) => {
      const req = http.request(url, {
        method: "POST",
        agent,
        headers: { authorization: auth, "content-type": "application/json", "content-length": Buffer.byteLength(body) },
      });
      req.on("response", (res) => {
        const chunks = [];
        res.on("data", (c) => chunks.push(c));
        res.on("end", () => resolve({ status: res.statusCode, body: Buffer.concat(chunks).toString() }));
        res.on("error", reject);
      });
      req.on("error", reject);
      req.end(body);
    });
  return { publish: (body) => withTimeout(post(body), 30000, "publish"), close: () => agent.destroy() };
}

/** bench/src/proto.rs `check_response`: `expected` maps connection id -> socket number. */
function checkResponse({ status, body }, expected) {
  if (status !== 200) throw new Error(`status ${status}: ${body.slice(0, 300)}`);
  const r = JSON.parse(body);
  if (r.clientCount !== expected.size) throw new Error(`clientCount ${r.clientCount} (expected ${expected.size})`);
  if (r.results?.length !== expected.size || r.acks?.length !== expected.size) {
    throw new Error(`${r.results?.length} results / ${r.acks?.length} acks (expected ${expected.size}); pending ${r.pending?.length} closed ${r.closed?.length}`);
  }
  if (r.pending.length || r.closed.length) throw new Error(`pending ${r.pending.length} closed ${r.closed.length}`);
  const seen = new Set();
  r.acks.forEach((a, i) => {
    const n = expected.get(a.connectionId);
    if (n === undefined) throw new Error(`ack from unexpected connection ${a.connectionId}`);
    if (seen.has(a.connectionId)) throw new Error(`duplicate ack from ${a.connectionId}`);
    seen.add(a.connectionId);
    if (a.result?.s !== n || JSON.stringify(r.results[i]) !== JSON.stringify(a.result)) {
      throw new Error(`wrong result ${JSON.stringify(a.result)} for socket ${n}`);
    }
  });
  return r;
}

const body = (user, i, pad) => `{"userId":"${user}","type":"bench","payload":{"n":${i},"pad":"${pad}"},"timeoutMs":5000}`;

function percentile(sorted, p) {
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(Math.max(rank, 1), sorted.length) - 1];
}
function latency(m, prefix, v) {
  if (!v.length) return;
  v.sort((a, b) => a - b);
  m[`${prefix}p50_ms`] = percentile(v, 50);
  m[`${prefix}p99_ms`] = percentile(v, 99);
  m[`${prefix}mean_ms`] = v.reduce((a, b) => a + b, 0) / v.length;
  m[`${prefix}max_ms`] = v[v.length - 1];
}
/** Bytes read from the TCP sockets of `socks` (compressed frames + headers). */
const wireIn = (socks) => socks.reduce((a, s) => a + (s.ws._socket?.bytesRead ?? 0), 0);
const rawIn = (socks) => socks.reduce((a, s) => a + s.rawBytes, 0);

/** rtt / fanout: one user, `sockets` sockets, `n` sequential publishes after a warm-up. */
async function sequential(o, errors) {
  const { pid, sockets, n } = o;
  const pad = "x".repeat(Math.max(0, o.pad - 20));
  // envelopeId -> { count, last } for the publish in flight.
  const seen = new Map();
  const onDelivery = (id, at) => {
    const e = seen.get(id) || { count: 0, last: 0, at: [] };
    e.count++;
    e.at.push(at);
    seen.set(id, e);
  };
  const cpuC0 = cpuNs(pid);
  const tc = performance.now();
  const socks = await connectMany(o, Array.from({ length: sockets }, (_, k) => [o.user, k]), onDelivery);
  const connectS = (performance.now() - tc) / 1000;
  const cpuConnect = cpuNs(pid) - cpuC0;
  const expected = new Map(socks.map((s) => [s.connectionId, s.number]));
  const pub = publisher(o);
  const warmup = Math.min(Math.max(Math.floor(n / 10), 5), 100);
  const lat = [];
  const dlat = [];
  const dlast = [];
  let cpu0 = cpuNs(pid);
  let t0 = performance.now();
  let wire0 = wireIn(socks);
  let raw0 = rawIn(socks);
  for (let i = 0; i < warmup + n; i++) {
    if (i === warmup) {
      cpu0 = cpuNs(pid);
      t0 = performance.now();
      wire0 = wireIn(socks);
      raw0 = rawIn(socks);
    }
    const sent = performance.now();
    let r;
    try {
      r = checkResponse(await pub.publish(body(o.user, i, pad)), expected);
    } catch (e) {
      errors.add(`publish ${i}: ${e.message}`);
      await sleep(50);
      seen.clear();
      continue;
    }
    const took = performance.now() - sent;
    // Every socket recorded its delivery before acking, so all are in already; wait a little anyway.
    const deadline = performance.now() + 5000;
    while ((seen.get(r.envelopeId)?.count ?? 0) < r.clientCount && performance.now() < deadline) await sleep(1);
    const e = seen.get(r.envelopeId) || { count: 0, at: [] };
    seen.delete(r.envelopeId);
    if (e.count !== r.clientCount) errors.add(`publish ${i}: only ${e.count} of ${r.clientCount} deliveries seen`);
    for (const id of seen.keys()) errors.add(`publish ${i}: stray delivery of ${id}`);
    seen.clear();
    if (i >= warmup) {
      lat.push(took);
      let last = 0;
      for (const at of e.at) {
        dlat.push(at - sent);
        last = Math.max(last, at - sent);
      }
      dlast.push(last);
    }
  }
  const elapsed = (performance.now() - t0) / 1000;
  const cpu = cpuNs(pid) - cpu0;
  const deliveriesMeasured = n * sockets;
  const wire = wireIn(socks) - wire0;
  const raw = rawIn(socks) - raw0;
  pub.close();
  for (const s of socks) {
    if (s.received !== warmup + n) errors.add(`socket ${s.number} received ${s.received} envelopes, expected ${warmup + n}`);
    if (s.unexpected) errors.add(`socket ${s.number} saw unexpected frames or closed`);
  }
  await closeAll(socks);
  const m = {
    sockets,
    publishes: n,
    elapsed_s: elapsed,
    publishes_per_s: n / elapsed,
    deliveries_per_s: deliveriesMeasured / elapsed,
    cpu_ms_per_publish: cpu / 1e6 / n,
    cpu_us_per_delivery: cpu / 1e3 / deliveriesMeasured,
    server_cpu_util: cpu / 1e9 / elapsed,
    connect_s: connectS,
    cpu_ms_per_connect: cpuConnect / 1e6 / sockets,
    payload_bytes: o.pad,
    // What deflate bought on the wire: bytes the client read per delivery (frames as sent, with their
    // headers, compressed) against the decoded envelope's length.
    wire_bytes_per_delivery: wire / deliveriesMeasured,
    envelope_bytes_per_delivery: raw / deliveriesMeasured,
  };
  latency(m, "", lat);
  latency(m, "delivery_", dlat);
  latency(m, "last_delivery_", dlast);
  return m;
}

/** bench/src/scenarios.rs `idle`, with deflate: RSS growth per subscribed idle socket. */
async function idle(o, errors) {
  const { pid, sockets } = o;
  const perUser = o["per-user"];
  const users = Math.max(1, Math.ceil(sockets / perUser));
  const jobs = [];
  for (let u = 0; u < users; u++) for (let k = 0; k < Math.min(perUser, sockets - u * perUser); k++) jobs.push([`${o.user}-${u}`, jobs.length]);
  await sleep(500);
  const rss0 = rssKb(pid);
  const cpu0 = cpuNs(pid);
  const t0 = performance.now();
  const socks = await connectMany(o, jobs);
  const connectS = (performance.now() - t0) / 1000;
  const cpu = cpuNs(pid) - cpu0;
  let rss1 = 0;
  for (let i = 0; i < 3; i++) {
    await sleep(1000);
    rss1 = rssKb(pid);
  }
  let rss2;
  if (o["hibernate-s"] > 0) {
    await sleep(o["hibernate-s"] * 1000);
    rss2 = rssKb(pid);
  }
  // Still alive and answering? One publish to the first user, every socket of it acking.
  const first = socks.filter((s) => s.user === `${o.user}-0`);
  const pub = publisher(o);
  try {
    const r = checkResponse(await pub.publish(body(`${o.user}-0`, 0, "")), new Map(first.map((s) => [s.connectionId, s.number])));
    await sleep(50);
    for (const s of first) if (s.received !== 1) errors.add(`socket ${s.number} received ${s.received} after idle (envelope ${r.envelopeId})`);
  } catch (e) {
    errors.add(`publish after idle: ${e.message}`);
  }
  pub.close();
  for (const s of socks) if (s.unexpected) errors.add(`socket ${s.number} saw unexpected frames or closed`);
  await closeAll(socks);
  const m = {
    users,
    sockets: socks.length,
    rss_base_mb: rss0 / 1024,
    rss_mb: rss1 / 1024,
    mem_kb_per_socket: (rss1 - rss0) / Math.max(1, socks.length),
    connect_s: connectS,
    connects_per_s: socks.length / connectS,
    cpu_ms_per_connect: cpu / 1e6 / Math.max(1, socks.length),
  };
  if (rss2 !== undefined) {
    m.rss_hibernated_mb = rss2 / 1024;
    m.mem_kb_per_socket_hibernated = (rss2 - rss0) / Math.max(1, socks.length);
  }
  return m;
}

const errors = new Errors();
let metrics = {};
try {
  const o = args();
  if (o.mode === "sequential") metrics = await sequential(o, errors);
  else if (o.mode === "idle") metrics = await idle(o, errors);
  else throw new Error(`unknown --mode ${o.mode}`);
} catch (e) {
  errors.add(e.stack || e.message || e);
}
metrics.errors = errors.count;
process.stdout.write(JSON.stringify({ metrics, errors: errors.count, error_samples: errors.samples }) + "\n");
process.exit(0);
