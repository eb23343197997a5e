// Operator metrics end to end: `GET /metrics` (Prometheus text, publish scope) read from the Worker
// while the counts are made in the users' hubs, so these tests also show that the Worker and its
// Durable Objects share one isolate in workerd/Miniflare. Every test compares the exact set of series
// that changed (not one counter in isolation), after real publishes, acks, timeouts, closes, refused
// frames and webhook attempts. The Analytics Engine export is checked with the METRICS binding bound
// (Miniflare's local dataset accepts and discards points; the Worker counts what it wrote).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import crypto from "node:crypto";
import { startWorker, Client, SseClient, WebhookReceiver, publish, clientToken, publishToken } from "./harness.mjs";

const SECRET_BYTES = crypto.randomBytes(24);
const WEBHOOK_SECRET = `whsec_${SECRET_BYTES.toString("base64")}`;

let w; // no webhooks, no Analytics Engine binding
before(async () => {
  w = await startWorker();
});
after(async () => {
  await w.stop();
});

let n = 0;
const user = () => `m-user-${++n}-${Math.random().toString(36).slice(2)}`;

/** The scrape as `{ "name{labels}": value }`, after checking the format's basics. */
async function scrape(target = w) {
  const res = await fetch(`${target.url}/metrics`, { headers: { authorization: `Bearer ${publishToken()}` } });
  assert.equal(res.status, 200);
  assert.equal(res.headers.get("content-type"), "text/plain; version=0.0.4; charset=utf-8");
  const text = await res.text();
  const samples = {};
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("# HELP ") || line.startsWith("# TYPE ")) continue;
    const m = /^([a-z_]+(?:\{[^}]*\})?) (\d+)$/.exec(line);
    assert.ok(m, `not a sample line: ${JSON.stringify(line)}`);
    samples[m[1]] = Number(m[2]);
  }
  return samples;
}

/** The series whose value changed from `before` to `after`, with the change. */
function delta(before, after) {
  const out = {};
  for (const [k, v] of Object.entries(after)) if (v !== (before[k] ?? 0)) out[k] = v - (before[k] ?? 0);
  return out;
}

/**
 * Waits until the scrape's change since `base` includes `expected`, then lets a little time pass and
 * returns the settled change (so a test that compares it exactly also sees anything extra).
 */
