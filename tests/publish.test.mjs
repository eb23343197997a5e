// Publish fan-out and ack collection, end to end against the built Worker in workerd.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startWorker, Client, publish, clientToken, publishToken } from "./harness.mjs";

let w;
before(async () => (w = await startWorker()));
after(() => w.stop());

let n = 0;
const user = () => `pub-user-${++n}-${Math.random().toString(36).slice(2)}`;

test("a publish reaches matching sockets and returns every ack at once", async () => {
  const u = user();
  const a = await Client.connect(w, clientToken(u), { autoAck: (e) => ({ from: "a", seq: e.seq }) });
  const b = await Client.connect(w, clientToken(u), { autoAck: () => "b-result" });
  const c = await Client.connect(w, clientToken(u)); // subscribed to another type: gets nothing
  await a.subscribe([{ type: "chat", room: "r1" }]);
  await b.subscribe([{ type: "chat" }]);
  await c.subscribe([{ type: "other" }]);
  const mc = c.mark();

  const started = Date.now();
  const res = await publish(w, { userId: u, type: "chat", payload: { room: "r1", text: "hi" } });
  const elapsed = Date.now() - started;
  assert.equal(res.status, 200, res.text);
  assert.equal(res.body.clientCount, 2);
  assert.equal(res.body.seq, 1);
  assert.match(res.body.envelopeId, /^[0-9a-f-]{36}$/);
  assert.deepEqual(new Set(res.body.results.map(JSON.stringify)), new Set([JSON.stringify({ from: "a", seq: 1 }), '"b-result"']));
  assert.deepEqual(new Set(res.body.acks.map((x) => x.connectionId)), new Set([a.id, b.id]));
  assert.deepEqual(res.body.pending, []);
  assert.ok(elapsed < 2000, `returned as soon as all acked (took ${elapsed} ms)`);

  const env = await a.next((f) => f.envelopeId);
  assert.deepEqual(Object.keys(env).sort(), ["envelopeId", "payload", "seq", "timestamp", "type", "userId"]);
  assert.equal(env.userId, u);
  assert.equal(env.type, "chat");
  assert.deepEqual(env.payload, { room: "r1", text: "hi" });
  assert.ok(!Number.isNaN(Date.parse(env.timestamp)) && env.timestamp.endsWith("Z"));
  assert.deepEqual(await c.since(mc), [], "a connection whose filters do not match gets nothing");
  for (const x of [a, b, c]) await x.close();
});

test("a missing ack returns after the timeout with the others' results", async () => {
  const u = user();
  const a = await Client.connect(w, clientToken(u), { autoAck: () => 1 });
  const silent = await Client.connect(w, clientToken(u));
  await a.subscribe([{ type: "t" }]);
  await silent.subscribe([{ type: "t" }]);
  const started = Date.now();
  const res = await publish(w, { userId: u, type: "t", payload: {}, timeoutMs: 700 });
  const elapsed = Date.now() - started;
  assert.equal(res.body.clientCount, 2);
  assert.deepEqual(res.body.results, [1]);
  assert.deepEqual(res.body.pending, [silent.id]);
  assert.ok(elapsed >= 650 && elapsed < 3000, `waited for the timeout (${elapsed} ms)`);
  // The late ack is harmless and, with an id, answered as unknown.
  const env = await silent.next((f) => f.envelopeId);
  const reply = await silent.request({ type: "ack", envelopeId: env.envelopeId, id: 9 });
  assert.equal(reply.type, "error");
  assert.equal(reply.code, "unknown_envelope");
  await a.close();
  await silent.close();
});

