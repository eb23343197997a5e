// Recovery from a panic and from a wasm trap inside a hub. The wasm instance belongs to the whole
// isolate, so after either one the module is instantiated again and every Durable Object that existed
// before it must be rebuilt around the new instance (the entry does it). This test proves that hubs
// that existed before the fault, the hub that failed, and a new hub all still publish with acks, and
// that their sockets (held by the runtime) and subscriptions (in storage) survived.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startWorker, Client, publish, clientToken } from "./harness.mjs";

let w;
before(async () => (w = await startWorker({ FAULT_INJECTION: "on" })));
after(() => w.stop());

const unique = (name) => `${name}-${Math.random().toString(36).slice(2)}`;

async function subscribed(userId) {
  const c = await Client.connect(w, clientToken(userId), { autoAck: (e) => ({ user: userId, seq: e.seq }) });
  const ok = await c.subscribe([{ type: "t" }]);
  assert.equal(ok.type, "ok");
  return c;
}

/** Publishes to `userId` and checks the one socket acked it. */
async function publishesWithAck(userId, c, seq) {
  const res = await publish(w, { userId, type: "t", payload: { n: seq } });
  assert.equal(res.status, 200, `${userId}: ${res.text}`);
  assert.equal(res.body.seq, seq, res.text);
  assert.equal(res.body.clientCount, 1, res.text);
  assert.deepEqual(res.body.results, [{ user: userId, seq }], res.text);
  assert.deepEqual(res.body.acks.map((a) => a.connectionId), [c.id]);
  assert.deepEqual(res.body.pending, []);
}

/** Sends the test-only fault frame on a socket of its own and waits until the hub has failed. */
async function fault(userId, kind) {
  const f = await Client.connect(w, clientToken(userId));
  const seen = w.logs.length;
  f.send(`__${kind}`);
  const failed = () => w.logs.slice(seen).some((l) => l.includes('"event":"fault_injected"') && l.includes(`"kind":"${kind}"`));
  for (let i = 0; i < 100 && !failed(); i++) await new Promise((r) => setTimeout(r, 50));
  assert.ok(failed(), "the hub failed");
  return f;
}

for (const kind of ["panic", "trap"]) {
  test(`after a ${kind} in a hub, every hub that existed before it, the failed one and a new one publish with acks`, async () => {
    const [u1, u2, u3] = [unique(`${kind}-a`), unique(`${kind}-b`), unique(`${kind}-c`)];
    const a = await subscribed(u1);
    const b = await subscribed(u2);
    await publishesWithAck(u1, a, 1);
    await publishesWithAck(u2, b, 1);
    const marks = [a.mark(), b.mark()];

    const f = await fault(u1, kind);

    // The next call into the wasm finds it crashed and instantiates it again ("Reinitializing" in
    // the log); every object made before must then be rebuilt around the new instance.
    // The Worker itself still answers.
    const health = await fetch(`${w.url}/healthz`);
    assert.equal(health.status, 200);
    await health.arrayBuffer();
    // The hub that failed, and one that existed before the fault, each with its old socket.
    await publishesWithAck(u1, a, 2);
    await publishesWithAck(u2, b, 2);
    // A new hub.
    const c = await subscribed(u3);
    await publishesWithAck(u3, c, 1);
    // A new socket on the hub that failed.
    const a2 = await Client.connect(w, clientToken(u1));
    assert.equal(a2.welcome.seq, 2);

    // Nothing but the two envelopes (and no close) reached the old sockets since the fault.
    for (const [client, mark] of [[a, marks[0]], [b, marks[1]]]) {
      const since = (await client.since(mark)).map((f) => f.seq ?? f.type);
      assert.deepEqual(since, [2], JSON.stringify(since));
    }
    for (const client of [a, b, c, a2, f]) client.close();
  });
}

test("a socket whose attachment this build cannot read is closed with 1011 when its hub loads again; the others keep working", async () => {
  const u = unique("attachment");
  const a = await subscribed(u);
  const old = await subscribed(u);
  const first = await publish(w, { userId: u, type: "t", payload: { n: 1 } });
  assert.equal(first.body.clientCount, 2, first.text);
  // The older builds' attachment shape: an object, where this build stores JSON text.
  const seen = w.logs.length;
  old.send("__old_attachment");
  const written = () => w.logs.slice(seen).some((l) => l.includes('"kind":"old_attachment"'));
  for (let i = 0; i < 100 && !written(); i++) await new Promise((r) => setTimeout(r, 50));
  assert.ok(written(), "the attachment was replaced");
  const mark = a.mark();
  assert.equal(await w.evict(u), true, "the hub was running and was evicted");
  // The next publish constructs the hub, which rebuilds its connections from the sockets.
  const res = await publish(w, { userId: u, type: "t", payload: { n: 2 } });
  assert.equal(res.status, 200, res.text);
  assert.equal(res.body.seq, 2, res.text);
  assert.deepEqual(res.body.acks.map((x) => x.connectionId), [a.id], res.text);
  assert.deepEqual([res.body.clientCount, res.body.pending, res.body.closed], [1, [], []], res.text);
  const frame = await old.closeFrame();
  assert.equal(frame.code, 1011);
  assert.match(frame.reason, /could not read this connection's state; reconnect/);
  assert.deepEqual((await a.since(mark)).map((f) => f.seq ?? f.type), [2]);
  // Its client reconnects, and the hub has both sockets again.
  const again = await subscribed(u);
  const third = await publish(w, { userId: u, type: "t", payload: { n: 3 } });
  assert.deepEqual(third.body.acks.map((x) => x.connectionId).sort(), [a.id, again.id].sort(), third.text);
  for (const client of [a, again]) client.close();
});

test("without FAULT_INJECTION the fault frames are ordinary bad frames", async () => {
  const plain = await startWorker();
  try {
    const c = await Client.connect(plain, clientToken("no-faults"));
    const m = c.mark();
    c.send("__panic");
    c.send("__trap");
    const frames = await c.since(m);
    assert.deepEqual(frames.map((f) => [f.type, f.code]), [["error", "invalid_json"], ["error", "invalid_json"]]);
    assert.ok(!plain.events().some((e) => e.event === "fault_injected"));
    c.close();
  } finally {
    await plain.stop();
  }
});
