// The machine-readable specs against the real Worker: every HTTP route of docs/openapi.yaml and every
// WebSocket/SSE frame of docs/asyncapi.yaml is exercised on the built Worker in workerd, and every
// request, answer, frame and close code seen is validated against them (tests/spec.mjs, ajv). The last
// test fails if a documented route or frame was not exercised, so the specs and the suite move together.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import http from "node:http";
import { createRequire } from "node:module";
import path from "node:path";
import Ajv from "ajv";
import os from "node:os";
import WebSocket from "ws";
import { startWorker, Client, SseClient, clientToken, publishToken, now, ROOT } from "./harness.mjs";
import { Receiver, WEBHOOK_SECRET } from "./receiver.mjs";
import { checkRequest, checkResponse, checkErrorBody, checkFrame, checkClose, covered, operations, messages, asyncapi, openapi } from "./spec.mjs";

let w;
// IDEMPOTENCY_MAX_RESPONSE_BYTES at its minimum, so an answer with one large ack result is stored trimmed.
before(async () => (w = await startWorker({ HISTORY_LIMIT: "3", MAX_PUBLISH_BYTES: "4096", MAX_FRAME_BYTES: "2048", MAX_CONNECTIONS_PER_USER: "3", IDEMPOTENCY_MAX_RESPONSE_BYTES: "1024" })));
after(() => w?.stop());

let n = 0;
const uid = (p = "spec") => `${p}-${++n}-${Math.random().toString(36).slice(2, 8)}`;
const sockets = [];

/** A harness client whose every sent and received frame is checked against asyncapi.yaml. */
async function connect(token, { worker = w, ...opts } = {}) {
  const c = await Client.connect(worker, token, opts);
  const send = c.send.bind(c);
  c.send = (frame) => {
    if (!Buffer.isBuffer(frame)) checkFrame(typeof frame === "string" ? frame : JSON.parse(JSON.stringify(frame)), "send");
    send(frame);
  };
  sockets.push(c);
  return c;
}
/** Validates everything a client received (call at the end of each test that uses sockets). */
function checkReceived(c) {
  for (const f of c.log) checkFrame(f, "receive");
}

/** An HTTP call, validated: request body (when JSON) and answer against the route's operation. */
async function call(method, url, route, { body, token = publishToken(), headers = {}, raw, worker = w } = {}) {
  const h = { ...headers };
  if (token) h.authorization = `Bearer ${token}`;
  if (body !== undefined || raw !== undefined) h["content-type"] ??= "application/json";
  const res = await fetch(`${worker.url}${url}`, { method, headers: h, body: raw ?? (body === undefined ? undefined : JSON.stringify(body)) });
  const text = await res.text();
  const json = text ? JSON.parse(text) : undefined;
  if (body !== undefined && res.status === 200) checkRequest(method, route, body);
  checkResponse(method, route, res.status, method === "HEAD" ? undefined : json);
  return { status: res.status, body: json, headers: res.headers };
}

/** A WebSocket upgrade the Worker refuses: its status and JSON body (fetch cannot send `Upgrade`; `ws` can). */
function refusedUpgrade(url) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    ws.once("unexpected-response", (_req, res) => {
      let text = "";
      res.on("data", (d) => (text += d));
      res.on("end", () => resolve({ status: res.statusCode, body: JSON.parse(text) }));
    });
    ws.once("error", () => {});
    ws.once("open", () => (ws.terminate(), reject(new Error(`connected: ${url}`))));
  });
}

test("docs/asyncapi.yaml is a valid AsyncAPI 3.0.0 document (the official schema, @asyncapi/specs)", () => {
  const schema = createRequire(import.meta.url)("@asyncapi/specs").schemas["3.0.0"];
  // The official schema embeds its own copy of the draft-07 meta-schema, so Ajv's built-in one stays out.
  const validate = new Ajv({ strict: false, allErrors: true, meta: false, validateSchema: false }).compile(schema);
  assert.ok(validate(asyncapi), JSON.stringify(validate.errors?.slice(0, 5)));
});

test("/tickets: a ticket, and the refusals, match openapi.yaml", async () => {
  const u = uid();
  const issued = await call("POST", "/tickets", "/tickets", { token: clientToken(u) });
  assert.equal(issued.status, 200);
  assert.equal((await call("POST", "/tickets", "/tickets", { token: null })).status, 401);
  assert.equal((await call("POST", "/tickets", "/tickets", { token: publishToken() })).body.error, "invalid_token");
});

