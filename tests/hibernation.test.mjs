// Hibernation: the hub is forced out of memory (Miniflare's unsafeEvictDurableObject, sockets kept)
// and must lose nothing — subscriptions, seq, acks, the close handshake.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startWorker, Client, publish, clientToken } from "./harness.mjs";

let w;
before(async () => (w = await startWorker()));
after(() => w.stop());

let n = 0;
const user = () => `hib-user-${++n}-${Math.random().toString(36).slice(2)}`;
// Whether a hub is in memory is asked of the runtime itself, for that hub: `w.evict(u)` resolves true
// when the hub was running (and evicts it), false when it was not. No global log counts, no sleeps.

test("subscriptions survive eviction between subscribe and publish", async () => {
  const u = user();
  const a = await Client.connect(w, clientToken(u), { autoAck: (e) => ({ seq: e.seq }) });
  const b = await Client.connect(w, clientToken(u), { autoAck: () => "b" });
  await a.subscribe([{ type: "t", room: "1" }]);
  await b.subscribe([{ type: "t" }]);
  assert.equal(await w.evict(u), true, "the hub was in memory and is now evicted");
  const r = await publish(w, { userId: u, type: "t", payload: { room: "1" } });
  assert.equal(await w.evict(u), true, "the publish rebuilt the hub");
  assert.equal(r.status, 200);
  assert.equal(r.body.clientCount, 2);
  assert.deepEqual(new Set(r.body.results.map(JSON.stringify)), new Set([JSON.stringify({ seq: 1 }), '"b"']));
  await a.close();
  await b.close();
});

test("subscribe and unsubscribe after a wake merge with what was stored", async () => {
  const u = user();
  const c = await Client.connect(w, clientToken(u));
  await c.subscribe([{ type: "a" }, { type: "b" }]);
  await w.evict(u);
  await c.subscribe([{ type: "c" }]); // merges: a, b, c
  const counts = async () => {
    const out = [];
    for (const t of ["a", "b", "c"]) out.push((await publish(w, { userId: u, type: t, timeoutMs: 0 })).body.clientCount);
    return out;
  };
  assert.deepEqual(await counts(), [1, 1, 1]);
  await w.evict(u);
  await c.request({ type: "unsubscribe", filters: [{ type: "a" }], id: "u" }); // removes only a
  assert.deepEqual(await counts(), [0, 1, 1]);
  await w.evict(u);
  assert.deepEqual(await counts(), [0, 1, 1]);
  await c.close();
});

test("seq survives eviction and is never reused", async () => {
  const u = user();
  const seqs = [];
  for (let i = 0; i < 3; i++) seqs.push((await publish(w, { userId: u, timeoutMs: 0 })).body.seq);
  await w.evict(u);
  seqs.push((await publish(w, { userId: u, timeoutMs: 0 })).body.seq);
  const c = await Client.connect(w, clientToken(u));
  assert.deepEqual(seqs, [1, 2, 3, 4]);
  assert.equal(c.welcome.seq, 4);
  await c.close();
});

test("exactly `ping` is answered while hibernated without waking the hub", async () => {
  const u = user();
  const c = await Client.connect(w, clientToken(u));
  assert.equal(await w.evict(u), true);
  for (let i = 0; i < 5; i++) {
    c.send("ping");
    assert.equal(await c.next((f) => f === "pong"), "pong");
  }
  assert.equal(await w.evict(u), false, "auto-response did not wake the hub: it is still out of memory");
  // The probe itself can tell: a frame the hub must handle does wake it.
  c.send("Ping");
  await c.next((f) => f === "pong");
  assert.equal(await w.evict(u), true, "a non-exact ping is the hub's, and woke it");
  await c.close();
});

test("a close after eviction is answered promptly and releases the connection", async () => {
  const u = user();
  const a = await Client.connect(w, clientToken(u));
  const b = await Client.connect(w, clientToken(u));
  await a.subscribe([{ type: "t" }]);
  await b.subscribe([{ type: "t" }]);
  await w.evict(u);
  const started = Date.now();
  const closed = await a.close(1000, "bye");
  assert.equal(closed.code, 1000);
  assert.ok(Date.now() - started < 1000);
  const r = await publish(w, { userId: u, type: "t", timeoutMs: 0 });
  assert.equal(r.body.clientCount, 1, "only b remains");
  await w.evict(u);
  const r2 = await publish(w, { userId: u, type: "t", timeoutMs: 0 });
  assert.equal(r2.body.clientCount, 1, "a's stored filters were deleted, not resurrected");
  await b.close();
});

test("an idle hub is evicted by the runtime and wakes with its sockets", async () => {
  // No timers run while idle, so workerd evicts the hub by itself after ~10 s of inactivity.
  const u = user();
  const c = await Client.connect(w, clientToken(u), { autoAck: () => "awake" });
  await c.subscribe([{ type: "t" }]);
  // workerd evicts after ~10 s idle; this wait is the feature under test, not a settle.
  await new Promise((r) => setTimeout(r, 12000));
  assert.equal(await w.evict(u), false, "the runtime evicted the idle hub on its own (no timer kept it awake)");
  const r = await publish(w, { userId: u, type: "t" });
  assert.deepEqual(r.body.results, ["awake"]);
  await c.close();
});
