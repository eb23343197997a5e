// Server-Sent Events end to end: the stream, framing, acks over POST /ack, resume with
// Last-Event-ID (also across eviction), keep-alives, hostile queries — and an EventSource client.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { EventSource } from "undici";
import { startWorker, SseClient, Client, publish, clientToken, mint } from "./harness.mjs";

let w;
before(async () => (w = await startWorker()));
after(() => w.stop());

let n = 0;
const user = () => `sse-user-${++n}-${Math.random().toString(36).slice(2)}`;

test("an SSE stream: headers, welcome first, envelopes with id = seq, counted and acked like sockets", async () => {
  const u = user();
  const token = clientToken(u);
  const s = await SseClient.open(w, token, { filters: [{ type: "t" }] });
  assert.equal(s.status, 200);
  assert.match(s.headers.get("content-type"), /^text\/event-stream/);
  assert.match(s.headers.get("cache-control"), /no-cache/);
  assert.match(s.headers.get("cache-control"), /no-transform/);
  assert.equal(s.headers.get("x-accel-buffering"), "no");
  assert.equal(s.headers.get("access-control-allow-origin"), "*");
  assert.equal(s.welcome.userId, u);
  assert.equal(s.retry, 2000);
  const ws = await Client.connect(w, token); // acks by hand below, so the publish is still waiting
  await ws.subscribe([{ type: "t" }]);

  const pending = publish(w, { userId: u, type: "t", payload: { hello: "sse" }, timeoutMs: 3000 });
  const ev = await s.next((e) => e.json?.envelopeId);
  assert.equal(ev.id, String(ev.json.seq));
  assert.deepEqual(ev.json.payload, { hello: "sse" });
  const ack = await s.ack(w, token, ev.json.envelopeId, { via: "http" });
  assert.deepEqual(ack, { status: 200, body: { status: "recorded" } });
  // A retried ack while the publish still waits (for ws) is a duplicate: recorded once.
  assert.deepEqual(await s.ack(w, token, ev.json.envelopeId, { via: "retry" }), { status: 200, body: { status: "duplicate" } });
  const wsEnv = await ws.next((f) => f.envelopeId);
  ws.send({ type: "ack", envelopeId: wsEnv.envelopeId, result: "ws" });
  const res = await pending;
  assert.equal(res.body.clientCount, 2);
  assert.deepEqual(new Set(res.body.results.map(JSON.stringify)), new Set(['"ws"', JSON.stringify({ via: "http" })]), "the first ack's result, not the retry's");
  assert.deepEqual(res.body.acks.filter((a) => a.connectionId === s.id), [{ connectionId: s.id, result: { via: "http" } }]);
  // After the publish has answered, a late ack finds nobody waiting.
  const late = await s.ack(w, token, ev.json.envelopeId, 1);
  assert.equal(late.status, 404);
  assert.equal(late.body.error, "unknown_envelope");
  assert.match(late.body.message, /no publish is waiting/);

  // Not acked: the SSE connection is pending, like a socket (ws does not ack either).
  const r2 = await publish(w, { userId: u, type: "t", timeoutMs: 300 });
  assert.deepEqual([...r2.body.pending].sort(), [s.id, ws.id].sort());
  assert.deepEqual(await s.close(), { how: "aborted" });
  await ws.close();
});