test("/publish: user, userIds and channel publishes and every error answer match openapi.yaml", async () => {
  const u = uid();
  const c = await connect(clientToken(u, { channels: ["room:*"] }), { autoAck: () => ({ ok: 1 }) });
  assert.equal((await c.subscribe([{ type: "t" }], { id: "s" })).type, "ok");
  const one = await call("POST", "/publish", "/publish", { body: { userId: u, type: "t", payload: { a: 1 }, timeoutMs: 2000 } });
  assert.deepEqual([one.status, one.body.results], [200, [{ ok: 1 }]]);
  const key = { "idempotency-key": `k-${u}` };
  await call("POST", "/publish", "/publish", { body: { userId: u, type: "t" }, headers: key });
  const dup = await call("POST", "/publish", "/publish", { body: { userId: u, type: "t" }, headers: key });
  assert.equal(dup.body.duplicate, true);
  // An answer over IDEMPOTENCY_MAX_RESPONSE_BYTES (1024 here) is stored without its ack results: the retry
  // says `trimmed` and keeps who acked.
  const v = uid();
  const big = "r".repeat(1200);
  const acker = await connect(clientToken(v), { autoAck: () => big });
  await acker.subscribe([{ type: "t" }]);
  const bigKey = { "idempotency-key": `big-${v}` };
  const whole = await call("POST", "/publish", "/publish", { body: { userId: v, type: "t" }, headers: bigKey });
  assert.deepEqual([whole.body.results, whole.body.trimmed], [[big], undefined]);
  const trimmed = await call("POST", "/publish", "/publish", { body: { userId: v, type: "t" }, headers: bigKey });
  assert.deepEqual(
    [trimmed.body.duplicate, trimmed.body.trimmed, trimmed.body.envelopeId, trimmed.body.results, trimmed.body.acks],
    [true, true, whole.body.envelopeId, [], [{ connectionId: acker.id }]],
  );
  await acker.close();
  checkReceived(acker);
  const many = await call("POST", "/publish", "/publish", { body: { userIds: [u, uid()], type: "t" } });
  assert.equal(many.body.totals.users, 2);
  const channel = `room:${uid()}`;
  assert.equal((await c.request({ type: "join", channel, id: "j" })).type, "ok");
  const ch = await call("POST", "/publish", "/publish", { body: { channel, type: "t", payload: "x" } });
  assert.equal(ch.body.totals.acked, 1);
  const target = await call("POST", "/publish", "/publish", { body: { userId: u, connectionId: c.id, type: "t" } });
  assert.equal(target.body.clientCount, 1);

  const errors = [
    [{ raw: "{nope" }, 400, "invalid_json"],
    [{ body: [1] }, 400, "invalid_body"],
    [{ body: { type: "t" } }, 400, "invalid_user_id"],
    [{ body: { userIds: [] } }, 400, "invalid_user_ids"],
    [{ body: { userId: u, type: "" } }, 400, "invalid_type"],
    [{ body: { userIds: [u], connectionId: "c" } }, 400, "invalid_connection_id"],
    [{ body: { channel: "bad name" } }, 400, "invalid_channel"],
    [{ body: { userId: u, timeoutMs: -1 } }, 400, "invalid_timeout"],
    [{ body: { userId: u }, headers: { "idempotency-key": "has space" } }, 400, "invalid_idempotency_key"],
    [{ body: { userId: u }, token: null }, 401, "missing_token"],
    [{ body: { userId: u }, token: "x.y.z" }, 401, "invalid_token"],
    [{ body: { userId: u }, token: publishToken({ exp: now() - 3600 }) }, 401, "token_expired"],
    [{ body: { userId: u }, token: publishToken({ nbf: now() + 3600 }) }, 401, "token_not_yet_valid"],
    [{ body: { userId: u }, token: clientToken(u) }, 403, "forbidden"],
    [{ body: { userId: u, connectionId: "gone" } }, 404, "connection_not_found"],
    [{ body: { userId: u, type: "other" }, headers: key }, 409, "idempotency_conflict"],
    [{ body: { userId: u, payload: "x".repeat(5000) } }, 413, "payload_too_large"],
    [{ body: { userId: u }, headers: { "content-type": "text/plain" } }, 415, "unsupported_media_type"],
  ];
  for (const [opts, status, code] of errors) {
    const r = await call("POST", "/publish", "/publish", opts);
    assert.deepEqual([r.status, r.body.error], [status, code], JSON.stringify(opts).slice(0, 200));
  }
  await c.close();
  checkReceived(c);
});