async function settle(base, expected, target = w, ms = 5000) {
  const end = Date.now() + ms;
  for (;;) {
    const d = delta(base, await scrape(target));
    if (Object.entries(expected).every(([k, v]) => d[k] === v)) break;
    if (Date.now() > end) assert.fail(`metrics did not reach ${JSON.stringify(expected)}; change: ${JSON.stringify(d)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  await new Promise((r) => setTimeout(r, 200));
  return delta(base, await scrape(target));
}

test("GET /metrics needs the publish scope: 401 without a token, 403 for a client token, 405 for POST", async () => {
  const none = await fetch(`${w.url}/metrics`);
  assert.equal(none.status, 401);
  assert.equal((await none.json()).error, "missing_token");
  const client = await fetch(`${w.url}/metrics`, { headers: { authorization: `Bearer ${clientToken("someone")}` } });
  assert.equal(client.status, 403);
  assert.equal((await client.json()).error, "forbidden");
  const post = await fetch(`${w.url}/metrics`, { method: "POST", headers: { authorization: `Bearer ${publishToken()}` } });
  assert.equal(post.status, 405);
  assert.equal(post.headers.get("allow"), "GET, OPTIONS");
  const text = await (await fetch(`${w.url}/metrics`, { headers: { authorization: `Bearer ${publishToken()}` } })).text();
  // Every family is declared, with its fixed labels at zero before any event.
  for (const line of [
    "# TYPE switchboard_publishes_total counter",
    'switchboard_publishes_total{kind="userIds"} 0',
    'switchboard_connects_total{transport="sse"} 0',
    "# TYPE switchboard_closes_total counter",
    'switchboard_webhook_failures_total{class="timeout"} 0',
    "# TYPE switchboard_frames_rejected_total counter",
  ]) {
    assert.ok(text.split("\n").includes(line), `missing ${line}`);
  }
  // No METRICS binding here: nothing was written to Analytics Engine.
  assert.ok(!/^switchboard_analytics_points_total\{/m.test(text));
});

test("counts made in the hubs show at the Worker (one isolate): connects, a publish, its deliveries and acks", async () => {
  const u = user();
  const base = await scrape();
  const a = await Client.connect(w, clientToken(u), { autoAck: true });
  const b = await Client.connect(w, clientToken(u), { autoAck: true });
  for (const c of [a, b]) await c.subscribe([{ type: "t" }]);
  const res = await publish(w, { userId: u, type: "t", payload: { x: 1 } });
  assert.equal(res.status, 200);
  assert.equal(res.body.acks.length, 2);
  assert.deepEqual(await settle(base, {}), {
    'switchboard_connects_total{transport="websocket"}': 2,
    'switchboard_publishes_total{kind="userId"}': 1,
    "switchboard_deliveries_total": 2,
    "switchboard_acks_total": 2,
  });
  a.ws.terminate();
  b.ws.terminate();
});

test("an unacknowledged delivery counts as an ack timeout; userIds and channel publishes count by kind", async () => {
  const [u, v] = [user(), user()];
  const silent = await Client.connect(w, clientToken(u)); // never acks
  const acker = await Client.connect(w, clientToken(v, { channels: ["room:*"] }), { autoAck: true });
  for (const c of [silent, acker]) await c.subscribe([{ type: "t" }]);
  assert.equal((await acker.request({ type: "join", channel: "room:m", id: "j" })).type, "ok");
  const base = await scrape();
  const one = (await publish(w, { userId: u, type: "t", payload: 1, timeoutMs: 300 })).body;
  assert.deepEqual(one.pending, [silent.id]);
  const many = await publish(w, { userIds: [u, v], type: "t", payload: 2, timeoutMs: 300 });
  assert.equal(many.status, 200);
  const room = (await publish(w, { channel: "room:m", type: "t", payload: 3, timeoutMs: 2000 })).body;
  assert.equal(room.clientCount, 1);
  assert.deepEqual(await settle(base, {}), {
    'switchboard_publishes_total{kind="userId"}': 1,
    'switchboard_publishes_total{kind="userIds"}': 1,
    'switchboard_publishes_total{kind="channel"}': 1,
    // u: 1 + 1 (never acked), v: 1 (userIds) + 1 (channel), both acked.
    "switchboard_deliveries_total": 4,
    "switchboard_acks_total": 2,
    "switchboard_ack_timeouts_total": 2,
  });
  silent.ws.terminate();
  acker.ws.terminate();
});

test("closes count by code: the client's own code, and the backend's 4002", async () => {
  const u = user();
  const a = await Client.connect(w, clientToken(u));
  const b = await Client.connect(w, clientToken(u));
  const base = await scrape();
  await a.close(4321, "bye");
  const kicked = await fetch(`${w.url}/users/${u}/connections/${b.id}`, {
    method: "DELETE",
    headers: { authorization: `Bearer ${publishToken()}` },
  });
  assert.equal(kicked.status, 200);
  assert.equal((await b.closeFrame(5000, { terminate: true })).code, 4002);
  assert.deepEqual(await settle(base, { 'switchboard_closes_total{code="4321"}': 1 }), {
    'switchboard_closes_total{code="4321"}': 1,
    'switchboard_closes_total{code="4002"}': 1,
  });
});

test("an SSE stream counts as an sse connect, its delivery and HTTP ack count, and its end is a 1000 close", async () => {
  // The Worker notices a vanished SSE client at its next write at the latest: keep-alives every second.
  const ws = await startWorker({ SSE_KEEPALIVE_SECONDS: "1" });
  try {
    const u = user();
    const base = await scrape(ws);
    const s = await SseClient.open(ws, clientToken(u), { filters: [{ type: "t" }] });
    const answer = publish(ws, { userId: u, type: "t", payload: 1 });
    const event = await s.next((e) => e.json?.envelopeId);
    assert.equal((await s.ack(ws, clientToken(u), event.json.envelopeId, { ok: true })).status, 200);
    assert.equal((await answer).body.acks.length, 1);
    assert.deepEqual(await s.close(), { how: "aborted" });
    assert.deepEqual(await settle(base, { 'switchboard_closes_total{code="1000"}': 1 }, ws), {
      'switchboard_connects_total{transport="sse"}': 1,
      'switchboard_publishes_total{kind="userId"}': 1,
      "switchboard_deliveries_total": 1,
      "switchboard_acks_total": 1,
      'switchboard_closes_total{code="1000"}': 1,
    });
  } finally {
    await ws.stop();
  }
});

test("refused client frames count by error code, and only those", async () => {
  const c = await Client.connect(w, clientToken(user()));
  const base = await scrape();
  const m = c.mark();
  c.send("{not json");
  c.send({ type: "bogus", id: 1 });
  c.send({ type: "bogus", id: 2 });
  c.send(Buffer.from([1, 2, 3])); // binary
  c.send({ type: "subscribe", filters: [{ type: "a" }], id: "ok" }); // accepted: not counted
  const frames = (await c.since(m)).map((f) => (f.type === "error" ? f.code : f.type));
  assert.deepEqual(frames, ["invalid_json", "unknown_type", "unknown_type", "unsupported_frame", "ok"]);
  assert.deepEqual(await settle(base, {}), {
    'switchboard_frames_rejected_total{code="invalid_json"}': 1,
    'switchboard_frames_rejected_total{code="unknown_type"}': 2,
    'switchboard_frames_rejected_total{code="unsupported_frame"}': 1,
  });
  c.ws.terminate();
});

test("webhook attempts and failures count by status class: 503s, then the 2xx that delivers", async () => {
  const receiver = await new WebhookReceiver(SECRET_BYTES).start();
  const wh = await startWorker({
    WEBHOOK_URL: `http://127.0.0.1:${receiver.port}/hooks`,
    WEBHOOK_SECRET,
    WEBHOOK_RETRY_BASE_MS: "100",
    WEBHOOK_RETRY_MAX_MS: "200",
  });
  try {
    const base = await scrape(wh);
    receiver.mode = "503";
    const c = await Client.connect(wh, clientToken(user()));
    await receiver.until((r) => r.attempts.length >= 2);
    receiver.mode = "up";
    await receiver.until((r) => r.events.length === 1);
    const refused = receiver.attempts.filter((a) => a.status === 503).length;
    assert.ok(refused >= 2);
    const d = await settle(base, { 'switchboard_webhook_attempts_total{class="2xx"}': 1 }, wh);
    assert.equal(receiver.attempts.length, refused + 1); // nothing sent after the delivery
    assert.deepEqual(d, {
      'switchboard_connects_total{transport="websocket"}': 1,
      'switchboard_webhook_attempts_total{class="5xx"}': refused,
      'switchboard_webhook_failures_total{class="5xx"}': refused,
      'switchboard_webhook_attempts_total{class="2xx"}': 1,
    });
    c.ws.terminate();
  } finally {
    await wh.stop();
    await receiver.stop();
  }
});

