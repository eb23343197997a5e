// The WebSocket protocol end to end: welcome, ping, subscribe/unsubscribe, filters and their limits,
// error frames, and abuse (oversized frames, floods) — against the built Worker in workerd.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startWorker, Client, publish, clientToken, mint, now } from "./harness.mjs";

let w;
before(async () => (w = await startWorker()));
after(() => w.stop());

let n = 0;
const user = () => `ws-user-${++n}-${Math.random().toString(36).slice(2)}`;
const pong = (c) => c.next((f) => f === "pong");
/**
 * A subscribe frame of exactly `bytes` bytes (3,000-4,300), with the given id: one valid filter of 16
 * keys (the most allowed), the last value sized to hit the length exactly.
 */
function exactFrame(bytes, id) {
  const filter = { type: `big-${Math.random().toString(36).slice(2, 8)}` };
  const keys = Array.from({ length: 15 }, (_, k) => `key-${k}`.padEnd(22, "_"));
  for (const k of keys) filter[k] = "v".repeat(240);
  const length = () => JSON.stringify({ type: "subscribe", filters: [filter], id }).length;
  const last = keys.at(-1);
  filter[last] = "v".repeat(240 + bytes - length());
  if (length() !== bytes || filter[last].length > 256) throw new Error(`cannot build a ${bytes}-byte frame`);
  return JSON.stringify({ type: "subscribe", filters: [filter], id });
}
/** Proves the socket is still open and served. */
async function alive(c) {
  c.send("ping");
  await pong(c);
}

test("welcome carries connectionId, userId and the user's seq", async () => {
  const u = user();
  const c = await Client.connect(w, clientToken(u));
  assert.deepEqual(Object.keys(c.welcome).sort(), ["connectionId", "seq", "type", "userId"]);
  assert.equal(c.welcome.userId, u);
  assert.equal(c.welcome.seq, 0);
  assert.match(c.id, /^[0-9a-f-]{36}$/);
  await publish(w, { userId: u, type: "t", timeoutMs: 0 });
  const d = await Client.connect(w, clientToken(u));
  assert.equal(d.welcome.seq, 1);
  assert.notEqual(d.id, c.id);
  await c.close();
  await d.close();
});

test("the token may come from the Authorization header instead of the query", async () => {
  const u = user();
  const c = await Client.connect(w, clientToken(u), { query: false });
  assert.equal(c.welcome.userId, u);
  await c.close();
});

test("ping in any case and with whitespace is answered pong", async () => {
  const c = await Client.connect(w, clientToken(user()));
  for (const p of ["ping", "PING", " Ping \n", "\tpInG"]) {
    c.send(p);
    assert.equal(await pong(c), "pong", JSON.stringify(p));
  }
  c.send(JSON.stringify({ type: "ping", id: 1 }));
  assert.equal(await pong(c), "pong");
  await c.close();
});

test("subscribe/unsubscribe reply ok with an id and stay silent without one", async () => {
  const u = user();
  const c = await Client.connect(w, clientToken(u));
  assert.deepEqual(await c.request({ type: "subscribe", filters: [{ type: "a" }], id: "s1" }), { type: "ok", id: "s1" });
  assert.deepEqual(await c.request({ type: "subscribe", filters: [{ type: "b" }], id: { n: [1] } }), { type: "ok", id: { n: [1] } });
  const m = c.mark();
  c.send({ type: "subscribe", filters: [{ type: "c" }] });
  c.send({ type: "unsubscribe", filters: [{ type: "c" }] });
  assert.deepEqual(await c.since(m), [], "no reply to frames without an id");
  assert.deepEqual(await c.request({ type: "unsubscribe", filters: [{ type: "a" }], id: 2 }), { type: "ok", id: 2 });
  // Only b remains.
  const ra = await publish(w, { userId: u, type: "a", timeoutMs: 0 });
  const rb = await publish(w, { userId: u, type: "b", timeoutMs: 0 });
  const rc = await publish(w, { userId: u, type: "c", timeoutMs: 0 });
  assert.deepEqual([ra.body.clientCount, rb.body.clientCount, rc.body.clientCount], [0, 1, 0]);
  await c.close();
});

