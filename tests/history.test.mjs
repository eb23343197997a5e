// Delivery guarantees: per-user seq, durable history, resume with `since`, gaps, races with live
// publishes, and idempotent publish — against the built Worker in workerd, across forced evictions.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startWorker, Client, publish, clientToken } from "./harness.mjs";

let w;
before(async () => (w = await startWorker()));
after(() => w.stop());

let n = 0;
const user = () => `hist-user-${++n}-${Math.random().toString(36).slice(2)}`;
const envelopes = (c) => c.frames.filter((f) => f && f.envelopeId);

/** Waits until `c` has received envelopes with exactly `count` frames, then returns them. */
async function collect(c, count, timeoutMs = 10000) {
  const out = [];
  while (out.length < count) out.push(await c.next((f) => f && f.envelopeId, timeoutMs));
  return out;
}

async function missAndResume({ evictBetween }) {
  const u = user();
  const a = await Client.connect(w, clientToken(u));
  await a.subscribe([{ type: "t" }]);
  for (let i = 0; i < 3; i++) await publish(w, { userId: u, type: "t", payload: { i }, timeoutMs: 0 });
  const seen = await collect(a, 3);
  const lastSeq = seen.at(-1).seq;
  await a.close();
  // 100 publishes while the client is away, some of a type it does not want.
  for (let i = 0; i < 100; i++) {
    await publish(w, { userId: u, type: i % 10 === 9 ? "other" : "t", payload: { i: 3 + i }, timeoutMs: 0 });
  }
  if (evictBetween) await w.evict(u);
  const b = await Client.connect(w, clientToken(u));
  assert.equal(b.welcome.seq, 103);
  const reply = await b.request({ type: "subscribe", filters: [{ type: "t" }], since: lastSeq, id: "resume" });
  assert.deepEqual(reply, { type: "ok", id: "resume" });
  const replayed = envelopes(b);
  b.frames.length = 0;
  const expected = Array.from({ length: 100 }, (_, i) => 4 + i).filter((s) => (s - 4) % 10 !== 9);
  assert.deepEqual(replayed.map((e) => e.seq), expected, "every missed envelope once, in order");
  assert.ok(replayed.every((e) => e.replayed === true && e.type === "t"));
  assert.deepEqual(replayed[0].payload, { i: 3 });
  // Live ones after the replay are not marked.
  const r = await publish(w, { userId: u, type: "t", payload: { live: true }, timeoutMs: 0 });
  const live = await b.next((f) => f.envelopeId);
  assert.equal(live.seq, r.body.seq);
  assert.equal(live.replayed, undefined);
  await b.close();
}

test("a client that misses 100 publishes resumes with since: every envelope once, in order", () =>
  missAndResume({ evictBetween: false }));

test("resume works across a forced eviction", () => missAndResume({ evictBetween: true }));

test("a gap frame says what history no longer holds", async () => {
  const w2 = await startWorker({ HISTORY_LIMIT: "5" });
  try {
    const u = user();
    for (let i = 0; i < 20; i++) await publish(w2, { userId: u, type: "t", timeoutMs: 0 });
    const c = await Client.connect(w2, clientToken(u));
    await c.request({ type: "subscribe", filters: [{ type: "t" }], since: 2, id: 1 });
    const frames = c.frames.filter((f) => f.type === "gap" || f.envelopeId);
    assert.deepEqual(frames[0], { type: "gap", from: 3, to: 15 });
    assert.deepEqual(frames.slice(1).map((e) => e.seq), [16, 17, 18, 19, 20]);
    // Up to date: no gap, nothing replayed.
    c.frames.length = 0;
    await c.request({ type: "subscribe", filters: [{ type: "u" }], since: 20, id: 2 });
    assert.deepEqual(c.frames, []);
    await c.close();
  } finally {
    await w2.stop();
  }
});

test("with history off (HISTORY_LIMIT=0) since yields a gap and no replay; seq still counts", async () => {
  const w2 = await startWorker({ HISTORY_LIMIT: "0" });
  try {
    const u = user();
    for (let i = 0; i < 4; i++) await publish(w2, { userId: u, type: "t", timeoutMs: 0 });
    const c = await Client.connect(w2, clientToken(u));
    assert.equal(c.welcome.seq, 4);
    await c.request({ type: "subscribe", filters: [{ type: "t" }], since: 1, id: 1 });
    assert.deepEqual(c.frames, [{ type: "gap", from: 2, to: 4 }]);
    await c.close();
  } finally {
    await w2.stop();
  }
});

