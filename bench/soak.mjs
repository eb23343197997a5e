// Soak scenario (not CI): minutes of publishes while connections churn, counting every error and
// sampling workerd's memory, to show that nothing accumulates (issue 13, "every resource bounded").
//
//   node bench/soak.mjs                      # 10 minutes (what BENCHMARKS.md reports)
//   node bench/soak.mjs --seconds 30         # a short check that the scenario works
//   node bench/soak.mjs --users 50 --sockets 2 --rate 200 --lifetime-ms 2000-10000 --sample-ms 5000
//
// Runs the build in build/ (or BENCH_BUILD_DIR) in workerd through Miniflare, as bench/run.sh does.
// An error is: a publish answered other than 200, a failed request, a refused connect, or a close the
// client did not ask for. Writes bench/results/soak-latest.json; exits 1 on any error.
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import WebSocket from "ws";
import { mint as mintWith, startServer, ROOT } from "./servers.mjs";

const args = Object.fromEntries(
  process.argv
    .slice(2)
    .reduce((acc, a, i, all) => (a.startsWith("--") ? [...acc, [a.slice(2), all[i + 1]]] : acc), []),
);
const seconds = Number(args.seconds ?? 600);
const users = Number(args.users ?? 50);
const socketsPerUser = Number(args.sockets ?? 2);
const rate = Number(args.rate ?? 200); // publishes per second, in total
const [minLife, maxLife] = String(args["lifetime-ms"] ?? "2000-10000").split("-").map(Number);
const sampleMs = Number(args["sample-ms"] ?? 5000);
const maxInFlight = Number(args["in-flight"] ?? 64);

const secret = "soak-" + crypto.randomBytes(24).toString("hex");
const mint = (claims) => mintWith(secret, claims);
const exp = () => Math.floor(Date.now() / 1000) + 3600;
const publishToken = mint({ sub: "soak", scope: "publish", exp: exp() });

const counts = { publishes: 0, delivered: 0, acked: 0, connects: 0, closes: 0, errors: 0 };
const errors = [];
const fail = (what) => {
  counts.errors++;
  if (errors.length < 20) errors.push(what);
};

function rssKb(pid) {
  try {
    const m = fs.readFileSync(`/proc/${pid}/status`, "utf8").match(/VmRSS:\s+(\d+) kB/);
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

const server = await startServer("switchboard", secret);
const wsUrl = server.url.replace(/^http/, "ws");
let stopping = false;

/** One churning socket slot: connect, subscribe, ack everything, close after its lifetime, repeat. */
async function slot(userId) {
  while (!stopping) {
    const ws = new WebSocket(`${wsUrl}/?token=${encodeURIComponent(mint({ userId, exp: exp() }))}`);
    let asked = false;
    const done = new Promise((resolve) => {
      ws.on("message", (raw) => {
        const f = JSON.parse(raw.toString());
        if (f.type === "welcome") {
          counts.connects++;
          ws.send(JSON.stringify({ type: "subscribe", filters: [{ type: "soak" }], id: 1 }));
        } else if (f.envelopeId) {
          counts.delivered++;
          ws.send(JSON.stringify({ type: "ack", envelopeId: f.envelopeId, result: "ok" }));
        } else if (f.type === "error") {
          fail(`error frame: ${raw.toString().slice(0, 200)}`);
        }
      });
      ws.on("unexpected-response", (_q, res) => {
        fail(`connect refused: HTTP ${res.statusCode}`);
        resolve();
      });
      ws.on("error", (e) => {
        if (!asked) fail(`socket error: ${e.message}`);
      });
      ws.on("close", (code) => {
        counts.closes++;
        if (!asked) fail(`unexpected close ${code}`);
        resolve();
      });
    });
    const life = minLife + Math.random() * (maxLife - minLife);
    const timer = setTimeout(() => {
      asked = true;
      ws.close(1000);
    }, life);
    await done;
    clearTimeout(timer);
  }
}

async function publisher(deadline) {
  let inFlight = 0;
  const interval = 1000 / rate;
  let next = Date.now();
  while (Date.now() < deadline) {
    while (inFlight >= maxInFlight) await new Promise((r) => setTimeout(r, 1));
    const userId = `soak-${Math.floor(Math.random() * users)}`;
    inFlight++;
    counts.publishes++;
    fetch(`${server.url}/publish`, {
      method: "POST",
      headers: { authorization: `Bearer ${publishToken}`, "content-type": "application/json" },
      body: JSON.stringify({ userId, type: "soak", payload: { at: Date.now(), pad: "x".repeat(200) }, timeoutMs: 2000 }),
    })
      .then(async (res) => {
        const body = await res.json().catch(() => undefined);
        if (res.status !== 200) fail(`publish ${res.status}: ${JSON.stringify(body).slice(0, 200)}`);
        else counts.acked += body.acks?.length ?? 0;
      })
      .catch((e) => fail(`publish failed: ${e.message}`))
      .finally(() => inFlight--);
    next += interval;
    const wait = next - Date.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  }
  while (inFlight > 0) await new Promise((r) => setTimeout(r, 10));
}

const started = Date.now();
const samples = [];
const sample = () => samples.push({ s: Math.round((Date.now() - started) / 1000), rssMb: Math.round((rssKb(server.pid) ?? 0) / 102.4) / 10, ...counts });
sample();
const sampler = setInterval(() => {
  sample();
  const last = samples.at(-1);
  console.error(`[soak] ${last.s}s rss=${last.rssMb} MB publishes=${last.publishes} delivered=${last.delivered} connects=${last.connects} errors=${last.errors}`);
}, sampleMs);

const slots = [];
for (let u = 0; u < users; u++) for (let k = 0; k < socketsPerUser; k++) slots.push(slot(`soak-${u}`));
await publisher(started + seconds * 1000);
stopping = true;
clearInterval(sampler);
sample();
// Let the last sockets finish their lifetimes (they close themselves).
await Promise.race([Promise.all(slots), new Promise((r) => setTimeout(r, maxLife + 5000))]);
await server.mf.dispose();

const rss = samples.map((s) => s.rssMb).filter((x) => x > 0);
const half = rss.slice(Math.floor(rss.length / 2));
const result = {
  seconds,
  users,
  socketsPerUser,
  rate,
  lifetimeMs: [minLife, maxLife],
  counts,
  errors,
  rssMb: { first: rss[0], max: Math.max(...rss), last: rss.at(-1), secondHalfMin: Math.min(...half), secondHalfMax: Math.max(...half) },
  samples,
};
fs.mkdirSync(path.join(ROOT, "bench", "results"), { recursive: true });
fs.writeFileSync(path.join(ROOT, "bench", "results", "soak-latest.json"), JSON.stringify(result, null, 2));
console.log(JSON.stringify({ ...result, samples: undefined }, null, 2));
process.exit(counts.errors === 0 ? 0 : 1);