test("duplicate filters are ignored and unsubscribe removes exactly-equal filters", async () => {
  const u = user();
  const c = await Client.connect(w, clientToken(u), { autoAck: () => "x" });
  await c.subscribe([{ type: "t", room: "1" }, { room: "1", type: "t" }]);
  await c.subscribe([{ type: "t", room: "1" }]);
  const r = await publish(w, { userId: u, type: "t", payload: { room: "1" } });
  assert.deepEqual(r.body.results, ["x"], "delivered once");
  await c.request({ type: "unsubscribe", filters: [{ type: "t" }], id: "u1" }); // not equal: no effect
  assert.equal((await publish(w, { userId: u, type: "t", payload: { room: "1" } })).body.clientCount, 1);
  await c.request({ type: "unsubscribe", filters: [{ room: "1", type: "t" }], id: "u2" });
  assert.equal((await publish(w, { userId: u, type: "t", payload: { room: "1" } })).body.clientCount, 0);
  await c.close();
});

test("filters match type and top-level payload fields exactly", async () => {
  const u = user();
  const c = await Client.connect(w, clientToken(u));
  await c.subscribe([{ type: "chat_message", questId: "q1", nodeId: "n1" }]);
  const cases = [
    [{ type: "chat_message", payload: { questId: "q1", nodeId: "n1", x: 1 } }, 1],
    [{ type: "chat_message", payload: { questId: "q1", nodeId: "n2" } }, 0],
    [{ type: "chat_message", payload: { questId: "q1" } }, 0],
    [{ type: "chat_message", payload: { questId: "q1", nodeId: 1 } }, 0],
    [{ type: "chat_message", payload: "q1" }, 0],
    [{ type: "chat_message", payload: { nested: { questId: "q1", nodeId: "n1" } } }, 0],
    [{ type: "other", payload: { questId: "q1", nodeId: "n1" } }, 0],
  ];
  for (const [body, count] of cases) {
    const r = await publish(w, { userId: u, timeoutMs: 0, ...body });
    assert.equal(r.body.clientCount, count, JSON.stringify(body));
  }
  await c.close();
});

test("a connection with no filters receives nothing", async () => {
  const u = user();
  const c = await Client.connect(w, clientToken(u));
  const m = c.mark();
  const r = await publish(w, { userId: u, type: "message", payload: {}, timeoutMs: 0 });
  assert.equal(r.body.clientCount, 0);
  assert.deepEqual(await c.since(m), []);
  await c.close();
});

test("invalid filters are skipped and reported; the valid ones apply", async () => {
  const u = user();
  const c = await Client.connect(w, clientToken(u));
  const reply = await c.request({
    type: "subscribe",
    id: 7,
    filters: [{ type: "ok1" }, { type: 1 }, "str", { noType: "x" }, { type: "ok2", k: 5 }, { type: "ok3", k: "x".repeat(300) }, { type: "" }],
  });
  assert.equal(reply.type, "error");
  assert.equal(reply.code, "invalid_filter");
  assert.equal(reply.id, 7);
  assert.deepEqual(reply.skipped.map((s) => s.index), [1, 2, 3, 4, 5, 6]);
  for (const s of reply.skipped) assert.ok(s.reason.length > 0);
  assert.equal((await publish(w, { userId: u, type: "ok1", timeoutMs: 0 })).body.clientCount, 1);
  // Without an id the refusal is still reported (the frame was not fully applied).
  c.send({ type: "subscribe", filters: [{ type: 3 }] });
  const e = await c.next((f) => f.type === "error");
  assert.equal(e.code, "invalid_filter");
  assert.equal(e.id, undefined);
  await alive(c);
  await c.close();
});

