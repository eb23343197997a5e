// @switchboard/server against the real built Worker (workerd through Miniflare, tests/harness.mjs): publish
// with acks to a user, many users and a channel; the automatic Idempotency-Key and retries across a forced
// hub eviction with no duplicate delivery; tokens minted with jose accepted by the Worker; webhooks from the
// hub's outbox verified with standardwebhooks, a tampered one refused; the connection API; members pages;
// typed errors.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import crypto from "node:crypto";
import { startWorker, Client, clientToken, publishToken, SECRET, waitFor } from "../../../tests/harness.mjs";
import { Switchboard, SwitchboardError, WebhookVerificationError, mintToken, verifyWebhook, isFailure } from "../dist/index.js";

const WEBHOOK_SECRET = `whsec_${crypto.randomBytes(24).toString("base64")}`;

/** A webhook receiver that verifies with the SDK, and keeps the raw requests for the tamper test. */
class Receiver {
  events = [];
  raw = [];
  refused = [];
  async start() {
    this.server = http.createServer((req, res) => {
      const chunks = [];
      req.on("data", (d) => chunks.push(d));
      req.on("end", () => {
        const body = Buffer.concat(chunks).toString("utf8");
        this.raw.push({ headers: { ...req.headers }, body });
        try {
          this.events.push(verifyWebhook(WEBHOOK_SECRET, body, req.headers));
          res.writeHead(204).end();
        } catch (e) {
          this.refused.push(e);
          res.writeHead(400).end();
        }
      });
    });
    await new Promise((r) => this.server.listen(0, "127.0.0.1", r));
    this.port = this.server.address().port;
    return this;
  }
  stop() {
    this.server.closeAllConnections?.();
    return new Promise((r) => this.server.close(r));
  }
}

let w;
let receiver;
before(async () => {
  receiver = await new Receiver().start();
  w = await startWorker({ WEBHOOK_URL: `http://127.0.0.1:${receiver.port}/hooks`, WEBHOOK_SECRET, WEBHOOK_RETRY_BASE_MS: "200" });
});
after(async () => {
  await w?.stop();
  await receiver?.stop();
});

let n = 0;
const uid = (p = "srv") => `${p}-${++n}-${Math.random().toString(36).slice(2, 8)}`;
const sdk = (opts = {}) => new Switchboard({ url: w.url, secret: SECRET, retry: { minDelayMs: 20, maxDelayMs: 100 }, ...opts });
const envelopes = (frames) => frames.filter((f) => f && f.envelopeId);

test("publish to a user: the acks come back typed; connectionId targets one connection", async () => {
  const u = uid();
  const a = await Client.connect(w, clientToken(u), { autoAck: (e) => ({ tab: "a", text: e.payload?.text ?? null }) });
  const b = await Client.connect(w, clientToken(u), { autoAck: () => ({ tab: "b" }) });
  await a.subscribe([{ type: "chat" }]);
  await b.subscribe([{ type: "chat" }]);
  const sb = sdk();
  const r = await sb.publish({ userId: u, type: "chat", payload: { text: "hi" } });
  assert.equal(r.clientCount, 2);
  assert.equal(r.seq, 1);
  assert.deepEqual(new Set(r.acks.map((x) => x.connectionId)), new Set([a.id, b.id]));
  assert.deepEqual(r.acks.find((x) => x.connectionId === a.id).result, { tab: "a", text: "hi" });
  assert.deepEqual([r.pending, r.closed, r.duplicate], [[], [], undefined]);

  const mark = b.mark();
  const only = await sb.publish({ userId: u, connectionId: a.id, type: "chat", payload: { text: "just a" } });
  assert.deepEqual(only.results, [{ tab: "a", text: "just a" }]);
  assert.deepEqual(envelopes(await b.since(mark)), [], "the other connection got nothing");
  const none = await sb.publish({ userId: u, type: "chat", timeoutMs: 0 });
  assert.deepEqual([none.clientCount, none.acks, none.pending.length], [2, [], 2]);
  await Promise.all([a.close(), b.close()]);
});