test("POST /ack refuses bad input and other users", async () => {
  const u = user();
  const token = clientToken(u);
  const s = await SseClient.open(w, token, { filters: [{ type: "t" }] });
  const post = async (body, { tok = token, ct = "application/json" } = {}) => {
    const res = await fetch(`${w.url}/ack`, {
      method: "POST",
      headers: { ...(tok ? { authorization: `Bearer ${tok}` } : {}), "content-type": ct },
      body: typeof body === "string" ? body : JSON.stringify(body),
    });
    return { status: res.status, body: await res.json() };
  };
  const cases = [
    [await post({ connectionId: s.id, envelopeId: "e" }, { tok: null }), 401, "missing_token"],
    [await post({ connectionId: s.id, envelopeId: "e" }, { tok: mint({ scope: "publish" }) }), 401, "invalid_token"],
    [await post("{nope"), 400, "invalid_json"],
    [await post({ envelopeId: "e" }), 400, "invalid_ack"],
    [await post({ connectionId: s.id, envelopeId: "e" }, { ct: "text/plain" }), 415, "unsupported_media_type"],
    [await post({ connectionId: "not-mine", envelopeId: "e" }), 404, "connection_not_found"],
    [await post({ connectionId: s.id, envelopeId: "nope" }), 404, "unknown_envelope"],
    [await post({ connectionId: s.id, envelopeId: "e" }, { tok: clientToken(user()) }), 404, "connection_not_found"],
  ];
  for (const [res, status, code] of cases) {
    assert.equal(res.status, status, JSON.stringify(res.body));
    assert.equal(res.body.error, code);
  }
  await s.close();
});

test("data lines are framed correctly whatever the payload holds", async () => {
  const u = user();
  const s = await SseClient.open(w, clientToken(u), { filters: [{ type: "t" }] });
  const payload = { text: "line1\nline2\r\nline3\rend", emoji: "🙂 é ü 中文", sep: "\u2028\u2029", nul: "\u0000" };
  await publish(w, { userId: u, type: "t", payload, timeoutMs: 0 });
  const ev = await s.next((e) => e.json?.envelopeId);
  assert.deepEqual(ev.json.payload, payload);
  // A body with raw line breaks between JSON tokens (valid JSON) still frames as several data lines.
  const raw = `{"userId":${JSON.stringify(u)},"type":"t","timeoutMs":0,"payload":{\r\n  "a": 1,\n  "b":\r[2]\n}}`;
  await publish(w, raw);
  const ev2 = await s.next((e) => e.json?.envelopeId);
  assert.deepEqual(ev2.json.payload, { a: 1, b: [2] });
  assert.ok(ev2.dataLines > 1);
  await s.close();
});

async function resume({ evictBetween }) {
  const u = user();
  const token = clientToken(u);
  const s = await SseClient.open(w, token, { filters: [{ type: "t" }] });
  await publish(w, { userId: u, type: "t", timeoutMs: 0 });
  const first = await s.next((e) => e.json?.envelopeId);
  await s.close(); // the hub may still hold it for a while: the replay below covers it either way
  for (let i = 0; i < 100; i++) await publish(w, { userId: u, type: "t", payload: { i }, timeoutMs: 0 });
  if (evictBetween) await w.evict(u);
  const back = await SseClient.open(w, token, { filters: [{ type: "t" }], lastEventId: first.id });
  const got = [];
  while (got.length < 100) got.push(await back.next((e) => e.json?.envelopeId));
  assert.deepEqual(got.map((e) => Number(e.id)), Array.from({ length: 100 }, (_, i) => Number(first.id) + 1 + i));
  assert.ok(got.every((e) => e.json.replayed === true));
  const live = await publish(w, { userId: u, type: "t", timeoutMs: 0 });
  const ev = await back.next((e) => e.json?.envelopeId);
  assert.equal(ev.json.seq, live.body.seq);
  assert.equal(ev.json.replayed, undefined);
  await back.close();
}

test("Last-Event-ID resumes: 100 missed envelopes, each once, in order", () => resume({ evictBetween: false }));
test("Last-Event-ID resumes across a forced eviction", () => resume({ evictBetween: true }));

test("?lastEventId= and ?since= resume like the header, for clients that cannot set headers", async () => {
  for (const query of [{ lastEventId: "3" }, { since: "3" }]) {
    const u = user(); // one user each: the first stream's sentinel (see since) is in history
    for (let i = 0; i < 5; i++) await publish(w, { userId: u, type: "t", payload: { i }, timeoutMs: 0 });
    const s = await SseClient.open(w, clientToken(u), { filters: [{ type: "t" }], query });
    const got = [await s.next((e) => e.json?.envelopeId), await s.next((e) => e.json?.envelopeId)];
    assert.deepEqual(got.map((e) => [e.id, e.json.replayed]), [["4", true], ["5", true]], JSON.stringify(query));
    // Everything since the stream opened: the welcome and those two, nothing else replayed.
    const all = await s.since(0);
    assert.deepEqual(all.map((e) => e.id ?? e.json.type), ["welcome", "4", "5"]);
    await s.close();
  }
});

