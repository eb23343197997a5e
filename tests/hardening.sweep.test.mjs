// A hostile-client sweep (issue 13): 10,000 random and malformed frames from many sockets of many
// users, while other users' connections take publishes and ack them. Every victim socket stays
// open and receives exactly what was published to it, in order, once; no object resets (no
// panic, no trap, no stale object); workerd's memory stays bounded. Seeded, so a failure replays.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import { execFileSync } from "node:child_process";
import { startWorker, Client, publish, clientToken } from "./harness.mjs";

const SEED = Number(process.env.SWEEP_SEED || 0x5eed13);
const FRAMES = Number(process.env.SWEEP_FRAMES || 10_000);

let w;
after(() => w?.stop());

/** mulberry32: a small seeded PRNG. */
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Resident memory of every workerd process (kB), from /proc. */
function workerdRssKb() {
  let total = 0;
  let pids = [];
  try {
    pids = execFileSync("pgrep", ["-P", String(process.pid)]).toString().trim().split(/\s+/);
  } catch {
    return 0;
  }
  const all = new Set(pids);
  for (const p of pids) {
    try {
      for (const c of execFileSync("pgrep", ["-P", p]).toString().trim().split(/\s+/)) all.add(c);
    } catch {}
  }
  for (const p of all) {
    try {
      const comm = fs.readFileSync(`/proc/${p}/comm`, "utf8").trim();
      if (!comm.includes("workerd")) continue;
      const m = /VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${p}/status`, "utf8"));
      if (m) total += Number(m[1]);
    } catch {}
  }
  return total;
}

function hostileFrame(r, ctx) {
  const pick = (xs) => xs[Math.floor(r() * xs.length)];
  const str = (n) => Array.from({ length: n }, () => String.fromCharCode(32 + Math.floor(r() * 95))).join("");
  const nest = (d) => "[".repeat(d) + "]".repeat(d);
  const kinds = [
    () => str(Math.floor(r() * 200)), // junk text
    () => JSON.stringify({ type: "subscribe", filters: [{ type: "v" }] }).slice(0, Math.floor(r() * 40)), // truncated
    () => JSON.stringify({ type: pick(["subscribe", "unsubscribe", "ack", "join", "leave", "publish", "message", "nope", 7, null]), id: r() }),
    () => `{"type":"subscribe","id":1,"filters":[${Array(Math.floor(r() * 60000)).fill("0").join(",")}]}`, // F5-style
    () => JSON.stringify({ type: "subscribe", filters: Array.from({ length: 60 }, () => ({ type: str(8), k: str(300) })), id: "f" }),
    () => JSON.stringify({ type: "subscribe", filters: [{ type: "v" }], since: pick([0, -1, 1e30, "x", 3.5]), id: "s" }),
    () => JSON.stringify({ type: "ack", envelopeId: pick(ctx.victimEnvelopes.length ? ctx.victimEnvelopes : ["x"]), result: "r".repeat(Math.floor(r() * 40000)) }),
    () => JSON.stringify({ type: "ack", envelopeId: str(300), result: { a: 1 } }),
    () => JSON.stringify({ type: "join", channel: pick(["room:v", "room:" + str(5), "bad name", "", "x".repeat(70), "victims"]), id: "j" }),
    () => JSON.stringify({ type: "leave", channel: pick(["room:v", "victims", 42]), id: "l" }),
    () => JSON.stringify({ type: "publish", channel: pick(["room:v", "victims", "room:" + str(4)]), payload: "p".repeat(Math.floor(r() * 30000)), timeoutMs: pick([0, 10, 1e9, -5]), id: "p" }),
    () => `{"type":"message","data":${nest(Math.floor(r() * 300))},"id":"m"}`,
    () => `{"type":"ack","envelopeId":"e","result":${nest(Math.floor(r() * 300))}}`,
    () => JSON.stringify({ type: "subscribe", filters: [{ type: "v" }], id: "x".repeat(pick([10, 300])) }),
    () => Buffer.from(str(50)), // binary
    () => "Ping",
    () => '{"type":"subscribe","filters":[],"filters":[{"type":"v"}],"id":"dup"}',
    () => "\u0000\u0001" + str(10),
  ];
  return pick(kinds)();
}

test("hostile-client sweep: 10,000 random and malformed frames hurt no other user", { timeout: 120_000 }, async () => {
  w = await startWorker({ HISTORY_LIMIT: "200" });
  const r = rng(SEED);
  const tag = Math.random().toString(36).slice(2, 8);
  const ctx = { victimEnvelopes: [] };

  // Victims: 3 users, 2 connections each, subscribed, joined to their channel, acking everything.
  const victims = [];
  for (let i = 0; i < 3; i++) {
    const u = `victim-${i}-${tag}`;
    for (let k = 0; k < 2; k++) {
      const c = await Client.connect(w, clientToken(u, { channels: ["victims"] }), { autoAck: () => ({ ok: u }) });
      assert.equal((await c.subscribe([{ type: "v" }])).type, "ok");
      assert.equal((await c.request({ type: "join", channel: "victims", id: "j" })).type, "ok");
      victims.push({ u, c, closedEarly: false });
      c.closed.then(() => (victims.find((v) => v.c === c).closedEarly = true));
    }
  }
  const victimUsers = [...new Set(victims.map((v) => v.u))];

  // Attackers: 12 users, 3 sockets each; they may join any room and publish to any room and to the
  // victims' channel (whose envelopes the victims then receive: that is allowed, not harm).
  const attackers = [];
  const tokenFor = (u) => clientToken(u, { channels: ["room:*"], publishChannels: ["room:*", "victims"] });
  for (let i = 0; i < 12; i++) {
    const u = `attacker-${i}-${tag}`;
    for (let k = 0; k < 3; k++) attackers.push({ u, c: await Client.connect(w, tokenFor(u)) });
  }

  const baseline = workerdRssKb();
  let peak = baseline;
  const sampler = setInterval(() => (peak = Math.max(peak, workerdRssKb())), 250);

  // Publishes to the victims while the sweep runs: every one must reach both connections and be acked.
  const answers = [];
  let stop = false;
  const publisherLoop = (async () => {
    let i = 0;
    while (!stop) {
      const res = await publish(w, { userIds: victimUsers, type: "v", payload: { i: i++ }, timeoutMs: 3000 });
      answers.push(res);
      for (const u of res.body?.users ?? []) if (u.envelopeId) ctx.victimEnvelopes.push(u.envelopeId);
      const ch = await publish(w, { channel: "victims", type: "c", payload: { i }, timeoutMs: 3000 });
      answers.push(ch);
      await new Promise((res2) => setTimeout(res2, 100));
    }
  })();

  let sent = 0;
  let reconnects = 0;
  const started = Date.now();
  while (sent < FRAMES) {
    const a = attackers[Math.floor(r() * attackers.length)];
    if (a.c.ws.readyState !== 1) {
      // Closed for abuse (4009/4029): a fresh socket for the same user.
      a.c = await Client.connect(w, tokenFor(a.u));
      reconnects++;
    }
    a.c.send(hostileFrame(r, ctx));
    sent++;
    // Paced just under the per-connection flood limit across all sockets.
    if (sent % 200 === 0) await new Promise((res) => setTimeout(res, 150));
  }
  const sweepMs = Date.now() - started;
  await new Promise((res) => setTimeout(res, 1000));
  stop = true;
  await publisherLoop;
  clearInterval(sampler);

  // Every publish to the victims was delivered to both connections of each victim and acked by both.
  assert.ok(answers.length >= 4, `only ${answers.length} publishes ran`);
  for (const res of answers) {
    assert.equal(res.status, 200, res.text.slice(0, 300));
    assert.equal(res.body.totals.failed, 0, res.text.slice(0, 500));
    assert.equal(res.body.totals.acked, 6, res.text.slice(0, 500));
    assert.equal(res.body.totals.clientCount, 6);
  }
  // Each victim connection got exactly the user envelopes published, in seq order, once, and no gap.
  for (const v of victims) {
    assert.equal(v.closedEarly, false, `victim ${v.u} was closed`);
    const got = v.c.log.filter((f) => f && f.envelopeId && f.type === "v");
    const seqs = got.map((e) => e.seq);
    assert.deepEqual(seqs, [...seqs].sort((x, y) => x - y));
    assert.equal(new Set(seqs).size, seqs.length, "no duplicate");
    assert.equal(got.length, answers.filter((a) => a.body.channel === undefined).length);
    assert.deepEqual(v.c.log.filter((f) => f && (f.type === "error" || f.type === "gap")), []);
  }
  // No object was reset: no panic, no trap, no stale object, no memory-limit log.
  const bad = w.logs.filter((l) => /panicked|RuntimeError|unreachable|stale object|exceeded|Uncaught/i.test(l));
  assert.deepEqual(bad.slice(0, 5), []);
  const growthMb = (peak - baseline) / 1024;
  console.log(JSON.stringify({ sweep: { frames: sent, ms: sweepMs, reconnects, publishes: answers.length, rssBaselineMb: baseline / 1024, rssPeakMb: peak / 1024, growthMb } }));
  if (baseline > 0) assert.ok(growthMb < 400, `workerd grew by ${growthMb.toFixed(0)} MB`);
  await Promise.all([...victims, ...attackers].map((x) => (x.c.ws.readyState === 1 ? x.c.close() : null)));
});