test("envelopes older than HISTORY_SECONDS are not replayed", async () => {
  const w2 = await startWorker({ HISTORY_SECONDS: "1" });
  try {
    const u = user();
    await publish(w2, { userId: u, type: "t", timeoutMs: 0 });
    await publish(w2, { userId: u, type: "t", timeoutMs: 0 });
    await new Promise((r) => setTimeout(r, 1500));
    await publish(w2, { userId: u, type: "t", timeoutMs: 0 });
    const c = await Client.connect(w2, clientToken(u));
    await c.request({ type: "subscribe", filters: [{ type: "t" }], since: 0, id: 1 });
    const frames = c.frames.filter((f) => f.type === "gap" || f.envelopeId);
    assert.deepEqual(frames[0], { type: "gap", from: 1, to: 2 });
    assert.deepEqual(frames.slice(1).map((e) => e.seq), [3]);
    await c.close();
  } finally {
    await w2.stop();
  }
});

test("a publish racing the replay is neither duplicated nor reordered", async () => {
  const u = user();
  for (let i = 0; i < 30; i++) await publish(w, { userId: u, type: "t", timeoutMs: 0 });
  const c = await Client.connect(w, clientToken(u));
  const m = c.mark();
  // Publishes in batches of 5 without pause, from before the subscribe until a batch that started after
  // its `ok`: some land before the replay reads history, some while it runs, some after it. The first
  // batch is stored before the subscribe is sent and the last starts after its ok, so the stream is
  // sure to hold both racing envelopes that were replayed and ones delivered live.
  let okSeen = false;
  const seqs = [];
  const batch = async () => (await Promise.all(Array.from({ length: 5 }, () => publish(w, { userId: u, type: "t", timeoutMs: 0 })))).map((r) => r.body.seq);
  seqs.push(...(await batch()));
  const pump = (async () => {
    for (;;) {
      const startedAfterOk = okSeen;
      seqs.push(...(await batch()));
      if (startedAfterOk) return;
    }
  })();
  const ok = await c.request({ type: "subscribe", filters: [{ type: "t" }], since: 10, id: "race" });
  okSeen = true;
  await pump;
  assert.deepEqual(ok, { type: "ok", id: "race" });
  const last = Math.max(...seqs);
  assert.equal(last, 30 + seqs.length);
  const got = await collect(c, last - 10);
  assert.deepEqual(got.map((e) => e.seq), Array.from({ length: last - 10 }, (_, i) => 11 + i), `11..${last}, each once, in order`);
  // Replayed ones come first, then live ones; never a replayed one after a live one.
  const firstLive = got.findIndex((e) => !e.replayed);
  const shape = got.map((e) => (e.replayed ? "r" : "l")).join("");
  assert.ok(firstLive > 0 && got.slice(firstLive).every((e) => !e.replayed), `replayed then live: ${shape}`);
  assert.ok(got.some((e) => e.replayed && e.seq > 30), `a publish of the burst landed in the replay: ${shape}`);
  // Nothing else: the envelopes and the subscribe's ok, exactly once each.
  const all = await c.since(m);
  assert.deepEqual(all.filter((f) => f.envelopeId).map((e) => e.seq), got.map((e) => e.seq));
  assert.deepEqual(all.filter((f) => !f.envelopeId), [ok]);
  await c.close();
});

test("envelopes already delivered live on this connection are not replayed again", async () => {
  const u = user();
  const c = await Client.connect(w, clientToken(u));
  await c.subscribe([{ type: "a" }]);
  await publish(w, { userId: u, type: "a", timeoutMs: 0 }); // seq 1, delivered live
  await publish(w, { userId: u, type: "b", timeoutMs: 0 }); // seq 2, not wanted yet
  await c.next((f) => f.seq === 1);
  await c.request({ type: "subscribe", filters: [{ type: "b" }], since: 0, id: 1 });
  const replayed = envelopes(c);
  assert.deepEqual(replayed.map((e) => [e.seq, e.type, e.replayed]), [[2, "b", true]]);
  await c.close();
});