test("WebSocket: every client frame and every server frame kind, validated against asyncapi.yaml", async () => {
  const u = uid();
  const peer = uid();
  const grants = { channels: ["room:*"], publishChannels: ["room:*"] };
  const c = await connect(clientToken(u, grants));
  const other = await connect(clientToken(peer, grants), { autoAck: () => "peer" });
  c.send("ping");
  await c.next((f) => f === "pong");
  // Frames the spec does not allow go through the raw socket (the checked `send` would refuse them).
  c.ws.send(JSON.stringify({ type: "subscribe", filters: [{ type: "t" }, { nope: 1 }], id: 1 }));
  assert.equal((await c.next((f) => f.id === 1)).code, "invalid_filter");
  assert.equal((await c.request({ type: "unsubscribe", filters: [{ type: "zzz" }], id: 2 })).type, "ok");
  const pending = call("POST", "/publish", "/publish", { body: { userId: u, type: "t", payload: { n: 1 } } });
  const env = await c.next((f) => f.envelopeId);
  c.send({ type: "ack", envelopeId: env.envelopeId, result: { seen: true } });
  assert.deepEqual((await pending).body.results, [{ seen: true }]);
  assert.equal((await c.request({ type: "ack", envelopeId: "unknown", id: 3 })).code, "unknown_envelope");
  assert.equal((await c.request({ type: "message", data: { hi: 1 }, id: 4 })).code, "no_backend");
  const channel = `room:${uid()}`;
  assert.equal((await other.request({ type: "join", channel, id: "j" })).type, "ok");
  const watching = await c.request({ type: "join", channel, presence: true, id: "j" });
  assert.deepEqual([watching.presence.count, watching.channel], [2, channel]);
  // Both joins are the channel's first presence batch.
  assert.equal((await c.next((f) => f.type === "presence" && f.channel === channel, 8000)).count, 2);
  const ok = await c.request({ type: "publish", channel, event: "typing", payload: { on: true }, id: 5 });
  assert.deepEqual([ok.type, ok.totals.acked], ["ok", 1]);
  const fromPeer = await other.next((f) => f.envelopeId && f.channel === channel);
  assert.equal(fromPeer.from, u);
  assert.equal((await c.request({ type: "leave", channel, id: 6 })).type, "ok");
  c.ws.send("{not json");
  assert.equal((await c.next((f) => f.type === "error" && f.code === "invalid_json")).code, "invalid_json");
  c.ws.send(JSON.stringify({ type: "bogus", id: 7 }));
  assert.equal((await c.next((f) => f.code === "unknown_type")).id, 7);
  c.ws.send(JSON.stringify({ type: "subscribe", id: 8 }));
  assert.equal((await c.next((f) => f.code === "invalid_frame")).id, 8);
  c.ws.send(Buffer.from([1, 2, 3]));
  assert.equal((await c.next((f) => f.code === "unsupported_frame")).type, "error");
  // Resume with a gap: HISTORY_LIMIT is 3, so of 5 envelopes only the last 3 are replayed.
  const r = uid();
  for (let i = 0; i < 5; i++) await call("POST", "/publish", "/publish", { body: { userId: r, type: "h", payload: i, timeoutMs: 0 } });
  const late = await connect(clientToken(r));
  assert.equal((await late.subscribe([{ type: "h" }], { since: 0, id: "resume" })).type, "ok");
  const gap = late.log.find((f) => f.type === "gap");
  assert.deepEqual([gap.from, gap.to], [1, 2]);
  assert.deepEqual(late.log.filter((f) => f.replayed).map((f) => f.seq), [3, 4, 5]);
  for (const s of [c, other, late]) checkReceived(s);
  checkClose((await c.close(4321, "bye")).code, 4321);
  await Promise.all([other.close(), late.close()]);
});

test("close codes the server sends are documented: 4002 (backend), 4009 (frame too large), 1000", async () => {
  const u = uid();
  const a = await connect(clientToken(u));
  await call("DELETE", `/users/${u}/connections/${a.id}`, "/users/{userId}/connections/{connectionId}");
  await a.closeFrame();
  // Local workerd ends the TCP connection of a kicked socket only when the hub idles out (~10 s), so read
  // the code from the close frame itself, which `ws` records on arrival.
  const code = a.ws._closeCode;
  checkClose(code);
  assert.equal(code, 4002);
  const b = await connect(clientToken(u));
  b.ws.send(JSON.stringify({ type: "message", data: "x".repeat(3000) }));
  const big = await b.closed;
  checkClose(big.code);
  assert.equal(big.code, 4009);
  const c = await connect(clientToken(u));
  c.ws.close();
  checkClose((await c.closed).code);
});

test("SSE: events, /ack and the error answers match the specs", async () => {
  const u = uid();
  const token = clientToken(u);
  const s = await SseClient.open(w, token, { filters: [{ type: "t" }, { bad: 1 }] });
  assert.equal(s.status, 200);
  checkResponse("GET", "/sse", 200);
  const refused = await s.next((e) => e.json?.type === "error");
  assert.equal(refused.json.code, "invalid_filter");
  const pub = call("POST", "/publish", "/publish", { body: { userId: u, type: "t", payload: 1 } });
  const env = await s.next((e) => e.json?.envelopeId);
  const ackBody = { connectionId: s.id, envelopeId: env.json.envelopeId, result: "sse" };
  checkRequest("POST", "/ack", ackBody);
  const recorded = await call("POST", "/ack", "/ack", { body: ackBody, token });
  assert.equal(recorded.body.status, "recorded");
  assert.deepEqual((await pub).body.results, ["sse"]);
  await s.close();
  // A resume with a gap over SSE (HISTORY_LIMIT 3).
  const r = uid();
  for (let i = 0; i < 5; i++) await call("POST", "/publish", "/publish", { body: { userId: r, type: "t", payload: i, timeoutMs: 0 } });
  const again = await SseClient.open(w, clientToken(r), { filters: [{ type: "t" }], lastEventId: 0 });
  await again.next((e) => e.json?.seq === 5);
  for (const e of [...s.events, ...again.events, { json: s.welcome }, { json: again.welcome }, refused, env]) if (e.json) checkFrame(e.json, "receive", "sse");
  assert.ok(again.raw.includes('"type":"gap"'), "a gap event");
  for (const line of again.raw.split("\n").filter((l) => l.startsWith("data: {\"type\":\"gap\""))) checkFrame(JSON.parse(line.slice(6)), "receive", "sse");
  await again.close();

  const errors = [
    [`/sse?token=${token}&filters=notjson`, 400, "invalid_filters"],
    [`/sse?token=${token}&since=abc`, 400, "invalid_since"],
    [`/sse`, 401, "missing_token"],
  ];
  for (const [url, status, code] of errors) {
    const res = await fetch(`${w.url}${url}`);
    const body = await res.json();
    checkResponse("GET", "/sse", res.status, body);
    assert.deepEqual([res.status, body.error], [status, code]);
  }
  for (const [body, status, code] of [
    [{ connectionId: "x" }, 400, "invalid_ack"],
    [{ connectionId: "nope", envelopeId: "e" }, 404, "connection_not_found"],
  ]) {
    const r2 = await call("POST", "/ack", "/ack", { body, token });
    assert.deepEqual([r2.status, r2.body.error], [status, code]);
  }
  const live = await SseClient.open(w, token, { filters: [{ type: "t" }] });
  const unknown = await call("POST", "/ack", "/ack", { body: { connectionId: live.id, envelopeId: "e" }, token });
  assert.deepEqual([unknown.status, unknown.body.error], [404, "unknown_envelope"]);
  const dupPub = call("POST", "/publish", "/publish", { body: { userId: u, type: "t", timeoutMs: 300 } });
  const e2 = await live.next((e) => e.json?.envelopeId);
  for (let i = 0; i < 2; i++) await call("POST", "/ack", "/ack", { body: { connectionId: live.id, envelopeId: e2.json.envelopeId }, token });
  assert.equal(covered.http.has("POST /ack 200"), true);
  await dupPub;
  await live.close();
  // MAX_CONNECTIONS_PER_USER is 3: the fourth connection is refused with 429.
  const full = uid();
  const held = [];
  for (let i = 0; i < 3; i++) held.push(await connect(clientToken(full)));
  const res = await fetch(`${w.url}/sse?token=${clientToken(full)}`);
  const body = await res.json();
  checkResponse("GET", "/sse", res.status, body);
  assert.equal(body.error, "too_many_requests");
  await Promise.all(held.map((h) => h.close()));
});