test("at most 50 filters are read from a frame and 100 held per connection", async () => {
  const u = user();
  const c = await Client.connect(w, clientToken(u));
  const batch = (from, count) => Array.from({ length: count }, (_, i) => ({ type: `t${from + i}` }));
  const r1 = await c.request({ type: "subscribe", id: 1, filters: batch(0, 60) });
  assert.equal(r1.code, "invalid_filter");
  // Everything past the 50th is one entry (issue 13, F5: the error frame never grows with the input).
  assert.deepEqual(r1.skipped.map((s) => s.index), [50]);
  assert.match(r1.skipped[0].reason, /entries 50 to 59 were not read/);
  assert.equal((await publish(w, { userId: u, type: "t49", timeoutMs: 0 })).body.clientCount, 1);
  assert.equal((await publish(w, { userId: u, type: "t50", timeoutMs: 0 })).body.clientCount, 0);
  assert.deepEqual(await c.request({ type: "subscribe", id: 2, filters: batch(100, 50) }), { type: "ok", id: 2 });
  const r3 = await c.request({ type: "subscribe", id: 3, filters: batch(200, 5) });
  assert.equal(r3.code, "invalid_filter");
  assert.equal(r3.skipped.length, 5);
  assert.match(r3.skipped[0].reason, /100 filters/);
  // Invalid entries and entries over the limit are listed together, in the frame's order.
  const mixed = [{ type: 1 }, { type: "t300" }, {}, { type: "t301" }];
  const r3b = await c.request({ type: "subscribe", id: 31, filters: mixed });
  assert.deepEqual(r3b.skipped.map((s) => s.index), [0, 1, 2, 3]);
  assert.deepEqual(r3b.skipped.map((s) => /100 filters/.test(s.reason)), [false, true, false, true]);
  assert.equal((await publish(w, { userId: u, type: "t200", timeoutMs: 0 })).body.clientCount, 0);
  // Making room lets new ones in.
  await c.request({ type: "unsubscribe", id: 4, filters: batch(0, 5) });
  assert.deepEqual(await c.request({ type: "subscribe", id: 5, filters: batch(200, 5) }), { type: "ok", id: 5 });
  await c.close();
});

test("malformed frames get error frames and the socket stays open", async () => {
  const c = await Client.connect(w, clientToken(user()));
  const cases = [
    ["{not json", "invalid_json", undefined],
    ["hello", "invalid_json", undefined],
    ["[1,2,3]", "invalid_frame", undefined],
    ["42", "invalid_frame", undefined],
    ['"subscribe"', "invalid_frame", undefined],
    ["null", "invalid_frame", undefined],
    ['{"filters":[]}', "invalid_frame", undefined],
    ['{"type":7,"id":1}', "invalid_frame", 1],
    ['{"type":"dance","id":"d"}', "unknown_type", "d"],
    ['{"type":"subscribe","id":2}', "invalid_frame", 2],
    ['{"type":"subscribe","filters":{"type":"a"},"id":3}', "invalid_frame", 3],
    ['{"type":"subscribe","filters":[],"since":"yesterday","id":4}', "invalid_frame", 4],
    ['{"type":"ack","id":5}', "invalid_frame", 5],
    ['{"type":"ack","envelopeId":"nope","id":6}', "unknown_envelope", 6],
    ['{"type":"message","data":{"x":1},"id":8}', "no_backend", 8],
    ['{"type":"message","data":1}', "no_backend", undefined],
    ['{"type":"a","type":"b"}', "invalid_frame", undefined],
    ["\u0000\u0001\u0002", "invalid_json", undefined],
  ];
  for (const [text, code, id] of cases) {
    c.send(text);
    const e = await c.next((f) => f.type === "error");
    assert.equal(e.code, code, text);
    assert.equal(e.id, id, text);
    assert.equal(typeof e.message, "string");
  }
  // An ack for an unknown envelope without id is silent (HopeFlow clients ack everything).
  const m = c.mark();
  c.send({ type: "ack", envelopeId: "unknown" });
  assert.deepEqual(await c.since(m), []);
  await alive(c);
  await c.close();
});