test("an SSE stream gets exactly the envelopes its filters match, nothing else (mark/since)", async () => {
  const u = user();
  const s = await SseClient.open(w, clientToken(u), { filters: [{ type: "t", room: "1" }] });
  const m = s.mark();
  const hit = await publish(w, { userId: u, type: "t", payload: { room: "1" }, timeoutMs: 0 });
  for (const body of [{ type: "t", payload: { room: "2" } }, { type: "other", payload: { room: "1" } }, { type: "t" }]) {
    assert.equal((await publish(w, { userId: u, timeoutMs: 0, ...body })).body.clientCount, 0, JSON.stringify(body));
  }
  assert.deepEqual((await s.since(m)).map((e) => e.json.envelopeId), [hit.body.envelopeId]);
  await s.close();
});

test("SSE clients hibernate with the hub: an eviction loses nothing", async () => {
  const u = user();
  const s = await SseClient.open(w, clientToken(u), { filters: [{ type: "t" }] });
  await w.evict(u);
  const r = await publish(w, { userId: u, type: "t", timeoutMs: 0 });
  assert.equal(r.body.clientCount, 1);
  await s.next((e) => e.json?.seq === r.body.seq);
  await s.close();
});

test("an SSE client that goes away while a publish waits for it is reported in `closed`, by the next keep-alive at the latest", async () => {
  const w2 = await startWorker({ SSE_KEEPALIVE_SECONDS: "1" });
  try {
    const u = user();
    const s = await SseClient.open(w2, clientToken(u), { filters: [{ type: "t" }] });
    const started = Date.now();
    const pending = publish(w2, { userId: u, type: "t", timeoutMs: 10000 });
    await s.next((e) => e.json?.envelopeId);
    assert.deepEqual(await s.close(), { how: "aborted" });
    const res = await pending;
    const elapsed = Date.now() - started;
    assert.ok(elapsed < 3500, `released when the client left, not at the 10 s timeout (${elapsed} ms)`);
    assert.equal(res.body.clientCount, 1);
    assert.deepEqual([res.body.results, res.body.pending, res.body.closed], [[], [], [s.id]]);
  } finally {
    await w2.stop();
  }
});

test("a client that goes away is forgotten by the hub", async () => {
  const u = user();
  const s = await SseClient.open(w, clientToken(u), { filters: [{ type: "t" }] });
  await s.close();
  let count = 1;
  for (let i = 0; i < 50 && count !== 0; i++) {
    await new Promise((r) => setTimeout(r, 50));
    count = (await publish(w, { userId: u, type: "t", timeoutMs: 0 })).body.clientCount;
  }
  assert.equal(count, 0);
});

test("idle streams get keep-alive comments", async () => {
  const w2 = await startWorker({ SSE_KEEPALIVE_SECONDS: "1" });
  try {
    const u = user();
    const s = await SseClient.open(w2, clientToken(u), { filters: [{ type: "t" }] });
    const keepalives = () => s.comments.filter((c) => c === ": keepalive").length;
    // The time between keep-alives is the feature: these sleeps are the test, not a settle.
    await new Promise((r) => setTimeout(r, 2600));
    assert.ok(keepalives() >= 2, `one a second, not just the first: ${JSON.stringify(s.comments)}`);
    // They keep coming after an envelope (each pull of the stream must re-arm the timer's wake-up).
    await publish(w2, { userId: u, type: "t", timeoutMs: 0 });
    await s.next((e) => e.json?.envelopeId);
    const before = keepalives();
    await new Promise((r) => setTimeout(r, 2600));
    assert.ok(keepalives() - before >= 2, `keep-alives after an envelope: ${keepalives() - before}`);
    await s.close();
  } finally {
    await w2.stop();
  }
});

