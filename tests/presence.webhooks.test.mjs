// User online/offline webhooks (PRESENCE_WEBHOOKS=on) and the batched cross-user event path (the
// EventHub shards), end to end: the built Worker in workerd, real WebSocket and SSE clients, and a
// real webhook receiver that verifies every signature (tests/receiver.mjs). Forced evictions of the
// user's hub and of the event shard, a crash (sockets dropped without close events), a receiver
// outage, and a mass drop of 200 users whose offline events must arrive in few batched requests.
import { test } from "node:test";
import assert from "node:assert/strict";
import { startWorker, Client, SseClient, publish, clientToken, publishToken } from "./harness.mjs";
import { Receiver, WEBHOOK_SECRET } from "./receiver.mjs";
import { verifyWebhook, verifyWebhookEvents, WebhookVerificationError } from "../clients/server/dist/index.js";

let n = 0;
const uid = (p = "pw") => `${p}-${++n}-${Math.random().toString(36).slice(2, 8)}`;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
/** Waits for `pred` polling every 250 ms (cheap on the event loop, which also runs the receiver). */
async function poll(pred, ms, what) {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what()}`);
    await sleep(250);
  }
}

const DEBOUNCE_S = 1;
const vars = (receiver, extra = {}) => ({
  WEBHOOK_URL: receiver.url,
  WEBHOOK_SECRET,
  WEBHOOK_RETRY_BASE_MS: "200",
  WEBHOOK_RETRY_MAX_MS: "800",
  WEBHOOK_TIMEOUT_MS: "2000",
  PRESENCE_WEBHOOKS: "on",
  USER_OFFLINE_DEBOUNCE_SECONDS: String(DEBOUNCE_S),
  PRESENCE_WEBHOOK_FLUSH_MS: "200",
  ...extra,
});

/** FNV-1a 32 (as core::webhook::shard_of): the event shard of a user. */
function shardOf(key, shards) {
  let h = 0x811c9dc5;
  for (const b of Buffer.from(key)) {
    h ^= b;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h % shards;
}

/** The receiver's accepted user.online/offline events of `user`, in arrival order. */
const presenceOf = (receiver, user) =>
  receiver.of(user).filter((e) => e.type.startsWith("switchboard.user."));
const kinds = (events) => events.map((e) => e.type.split(".")[2]);

/** Records when each accepted request arrived (this process's clock). */
function timeArrivals(receiver) {
  const arrivals = [];
  const answer = receiver.answer;
  receiver.answer = (events, meta) => {
    const status = answer(events, meta) ?? 204;
    if (status < 300) arrivals.push({ at: Date.now(), ids: events.map((e) => e.id) });
    return status;
  };
  return (id) => arrivals.find((a) => a.ids.includes(id))?.at;
}

test("online once for several connections (WebSocket and SSE); a reconnect within the debounce sends nothing; offline after it", { timeout: 30000 }, async () => {
  const receiver = await new Receiver().start();
  const arrivedAt = timeArrivals(receiver);
  // Local workerd notices a vanished SSE client only at its next write: a 1 s keep-alive.
  const w = await startWorker(vars(receiver, { SSE_KEEPALIVE_SECONDS: "1" }));
  const u = uid();
  try {
    const c1 = await Client.connect(w, clientToken(u));
    const s1 = await SseClient.open(w, clientToken(u));
    const c2 = await Client.connect(w, clientToken(u));
    await receiver.until(() => presenceOf(receiver, u).length >= 1, 10000, "online");
    const [online] = presenceOf(receiver, u);
    assert.equal(online.type, "switchboard.user.online.v1");
    assert.equal(online.subject, u);
    assert.equal(online.source, "/switchboard");
    assert.deepEqual(Object.keys(online.data).sort(), ["at", "connectionId", "transport"]);
    assert.equal(online.data.connectionId, c1.id, "the first connection made the user online");
    assert.equal(online.data.transport, "websocket");
    // Presence events come as CloudEvents batches, signed like every webhook.
    const req = receiver.requests.find((r) => r.events.some((e) => e.id === online.id));
    assert.ok(req.webhookId.startsWith(`${online.id}.`), req.webhookId);
    assert.ok(req.headers["content-type"].startsWith("application/cloudevents-batch+json"), req.headers["content-type"]);
    // The server SDK reads the batch (verifyWebhook, for a single event, refuses it).
    assert.deepEqual(verifyWebhookEvents(WEBHOOK_SECRET, req.body, req.headers).map((e) => e.id), req.events.map((e) => e.id));
    assert.throws(() => verifyWebhook(WEBHOOK_SECRET, req.body, req.headers), WebhookVerificationError);
    assert.throws(() => verifyWebhookEvents(WEBHOOK_SECRET, req.body.replace(u, `${u}x`), req.headers), WebhookVerificationError);

    // Every connection closes; once the hub has started the debounce, one reconnects at once.
    await s1.close();
    await c1.close();
    await c2.close();
    await w.event((e) => e.event === "offline_pending" && e.userId === u, 5000);
    const closedAt = Date.now();
    const c3 = await Client.connect(w, clientToken(u));
    await w.event((e) => e.event === "offline_cancelled" && e.userId === u, 5000);
    // Past the debounce with c3 open: the hub's alarm finds a connection and sends nothing. The
    // exact list at the end (after c3's own offline) proves it.
    await sleep(DEBOUNCE_S * 1000 + 500);
    await c3.close();
    const lastClose = Date.now();
    await receiver.until(() => presenceOf(receiver, u).length >= 2, 10000, "offline");
    const events = presenceOf(receiver, u);
    assert.deepEqual(kinds(events), ["online", "offline"], JSON.stringify(events));
    const offline = events[1];
    assert.deepEqual(Object.keys(offline.data).sort(), ["at", "onlineAt"]);
    assert.equal(offline.data.onlineAt, online.data.at);
    assert.ok(Date.parse(offline.data.at) >= closedAt, "offline.at is the last close (c3's), not the first");
    assert.ok(arrivedAt(offline.id) - lastClose >= DEBOUNCE_S * 1000 - 300, `offline came ${arrivedAt(offline.id) - lastClose} ms after the close`);
    // Nothing else about this user came, and connection events still go to the same URL, one by one.
    assert.equal(receiver.of(u).filter((e) => e.type === "switchboard.connection.opened.v1").length, 4);
    assert.equal(receiver.bad.length, 0);
  } finally {
    await w.stop();
    await receiver.stop();
  }
});

test("evicting the hub while online and during the debounce never re-sends online and still sends offline", { timeout: 30000 }, async () => {
  const receiver = await new Receiver().start();
  const w = await startWorker(vars(receiver));
  const u = uid();
  try {
    const c = await Client.connect(w, clientToken(u));
    await c.subscribe([{ type: "t" }]);
    await receiver.until(() => presenceOf(receiver, u).length >= 1, 10000, "online");
    assert.equal(await w.evict(u), true, "the hub was running and is evicted (sockets kept)");
    // The evicted hub wakes for a publish with its socket still there: still online, nothing sent.
    const res = await publish(w, { userId: u, type: "t", payload: { x: 1 }, timeoutMs: 0 });
    assert.equal(res.status, 200);
    assert.equal((await c.next((f) => f.type === "t")).payload.x, 1);
    await c.close();
    await w.event((e) => e.event === "offline_pending" && e.userId === u, 5000);
    assert.equal(await w.evict(u), true, "evicted during the debounce");
    await receiver.until(() => presenceOf(receiver, u).length >= 2, 10000, "offline");
    // One more wake after the offline (a publish): offline stays offline, nothing more is sent. The
    // sentinel: a new connection's online, which arrives after anything the wake could have sent.
    await publish(w, { userId: u, type: "t", payload: {}, timeoutMs: 0 });
    assert.equal(await w.evict(u), true);
    const d = await Client.connect(w, clientToken(u));
    await receiver.until(() => presenceOf(receiver, u).length >= 3, 10000, "the second online");
    assert.deepEqual(kinds(presenceOf(receiver, u)), ["online", "offline", "online"]);
    assert.equal(presenceOf(receiver, u)[2].data.connectionId, d.id);
    await d.close();
  } finally {
    await w.stop();
    await receiver.stop();
  }
});

test("a crash (sockets gone without close events) is noticed at the hub's next wake: offline after the debounce", { timeout: 30000 }, async () => {
  const receiver = await new Receiver().start();
  const w = await startWorker(vars(receiver));
  const u = uid();
  try {
    const c = await Client.connect(w, clientToken(u));
    await receiver.until(() => presenceOf(receiver, u).length >= 1, 10000, "online");
    await w.crash(u);
    await c.closed;
    // Nothing noticed it yet: no close event ran. A publish wakes the hub, which finds no socket.
    assert.equal(w.events().some((e) => e.event === "offline_pending" && e.userId === u), false);
    const woke = Date.now();
    const res = await publish(w, { userId: u, type: "t", payload: {}, timeoutMs: 0 });
    assert.equal(res.status, 200);
    assert.equal(res.body.clientCount, 0);
    const pending = await w.event((e) => e.event === "offline_pending" && e.userId === u, 5000);
    assert.equal(pending.why, "no socket after a wake");
    await receiver.until(() => presenceOf(receiver, u).length >= 2, 10000, "offline");
    const [online, offline] = presenceOf(receiver, u);
    assert.deepEqual(kinds([online, offline]), ["online", "offline"]);
    assert.equal(offline.data.onlineAt, online.data.at);
    assert.ok(Date.parse(offline.data.at) >= woke - 5, "offline.at is when the hub noticed");
  } finally {
    await w.stop();
    await receiver.stop();
  }
});

test("a receiver outage: the shard retries with backoff, survives its own eviction, and every event arrives in order per user", { timeout: 60000 }, async () => {
  const receiver = await new Receiver().start();
  // The outage hits the batches (the shards' requests); the connection events, sent one by one by
  // the hubs, still go through, so the hubs hand their presence events on and the shards hold them
  // through the outage. (A full outage holds them in the hubs' outboxes first: their order is the
  // outbox's, tested in hardening.queues.)
  let down = true;
  receiver.answer = (_events, { batch }) => (down && batch ? 503 : 204);
  const w = await startWorker(vars(receiver, { PRESENCE_WEBHOOK_SHARDS: "2" }));
  const users = [uid(), uid()];
  try {
    // Three online/offline cycles per user while the backend is down.
    for (let cycle = 0; cycle < 3; cycle++) {
      const clients = await Promise.all(users.map((u) => Client.connect(w, clientToken(u))));
      await Promise.all(clients.map((c) => c.close()));
      for (const u of users) {
        const offlines = () => w.events().filter((e) => e.event === "presence_event" && e.userId === u && e.type.endsWith("offline.v1"));
        const want = cycle + 1;
        const end = Date.now() + 10000;
        while (offlines().length < want) {
          if (Date.now() > end) throw new Error(`no offline #${want} for ${u}`);
          await sleep(50);
        }
      }
    }
    // Every event reaches a shard's queue (the hubs hand off whatever the backend says).
    const queued = () => w.events().filter((e) => e.event === "events_queued").reduce((s, e) => s + e.events, 0);
    await w.event(() => queued() >= 12, 10000);
    await receiver.until(() => receiver.requests.some((r) => r.status === 503), 10000, "a refused attempt");
    assert.equal(receiver.events.filter((e) => e.batch).length, 0, "no batch accepted during the outage");
    const failed = await w.event((e) => e.event === "webhook_failed" && e.shard !== undefined, 5000);
    assert.ok(failed.retryInMs > 0);
    for (const shard of new Set(users.map((u) => shardOf(u, 2)))) await w.evictEvents(shard);
    const refusedBefore = receiver.requests.length;
    await sleep(1500);
    assert.ok(receiver.requests.length > refusedBefore, "the shard kept retrying after its eviction");
    down = false;
    for (const u of users) {
      await receiver.until(() => presenceOf(receiver, u).length >= 6, 20000, `six events for ${u}`);
      const events = presenceOf(receiver, u);
      // At least once, same ids on a repeat: deduplicated by id, the order is exactly the cycles.
      const seen = new Set();
      const unique = events.filter((e) => !seen.has(e.id) && seen.add(e.id));
      assert.deepEqual(kinds(unique), ["online", "offline", "online", "offline", "online", "offline"]);
      for (let i = 1; i < 6; i += 2) assert.equal(unique[i].data.onlineAt, unique[i - 1].data.at);
      for (let i = 1; i < 6; i++) assert.ok(Date.parse(unique[i].time) >= Date.parse(unique[i - 1].time));
    }
    assert.equal(receiver.bad.length, 0);
  } finally {
    await w.stop();
    await receiver.stop();
  }
});