test("the connection and members APIs, /healthz, GET / and answers outside the routes", async () => {
  const u = `api ${uid()} é`;
  const enc = encodeURIComponent(u);
  const a = await connect(clientToken(u, { channels: ["room:*"] }));
  const b = await connect(clientToken(u));
  const list = await call("GET", `/users/${enc}/connections`, "/users/{userId}/connections");
  assert.equal(list.body.connections.length, 2);
  assert.deepEqual(list.body.webhooks, { backlog: 0, dropped: 0 }, "webhooks are off here");
  const nf = await call("DELETE", `/users/${enc}/connections/nope`, "/users/{userId}/connections/{connectionId}");
  assert.equal(nf.body.error, "connection_not_found");
  const forbidden = await call("GET", `/users/${enc}/connections`, "/users/{userId}/connections", { token: clientToken(u) });
  assert.equal(forbidden.body.error, "forbidden");
  const blank = await call("GET", `/users/%20/connections`, "/users/{userId}/connections");
  assert.equal(blank.body.error, "invalid_user_id");
  const channel = `room:${uid()}`;
  assert.equal((await a.request({ type: "join", channel, id: 1 })).type, "ok");
  const m = await call("GET", `/channels/${channel}/members?limit=1`, "/channels/{channel}/members");
  assert.deepEqual([m.body.count, m.body.members, m.body.nextCursor], [1, [u], null]);
  assert.equal((await call("GET", `/channels/${channel}/members?limit=0`, "/channels/{channel}/members")).body.error, "invalid_limit");
  assert.equal((await call("GET", `/channels/bad%20name/members`, "/channels/{channel}/members")).body.error, "invalid_channel");
  const p = await call("GET", `/channels/${channel}/presence?limit=1`, "/channels/{channel}/presence");
  assert.deepEqual(p.body.members, [{ userId: u, connections: 1 }]);
  assert.equal((await call("GET", `/channels/${channel}/presence?limit=101`, "/channels/{channel}/presence")).body.error, "invalid_limit");
  assert.equal((await call("GET", `/channels/${channel}/presence`, "/channels/{channel}/presence", { token: clientToken(u) })).body.error, "forbidden");
  const all = await call("DELETE", `/users/${enc}/connections`, "/users/{userId}/connections");
  assert.deepEqual(all.body.closed.sort(), [a.id, b.id].sort());

  assert.deepEqual((await call("GET", "/healthz", "/healthz", { token: null })).body, { status: "ok" });
  assert.equal((await call("HEAD", "/healthz", "/healthz", { token: null })).status, 200);
  const upgrade = await call("GET", "/", "/", { token: null });
  assert.equal(upgrade.body.error, "upgrade_required");
  // An upgrade without a token (fetch cannot send Upgrade: the ws client can, and shows the refusal).
  const refusal = await refusedUpgrade(`${w.wsUrl}/`);
  checkResponse("GET", "/", refusal.status, refusal.body);
  assert.equal(refusal.body.error, "missing_token");
  await new Promise((resolve, reject) => {
    const ws = new WebSocket(`${w.wsUrl}/?token=${clientToken(uid())}`);
    ws.once("upgrade", (res) => (checkResponse("GET", "/", res.statusCode), ws.terminate(), resolve()));
    ws.once("error", reject);
  });
  const notFound = await fetch(`${w.url}/nope`);
  checkErrorBody(await notFound.json(), "not_found");
  const wrong = await fetch(`${w.url}/publish`, { method: "GET", headers: { authorization: `Bearer ${publishToken()}` } });
  assert.ok(wrong.headers.get("allow"));
  checkErrorBody(await wrong.json(), "method_not_allowed");
  const preflight = await fetch(`${w.url}/publish`, { method: "OPTIONS" });
  assert.equal(preflight.status, 204);
  for (const s of [a, b]) checkReceived(s);
});