test("binary frames are refused with an error frame, socket open", async () => {
  const c = await Client.connect(w, clientToken(user()));
  c.send(Buffer.from(JSON.stringify({ type: "subscribe", filters: [] })));
  const e = await c.next((f) => f.type === "error");
  assert.equal(e.code, "unsupported_frame");
  await alive(c);
  await c.close();
});

test("a frame over MAX_FRAME_BYTES closes that connection with 4009; others never notice", async () => {
  const w2 = await startWorker({ MAX_FRAME_BYTES: "4096" });
  try {
    const u = user();
    const victim = await Client.connect(w2, clientToken(u));
    const sibling = await Client.connect(w2, clientToken(u), { autoAck: () => "still here" });
    await sibling.subscribe([{ type: "t" }]);
    victim.send(JSON.stringify({ type: "subscribe", filters: [{ type: "x".repeat(5000) }] }));
    const closed = await victim.closed;
    assert.equal(closed.code, 4009);
    assert.equal(closed.reason, "frame too large");
    const r = await publish(w2, { userId: u, type: "t" });
    assert.deepEqual(r.body.results, ["still here"]);
    // A frame of exactly MAX_FRAME_BYTES is allowed (the limit is "over"): its subscribe is applied.
    const frame = exactFrame(4096, "big");
    assert.equal(Buffer.byteLength(frame), 4096);
    const big = sibling.next((f) => f.id === "big");
    sibling.send(frame);
    assert.deepEqual(await big, { type: "ok", id: "big" });
    const { type: bigType, ...fields } = JSON.parse(frame).filters[0];
    assert.deepEqual((await publish(w2, { userId: u, type: bigType, payload: fields })).body.results, ["still here"]);
    await sibling.close();
  } finally {
    await w2.stop();
  }
});

test("huge frames are closed, not served: 4009 over MAX_FRAME_BYTES, 1009 over the runtime's 32 MiB", async () => {
  const other = await Client.connect(w, clientToken(user()));
  const c = await Client.connect(w, clientToken(user()));
  c.send("x".repeat(2 * 1024 * 1024));
  assert.equal((await c.closed).code, 4009);
  const d = await Client.connect(w, clientToken(user()));
  d.send("x".repeat(40 * 1024 * 1024));
  assert.equal((await d.closed).code, 1009);
  await alive(other);
  await other.close();
});

test("junk below the flood limit gets one error frame each", async () => {
  const c = await Client.connect(w, clientToken(user()));
  for (let i = 0; i < 50; i++) c.send(`junk ${i}`);
  for (let i = 0; i < 50; i++) await c.next((f) => f.type === "error" && f.code === "invalid_json");
  await alive(c);
  await c.close();
});

test("the flood limit allows bursts of twice MAX_FRAMES_PER_SECOND and closes beyond that", async () => {
  const w2 = await startWorker({ MAX_FRAMES_PER_SECOND: "10" });
  try {
    // 20 frames at once: the burst allowance exactly; each gets its error frame, the socket stays.
    const ok = await Client.connect(w2, clientToken(user()));
    for (let i = 0; i < 20; i++) ok.send(`junk ${i}`);
    for (let i = 0; i < 20; i++) await ok.next((f) => f.type === "error" && f.code === "invalid_json");
    await alive(ok);
    await ok.close();
    // Well past the burst (the bucket refills at 10 per second, so a little slack): closed with 4029.
    const flooder = await Client.connect(w2, clientToken(user()));
    for (let i = 0; i < 40; i++) flooder.send(`junk ${i}`);
    assert.deepEqual(await flooder.closed, { code: 4029, reason: "too many frames" });
  } finally {
    await w2.stop();
  }
});

