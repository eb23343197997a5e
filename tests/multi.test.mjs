// Multi-user publish (`userIds`): one publish reaches many users' hubs concurrently, with per-user
// results and totals; a slow or failing hub does not hold the others — against workerd.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startWorker, Client, publish, clientToken } from "./harness.mjs";

let w;
before(async () => (w = await startWorker()));
after(() => w.stop());

let n = 0;
const user = () => `multi-${++n}-${Math.random().toString(36).slice(2)}`;

test("one publish reaches 50 users' connections and returns every ack with totals", { timeout: 60000 }, async () => {
  const users = Array.from({ length: 50 }, user);
  const clients = [];
  for (const [i, u] of users.entries()) {
    for (let k = 0; k < 1 + (i % 2); k++) {
      const c = await Client.connect(w, clientToken(u), { autoAck: () => `${u}/${k}` });
      await c.subscribe([{ type: "news" }]);
      clients.push(c);
    }
  }
  const res = await publish(w, { userIds: users, type: "news", payload: { headline: "hi" } });
  assert.equal(res.status, 200, res.text);
  assert.deepEqual(res.body.totals, { users: 50, succeeded: 50, failed: 0, clientCount: 75, acked: 75, pending: 0, closed: 0 });
  assert.equal(res.body.clientCount, 75);
  assert.equal(res.body.results.length, 75);
  assert.deepEqual(res.body.users.map((u) => u.userId), users, "in the order asked");
  for (const [i, u] of res.body.users.entries()) {
    assert.equal(u.clientCount, 1 + (i % 2));
    assert.equal(u.seq, 1);
    assert.match(u.envelopeId, /^[0-9a-f-]{36}$/);
  }
  for (const c of clients) {
    const env = await c.next((f) => f.envelopeId);
    assert.equal(env.userId, c.welcome.userId, "each user gets its own envelope");
    assert.deepEqual(env.payload, { headline: "hi" });
  }
  await Promise.all(clients.map((c) => c.close()));
});

test("a slow user does not hold the others; duplicates in userIds are merged", async () => {
  const [fast, slow] = [user(), user()];
  const a = await Client.connect(w, clientToken(fast), { autoAck: () => "fast" });
  const b = await Client.connect(w, clientToken(slow)); // never acks
  await a.subscribe([{ type: "t" }]);
  await b.subscribe([{ type: "t" }]);
  const started = Date.now();
  const res = await publish(w, { userIds: [fast, slow, fast], type: "t", timeoutMs: 600 });
  const elapsed = Date.now() - started;
  assert.ok(elapsed < 3000, `bounded by the timeout (${elapsed} ms)`);
  assert.equal(res.body.users.length, 2);
  assert.deepEqual(res.body.users[0].acks.map((x) => x.result), ["fast"], "results once: in the user's acks");
  assert.deepEqual(res.body.results, ["fast"]);
  assert.deepEqual(res.body.users[1].pending, [b.id]);
  assert.deepEqual(res.body.totals, { users: 2, succeeded: 2, failed: 0, clientCount: 2, acked: 1, pending: 1, closed: 0 });
  await a.close();
  await b.close();
});

test("a failing hub is reported for its user while the others succeed", async () => {
  const [a, b] = [user(), user()];
  const key = { "idempotency-key": `multi-${a}` };
  assert.equal((await publish(w, { userId: a, type: "t", payload: 1 }, { headers: key })).status, 200);
  // Same key, another body: a's hub refuses (409); b's hub has never seen the key.
  const res = await publish(w, { userIds: [a, b], type: "t", payload: 2 }, { headers: key });
  assert.equal(res.status, 200);
  const { message, ...conflict } = res.body.users[0];
  assert.deepEqual(conflict, { userId: a, status: 409, error: "idempotency_conflict" });
  assert.match(message, /Idempotency-Key/);
  assert.equal(res.body.users[1].seq, 1);
  assert.deepEqual(res.body.totals.succeeded, 1);
  assert.deepEqual(res.body.totals.failed, 1);
  // Retrying the multi-publish with its own key delivers nothing twice, per user.
  const k2 = { "idempotency-key": `multi-retry-${a}` };
  const first = await publish(w, { userIds: [a, b], type: "t" }, { headers: k2 });
  const retry = await publish(w, { userIds: [a, b], type: "t" }, { headers: k2 });
  assert.deepEqual(retry.body.users.map((u) => [u.seq, u.duplicate]), first.body.users.map((u) => [u.seq, true]));
});