test("concurrent publishes with different timeouts each end at their own (one hub timer serves them all)", async () => {
  // The hub keeps one timer for every publish in flight: a shorter timeout registered after a longer
  // one must bring the timer forward, and the longer one must still end after the shorter has fired.
  const u = user();
  const silent = await Client.connect(w, clientToken(u));
  await silent.subscribe([{ type: "t" }]);
  const order = [];
  const started = Date.now();
  const track = (name, p) => p.then((res) => (order.push(name), { res, ms: Date.now() - started }));
  const long = track("long", publish(w, { userId: u, type: "t", payload: { n: 1 }, timeoutMs: 2500 }));
  await silent.next((f) => f.envelopeId && f.payload.n === 1); // registered first
  const short = track("short", publish(w, { userId: u, type: "t", payload: { n: 2 }, timeoutMs: 400 }));
  const [l, s] = await Promise.all([long, short]);
  assert.deepEqual(order, ["short", "long"]);
  assert.deepEqual([l.res.body.pending, s.res.body.pending], [[silent.id], [silent.id]]);
  assert.ok(s.ms < 2000, `the short timeout did not wait for the long one (${s.ms} ms)`);
  assert.ok(l.ms >= 2400, `the long one waited for its own timeout (${l.ms} ms)`);
  // And after both, the next publish's timer is armed afresh.
  const again = Date.now();
  const r = await publish(w, { userId: u, type: "t", payload: { n: 3 }, timeoutMs: 300 });
  assert.deepEqual(r.body.pending, [silent.id]);
  assert.ok(Date.now() - again >= 250, "waited for its timeout");
  await silent.close();
});

test("the default timeout is ACK_TIMEOUT_MS (5 s) and an ack without result is null", async () => {
  const u = user();
  const a = await Client.connect(w, clientToken(u));
  const silent = await Client.connect(w, clientToken(u));
  await a.subscribe([{ type: "t" }]);
  await silent.subscribe([{ type: "t" }]);
  const started = Date.now();
  const pending = publish(w, { userId: u, type: "t" });
  const env = await a.next((f) => f.envelopeId);
  a.send({ type: "ack", envelopeId: env.envelopeId });
  const res = await pending;
  const elapsed = Date.now() - started;
  assert.deepEqual(res.body.results, [null]);
  assert.deepEqual(res.body.acks, [{ connectionId: a.id, result: null }]);
  assert.ok(elapsed >= 4900 && elapsed < 8000, `default timeout ~5 s (${elapsed} ms)`);
  assert.equal(env.payload, null);
  await a.close();
  await silent.close();
});

test("a socket that closes releases its pending ack at once", async () => {
  const u = user();
  const leaver = await Client.connect(w, clientToken(u));
  await leaver.subscribe([{ type: "t" }]);
  const started = Date.now();
  const pending = publish(w, { userId: u, type: "t", timeoutMs: 10000 });
  await leaver.next((f) => f.envelopeId);
  await leaver.close(1000, "bye");
  const res = await pending;
  assert.ok(Date.now() - started < 3000, "did not wait for the timeout");
  assert.equal(res.body.clientCount, 1);
  assert.deepEqual(res.body.results, []);
  assert.deepEqual(res.body.pending, []);
  assert.deepEqual(res.body.closed, [leaver.id]);
});

test("timeoutMs 0 does not wait; connectionId targets one connection; seq increases", async () => {
  const u = user();
  const a = await Client.connect(w, clientToken(u), { autoAck: () => "a" });
  const b = await Client.connect(w, clientToken(u), { autoAck: () => "b" });
  await a.subscribe([{ type: "t" }]);
  await b.subscribe([{ type: "t" }]);
  const [ma, mb] = [a.mark(), b.mark()];
  const r0 = await publish(w, { userId: u, type: "t", timeoutMs: 0 });
  assert.equal(r0.body.clientCount, 2);
  assert.deepEqual(r0.body.results, []);
  assert.equal(r0.body.pending.length, 2);
  const r1 = await publish(w, { userId: u, type: "t", connectionId: b.id });
  assert.equal(r1.body.clientCount, 1);
  assert.deepEqual(r1.body.results, ["b"]);
  assert.equal(r1.body.seq, r0.body.seq + 1);
  const missing = await publish(w, { userId: u, type: "t", connectionId: "nope" });
  assert.equal(missing.status, 404);
  assert.equal(missing.body.error, "connection_not_found");
  // b received exactly two envelopes, a exactly one (and nothing else: their acks get no reply).
  const [sinceA, sinceB] = await Promise.all([a.since(ma), b.since(mb)]);
  assert.deepEqual(sinceA.map((f) => f.envelopeId), [r0.body.envelopeId]);
  assert.deepEqual(sinceB.map((f) => f.envelopeId), [r0.body.envelopeId, r1.body.envelopeId]);
  await a.close();
  await b.close();
});