test("publish to many users and to a channel: totals and per-user outcomes", async () => {
  const [x, y] = [uid(), uid()];
  const cx = await Client.connect(w, clientToken(x, { channels: ["room:*"] }), { autoAck: () => "x" });
  const cy = await Client.connect(w, clientToken(y, { channels: ["room:*"] }), { autoAck: () => "y" });
  await cx.subscribe([{ type: "note" }]);
  await cy.subscribe([{ type: "note" }]);
  const sb = sdk();
  const many = await sb.publish({ userIds: [x, y, x], type: "note", payload: 1 });
  assert.deepEqual(many.totals, { users: 2, succeeded: 2, failed: 0, clientCount: 2, acked: 2, pending: 0, closed: 0 });
  assert.deepEqual(many.users.map((u) => [u.userId, isFailure(u)]), [[x, false], [y, false]]);

  const channel = `room:${uid()}`;
  for (const c of [cx, cy]) assert.equal((await c.request({ type: "join", channel, id: "j" })).type, "ok");
  const ch = await sb.publish({ channel, type: "note", payload: { all: true } });
  assert.equal(ch.channel, channel);
  assert.deepEqual([ch.totals.users, ch.totals.acked, ch.totals.pruned, ch.truncated], [2, 2, 0, false]);
  assert.deepEqual(ch.results.sort(), ["x", "y"]);
  await Promise.all([cx.close(), cy.close()]);
});

test("a lost answer is retried with the same Idempotency-Key across a forced hub eviction: delivered once", async () => {
  const u = uid();
  const c = await Client.connect(w, clientToken(u), { autoAck: () => "seen" });
  await c.subscribe([{ type: "order" }]);
  const keys = [];
  // The first attempt reaches the Worker and is delivered and acked; then the hub is evicted and the
  // answer is "lost" on the way back (a network error), as when a load balancer drops the connection.
  const flaky = async (url, init) => {
    keys.push(init.headers["idempotency-key"]);
    const res = await fetch(url, init);
    if (keys.length === 1) {
      await res.text();
      await w.evict(u);
      throw new TypeError("fetch failed", { cause: { code: "ECONNRESET" } });
    }
    return res;
  };
  const mark = c.mark();
  const r = await sdk({ fetch: flaky }).publish({ userId: u, type: "order", payload: { id: 7 } });
  assert.equal(keys.length, 2, "one retry");
  assert.equal(keys[0], keys[1], "the retry reused the key");
  assert.match(keys[0], /^[0-9a-f-]{36}$/, "an automatic key");
  assert.equal(r.duplicate, true, "the hub recognised the retry after its eviction");
  assert.deepEqual(r.results, ["seen"], "and answered with the first attempt's acks");
  const got = envelopes(await c.since(mark));
  assert.equal(got.length, 1, "delivered once");
  assert.equal(got[0].envelopeId, r.envelopeId);
  // A new publish() is a new logical publish: a new key, delivered again.
  const again = await sdk().publish({ userId: u, type: "order", payload: { id: 7 } });
  assert.equal(again.seq, r.seq + 1);
  await c.close();
});

test("a retry that lands while the first attempt still waits for acks polls the same key until the final answer", async () => {
  const u = uid();
  const c = await Client.connect(w, clientToken(u)); // acks by hand, below
  await c.subscribe([{ type: "slow" }]);
  const keys = [];
  const answers = [];
  const mark = c.mark();
  let first;
  const impatient = async (url, init) => {
    keys.push(init.headers["idempotency-key"]);
    if (keys.length === 1) {
      // The first attempt is delivered and the caller gives up on it (as after a request timeout)
      // while the Worker still waits for the ack. (Miniflare's eviction waits for in-flight requests,
      // so the eviction case is the lost-answer test above.)
      first = fetch(url, init).then((r) => r.json());
      c.envelope = await c.next((f) => f.envelopeId);
      throw new TypeError("fetch failed");
    }
    const res = await fetch(url, init);
    const body = await res.clone().json();
    answers.push(body);
    // Ack only once a retry was told "in progress", so the SDK must poll for the final answer.
    if (body.inProgress && answers.filter((a) => a.inProgress).length === 1) c.send({ type: "ack", envelopeId: c.envelope.envelopeId, result: "late" });
    return res;
  };
  const r = await sdk({ fetch: impatient }).publish({ userId: u, type: "slow", timeoutMs: 3000 });
  assert.ok(answers[0].inProgress, `the first retry was answered inProgress: ${JSON.stringify(answers[0])}`);
  assert.ok(keys.length >= 3 && new Set(keys).size === 1, `every attempt and poll used one key: ${keys}`);
  assert.equal(r.inProgress, undefined, "the SDK returned the final answer");
  assert.deepEqual([r.duplicate, r.results, r.envelopeId], [true, ["late"], c.envelope.envelopeId]);
  assert.deepEqual((await first).results, ["late"], "the first attempt's own answer agrees");
  assert.equal(envelopes(await c.since(mark)).length, 1, "delivered once");
  await c.close();
});