test("hubs evicted before a multi-publish still deliver", async () => {
  const users = [user(), user(), user()];
  const clients = [];
  for (const u of users) {
    const c = await Client.connect(w, clientToken(u), { autoAck: () => u });
    await c.subscribe([{ type: "t" }]);
    clients.push(c);
    await w.evict(u);
  }
  const res = await publish(w, { userIds: users, type: "t" });
  assert.deepEqual(res.body.results.sort(), [...users].sort());
  await Promise.all(clients.map((c) => c.close()));
});

test("userIds is checked: shape, limit (MAX_PUBLISH_USERS), scope", async () => {
  for (const [body, code] of [
    [{ userIds: [] }, "invalid_user_ids"],
    [{ userIds: "u" }, "invalid_user_ids"],
    [{ userIds: ["u", 5] }, "invalid_user_ids"],
    [{ userIds: ["u", "x".repeat(300)] }, "invalid_user_ids"],
    [{ userId: "u", userIds: ["v"] }, "invalid_user_id"],
    [{ userIds: ["u"], connectionId: "c" }, "invalid_connection_id"],
  ]) {
    const r = await publish(w, body);
    assert.equal(r.status, 400, JSON.stringify(body));
    assert.equal(r.body.error, code);
  }
  assert.equal((await publish(w, { userIds: ["u"] }, { token: clientToken("u") })).status, 403);
  const w2 = await startWorker({ MAX_PUBLISH_USERS: "3" });
  try {
    const r = await publish(w2, { userIds: ["a", "b", "c", "d"] });
    assert.equal(r.status, 400);
    assert.match(r.body.message, /MAX_PUBLISH_USERS/);
    assert.equal((await publish(w2, { userIds: ["a", "b", "c", "a"] })).body.totals.users, 3);
  } finally {
    await w2.stop();
  }
});

test("a hub that does not answer within timeoutMs + HOP_GRACE_MS is a 504 timeout entry, and holds nobody", async () => {
  // HOP_GRACE_MS=0: the hop's limit is the ack timeout itself. The slow user's client never acks, so
  // its hub answers only when its own ack timeout ends, which starts later (when the hop arrives):
  // the hop's limit always passes first.
  const w2 = await startWorker({ HOP_GRACE_MS: "0" });
  try {
    const [fast, slow] = [user(), user()];
    const a = await Client.connect(w2, clientToken(fast), { autoAck: () => "fast" });
    const b = await Client.connect(w2, clientToken(slow)); // never acks
    await a.subscribe([{ type: "t" }]);
    await b.subscribe([{ type: "t" }]);
    const started = Date.now();
    const res = await publish(w2, { userIds: [fast, slow], type: "t", timeoutMs: 500 });
    const elapsed = Date.now() - started;
    assert.equal(res.status, 200, res.text);
    assert.ok(elapsed >= 450 && elapsed < 2000, `answered at the hop limit (${elapsed} ms)`);
    // Each result once (review F3): in the flat `results` and in the user's `acks`.
    assert.deepEqual(res.body.results, ["fast"]);
    assert.deepEqual(res.body.users[0].acks.map((x) => x.result), ["fast"]);
    const { message, ...entry } = res.body.users[1];
    assert.deepEqual(entry, { userId: slow, status: 504, error: "timeout" });
    assert.match(message, /did not answer within 500 ms/);
    assert.deepEqual(res.body.totals, { users: 2, succeeded: 1, failed: 1, clientCount: 1, acked: 1, pending: 0, closed: 0 });
    // The slow user's hub did deliver (its envelope is in its history): the entry is about the answer.
    assert.equal((await b.next((f) => f.envelopeId)).type, "t");
    await a.close();
    await b.close();
  } finally {
    await w2.stop();
  }
  // The setting is checked like any other.
  const bad = await startWorker({ HOP_GRACE_MS: "soon" });
  try {
    const r = await publish(bad, { userId: "u" });
    assert.deepEqual([r.status, r.body.error], [500, "server_misconfigured"]);
    assert.match(r.body.message, /HOP_GRACE_MS/);
  } finally {
    await bad.stop();
  }
});