test("hostile SSE requests get clear errors", async () => {
  const token = clientToken(user());
  const cases = [
    [{ filters: "{not json" }, 400, "invalid_filters"],
    [{ filters: '{"type":"t"}' }, 400, "invalid_filters"],
    [{ filters: JSON.stringify([{ type: "x".repeat(100) }]).padEnd(20000, " ") }, 400, "invalid_filters"],
    [{ lastEventId: "yesterday" }, 400, "invalid_since"],
    [{ query: { since: "-1" } }, 400, "invalid_since"],
  ];
  for (const [opts, status, code] of cases) {
    const s = await SseClient.open(w, token, opts);
    assert.equal(s.status, status, JSON.stringify(opts).slice(0, 80));
    assert.equal(s.body.error, code);
  }
  const noToken = await fetch(`${w.url}/sse`);
  assert.equal(noToken.status, 401);
  const publisher = await SseClient.open(w, mint({ scope: "publish" }));
  assert.equal(publisher.status, 401, "a token without userId cannot open a stream");
  const huge = await fetch(`${w.url}/sse?token=${token}&filters=${"x".repeat(100000)}`);
  assert.ok([400, 414, 431].includes(huge.status), `status ${huge.status}`);
  // Invalid filter entries are skipped and reported in an error event; the stream stays open.
  const u = user();
  const s = await SseClient.open(w, clientToken(u), { filters: [{ type: "ok" }, { type: 5 }, "x"] });
  const err = await s.next((e) => e.json?.type === "error");
  assert.equal(err.json.code, "invalid_filter");
  assert.deepEqual(err.json.skipped.map((k) => k.index), [1, 2]);
  assert.equal((await publish(w, { userId: u, type: "ok", timeoutMs: 0 })).body.clientCount, 1);
  await s.close();
});

test("an EventSource client reconnects by itself with Last-Event-ID and misses nothing", async () => {
  const u = user();
  const token = clientToken(u);
  const filters = encodeURIComponent(JSON.stringify([{ type: "t" }]));
  const es = new EventSource(`${w.url}/sse?token=${token}&filters=${filters}`);
  const seen = [];
  let opens = 0;
  const waiters = [];
  es.onopen = () => opens++;
  es.onmessage = (e) => {
    const f = JSON.parse(e.data);
    if (f.envelopeId) seen.push({ seq: f.seq, id: e.lastEventId, replayed: !!f.replayed });
    waiters.splice(0).forEach((x) => x());
  };
  const until = async (pred, ms = 10000) => {
    const end = Date.now() + ms;
    while (!pred()) {
      if (Date.now() > end) throw new Error(`timed out; seen ${JSON.stringify(seen)}`);
      await new Promise((r) => (waiters.push(r), setTimeout(r, 50)));
    }
  };
  try {
    await until(() => opens === 1);
    await w.event((e) => e.event === "connect" && e.userId === u && e.transport === "sse"); // the hub has it
    for (let i = 0; i < 3; i++) await publish(w, { userId: u, type: "t", timeoutMs: 0 });
    await until(() => seen.length === 3);
    // The server drops the stream (the hub's sockets are closed); publish while the client is away.
    await w.mf.unsafeEvictDurableObject("switchboard", "UserHub", { name: u, webSockets: "close" });
    for (let i = 0; i < 5; i++) await publish(w, { userId: u, type: "t", timeoutMs: 0 });
    await until(() => seen.length === 8, 15000);
    assert.ok(opens >= 2, "EventSource reconnected");
    assert.deepEqual(seen.map((e) => e.seq), [1, 2, 3, 4, 5, 6, 7, 8]);
    assert.deepEqual(seen.map((e) => e.id), ["1", "2", "3", "4", "5", "6", "7", "8"]);
  } finally {
    es.close();
  }
});
