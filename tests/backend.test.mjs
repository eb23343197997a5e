// Backend integration end to end: signed CloudEvents webhooks through a real local receiver that
// verifies signatures independently, an outage with a forced eviction in the middle, the connection
// API, connection lifetime (4001/4003) and the per-user connection cap.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import crypto from "node:crypto";
import { startWorker, Client, SseClient, publish, clientToken, publishToken, mint, now } from "./harness.mjs";

const SECRET_BYTES = crypto.randomBytes(24);
const WEBHOOK_SECRET = `whsec_${SECRET_BYTES.toString("base64")}`;

/** A webhook receiver on 127.0.0.1 that verifies every request the way a backend would. */
class Receiver {
  events = []; // verified, in arrival order
  requests = 0;
  bad = [];
  mode = "up"; // "up" | "503" | "down" (not listening)
  #waiters = [];

  async start(port = 0) {
    this.server = http.createServer((req, res) => {
      let body = "";
      req.on("data", (d) => (body += d));
      req.on("end", () => {
        this.requests++;
        if (this.mode === "503") {
          res.writeHead(503).end("down for maintenance");
          return;
        }
        const id = req.headers["webhook-id"];
        const ts = req.headers["webhook-timestamp"];
        const sig = req.headers["webhook-signature"];
        const expected = crypto.createHmac("sha256", SECRET_BYTES).update(`${id}.${ts}.${body}`).digest("base64");
        const fresh = Math.abs(Date.now() / 1000 - Number(ts)) < 300;
        const valid = typeof sig === "string" && sig.split(" ").some((s) => s === `v1,${expected}`);
        if (!valid || !fresh || !req.headers["content-type"]?.startsWith("application/cloudevents+json")) {
          this.bad.push({ id, ts, sig, body });
          res.writeHead(400).end();
          return;
        }
        const event = JSON.parse(body);
        this.events.push({ webhookId: id, event });
        res.writeHead(204).end();
        this.#waiters.splice(0).forEach((w) => w());
      });
    });
    await new Promise((r) => this.server.listen(port, "127.0.0.1", r));
    this.port = this.server.address().port;
    this.mode = "up";
    return this;
  }

  async stop() {
    this.mode = "down";
    await new Promise((r) => this.server.close(r));
    this.server.closeAllConnections?.();
  }

  /** Events with distinct webhook ids, in first-arrival order. */
  unique() {
    const seen = new Set();
    return this.events.filter((e) => !seen.has(e.webhookId) && seen.add(e.webhookId));
  }