test("an attempt past requestTimeoutMs is retried with the same key; a hung network ends in request_timeout", async () => {
  const u = uid();
  const c = await Client.connect(w, clientToken(u)); // never acks: the first attempt waits the full 1.5 s
  await c.subscribe([{ type: "t" }]);
  const mark = c.mark();
  const keys = [];
  const r = await sdk({ requestTimeoutMs: 300, fetch: (url, init) => (keys.push(init.headers["idempotency-key"]), fetch(url, init)) })
    .publish({ userId: u, type: "t", timeoutMs: 1500 });
  assert.ok(keys.length >= 2 && new Set(keys).size === 1, `retried with one key: ${keys}`);
  assert.deepEqual([r.duplicate, r.inProgress, r.pending], [true, undefined, [c.id]], "the final answer, polled");
  assert.equal(envelopes(await c.since(mark)).length, 1, "delivered once");
  const hung = (_url, init) => new Promise((_, reject) => init.signal.addEventListener("abort", () => reject(init.signal.reason)));
  const e = await sdk({ requestTimeoutMs: 50, retry: { attempts: 2, minDelayMs: 1 }, fetch: hung }).publish({ userId: u }).catch((x) => x);
  assert.deepEqual([e.code, e.status, e.attempts, e.retryable], ["request_timeout", 0, 2, true]);
  await c.close();
});

test("429 and 5xx are retried with the same key; 4xx are thrown at once as SwitchboardError", async () => {
  const u = uid();
  const c = await Client.connect(w, clientToken(u), { autoAck: () => 1 });
  await c.subscribe([{ type: "t" }]);
  const seen = [];
  const answers = [
    new Response(JSON.stringify({ error: "unavailable", message: "the user's hub could not be reached" }), { status: 503 }),
    new Response(JSON.stringify({ error: "too_many_requests", message: "slow down" }), { status: 429, headers: { "retry-after": "0" } }),
  ];
  const mark = c.mark();
  const r = await sdk({ fetch: async (url, init) => (seen.push(init.headers["idempotency-key"]), answers.shift() ?? fetch(url, init)) }).publish({ userId: u, type: "t" });
  assert.equal(seen.length, 3);
  assert.equal(new Set(seen).size, 1);
  assert.deepEqual(r.results, [1]);
  assert.equal(envelopes(await c.since(mark)).length, 1);

  let calls = 0;
  const err = await sdk({ fetch: (url, init) => (calls++, fetch(url, init)) }).publish({ userId: u, type: "" }).catch((e) => e);
  assert.ok(err instanceof SwitchboardError);
  assert.deepEqual([err.code, err.status, err.attempts, err.retryable, calls], ["invalid_type", 400, 1, false, 1]);

  const gone = await sdk({ url: "http://127.0.0.1:9", retry: { attempts: 2, minDelayMs: 1 } }).publish({ userId: u }).catch((e) => e);
  assert.deepEqual([gone.code, gone.status, gone.attempts, gone.retryable], ["network_error", 0, 2, true]);
  const conflict = await sdk().publish({ userId: u, type: "t", payload: 2, idempotencyKey: seen[0] }).catch((e) => e);
  assert.deepEqual([conflict.code, conflict.status], ["idempotency_conflict", 409]);
  await c.close();
});

test("mintToken (jose): client tokens connect and join granted channels; publish tokens publish", async () => {
  const u = uid();
  const token = await mintToken({ secret: SECRET, userId: u, channels: ["lobby", "room:*"], expiresIn: 60 });
  const c = await Client.connect(w, token);
  assert.equal(c.welcome.userId, u);
  assert.equal((await c.request({ type: "join", channel: "room:1", id: 1 })).type, "ok");
  assert.equal((await c.request({ type: "join", channel: "other", id: 2 })).code, "forbidden");
  const pub = await mintToken({ secret: SECRET, publish: true });
  assert.equal((await new Switchboard({ url: w.url, token: pub }).connections(u)).length, 1);
  // A client token is not a publish token: a typed 403.
  const e = await new Switchboard({ url: w.url, token }).connections(u).catch((x) => x);
  assert.deepEqual([e.code, e.status], ["forbidden", 403]);
  const bad = await new Switchboard({ url: w.url, token: await mintToken({ secret: "another-secret", publish: true }) }).connections(u).catch((x) => x);
  assert.deepEqual([bad.code, bad.status], ["invalid_token", 401]);
  await assert.rejects(mintToken({ secret: SECRET }), /userId/);
  await c.close();
});