test("timeoutMs is capped by ACK_TIMEOUT_MAX_MS", async () => {
  const w2 = await startWorker({ ACK_TIMEOUT_MAX_MS: "600", ACK_TIMEOUT_MS: "300" });
  try {
    const u = user();
    const silent = await Client.connect(w2, clientToken(u));
    await silent.subscribe([{ type: "t" }]);
    const started = Date.now();
    const res = await publish(w2, { userId: u, type: "t", timeoutMs: 60000 });
    const elapsed = Date.now() - started;
    assert.deepEqual(res.body.pending, [silent.id]);
    assert.ok(elapsed >= 550 && elapsed < 3000, `capped at 600 ms (${elapsed})`);
    await silent.close();
  } finally {
    await w2.stop();
  }
});

test("users are isolated: a publish to one user never reaches another", async () => {
  const u1 = user();
  const u2 = user();
  const a = await Client.connect(w, clientToken(u1));
  const b = await Client.connect(w, clientToken(u2));
  await a.subscribe([{ type: "t" }]);
  await b.subscribe([{ type: "t" }]);
  const mb = b.mark();
  const res = await publish(w, { userId: u1, type: "t", timeoutMs: 0 });
  assert.equal(res.body.clientCount, 1);
  await a.next((f) => f.envelopeId);
  assert.deepEqual(await b.since(mb), [], "u2's connection got nothing of u1's");
  // Another user's connection id cannot be targeted either.
  const cross = await publish(w, { userId: u1, type: "t", connectionId: b.id });
  assert.equal(cross.status, 404);
  await a.close();
  await b.close();
});

test("a user with no connections gets clientCount 0", async () => {
  const res = await publish(w, { userId: user(), type: "t", payload: { x: 1 } });
  assert.equal(res.status, 200);
  assert.equal(res.body.clientCount, 0);
  assert.deepEqual(res.body.results, []);
});

test("a HopeFlow client (no ids, default type) works unchanged", async () => {
  const u = user();
  const ws = await Client.connect(w, clientToken(u));
  // HopeFlow's client: subscribe without an id, expect no reply; ack each envelope with a result.
  const m0 = ws.mark();
  ws.send({ type: "subscribe", filters: [{ type: "message", questId: "q1" }] });
  assert.deepEqual(await ws.since(m0), [], "no reply to a subscribe without id");
  const pending = publish(w, { userId: u, payload: { questId: "q1", body: "x" } }, { token: publishToken() });
  const env = await ws.next((f) => f.envelopeId);
  assert.equal(env.type, "message");
  const m1 = ws.mark();
  ws.send({ type: "ack", envelopeId: env.envelopeId, result: { seen: true } });
  const res = await pending;
  assert.equal(res.body.clientCount, 1);
  assert.deepEqual(res.body.results, [{ seen: true }]);
  assert.deepEqual(await ws.since(m1), [], "no reply to an ack without id");
  await ws.close();
});

test("a publish log line carries counts and no token", async () => {
  const u = user();
  const token = publishToken();
  await publish(w, { userId: u, type: "logged" }, { token });
  const ev = await w.event((e) => e.event === "publish" && e.userId === u);
  assert.equal(ev.clientCount, 0);
  assert.equal(typeof ev.ms, "number");
  assert.ok(!w.logs.some((l) => l.includes(token.split(".")[2])), "token never logged");
});