test("a permanent refusal counts as a 4xx failure and a dropped event", async () => {
  const receiver = await new WebhookReceiver(SECRET_BYTES).start();
  // Signed with another secret: the receiver answers 400, which Switchboard treats as permanent.
  const wh = await startWorker({
    WEBHOOK_URL: `http://127.0.0.1:${receiver.port}/hooks`,
    WEBHOOK_SECRET: `whsec_${crypto.randomBytes(24).toString("base64")}`,
  });
  try {
    const base = await scrape(wh);
    const c = await Client.connect(wh, clientToken(user()));
    await receiver.until((r) => r.attempts.length === 1);
    assert.equal(receiver.attempts[0].status, 400);
    assert.deepEqual(await settle(base, { "switchboard_webhook_dropped_total": 1 }, wh), {
      'switchboard_connects_total{transport="websocket"}': 1,
      'switchboard_webhook_attempts_total{class="4xx"}': 1,
      'switchboard_webhook_failures_total{class="4xx"}': 1,
      "switchboard_webhook_dropped_total": 1,
    });
    assert.equal(receiver.attempts.length, 1); // dropped, not retried
    c.ws.terminate();
  } finally {
    await wh.stop();
    await receiver.stop();
  }
});

test("with the METRICS dataset bound: one data point per publish and per connect, a hub's flush at most every 10 s", async () => {
  const wa = await startWorker({}, { analytics: true });
  try {
    const u = user();
    const base = await scrape(wa);
    const c = await Client.connect(wa, clientToken(u), { autoAck: true });
    await c.subscribe([{ type: "t" }]);
    // The first connect of the isolate: the hub flushes its new counts (nothing written for over
    // 10 s), then the Worker writes the connect's own point.
    assert.deepEqual(await settle(base, { 'switchboard_analytics_points_total{event="connect"}': 1 }, wa), {
      'switchboard_connects_total{transport="websocket"}': 1,
      'switchboard_analytics_points_total{event="flush"}': 1,
      'switchboard_analytics_points_total{event="connect"}': 1,
    });
    const mid = await scrape(wa);
    for (let i = 0; i < 3; i++) assert.equal((await publish(wa, { userId: u, type: "t", payload: i })).status, 200);
    // Within 10 s of the last point the hub adds none: exactly one point per publish request.
    assert.deepEqual(await settle(mid, {}, wa), {
      'switchboard_publishes_total{kind="userId"}': 3,
      "switchboard_deliveries_total": 3,
      "switchboard_acks_total": 3,
      'switchboard_analytics_points_total{event="publish"}': 3,
    });
    // A refused publish is a point too (its status tells it apart), and a refused connect.
    const bad = await publish(wa, "{"); // not JSON
    assert.equal(bad.status, 400);
    await assert.rejects(Client.connect(wa, "not-a-token"), (e) => e.status === 401);
    const after = delta(mid, await scrape(wa));
    assert.equal(after['switchboard_analytics_points_total{event="publish"}'], 4);
    assert.equal(after['switchboard_analytics_points_total{event="connect"}'], 1);
    assert.equal(after["switchboard_analytics_errors_total"], undefined);
    assert.ok(!wa.events().some((e) => e.event === "analytics_error"));
    c.ws.terminate();
  } finally {
    await wa.stop();
  }
});
