// A channel of 2,000 users, each with a joined WebSocket, through the default relay tree
// (CHANNEL_FANOUT=500: the root, 4 relays, 2,000 hubs), across forced evictions of the root and of
// user hubs, with crashed members pruned — against workerd. Correctness at size, not speed: the
// benchmark (bench/, `make bench`) measures speed.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startWorker, Client, publish, clientToken, publishToken } from "./harness.mjs";

const USERS = 2000;
const channel = `room:scale-${Math.random().toString(36).slice(2, 8)}`;
let w;
const clients = [];

before(async () => {
  w = await startWorker();
});
after(async () => {
  await Promise.all(clients.map((c) => c.close().catch(() => {})));
  await w.stop();
});

/** Runs `fn` over `items`, `limit` at a time. */
async function pool(items, limit, fn) {
  let next = 0;
  await Promise.all(
    Array.from({ length: limit }, async () => {
      while (next < items.length) await fn(items[next++]);
    }),
  );
}

test(`a publish to a channel of ${USERS} users reaches every joined connection and returns every ack`, { timeout: 600000 }, async () => {
  const users = Array.from({ length: USERS }, (_, i) => `scale-${i}`);
  await pool(users, 50, async (u) => {
    const c = await Client.connect(w, clientToken(u, { channels: ["room:*"] }), { autoAck: (f) => f.userId });
    const r = await c.request({ type: "join", channel, id: 1 });
    assert.equal(r.type, "ok", JSON.stringify(r));
    clients.push(c);
  });
  const count = await fetch(`${w.url}/channels/${channel}/members?limit=1`, { headers: { authorization: `Bearer ${publishToken()}` } });
  assert.equal((await count.json()).count, USERS);

  // A generous ack wait: locally every object shares one workerd thread, so the 2,000 hops of a step
  // are served one after another, and a step's deadline (the ack wait plus HOP_GRACE_MS per level)
  // must cover them on a loaded CI machine too. The test is about every ack arriving, not speed.
  const first = await publish(w, { channel, type: "scale", payload: { round: 1 }, timeoutMs: 28000 });
  assert.equal(first.status, 200, first.text.slice(0, 500));
  assert.deepEqual(first.body.totals, { users: USERS, succeeded: USERS, failed: 0, clientCount: USERS, acked: USERS, pending: 0, closed: 0, pruned: 0 });
  assert.equal(first.body.results.length, 1000, "detail is capped");
  assert.equal(first.body.truncated, true);
  const log = w.events().find((e) => e.event === "publish_channel" && e.users === USERS);
  assert.equal(log.depth, 2, "root -> 4 relays -> 2,000 hubs");
  await Promise.all(clients.map((c) => c.next((f) => f.envelopeId && f.payload.round === 1, 30000)));

  // Evict the root and 200 user hubs (their sockets hibernate); crash 10 members (sockets dropped
  // without a close event, as in a machine failure).
  await w.evictChannel(channel);
  for (const u of users.slice(0, 200)) await w.evict(u);
  const crashed = users.slice(1990);
  for (const u of crashed) await w.crash(u);
  const second = await publish(w, { channel, type: "scale", payload: { round: 2 }, timeoutMs: 28000 });
  assert.equal(second.status, 200, second.text.slice(0, 500));
  const live = USERS - crashed.length;
  assert.deepEqual(second.body.totals, {
    users: live, succeeded: live, failed: 0, clientCount: live, acked: live, pending: 0, closed: 0, pruned: crashed.length,
  });
  const alive = clients.filter((c) => !crashed.includes(c.welcome.userId));
  await Promise.all(alive.map((c) => c.next((f) => f.envelopeId && f.payload.round === 2, 30000)));
  const after = await fetch(`${w.url}/channels/${channel}/members?limit=1`, { headers: { authorization: `Bearer ${publishToken()}` } });
  assert.equal((await after.json()).count, live, "the crashed members were removed");
});