test("POST /tickets and ?ticket=: a ticket issued, used once (WebSocket and SSE), refused after, and the errors", async () => {
  const u = uid();
  const token = clientToken(u, { channels: ["room:*"] });
  const issued = await call("POST", "/tickets", "/tickets", { token });
  assert.deepEqual([issued.status, issued.body.expiresIn], [200, 30], "TICKET_SECONDS defaults to 30");
  const c = await connect(null, { ticket: issued.body.ticket });
  checkResponse("GET", "/", 101);
  assert.equal(c.welcome.userId, u);
  // The token's channel grants came with the ticket.
  assert.equal((await c.request({ type: "join", channel: `room:${uid()}`, id: "j" })).type, "ok");
  const reused = await refusedUpgrade(`${w.wsUrl}/?ticket=${encodeURIComponent(issued.body.ticket)}`);
  checkResponse("GET", "/", reused.status, reused.body);
  assert.deepEqual([reused.status, reused.body.error], [401, "invalid_ticket"]);
  const forged = await refusedUpgrade(`${w.wsUrl}/?ticket=t1.nope.nope`);
  checkResponse("GET", "/", forged.status, forged.body);
  assert.deepEqual([forged.status, forged.body.error], [401, "invalid_ticket"]);

  const t2 = (await call("POST", "/tickets", "/tickets", { token })).body.ticket;
  const s = await SseClient.open(w, null, { ticket: t2, filters: [{ type: "t" }] });
  checkResponse("GET", "/sse", s.status);
  assert.equal(s.welcome.userId, u);
  checkFrame(s.welcome, "receive", "sse");
  await s.close();
  const again = await SseClient.open(w, null, { ticket: t2 });
  checkResponse("GET", "/sse", again.status, again.body);
  assert.deepEqual([again.status, again.body.error], [401, "invalid_ticket"]);

  for (const [tok, status, code] of [[null, 401, "missing_token"], [publishToken(), 401, "invalid_token"], ["x.y.z", 401, "invalid_token"]]) {
    const r = await call("POST", "/tickets", "/tickets", { token: tok });
    assert.deepEqual([r.status, r.body.error], [status, code]);
  }
  const wrong = await fetch(`${w.url}/tickets`, { headers: { authorization: `Bearer ${token}` } });
  assert.deepEqual([wrong.status, wrong.headers.get("allow")], [405, "POST, OPTIONS"]);
  checkErrorBody(await wrong.json(), "method_not_allowed");
  // A user holds at most 100 unused tickets.
  const hoarder = clientToken(uid());
  const statuses = [];
  for (let i = 0; i < 101; i++) statuses.push((await call("POST", "/tickets", "/tickets", { token: hoarder })).status);
  assert.deepEqual([statuses.slice(0, 100).every((x) => x === 200), statuses[100]], [true, 429]);
  await c.close();
  checkReceived(c);
});

test("webhook queue answers: `backlog_full` frames and the connection list's `webhooks` counts", { timeout: 40000 }, async () => {
  const receiver = await new Receiver().start();
  const dropper = uid("drop");
  // Events of `dropper` are refused for good (a 4xx: dropped and counted); everyone else's wait (503).
  receiver.answer = (events) => (events[0].subject === dropper ? 400 : 503);
  const hw = await startWorker({ WEBHOOK_URL: receiver.url, WEBHOOK_SECRET, WEBHOOK_RETRY_BASE_MS: "60000", WEBHOOK_MAX_BACKLOG: "2" });
  try {
    const u = uid();
    const c = await Client.connect(hw, clientToken(u)); // event 1: connection.opened
    checkFrame({ type: "message", data: { n: 1 }, id: 1 }, "send");
    assert.equal((await c.request({ type: "message", data: { n: 1 }, id: 1 })).type, "ok"); // event 2
    const full = await c.request({ type: "message", data: { n: 2 }, id: 2 });
    assert.deepEqual([full.type, full.code, full.id], ["error", "backlog_full", 2]);
    for (const f of c.log) checkFrame(f, "receive");
    const list = await call("GET", `/users/${u}/connections`, "/users/{userId}/connections", { worker: hw });
    assert.deepEqual(list.body.webhooks, { backlog: 2, dropped: 0 });

    const d = await Client.connect(hw, clientToken(dropper));
    const end = Date.now() + 10000;
    let queue;
    do {
      await new Promise((r) => setTimeout(r, 100));
      queue = (await call("GET", `/users/${dropper}/connections`, "/users/{userId}/connections", { worker: hw })).body.webhooks;
    } while (queue.dropped === 0 && Date.now() < end);
    assert.deepEqual(queue, { backlog: 0, dropped: 1 }, "the refused connection.opened event");
    await Promise.all([c.close(), d.close()]);
  } finally {
    await hw.stop();
    await receiver.stop();
  }
});