test("10,000 junk frames close the flooder with 4029; its user's other sockets and other users are unaffected", async () => {
  const u = user();
  const flooder = await Client.connect(w, clientToken(u));
  const sibling = await Client.connect(w, clientToken(u), { autoAck: () => "ok" });
  const stranger = await Client.connect(w, clientToken(user()));
  await sibling.subscribe([{ type: "t" }]);
  for (let i = 0; i < 10000; i++) flooder.send(`{"junk":${i}}`);
  const closed = await flooder.closed;
  assert.equal(closed.code, 4029);
  assert.equal(closed.reason, "too many frames");
  const r = await publish(w, { userId: u, type: "t" });
  assert.equal(r.body.clientCount, 1, "the flooder is gone, the sibling served");
  assert.deepEqual(r.body.results, ["ok"]);
  await alive(stranger);
  await sibling.close();
  await stranger.close();
});

test("acks the hub is waiting for never count as a flood", async () => {
  const w2 = await startWorker({ MAX_FRAMES_PER_SECOND: "5" });
  try {
    const u = user();
    const c = await Client.connect(w2, clientToken(u), { autoAck: () => 1 });
    await c.subscribe([{ type: "t" }]);
    for (let i = 0; i < 40; i++) {
      const r = await publish(w2, { userId: u, type: "t" });
      assert.deepEqual(r.body.results, [1], `publish ${i}`);
    }
    await alive(c);
    await c.close();
  } finally {
    await w2.stop();
  }
});

test("the close handshake completes promptly and echoes the client's code", async () => {
  for (const [code, expected] of [[1000, 1000], [4321, 4321], [3001, 3001]]) {
    const c = await Client.connect(w, clientToken(user()));
    const started = Date.now();
    const closed = await c.close(code, "bye");
    assert.equal(closed.code, expected);
    assert.ok(Date.now() - started < 1000, `closed in ${Date.now() - started} ms`);
  }
  // No code at all (1005 on the server) is answered with 1000.
  const c = await Client.connect(w, clientToken(user()));
  const started = Date.now();
  c.ws.close();
  const closed = await c.closed;
  assert.equal(closed.code, 1000, "README: a client close without a code is answered with 1000");
  assert.ok(Date.now() - started < 1000);
});

test("upgrades without a valid token are refused with 401 and the code a client acts on, before any socket opens", async () => {
  // The code tells a client what to do: token_expired → refresh the token; the others → give up.
  const bad = [
    ["", "missing_token"],
    ["garbage", "invalid_token"],
    [mint({ userId: "u" }, { secret: "wrong" }), "invalid_token"],
    [mint({ userId: "u", exp: now() - 3600 }), "token_expired"],
    [mint({ userId: "u", nbf: now() + 3600 }), "token_not_yet_valid"],
    [mint({ userId: "" }), "invalid_token"],
    [mint({ userId: 42 }), "invalid_token"],
    [mint({ sub: "no-user-id" }), "invalid_token"],
    [mint({ userId: "u" }, { header: { alg: "none", typ: "JWT" } }).replace(/[^.]+$/, ""), "invalid_token"],
    [mint({ userId: "x".repeat(300) }), "invalid_token"],
  ];
  for (const [token, code] of bad) {
    await assert.rejects(Client.connect(w, token), (e) => e.status === 401 && e.body?.error === code && e.body.message.length > 0, `${code}: ${token.slice(0, 30)}`);
  }
  // No token at all, in neither the query nor a header.
  await assert.rejects(Client.connect(w, "", { query: false }), (e) => e.status === 401 && e.body?.error === "missing_token");
  // Within the 30 s leeway, exp and nbf are still fine.
  for (const claims of [{ exp: now() - 10 }, { nbf: now() + 10 }]) {
    const c = await Client.connect(w, mint({ userId: user(), ...claims }));
    await c.close();
  }
});

test("unicode user ids work end to end", async () => {
  const u = `ユーザー-${user()}-🙂`;
  const c = await Client.connect(w, clientToken(u), { autoAck: () => "ok" });
  assert.equal(c.welcome.userId, u);
  await c.subscribe([{ type: "t" }]);
  const r = await publish(w, { userId: u, type: "t" });
  assert.deepEqual(r.body.results, ["ok"]);
  await c.close();
});
