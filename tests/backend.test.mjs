// Backend integration end to end: signed CloudEvents webhooks through a real local receiver that
// verifies signatures independently, an outage with a forced eviction in the middle, the connection
// API, connection lifetime (4001/4003) and the per-user connection cap.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import crypto from "node:crypto";
import { startWorker, Client, SseClient, WebhookReceiver, publish, clientToken, publishToken, mint, now } from "./harness.mjs";

const SECRET_BYTES = crypto.randomBytes(24);
const WEBHOOK_SECRET = `whsec_${SECRET_BYTES.toString("base64")}`;

let receiver;
let w;
before(async () => {
  receiver = await new WebhookReceiver(SECRET_BYTES).start();
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

test("a backend outage loses nothing: retried with the same webhook-id and growing backoff, in order, across a forced eviction", { timeout: 60000 }, async () => {
  const u = user();
  const port = receiver.port;
  const attemptsOf = (id) => receiver.attempts.filter((a) => a.webhookId === id);
  receiver.mode = "503";
  const c = await Client.connect(w, clientToken(u));
  for (let i = 0; i < 5; i++) assert.equal((await c.request({ type: "message", data: { i }, id: i })).type, "ok");
  // The first event (connection.opened) is retried; the others wait behind it.
  await receiver.until(() => receiver.attempts.filter((a) => a.event?.subject === u).length >= 4);
  await receiver.stop(); // now connection refused
  await w.evict(u); // the hub leaves memory with its queue in storage
  await c.close(1000, "done");
  const during = receiver.attempts.filter((a) => a.event?.subject === u);
  assert.ok(during.every((a) => a.valid && a.status === 503), "every attempt was signed and refused");
  const openedId = during[0].webhookId;
  assert.equal(during[0].event.type, "switchboard.connection.opened.v1");
  assert.deepEqual(new Set(during.map((a) => a.webhookId)), new Set([openedId]), "only the oldest event is tried while it fails: the same webhook-id on every retry");
  // Backoff (WEBHOOK_RETRY_BASE_MS 200, doubling, max 1000, jitter in [half, full]): the k-th wait is at
  // least half of 200·2^(k-1) (less 50 ms for the two clocks), and the third wait is longer than the first.
  const gaps = during.slice(1).map((a, k) => a.at - during[k].at);
  gaps.forEach((g, k) => assert.ok(g >= Math.min(200 * 2 ** k, 1000) / 2 - 50, `wait ${k + 1} was ${g} ms: ${gaps}`));
  assert.ok(gaps[2] > gaps[0], `backoff grows: ${gaps}`);
  await new Promise((r) => setTimeout(r, 1500)); // attempts keep failing while the receiver is down
  await receiver.start(port);
  await receiver.until(() => ofUser(u).length === 7, 30000);
  const events = ofUser(u).map((e) => e.event);
  assert.deepEqual(events.map((e) => e.type.split(".").slice(1, 3).join(".")), [
    "connection.opened", "client.message", "client.message", "client.message", "client.message", "client.message",
    "connection.closed",
  ]);
  assert.equal(ofUser(u)[0].webhookId, openedId, "the event finally accepted is the one retried");
  assert.deepEqual(events.slice(1, 6).map((e) => e.data.data.i), [0, 1, 2, 3, 4]);
  // Duplicates are allowed only with the same webhook-id, and every request was signed correctly.
  for (const e of receiver.events.filter((e) => e.event.subject === u)) assert.equal(e.webhookId, e.event.id);
  assert.deepEqual(receiver.bad, []);
  assert.ok(attemptsOf(openedId).length >= 5);
  assert.ok(w.events().some((e) => e.event === "webhook_failed" && e.webhookId === openedId), "failures were logged");
});

test("a backend that accepts and never answers: each attempt ends at WEBHOOK_TIMEOUT_MS and is retried with the same webhook-id", { timeout: 30000 }, async () => {
  const hang = await new WebhookReceiver(SECRET_BYTES).start();
  hang.mode = "hang";
  const w2 = await startWorker({
    WEBHOOK_URL: `http://127.0.0.1:${hang.port}/`,
    WEBHOOK_SECRET,
    WEBHOOK_TIMEOUT_MS: "400",
    WEBHOOK_RETRY_BASE_MS: "100",
    WEBHOOK_RETRY_MAX_MS: "200",
  });
  try {
    const u = user();
    const c = await Client.connect(w2, clientToken(u));
    await hang.until(() => hang.attempts.length >= 3);
    const tries = hang.attempts.slice(0, 3);
    assert.ok(tries.every((a) => a.valid && a.status === null), "accepted, never answered");
    assert.equal(new Set(tries.map((a) => a.webhookId)).size, 1, "the same event, the same webhook-id");
    // Each wait is the 400 ms timeout plus the backoff (at least 50 ms), less 50 ms for the clocks.
    for (let k = 1; k < 3; k++) assert.ok(tries[k].at - tries[k - 1].at >= 400, `attempt ${k + 1} after ${tries[k].at - tries[k - 1].at} ms`);
    const failed = w2.events().filter((e) => e.event === "webhook_failed" && e.webhookId === tries[0].webhookId);
    assert.ok(failed.length >= 2);
    assert.match(failed[0].reason, /no answer within 400 ms/);
    // Answered at last: delivered, with that same id (at least once).
    hang.mode = "up";
    await hang.until(() => hang.events.length >= 1);
    assert.equal(hang.events[0].webhookId, tries[0].webhookId);
    assert.equal(hang.events[0].event.type, "switchboard.connection.opened.v1");
    c.ws.terminate();
  } finally {
    await w2.stop();
    await hang.stop();
  }
});

test("an event older than WEBHOOK_MAX_AGE_SECONDS is dropped, never delivered, and the events behind it then go out in order", { timeout: 30000 }, async () => {
  // The receiver refuses only connection.opened events, so that one ages out while the messages
  // queued behind it are young enough to go once it is dropped.
  const picky = await new WebhookReceiver(SECRET_BYTES).start();
  picky.refuse = (a) => a.event?.type === "switchboard.connection.opened.v1";
  const w2 = await startWorker({
    WEBHOOK_URL: `http://127.0.0.1:${picky.port}/`,
    WEBHOOK_SECRET,
    WEBHOOK_RETRY_BASE_MS: "200",
    WEBHOOK_RETRY_MAX_MS: "400",
    WEBHOOK_MAX_AGE_SECONDS: "2",
  });
  try {
    const u = user();
    const c = await Client.connect(w2, clientToken(u));
    await picky.until(() => picky.attempts.length >= 2);
    const droppedId = picky.attempts[0].webhookId;
    // Queued behind the failing event, about 0.8 s younger than it: still fresh when it is dropped
    // (at its first attempt past 2 s, at most 400 ms later).
    await new Promise((r) => setTimeout(r, 600));
    for (const i of [1, 2]) assert.equal((await c.request({ type: "message", data: { i }, id: i })).type, "ok");
    await picky.until(() => picky.events.length >= 2, 15000);
    const dropped = w2.events().filter((e) => e.event === "webhook_dropped");
    assert.deepEqual(dropped.map((e) => e.eventId), [droppedId], "the dropped event, and only it, is named in the log");
    assert.ok(picky.attempts.filter((a) => a.webhookId === droppedId).every((a) => a.status === 503), "the dropped event was never accepted");
    assert.deepEqual(picky.events.map((e) => e.event.data.data.i), [1, 2], "the events behind it, in order");
    assert.deepEqual(picky.bad, []);
    c.ws.terminate();
  } finally {
    await w2.stop();
    await picky.stop();
  }
});

test("the connection API lists and closes connections (publish scope)", async () => {
  const u = `api user ${user()} é/🙂`;
  const tokenExp = now() + 3600;
  const a = await Client.connect(w, mint({ userId: u, exp: tokenExp }));
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
  const code = (r) => [r.status, r.body.error];
  const list = await call(base);
  assert.equal(list.status, 200);
  const byId = Object.fromEntries(list.body.connections.map((c) => [c.connectionId, c]));
  assert.deepEqual(new Set(Object.keys(byId)), new Set([a.id, b.id, s.id]));
  assert.deepEqual(byId[a.id].filters, [{ type: "chat", room: "1" }]);
  assert.equal(byId[a.id].transport, "websocket");
  assert.equal(byId[s.id].transport, "sse");
  assert.ok(!Number.isNaN(Date.parse(byId[a.id].connectedAt)));
  // expiresAt is the token's exp; closesAt the earlier of exp and MAX_CONNECTION_SECONDS (unset here).
  assert.equal(byId[a.id].expiresAt, new Date(tokenExp * 1000).toISOString());
  assert.equal(byId[a.id].closesAt, byId[a.id].expiresAt);
  assert.ok(byId[a.id].lastPingAt && !Number.isNaN(Date.parse(byId[a.id].lastPingAt)), "auto-answered ping time");
  assert.equal(byId[b.id].lastPingAt, null);

  assert.deepEqual(code(await call(base, "GET", clientToken(u))), [403, "forbidden"]);
  assert.deepEqual(code(await call(base, "GET", null)), [401, "missing_token"]);
  assert.deepEqual(code(await call(base, "PUT")), [405, "method_not_allowed"]);
  assert.deepEqual(code(await call(`${w.url}/users/${encodeURIComponent(u)}/nope`)), [404, "not_found"]);
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
  assert.deepEqual(closes.map((d) => [d.connectionId, d.code, d.by]).sort(), [a.id, b.id, s.id].map((id) => [id, 4002, "backend"]).sort());
  assert.deepEqual(closes.find((d) => d.connectionId === s.id).transport, "sse");
  const opens = ofUser(u).filter((e) => e.event.type.endsWith("opened.v1")).map((e) => e.event.data);
  assert.deepEqual(opens.map((d) => [d.connectionId, d.transport]).sort(), [[a.id, "websocket"], [b.id, "websocket"], [s.id, "sse"]].sort());
  assert.equal((await call(base)).body.webhooks.dropped, 0);
});

/** The hub's own `close` log line for a connection (userId, connectionId, code, reason, by). */
const closeLog = (target, id) => target.events().find((e) => e.event === "close" && e.connectionId === id);

test("4001 at the token's exp, driven by the hub's alarm after the hub was evicted; the webhook says by lifetime", { timeout: 30000 }, async () => {
  const u = user();
  const c = await Client.connect(w, mint({ userId: u, exp: now() + 2 }));
  const started = Date.now();
  // Out of memory with its sockets: only the alarm it armed can close the connection now.
  assert.equal(await w.evict(u), true, "the hub was running and was evicted");
  assert.deepEqual(await c.closeFrame(10000, { terminate: true }), { code: 4001, reason: "token expired" });
  assert.ok(Date.now() - started < 3500, `closed at the token's exp (${Date.now() - started} ms)`);
  assert.deepEqual(closeLog(w, c.id), { ...closeLog(w, c.id), userId: u, code: 4001, by: "lifetime" });
  await receiver.until(() => ofUser(u).some((e) => e.event.type.endsWith("closed.v1")));
  const closed = ofUser(u).find((e) => e.event.type.endsWith("closed.v1")).event.data;
  assert.deepEqual([closed.connectionId, closed.code, closed.reason, closed.by], [c.id, 4001, "token expired", "lifetime"]);
});

test("4003 at MAX_CONNECTION_SECONDS for sockets and SSE streams, after an eviction too; closesAt says when", { timeout: 30000 }, async () => {
  const w2 = await startWorker({ MAX_CONNECTION_SECONDS: "2" });
  try {
    const u = user();
    const d = await Client.connect(w2, clientToken(u));
    const s = await SseClient.open(w2, clientToken(u), { filters: [{ type: "t" }] });
    const list = await fetch(`${w2.url}/users/${encodeURIComponent(u)}/connections`, { headers: { authorization: `Bearer ${publishToken()}` } });
    for (const conn of (await list.json()).connections) {
      assert.equal(Date.parse(conn.closesAt) - Date.parse(conn.connectedAt), 2000, "closesAt: connectedAt + MAX_CONNECTION_SECONDS (earlier than exp)");
      assert.ok(Date.parse(conn.expiresAt) > Date.parse(conn.closesAt));
    }
    assert.equal(await w2.evict(u), true);
    assert.deepEqual(await d.closed, { code: 4003, reason: "connection lifetime reached" });
    // The stream ends cleanly (EventSource then reconnects), not with an error, and the hub closed
    // that very connection with 4003.
    assert.deepEqual(await s.ended, { how: "eof" });
    for (const id of [d.id, s.id]) assert.deepEqual([closeLog(w2, id)?.code, closeLog(w2, id)?.by], [4003, "lifetime"], id);
  } finally {
    await w2.stop();
  }
});

test("a frame over MAX_FRAME_BYTES is reported to the webhook as closed by abuse", async () => {
  const u = user();
  const c = await Client.connect(w, clientToken(u));
  c.send("x".repeat(1024 * 1024 + 1));
  assert.equal((await c.closed).code, 4009);
  await receiver.until(() => ofUser(u).some((e) => e.event.type.endsWith("closed.v1")));
  const closed = ofUser(u).find((e) => e.event.type.endsWith("closed.v1")).event.data;
  assert.deepEqual([closed.connectionId, closed.code, closed.by], [c.id, 4009, "abuse"]);
});

test("MAX_CONNECTIONS_PER_USER refuses more connections with 429", async () => {
  const w2 = await startWorker({ MAX_CONNECTIONS_PER_USER: "2" });
  try {
    const u = user();
    const a = await Client.connect(w2, clientToken(u));
    const b = await Client.connect(w2, clientToken(u));
    await assert.rejects(Client.connect(w2, clientToken(u)), (e) => e.status === 429 && e.body?.error === "too_many_requests");
    const sse = await SseClient.open(w2, clientToken(u));
    assert.equal(sse.status, 429);
    assert.equal(sse.body.error, "too_many_requests");
    const other = await Client.connect(w2, clientToken(user()));
    // The hub forgets a closed socket in the close handler itself, before its next request.
    await a.close();
    const c = await Client.connect(w2, clientToken(u));
    for (const x of [b, c, other]) await x.close();
  } finally {
    await w2.stop();
  }
});