test("idempotent retries: `inProgress`, `outcome: unknown` after the hub died, and the smallest trimmed answer", { timeout: 60000 }, async () => {
  // The runtime stops while a publish waits for its ack: the key's row is stored, its answer never is.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "sb-spec-"));
  const vars = { ACK_TIMEOUT_MS: "1000", ACK_TIMEOUT_MAX_MS: "1000", IDEMPOTENCY_MAX_RESPONSE_BYTES: "1024" };
  const u = uid();
  const headers = { "idempotency-key": `crash-${u}` };
  const body = { userId: u, type: "t", timeoutMs: 1000 };
  try {
    const w1 = await startWorker(vars, { persist: dir });
    const c = await Client.connect(w1, clientToken(u));
    await c.subscribe([{ type: "t" }]);
    const first = call("POST", "/publish", "/publish", { body, headers, worker: w1 }).catch(() => undefined);
    await c.next((f) => f.envelopeId);
    const busy = await call("POST", "/publish", "/publish", { body, headers, worker: w1 });
    assert.deepEqual([busy.body.duplicate, busy.body.inProgress], [true, true]);
    // Stop the runtime first: a socket closed before would end the publish (its connection "closed")
    // and store the final answer.
    await w1.stop();
    c.ws.terminate();
    await first;
    const w2 = await startWorker(vars, { persist: dir });
    try {
      await new Promise((r) => setTimeout(r, 3500)); // past ACK_TIMEOUT_MAX_MS and its 2 s grace
      const after = await call("POST", "/publish", "/publish", { body, headers, worker: w2 });
      assert.deepEqual(
        [after.body.duplicate, after.body.outcome, after.body.inProgress, after.body.envelopeId],
        [true, "unknown", undefined, busy.body.envelopeId],
      );
      // 30 connections that do not ack: even without results the answer's `pending` ids exceed 1024
      // bytes, so the stored answer keeps only the envelope's identity and the counts.
      const v = uid();
      const many = [];
      for (let i = 0; i < 30; i++) many.push(await Client.connect(w2, clientToken(v)));
      await Promise.all(many.map((m) => m.subscribe([{ type: "t" }])));
      const key = { "idempotency-key": `many-${v}` };
      const live = await call("POST", "/publish", "/publish", { body: { userId: v, type: "t", timeoutMs: 0 }, headers: key, worker: w2 });
      assert.equal(live.body.pending.length, 30);
      const small = await call("POST", "/publish", "/publish", { body: { userId: v, type: "t", timeoutMs: 0 }, headers: key, worker: w2 });
      assert.deepEqual(
        [small.body.trimmed, small.body.seq, small.body.pendingCount, small.body.acked, small.body.closedCount, small.body.pending],
        [true, live.body.seq, 30, 0, 0, []],
      );
      await Promise.all(many.map((m) => m.close()));
    } finally {
      await w2.stop();
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("client-abuse limits: replay_more pages, oversized acks and publishes, rate_limited, channel_busy, bounded userIds/channel answers, slow_consumer", { timeout: 90000 }, async () => {
  // Every limit low, so each refusal and each bounded answer is reached with a few frames.
  const lw = await startWorker({
    REPLAY_PAGE_ENVELOPES: "2", ACK_RESULT_MAX_BYTES: "700", CLIENT_PUBLISH_MAX_BYTES: "64", CLIENT_PUBLISH_PER_SECOND: "1",
    CHANNEL_MAX_CONCURRENT_PUBLISHES: "1", PUBLISH_RESULTS_MAX_BYTES: "1024", SSE_QUEUE_MAX_BYTES: "65536",
  });
  const open = [];
  const join = async (c, channel) => assert.equal((await c.request({ type: "join", channel, id: `j-${channel}` })).type, "ok");
  try {
    // A paged replay on a socket: two envelopes, `replay_more` with where to continue, then `ok`.
    const r = uid();
    for (let i = 0; i < 3; i++) await call("POST", "/publish", "/publish", { body: { userId: r, type: "h", payload: i, timeoutMs: 0 }, worker: lw });
    const late = await connect(clientToken(r), { worker: lw });
    open.push(late);
    const m1 = late.mark();
    checkFrame({ type: "subscribe", filters: [{ type: "h" }], since: 0, id: "p0" }, "send");
    await late.request({ type: "subscribe", filters: [{ type: "h" }], since: 0, id: "p0" });
    const page = (await late.since(m1)).map((f) => (f.envelopeId ? f.seq : f.type === "replay_more" ? `more:${f.since}` : f.type));
    assert.deepEqual(page, [1, 2, "more:2", "ok"]);
    const m2 = late.mark();
    await late.request({ type: "subscribe", filters: [{ type: "h" }], since: 2, id: "p1" });
    assert.deepEqual((await late.since(m2)).map((f) => f.seq ?? f.type), [3, "ok"]);
    checkReceived(late);

    // Over SSE the page ends with a `replay_more` event whose `id:` is its `since`, and the stream ends.
    const s = await SseClient.open(lw, clientToken(r), { filters: [{ type: "h" }], lastEventId: 0 });
    checkResponse("GET", "/sse", s.status);
    const more = await s.next((e) => e.json?.type === "replay_more");
    assert.deepEqual([more.id, more.json], ["2", { type: "replay_more", since: 2 }]);
    assert.equal((await s.ended).how, "eof", "the stream ends after the page");
    for (const e of [{ json: s.welcome }, ...s.log]) if (e.json) checkFrame(e.json, "receive", "sse");
    assert.deepEqual(s.log.filter((e) => e.json?.envelopeId).map((e) => e.json.seq), [1, 2]);

    // An ack result over ACK_RESULT_MAX_BYTES: an error frame (even without `id`) on the socket, 413 over /ack.
    const a = uid();
    const acker = await connect(clientToken(a), { worker: lw });
    open.push(acker);
    await acker.subscribe([{ type: "t" }]);
    const pending = call("POST", "/publish", "/publish", { body: { userId: a, type: "t", timeoutMs: 3000 }, worker: lw });
    const env = await acker.next((f) => f.envelopeId);
    const mark = acker.mark();
    acker.send({ type: "ack", envelopeId: env.envelopeId, result: "x".repeat(800) });
    assert.deepEqual((await acker.since(mark)).map((f) => [f.type, f.code]), [["error", "result_too_large"]]);
    const ackBody = { connectionId: acker.id, envelopeId: env.envelopeId, result: "y".repeat(800) };
    const tooLarge = await call("POST", "/ack", "/ack", { body: ackBody, token: clientToken(a), worker: lw });
    assert.deepEqual([tooLarge.status, tooLarge.body.error], [413, "result_too_large"]);
    acker.send({ type: "ack", envelopeId: env.envelopeId, result: "fits" });
    assert.deepEqual((await pending).body.results, ["fits"], "the refused acks did not count; the valid one did");
    checkReceived(acker);

    // A `userIds` answer: each user's results once (in `acks`), none per user, and over
    // PUBLISH_RESULTS_MAX_BYTES (1024) the second answer's results (300 bytes each) are left out: `truncated`.
    const [u1, u2] = [uid(), uid()];
    for (const u of [u1, u2]) {
      const c = await connect(clientToken(u, { channels: ["room:*"] }), { worker: lw, autoAck: () => "r".repeat(300) });
      open.push(c);
      await c.subscribe([{ type: "t" }]);
    }
    const many = await call("POST", "/publish", "/publish", { body: { userIds: [u1, u2], type: "t", timeoutMs: 3000 }, worker: lw });
    assert.deepEqual([many.status, many.body.totals.acked, many.body.truncated], [200, 2, true]);
    assert.equal(many.body.results.length, 1, "the first answer's result fits, the second's does not");
    assert.deepEqual(many.body.users.map((e) => [e.results, e.acks.length]), [[undefined, 1], [undefined, 1]]);
    assert.equal(many.body.users.filter((e) => e.truncated === true && e.acks[0].result === undefined).length, 1);
    const small = await call("POST", "/publish", "/publish", { body: { userIds: [a], type: "none", timeoutMs: 0 }, worker: lw });
    assert.deepEqual([small.body.truncated, small.body.users[0].truncated, small.body.users[0].results], [false, undefined, undefined]);

    // A channel answer bounded the same way, and (CHANNEL_MAX_CONCURRENT_PUBLISHES 1) a channel publish while
    // another runs: 429 channel_busy over HTTP, a `channel_busy` error frame for a client publish.
    const channel = `room:${uid()}`;
    for (const c of open.slice(-2)) await join(c, channel);
    const ch = await call("POST", "/publish", "/publish", { body: { channel, type: "t", timeoutMs: 3000 }, worker: lw });
    assert.deepEqual([ch.status, ch.body.totals.acked, ch.body.truncated], [200, 2, true]);
    assert.ok(ch.body.users.every((e) => e.results === undefined));
    const quiet = `room:${uid()}`;
    const sleeper = await connect(clientToken(uid(), { channels: ["room:*"] }), { worker: lw });
    open.push(sleeper);
    await sleeper.subscribe([{ type: "t" }]);
    await join(sleeper, quiet);
    const pub = await connect(clientToken(uid(), { publishChannels: ["room:*"] }), { worker: lw });
    open.push(pub);
    const slow = call("POST", "/publish", "/publish", { body: { channel: quiet, type: "t", timeoutMs: 2000 }, worker: lw });
    await sleeper.next((f) => f.envelopeId && f.channel === quiet); // the root is running it now
    const busy = await call("POST", "/publish", "/publish", { body: { channel: quiet, type: "t", timeoutMs: 0 }, worker: lw });
    assert.deepEqual([busy.status, busy.body.error], [429, "channel_busy"]);
    assert.equal((await pub.request({ type: "publish", channel: quiet, payload: 1, timeoutMs: 0, id: "busy" })).code, "channel_busy");
    assert.equal((await slow).body.totals.pending, 1);

    // A client publish over CLIENT_PUBLISH_MAX_BYTES (64), then over CLIENT_PUBLISH_PER_SECOND (1, so a burst
    // of 10, one of them taken by the refused busy publish above): 14 in a row (one at a time, since the
    // channel runs one publish at once here).
    const big = await pub.request({ type: "publish", channel: quiet, payload: "p".repeat(100), timeoutMs: 0, id: "big" });
    assert.deepEqual([big.type, big.code], ["error", "payload_too_large"]);
    const codes = [];
    for (let i = 0; i < 14; i++) {
      const reply = await pub.request({ type: "publish", channel: quiet, payload: i, timeoutMs: 0, id: `r${i}` });
      codes.push(reply.type === "ok" ? "ok" : reply.code);
    }
    assert.ok(codes.filter((c) => c === "ok").length <= 10, JSON.stringify(codes));
    assert.deepEqual([...new Set(codes)].sort(), ["ok", "rate_limited"], JSON.stringify(codes));
    for (const c of [sleeper, pub]) checkReceived(c);

    // An SSE stream whose reader stopped: past SSE_QUEUE_MAX_BYTES its last event is `slow_consumer`.
    const slowUser = uid();
    const params = new URLSearchParams({ token: clientToken(slowUser), filters: JSON.stringify([{ type: "big" }]) });
    const res = await new Promise((resolve, reject) => http.get(`${lw.url}/sse?${params}`, resolve).on("error", reject));
    assert.equal(res.statusCode, 200);
    res.setEncoding("utf8");
    let text = "";
    const done = new Promise((resolve) => res.on("end", resolve));
    res.on("data", (d) => (text += d));
    while (!text.includes('"welcome"')) await new Promise((r2) => setTimeout(r2, 20));
    res.pause();
    const payload = "z".repeat(200_000);
    for (let i = 0; i < 40; i++) {
      const p = await fetch(`${lw.url}/publish`, { method: "POST", headers: { authorization: `Bearer ${publishToken()}`, "content-type": "application/json" }, body: JSON.stringify({ userId: slowUser, type: "big", payload, timeoutMs: 0 }) });
      assert.equal(p.status, 200);
      await p.arrayBuffer();
    }
    res.resume();
    await Promise.race([done, new Promise((r2) => setTimeout(r2, 15000))]);
    const last = text.split("\n\n").filter((b) => b.includes("data:")).at(-1);
    const frame = JSON.parse(last.split("\n").find((l) => l.startsWith("data: ")).slice(6));
    checkFrame(frame, "receive", "sse");
    assert.equal(frame.code, "slow_consumer");
  } finally {
    await Promise.all(open.map((c) => c.close().catch(() => {})));
    await lw.stop();
  }
});

test("a bad setting answers 500 server_misconfigured, as documented", async () => {
  const bad = await startWorker({ ACK_TIMEOUT_MS: "soon" });
  try {
    for (const [method, url, route] of [["POST", "/publish", "/publish"], ["GET", "/users/u/connections", "/users/{userId}/connections"]]) {
      const res = await fetch(`${bad.url}${url}`, { method, headers: { authorization: `Bearer ${publishToken()}`, "content-type": "application/json" }, body: method === "POST" ? "{}" : undefined });
      const body = await res.json();
      checkResponse(method, route, res.status, body);
      assert.equal(body.error, "server_misconfigured");
      assert.match(body.message, /ACK_TIMEOUT_MS/);
    }
  } finally {
    await bad.stop();
  }
});

test("the README's error and close-code tables list exactly the codes the specs document", () => {
  const readme = fs.readFileSync(path.join(ROOT, "README.md"), "utf8");
  const table = (heading) => {
    const start = readme.indexOf(heading);
    const end = readme.indexOf("\n#", start + heading.length);
    return readme.slice(start, end).split("\n").filter((l) => l.startsWith("| ")).slice(1); // without the header row
  };
  const codesIn = (rows, column) => new Set(rows.map((r) => r.split("|")[column]?.trim().replace(/`/g, "")).filter((c) => /^[a-z_]+$/.test(c)));
  const http = codesIn(table("### HTTP errors"), 2);
  assert.deepEqual([...http].sort(), [...openapi.components.schemas.Error.properties.error.enum].sort());
  const socket = codesIn(table("### Socket error codes"), 1);
  assert.deepEqual([...socket].sort(), [...asyncapi.components.messages.error.payload.properties.code.enum].sort());
  const closes = new Set(table("### Close codes").map((r) => r.split("|")[1].trim()).filter((c) => /^\d{4}$/.test(c)).map(Number));
  assert.deepEqual([...closes].sort(), Object.keys(asyncapi.channels.socket["x-close-codes"]).map(Number).sort());
});

test("/metrics: Prometheus text for the publish scope, the documented refusals otherwise", async () => {
  const get = (token) => fetch(`${w.url}/metrics`, { headers: token ? { authorization: `Bearer ${token}` } : {} });
  const ok = await get(publishToken());
  checkResponse("GET", "/metrics", ok.status, undefined);
  assert.equal(ok.status, 200);
  assert.equal(ok.headers.get("content-type"), Object.keys(openapi.paths["/metrics"].get.responses["200"].content)[0]);
  assert.match(await ok.text(), /^# HELP switchboard_/);
  for (const [token, status] of [[null, 401], [clientToken(uid()), 403]]) {
    const res = await get(token);
    assert.equal(res.status, status);
    checkResponse("GET", "/metrics", res.status, await res.json());
  }
});

test("coverage: every operation of openapi.yaml and every message of asyncapi.yaml was exercised", () => {
  const missingOps = operations().filter((op) => ![...covered.http].some((c) => c.startsWith(`${op} 2`) || c.startsWith(`${op} 1`)));
  assert.deepEqual(missingOps, [], "documented operations never answered with success");
  const missingFrames = messages().filter((m) => !covered.frames.has(m));
  assert.deepEqual(missingFrames, [], "documented frames never seen");
});