test("a mass drop: 200 users' offline events arrive once each, in ceil(events/batch) requests per shard flush", { timeout: 120000 }, async () => {
  const receiver = await new Receiver().start();
  const BATCH = 10;
  const SHARDS = 2;
  const w = await startWorker(
    vars(receiver, {
      PRESENCE_WEBHOOK_BATCH_MAX: String(BATCH),
      PRESENCE_WEBHOOK_SHARDS: String(SHARDS),
      PRESENCE_WEBHOOK_FLUSH_MS: "1500",
      // 200 hubs send their connection events at once to one Node receiver on a busy machine.
      WEBHOOK_TIMEOUT_MS: "15000",
    }),
  );
  const USERS = 200;
  const users = Array.from({ length: USERS }, () => uid("mass"));
  const clients = [];
  try {
    for (let i = 0; i < USERS; i += 20) {
      clients.push(...(await Promise.all(users.slice(i, i + 20).map((u) => Client.connect(w, clientToken(u))))));
    }
    const onlineIds = () => new Set(receiver.events.filter((e) => e.event.type === "switchboard.user.online.v1").map((e) => e.event.subject));
    await receiver.until(() => onlineIds().size === USERS, 30000, "every online");
    // The shards have logged the flushes that sent them (a log line comes after its requests).
    const flushed = () => w.events().filter((e) => e.event === "events_flushed").reduce((s, f) => s + f.events, 0);
    await poll(() => flushed() === USERS, 30000, () => `the online flushes (${flushed()})`);
    const requestsBefore = receiver.requests.length;
    const logsBefore = w.events().length;

    await Promise.all(clients.map((c) => c.close()));
    const offline = () => receiver.events.filter((e) => e.event.type === "switchboard.user.offline.v1");
    await receiver.until(() => new Set(offline().map((e) => e.event.subject)).size === USERS, 40000, "every offline");
    // Once each: no user twice, no id twice, nobody missing.
    const events = offline().map((e) => e.event);
    assert.equal(events.length, USERS, "each offline exactly once");
    assert.equal(new Set(events.map((e) => e.id)).size, USERS);
    assert.deepEqual(new Set(events.map((e) => e.subject)), new Set(users));

    // The shards' batch requests (the hubs also send each connection.closed, one by one).
    const requests = receiver.requests.slice(requestsBefore).filter((r) => r.webhookId.startsWith("evs_"));
    assert.ok(requests.every((r) => r.events.every((e) => e.type === "switchboard.user.offline.v1")));
    assert.ok(requests.every((r) => r.status === 204 && r.events.length <= BATCH));
    // Each shard flush sent what had gathered as full batches: ceil(events / BATCH) requests.
    await poll(() => flushed() === 2 * USERS, 30000, () => `the offline flushes (${flushed() - USERS})`);
    const flushes = w.events().slice(logsBefore).filter((e) => e.event === "events_flushed" && e.events > 0);
    for (const f of flushes) assert.equal(f.requests, Math.ceil(f.events / BATCH), JSON.stringify(f));
    assert.equal(flushes.reduce((s, f) => s + f.events, 0), USERS);
    assert.equal(requests.length, flushes.reduce((s, f) => s + f.requests, 0));
    // Gathered, not trickled: USERS / BATCH requests plus at most one partial batch per flush, and
    // few flushes (the first event a shard gets starts a 1.5 s gathering window).
    assert.ok(flushes.length <= 3 * SHARDS, `${flushes.length} flushes`);
    assert.ok(requests.length <= Math.ceil(USERS / BATCH) + flushes.length, `${requests.length} requests for ${USERS} events`);
    console.log(`mass drop: ${USERS} offline events in ${requests.length} requests, ${flushes.length} flushes`);
  } finally {
    await w.stop();
    await receiver.stop();
  }
});

test("settings: PRESENCE_WEBHOOKS is checked at startup and needs a webhook", { timeout: 30000 }, async () => {
  for (const [extra, name] of [
    [{ PRESENCE_WEBHOOKS: "yes" }, "PRESENCE_WEBHOOKS"],
    [{ PRESENCE_WEBHOOKS: "on" }, "WEBHOOK_URL"],
    [{ USER_OFFLINE_DEBOUNCE_SECONDS: "-1" }, "USER_OFFLINE_DEBOUNCE_SECONDS"],
    [{ PRESENCE_WEBHOOK_BATCH_MAX: "0" }, "PRESENCE_WEBHOOK_BATCH_MAX"],
  ]) {
    const w = await startWorker(extra);
    try {
      const res = await fetch(`${w.url}/users/x/connections`, { headers: { authorization: `Bearer ${publishToken()}` } });
      const body = await res.json();
      assert.equal(res.status, 500);
      assert.equal(body.error, "server_misconfigured");
      assert.ok(body.message.includes(name), body.message);
    } finally {
      await w.stop();
    }
  }
});