test("an Idempotency-Key makes a retried publish safe", async () => {
  const u = user();
  const c = await Client.connect(w, clientToken(u), { autoAck: () => "once" });
  await c.subscribe([{ type: "t" }]);
  const m = c.mark();
  const headers = { "idempotency-key": `order-${u}` };
  const first = await publish(w, { userId: u, type: "t", payload: { n: 1 } }, { headers });
  assert.equal(first.status, 200);
  assert.equal(first.body.duplicate, undefined);
  assert.deepEqual(first.body.results, ["once"]);
  const retry = await publish(w, { userId: u, type: "t", payload: { n: 1 } }, { headers });
  assert.equal(retry.status, 200);
  assert.equal(retry.body.duplicate, true);
  assert.equal(retry.body.envelopeId, first.body.envelopeId);
  assert.equal(retry.body.seq, first.body.seq);
  assert.deepEqual(retry.body.results, ["once"], "the first publish's acks are returned again");
  await w.evict(u);
  const afterEviction = await publish(w, { userId: u, type: "t", payload: { n: 1 } }, { headers });
  assert.equal(afterEviction.body.duplicate, true);
  assert.equal(afterEviction.body.seq, first.body.seq);
  assert.deepEqual((await c.since(m)).map((f) => f.envelopeId), [first.body.envelopeId], "delivered once, nothing else");
  // The same key with another body is a conflict; another key is a new publish.
  const conflict = await publish(w, { userId: u, type: "t", payload: { n: 2 } }, { headers });
  assert.equal(conflict.status, 409);
  assert.equal(conflict.body.error, "idempotency_conflict");
  const other = await publish(w, { userId: u, type: "t", payload: { n: 1 } }, { headers: { "idempotency-key": `other-${u}` } });
  assert.equal(other.body.seq, first.body.seq + 1);
  for (const bad of ["", "has space", "x".repeat(300)]) {
    const r = await publish(w, { userId: u }, { headers: { "idempotency-key": bad } });
    assert.equal(r.status, 400, bad);
    assert.equal(r.body.error, "invalid_idempotency_key");
  }
  await c.close();
});

test("a retry while the first publish still waits for acks answers inProgress, delivering nothing twice", async () => {
  const u = user();
  const c = await Client.connect(w, clientToken(u));
  await c.subscribe([{ type: "t" }]);
  const m = c.mark();
  const headers = { "idempotency-key": `slow-${u}` };
  const first = publish(w, { userId: u, type: "t", timeoutMs: 1500 }, { headers });
  const env = await c.next((f) => f.envelopeId);
  const retry = await publish(w, { userId: u, type: "t", timeoutMs: 1500 }, { headers });
  assert.equal(retry.body.duplicate, true);
  assert.equal(retry.body.inProgress, true);
  assert.equal(retry.body.envelopeId, env.envelopeId);
  c.send({ type: "ack", envelopeId: env.envelopeId, result: 1 });
  assert.deepEqual((await first).body.results, [1]);
  assert.deepEqual(await c.since(m), [env], "the envelope once, and no reply to the ack without id");
  await c.close();
});

test("publishes to the same user are numbered 1, 2, 3 without holes under concurrency", async () => {
  const u = user();
  const all = await Promise.all(Array.from({ length: 50 }, () => publish(w, { userId: u, timeoutMs: 0 })));
  assert.deepEqual(all.map((r) => r.body.seq).sort((a, b) => a - b), Array.from({ length: 50 }, (_, i) => i + 1));
});

test("an Idempotency-Key is honoured only within IDEMPOTENCY_SECONDS", async () => {
  const w2 = await startWorker({ IDEMPOTENCY_SECONDS: "1" });
  try {
    const u = user();
    const headers = { "idempotency-key": `expiring-${u}` };
    const first = await publish(w2, { userId: u, type: "t", timeoutMs: 0 }, { headers });
    const retry = await publish(w2, { userId: u, type: "t", timeoutMs: 0 }, { headers });
    assert.deepEqual([retry.body.duplicate, retry.body.seq], [true, first.body.seq]);
    await new Promise((r) => setTimeout(r, 1300)); // the retention itself is what is tested
    const late = await publish(w2, { userId: u, type: "t", timeoutMs: 0 }, { headers });
    assert.equal(late.status, 200);
    assert.equal(late.body.duplicate, undefined, "the key has expired: a new publish");
    assert.equal(late.body.seq, first.body.seq + 1);
  } finally {
    await w2.stop();
  }
});

test("HISTORY_SECONDS=0 keeps no history (idempotency keys have their own window); seq still counts", async () => {
  const w2 = await startWorker({ HISTORY_SECONDS: "0" });
  try {
    const u = user();
    for (let i = 0; i < 3; i++) await publish(w2, { userId: u, type: "t", timeoutMs: 0 });
    const c = await Client.connect(w2, clientToken(u));
    assert.equal(c.welcome.seq, 3);
    const m = c.mark();
    await c.request({ type: "subscribe", filters: [{ type: "t" }], since: 0, id: 1 });
    assert.deepEqual(await c.since(m), [{ type: "gap", from: 1, to: 3 }, { type: "ok", id: 1 }], "a gap, nothing replayed");
    const headers = { "idempotency-key": `no-history-${u}` };
    const a = await publish(w2, { userId: u, type: "x", timeoutMs: 0 }, { headers });
    const b = await publish(w2, { userId: u, type: "x", timeoutMs: 0 }, { headers });
    assert.deepEqual([a.body.seq, b.body.seq, b.body.duplicate], [4, 4, true], "IDEMPOTENCY_SECONDS, not HISTORY_SECONDS, keeps keys");
    await c.close();
  } finally {
    await w2.stop();
  }
});