  async until(pred, ms = 15000) {
    const end = Date.now() + ms;
    while (!pred(this)) {
      if (Date.now() > end) throw new Error(`receiver: timed out; got ${JSON.stringify(this.unique().map((e) => e.event.type))}`);
      await new Promise((r) => (this.#waiters.push(r), setTimeout(r, 100)));
    }
  }
}

let receiver;
let w;
before(async () => {
  receiver = await new Receiver().start();
  w = await startWorker({
    WEBHOOK_URL: `http://127.0.0.1:${receiver.port}/hooks/switchboard`,
    WEBHOOK_SECRET,
    WEBHOOK_RETRY_BASE_MS: "200",
    WEBHOOK_RETRY_MAX_MS: "1000",
    WEBHOOK_TIMEOUT_MS: "2000",
  });
});
after(async () => {
  await w.stop();
  if (receiver.mode !== "down") await receiver.stop();
});

let n = 0;
const user = () => `be-user-${++n}-${Math.random().toString(36).slice(2)}`;
const ofUser = (u) => receiver.unique().filter((e) => e.event.subject === u);

test("connection and message events arrive signed, as CloudEvents, in order", async () => {
  const u = user();
  const c = await Client.connect(w, clientToken(u));
  assert.deepEqual(await c.request({ type: "message", data: { text: "hi", n: [1] }, id: "m1" }), { type: "ok", id: "m1" });
  c.send({ type: "message", data: "no id" }); // stored silently
  await c.close(4321, "bye now");
  await receiver.until(() => ofUser(u).length === 4);
  const events = ofUser(u).map((e) => e.event);
  assert.deepEqual(events.map((e) => e.type), [
    "switchboard.connection.opened.v1",
    "switchboard.client.message.v1",
    "switchboard.client.message.v1",
    "switchboard.connection.closed.v1",
  ]);
  for (const e of events) {
    assert.equal(e.specversion, "1.0");
    assert.equal(e.subject, u);
    assert.equal(e.source, "/switchboard");
    assert.equal(e.datacontenttype, "application/json");
    assert.ok(!Number.isNaN(Date.parse(e.time)));
    assert.equal(e.data.connectionId, c.id);
  }
  assert.deepEqual(events[1].data.data, { text: "hi", n: [1] });
  assert.equal(events[1].data.messageId, "m1");
  assert.equal(events[2].data.data, "no id");
  assert.equal(events[0].data.transport, "websocket");
  assert.deepEqual([events[3].data.code, events[3].data.reason, events[3].data.by], [4321, "bye now", "client"]);
  assert.deepEqual(receiver.bad, []);
  assert.ok(ofUser(u).every((e) => e.webhookId === e.event.id));
});

test("a backend outage loses nothing: retried with backoff, in order, across a forced eviction", { timeout: 60000 }, async () => {
  const u = user();
  const port = receiver.port;
  receiver.mode = "503";
  const c = await Client.connect(w, clientToken(u));
  for (let i = 0; i < 5; i++) assert.equal((await c.request({ type: "message", data: { i }, id: i })).type, "ok");
  await new Promise((r) => setTimeout(r, 700)); // a few failed attempts
  await receiver.stop(); // now connection refused
  await w.evict(u); // the hub leaves memory with its queue in storage
  await c.close(1000, "done");
  await new Promise((r) => setTimeout(r, 1500));
  assert.equal(ofUser(u).length, 0, "nothing delivered during the outage");
  await receiver.start(port);
  await receiver.until(() => ofUser(u).length === 7, 30000);
  const events = ofUser(u).map((e) => e.event);
  assert.deepEqual(events.map((e) => e.type.split(".").slice(1, 3).join(".")), [
    "connection.opened", "client.message", "client.message", "client.message", "client.message", "client.message",
    "connection.closed",
  ]);
  assert.deepEqual(events.slice(1, 6).map((e) => e.data.data.i), [0, 1, 2, 3, 4]);
  // Duplicates are allowed only with the same webhook-id, and every request was signed correctly.
  const all = receiver.events.filter((e) => e.event.subject === u);
  for (const e of all) assert.equal(e.webhookId, e.event.id);
  assert.deepEqual(receiver.bad, []);
  assert.ok(w.events().some((e) => e.event === "webhook_failed"), "failures were logged");
});

test("events older than WEBHOOK_MAX_AGE_SECONDS are dropped with an error log", { timeout: 30000 }, async () => {
  const dead = await new Receiver().start();
  dead.mode = "503";
  const w2 = await startWorker({
    WEBHOOK_URL: `http://127.0.0.1:${dead.port}/`,
    WEBHOOK_SECRET,
    WEBHOOK_RETRY_BASE_MS: "200",
    WEBHOOK_RETRY_MAX_MS: "400",
    WEBHOOK_MAX_AGE_SECONDS: "1",
  });
  try {
    const u = user();
    const c = await Client.connect(w2, clientToken(u));
    const end = Date.now() + 15000;
    while (!w2.events().some((e) => e.event === "webhook_dropped")) {
      if (Date.now() > end) throw new Error("no webhook_dropped log");
      await new Promise((r) => setTimeout(r, 200));
    }
    assert.ok(dead.requests >= 1);
    c.ws.terminate();
  } finally {
    await w2.stop();
    await dead.stop();
  }
});

test("the connection API lists and closes connections (publish scope)", async () => {
  const u = `api user ${user()} é/🙂`;
  const a = await Client.connect(w, clientToken(u));
  const b = await Client.connect(w, clientToken(u));
  const s = await SseClient.open(w, clientToken(u), { filters: [{ type: "x" }] });
  await a.subscribe([{ type: "chat", room: "1" }]);
  a.send("ping");
  await a.next((f) => f === "pong");
  const base = `${w.url}/users/${encodeURIComponent(u)}/connections`;
  const call = async (url, method = "GET", token = publishToken()) => {
    const res = await fetch(url, { method, headers: token ? { authorization: `Bearer ${token}` } : {} });
    return { status: res.status, body: await res.json() };
  };
  const list = await call(base);
  assert.equal(list.status, 200);
  const byId = Object.fromEntries(list.body.connections.map((c) => [c.connectionId, c]));
  assert.deepEqual(new Set(Object.keys(byId)), new Set([a.id, b.id, s.id]));
  assert.deepEqual(byId[a.id].filters, [{ type: "chat", room: "1" }]);
  assert.equal(byId[a.id].transport, "websocket");
  assert.equal(byId[s.id].transport, "sse");
  assert.ok(!Number.isNaN(Date.parse(byId[a.id].connectedAt)));
  assert.ok(byId[a.id].expiresAt, "token expiry is shown");
  assert.ok(byId[a.id].lastPingAt && !Number.isNaN(Date.parse(byId[a.id].lastPingAt)), "auto-answered ping time");
  assert.equal(byId[b.id].lastPingAt, null);

  assert.equal((await call(base, "GET", clientToken(u))).status, 403);
  assert.equal((await call(base, "GET", null)).status, 401);
  assert.equal((await call(base, "PUT")).status, 405);
  assert.equal((await call(`${w.url}/users/${encodeURIComponent(u)}/nope`)).status, 404);
  assert.equal((await call(`${base}/not-a-connection`, "DELETE")).body.error, "connection_not_found");
  // Hostile paths: an oversized or empty user id is refused before any hub is touched.
  assert.equal((await call(`${w.url}/users/${"x".repeat(300)}/connections`)).body.error, "invalid_user_id");
  assert.equal((await call(`${w.url}/users//connections`)).body.error, "invalid_user_id");
  assert.equal((await call(`${w.url}/users/${encodeURIComponent(u)}/connections/`, "DELETE")).status, 404);
  assert.equal((await call(`${w.url}/users/${"y".repeat(20000)}/connections`, "GET")).status >= 400, true);

  const kicked = await call(`${base}/${a.id}`, "DELETE");
  assert.deepEqual(kicked, { status: 200, body: { closed: [a.id] } });
  assert.deepEqual(await a.closed, { code: 4002, reason: "closed by the backend" });
  const rest = await call(base, "DELETE");
  assert.deepEqual(new Set(rest.body.closed), new Set([b.id, s.id]));
  assert.equal((await b.closed).code, 4002);
  assert.deepEqual((await call(base)).body.connections, []);
  await receiver.until(() => ofUser(u).filter((e) => e.event.type.endsWith("closed.v1")).length === 3);
  const closes = ofUser(u).filter((e) => e.event.type.endsWith("closed.v1")).map((e) => e.event.data);
  assert.ok(closes.every((d) => d.code === 4002 && d.by === "backend"));
  assert.equal((await call(base)).body.webhooks.dropped, 0);
});

test("a connection closes with 4001 when its token expires, and 4003 at MAX_CONNECTION_SECONDS", { timeout: 30000 }, async () => {
  const u = user();
  const c = await Client.connect(w, mint({ userId: u, exp: now() + 2 }));
  const started = Date.now();
  await c.closeFrame();
  assert.ok(Date.now() - started < 3500, `closed at the token's exp (${Date.now() - started} ms)`);
  assert.deepEqual(await c.closed, { code: 4001, reason: "token expired" });
  const w2 = await startWorker({ MAX_CONNECTION_SECONDS: "1" });
  try {
    const d = await Client.connect(w2, clientToken(user()));
    assert.deepEqual(await d.closed, { code: 4003, reason: "connection lifetime reached" });
    // An SSE stream ends the same way (EventSource then reconnects with a fresh token).
    const s = await SseClient.open(w2, clientToken(user()));
    await s.ended;
  } finally {
    await w2.stop();
  }
});

test("MAX_CONNECTIONS_PER_USER refuses more connections with 429", async () => {
  const w2 = await startWorker({ MAX_CONNECTIONS_PER_USER: "2" });
  try {
    const u = user();
    const a = await Client.connect(w2, clientToken(u));
    const b = await Client.connect(w2, clientToken(u));
    await assert.rejects(Client.connect(w2, clientToken(u)), (e) => e.status === 429);
    const sse = await SseClient.open(w2, clientToken(u));
    assert.equal(sse.status, 429);
    assert.equal(sse.body.error, "too_many_requests");
    const other = await Client.connect(w2, clientToken(user()));
    await a.close();
    await new Promise((r) => setTimeout(r, 100));
    const c = await Client.connect(w2, clientToken(u));
    for (const x of [b, c, other]) await x.close();
  } finally {
    await w2.stop();
  }
});