test("webhooks from the hub's outbox verify with standardwebhooks; a tampered one is refused", async () => {
  const u = uid();
  const c = await Client.connect(w, clientToken(u));
  assert.equal((await c.request({ type: "message", data: { text: "hello backend" }, id: "m1" })).type, "ok");
  await c.close(4100, "bye");
  const mine = () => receiver.events.filter((e) => e.subject === u);
  await waitFor(() => mine().length === 3, 15000, "3 webhook events");
  assert.deepEqual(mine().map((e) => e.type), ["switchboard.connection.opened.v1", "switchboard.client.message.v1", "switchboard.connection.closed.v1"]);
  const [opened, message, closed] = mine();
  assert.equal(opened.data.transport, "websocket");
  assert.deepEqual([message.data.data, message.data.messageId], [{ text: "hello backend" }, "m1"]);
  assert.deepEqual([closed.data.code, closed.data.reason, closed.data.by], [4100, "bye", "client"]);
  assert.deepEqual(receiver.refused, []);

  const real = receiver.raw.find((r) => r.body.includes(u) && r.body.includes("hello backend"));
  assert.equal(verifyWebhook(WEBHOOK_SECRET, real.body, real.headers).id, message.id, "the real request verifies");
  const refuse = (body, headers, secret = WEBHOOK_SECRET) => assert.throws(() => verifyWebhook(secret, body, headers), WebhookVerificationError);
  refuse(real.body.replace("hello backend", "hello attacker"), real.headers);
  const sig = real.headers["webhook-signature"];
  refuse(real.body, { ...real.headers, "webhook-signature": sig.slice(0, -4) + (sig.endsWith("AAA=") ? "BBB=" : "AAA=") });
  refuse(real.body, { ...real.headers, "webhook-timestamp": String(Number(real.headers["webhook-timestamp"]) - 3600) });
  refuse(real.body, { ...real.headers, "webhook-signature": undefined });
  refuse(real.body, real.headers, `whsec_${crypto.randomBytes(24).toString("base64")}`);
  // fetch-style Headers work too.
  assert.equal(verifyWebhook(WEBHOOK_SECRET, real.body, new Headers(real.headers)).type, "switchboard.client.message.v1");
});

test("the connection API: list, close one (4002), close all; typed 404", async () => {
  const u = `conn ${uid()} é/🙂`;
  const a = await Client.connect(w, clientToken(u));
  const b = await Client.connect(w, clientToken(u));
  await a.subscribe([{ type: "x", room: "1" }]);
  const sb = sdk();
  const list = await sb.connections(u);
  assert.deepEqual(list.map((c) => c.connectionId).sort(), [a.id, b.id].sort());
  assert.deepEqual(list.find((c) => c.connectionId === a.id).filters, [{ type: "x", room: "1" }]);
  // The whole answer: the same connections and the user's webhook queue (webhooks are off here).
  const whole = await sb.connectionList(u);
  assert.deepEqual([whole.connections.map((c) => c.connectionId).sort(), whole.webhooks], [[a.id, b.id].sort(), { backlog: 0, dropped: 0 }]);
  assert.deepEqual(await sb.closeConnection(u, a.id), [a.id]);
  await a.closeFrame();
  const e = await sb.closeConnection(u, a.id).catch((x) => x);
  assert.deepEqual([e.code, e.status], ["connection_not_found", 404]);
  assert.deepEqual(await sb.closeConnections(u), [b.id]);
  await b.closeFrame();
  assert.deepEqual(await sb.connections(u), []);
});

test("members: an async iterator over pages", async () => {
  const channel = `room:${uid()}`;
  const users = Array.from({ length: 7 }, (_, i) => `m${i}-${uid()}`);
  const clients = [];
  for (const u of users) {
    const c = await Client.connect(w, clientToken(u, { channels: ["room:*"] }));
    assert.equal((await c.request({ type: "join", channel, id: 1 })).type, "ok");
    clients.push(c);
  }
  const pages = [];
  for await (const page of sdk().members(channel, { limit: 3 })) pages.push(page);
  assert.deepEqual(pages.map((p) => p.members.length), [3, 3, 1]);
  assert.ok(pages.every((p) => p.count === 7 && p.channel === channel));
  assert.equal(pages.at(-1).nextCursor, null);
  assert.deepEqual(pages.flatMap((p) => p.members), [...users].sort());
  const bad = await sdk().membersPage(channel, { limit: 0 }).catch((x) => x);
  assert.deepEqual([bad.code, bad.status], ["invalid_limit", 400]);
  await Promise.all(clients.map((c) => c.close()));
});
