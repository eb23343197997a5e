// The client against the real built Worker (workerd through Miniflare, tests/harness.mjs): acks from
// handlers in the publish response, re-subscription and resume after the server closes the socket,
// token refresh, gaps, unsubscribe, and the SSE transport with acks over POST /ack.
// Uses Node 22's own WebSocket and fetch, as an application would.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { startWorker, publish, clientToken, publishToken, now, waitFor } from "../../../tests/harness.mjs";
import { SwitchboardClient } from "../dist/index.js";

let w;
before(async () => (w = await startWorker({ MAX_FRAME_BYTES: "1024" })));
after(() => w?.stop());

let n = 0;
const user = (p = "sdk") => `${p}-${++n}-${Math.random().toString(36).slice(2, 8)}`;
const clients = [];
after(() => clients.forEach((c) => c.close()));

function client(opts) {
  const c = new SwitchboardClient({ url: w.url, reconnect: { minDelayMs: 50, maxDelayMs: 200, jitter: 0 }, ...opts });
  c.errors = [];
  c.closes = [];
  c.on("error", (e) => c.errors.push(e));
  c.on("close", (e) => c.closes.push(e));
  clients.push(c);
  return c;
}
const opened = (c) => waitFor(() => c.state === "open", 8000, "state open");

test("two connections of one user ack through their handlers; the publish response carries both results", async () => {
  const alice = user("alice");
  const bob = user("bob");
  const got = { a1: [], a2: [], b: [] };
  const a1 = client({ token: clientToken(alice) });
  const a2 = client({ token: () => clientToken(alice), transport: "websocket" });
  const b = client({ token: clientToken(bob) });
  const subs = [
    a1.subscribe({ type: "chat", room: "r1" }, (e) => (got.a1.push(e.payload.text), { tab: 1, text: e.payload.text })),
    a2.subscribe([{ type: "chat", room: "r1" }], async (e) => {
      got.a2.push(e.payload.text);
      await new Promise((r) => setTimeout(r, 20)); // an async handler: its resolved value is the result
      return { tab: 2 };
    }),
    b.subscribe([{ type: "chat", room: "r1" }], (e) => got.b.push(e)),
  ];
  [a1, a2, b].forEach((c) => c.connect());
  await Promise.all(subs.map((s) => s.ready));
  assert.equal(a1.userId, alice);
  assert.notEqual(a1.connectionId, a2.connectionId);

  const r = await publish(w, { userId: alice, type: "chat", payload: { room: "r1", text: "hello" } });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.body.clientCount, 2);
  assert.deepEqual(r.body.pending, []);
  const byConn = Object.fromEntries(r.body.acks.map((a) => [a.connectionId, a.result]));
  assert.deepEqual(byConn, { [a1.connectionId]: { tab: 1, text: "hello" }, [a2.connectionId]: { tab: 2 } });
  assert.deepEqual(got, { a1: ["hello"], a2: ["hello"], b: [] });
  assert.equal(a1.lastSeq, r.body.seq);

  // Another room matches nobody; a handler that throws acks {error}.
  const other = await publish(w, { userId: alice, type: "chat", payload: { room: "r2" }, timeoutMs: 1000 });
  assert.equal(other.body.clientCount, 0);
  const s1 = a1.subscribe({ type: "boom" }, () => {
    throw new Error("cannot handle this");
  });
  const s2 = a2.subscribe({ type: "boom" }, () => "fine");
  await Promise.all([s1.ready, s2.ready]);
  const boom = await publish(w, { userId: alice, type: "boom" });
  assert.equal(boom.body.clientCount, 2);
  assert.deepEqual(boom.body.results.sort((x, y) => JSON.stringify(x).localeCompare(JSON.stringify(y))), ["fine", { error: "cannot handle this" }]);
  assert.ok(a1.errors.some((e) => e.code === "handler_error"));
  [a1, a2, b].forEach((c) => c.close());
});

test("unsubscribe stops delivery on the server", async () => {
  const u = user();
  const c = client({ token: clientToken(u) });
  const got = [];
  const sub = c.subscribe({ type: "t" }, (e) => got.push(e.seq));
  c.connect();
  await sub.ready;
  assert.equal((await publish(w, { userId: u, type: "t" })).body.clientCount, 1);
  sub.unsubscribe();
  // The unsubscribe frame (no reply) and the publish (HTTP) race: poll until the server has applied
  // it. A poll that wins the race is delivered to the handler, so those are expected too, exactly.
  const delivered = [];
  await waitFor(async () => {
    const r = await publish(w, { userId: u, type: "t", timeoutMs: 0 });
    if (r.body.clientCount === 1) delivered.push(r.body.seq);
    return r.body.clientCount === 0;
  }, 3000, "clientCount 0");
  await waitFor(() => got.length === 1 + delivered.length, 3000, "the polls that won the race");
  assert.deepEqual(got, [1, ...delivered]);
  // And after that nothing more reaches the handler.
  assert.equal((await publish(w, { userId: u, type: "t", timeoutMs: 0 })).body.clientCount, 0);
  c.close();
});

test("after the server closes the socket (4009) the client gets a fresh token, re-subscribes and resumes without loss", async () => {
  const u = user();
  let calls = 0;
  let release;
  const gate = new Promise((r) => (release = r));
  const c = client({
    token: async () => {
      if (++calls > 1) await gate; // hold the reconnect until the test has published into the outage
      return clientToken(u);
    },
  });
  const handled = [];
  const acks = new Map();
  const sub = c.subscribe({ type: "note" }, (e) => (handled.push({ seq: e.seq, replayed: !!e.replayed, conn: c.connectionId }), `ok-${e.seq}`));
  c.connect();
  await sub.ready;
  const first = c.connectionId;
  for (let i = 1; i <= 2; i++) acks.set(i, (await publish(w, { userId: u, type: "note", payload: { i } })).body);
  assert.deepEqual([...acks.values()].map((r) => r.results), [["ok-1"], ["ok-2"]]);

  // A frame over MAX_FRAME_BYTES: the server closes the connection with 4009.
  const sent = c.send({ blob: "x".repeat(4096) });
  await assert.rejects(sent, (e) => e.code === "disconnected");
  await waitFor(() => calls === 2, 5000, "the token provider to be called again");
  assert.equal(c.closes[0].code, 4009);
  assert.equal(c.closes[0].reconnect, true);
  assert.equal(c.state, "reconnecting");

  // Published while the client is away: nobody is connected, so nobody acks now.
  const missed = [];
  for (let i = 3; i <= 5; i++) missed.push((await publish(w, { userId: u, type: "note", payload: { i }, timeoutMs: 0 })).body);
  assert.deepEqual(missed.map((m) => m.clientCount), [0, 0, 0]);
  release();
  await opened(c);
  assert.notEqual(c.connectionId, first);
  await waitFor(() => handled.length === 5, 8000, "the three missed envelopes");
  assert.deepEqual(
    handled.map((h) => [h.seq, h.replayed]),
    [[1, false], [2, false], [3, true], [4, true], [5, true]],
    "each envelope handled once, in order, the missed ones replayed",
  );
  // Live again on the new connection, acked with the handler's result.
  const live = await publish(w, { userId: u, type: "note", payload: { i: 6 } });
  assert.deepEqual(live.body.acks, [{ connectionId: c.connectionId, result: "ok-6" }]);
  assert.equal(handled.length, 6);
  assert.equal(c.lastSeq, 6);
  c.close();
});

test("token expiry: the server closes with 4001 and the client reconnects at once with a fresh token", async () => {
  const u = user();
  const issued = [];
  const c = client({
    reconnect: { minDelayMs: 5000, maxDelayMs: 5000, jitter: 0 }, // a normal retry would take 5 s
    token: () => {
      const exp = issued.length === 0 ? now() + 2 : now() + 3600;
      issued.push(exp);
      return clientToken(u, { exp });
    },
  });
  const sub = c.subscribe({ type: "t" }, (e) => `got-${e.seq}`);
  const opens = [];
  c.on("welcome", () => opens.push(Date.now()));
  c.connect();
  await sub.ready;
  await waitFor(() => opens.length === 2, 8000, "a second connection after the token expired");
  assert.equal(c.closes[0].code, 4001);
  assert.equal(issued.length, 2, "the token provider was asked again");
  assert.ok(issued[1] > issued[0] + 60, "with a fresh token");
  assert.ok(opens[1] - opens[0] < 4500, "at once, not after the 5 s backoff");
  await waitFor(() => c.state === "open");
  const r = await publish(w, { userId: u, type: "t" });
  assert.deepEqual(r.body.acks, [{ connectionId: c.connectionId, result: "got-1" }]);
  c.close();
});

test("kicked by the backend (DELETE …/connections/{id}, close 4002): the client reconnects and resumes", async () => {
  const u = user();
  let calls = 0;
  let release;
  const gate = new Promise((r) => (release = r));
  const c = client({ token: async () => (++calls > 1 && (await gate), clientToken(u)) });
  const seqs = [];
  const sub = c.subscribe({ type: "t" }, (e) => (seqs.push(e.seq), "ok"));
  c.connect();
  await sub.ready;
  const kicked = c.connectionId;
  const del = await fetch(`${w.url}/users/${encodeURIComponent(u)}/connections/${kicked}`, {
    method: "DELETE",
    headers: { authorization: `Bearer ${publishToken()}` },
  });
  assert.equal(del.status, 200, await del.clone().text());
  await waitFor(() => c.closes.length === 1, 8000, "the close");
  assert.equal(c.closes[0].code, 4002);
  assert.equal(c.closes[0].reconnect, true);
  const missed = await publish(w, { userId: u, type: "t", timeoutMs: 0 });
  assert.equal(missed.body.clientCount, 0);
  release();
  await waitFor(() => seqs.length === 1, 8000, "the missed envelope");
  assert.notEqual(c.connectionId, kicked);
  assert.deepEqual(seqs, [missed.body.seq]);
  c.close();
});

test("channels: join with a handler, ack through it, re-join after a dropped connection and resume what the channel published meanwhile; publish from a client", async () => {
  const channel = `room:sdk-${Math.random().toString(36).slice(2, 8)}`;
  const [alice, bob] = [user("alice"), user("bob")];
  let calls = 0;
  let release;
  const gate = new Promise((r) => (release = r));
  const grants = { channels: ["room:*"], publishChannels: ["room:*"] };
  // alice's sockets, so the test can drop one the way a network does (a backend's kick would end
  // her channel memberships at once, without the linger this test is about).
  const sockets = [];
  class Recorded extends WebSocket {
    constructor(url) {
      super(url);
      sockets.push(this);
    }
  }
  const a = client({ token: async () => (++calls > 1 && (await gate), clientToken(alice, grants)), WebSocket: Recorded });
  const b = client({ token: clientToken(bob, grants) });
  const got = { a: [], b: [] };
  a.connect();
  b.connect();
  await Promise.all([opened(a), opened(b)]);
  await a.join(channel, (e) => (got.a.push(e.payload), `a:${e.payload}`));
  await b.join(channel, (e) => (got.b.push([e.payload, e.from]), `b:${e.payload}`));
  await assert.rejects(a.join("lobby", () => {}), (e) => e.code === "forbidden");

  const first = await publish(w, { channel, type: "msg", payload: 1 });
  assert.deepEqual(first.body.results.sort(), ["a:1", "b:1"]);

  const kicked = a.connectionId;
  sockets.at(-1).close(4000, "network blip");
  await waitFor(() => a.closes.length === 1, 8000, "the close");
  const missed = await publish(w, { channel, type: "msg", payload: 2, timeoutMs: 0 });
  assert.equal(missed.body.totals.users, 2, "alice lingers as a member while away");
  release();
  await waitFor(() => got.a.length === 2, 8000, "the missed channel envelope, replayed after the re-join");
  assert.deepEqual(got.a, [1, 2]);
  assert.notEqual(a.connectionId, kicked);

  // A client event from alice reaches bob (with `from`), not alice's own socket.
  const totals = await a.publish(channel, "typing", 3);
  assert.equal(totals.clientCount, 1);
  await waitFor(() => got.b.length === 3, 8000, "bob's third envelope");
  assert.deepEqual(got.b[2], [3, alice]);
  assert.deepEqual(got.a, [1, 2]);
  await a.leave(channel);
  assert.equal((await publish(w, { channel, type: "msg", payload: 4 })).body.totals.users, 1);
  a.close();
  b.close();
});

test("send() delivers a message frame to the backend's webhook, and is refused without one", async () => {
  const u = user();
  const plain = client({ token: clientToken(u) });
  plain.connect();
  await opened(plain);
  await assert.rejects(plain.send({ text: "hi" }), (e) => e.code === "no_backend");
  plain.close();

  const events = [];
  const hook = http.createServer((req, res) => {
    let body = "";
    req.on("data", (d) => (body += d));
    req.on("end", () => {
      events.push(JSON.parse(body));
      res.writeHead(204).end();
    });
  });
  await new Promise((r) => hook.listen(0, "127.0.0.1", r));
  const w2 = await startWorker({ WEBHOOK_URL: `http://127.0.0.1:${hook.address().port}/hook`, WEBHOOK_SECRET: "hook-secret" });
  try {
    const c = client({ url: w2.url, token: clientToken(u) });
    c.connect();
    await opened(c);
    await c.send({ text: "typing…" });
    const msg = await waitFor(() => events.find((e) => e.type === "switchboard.client.message.v1"), 8000, "the webhook");
    assert.equal(msg.subject, u);
    assert.equal(msg.data.connectionId, c.connectionId);
    assert.deepEqual(msg.data.data, { text: "typing…" });
    c.close();
  } finally {
    await w2.stop();
    hook.closeAllConnections();
    await new Promise((r) => hook.close(r));
  }
});

test("close() then connect() resumes from the last seq seen, and a gap is reported when history has moved on", async () => {
  const w2 = await startWorker({ HISTORY_LIMIT: "2" });
  try {
    const u = user();
    const c = client({ url: w2.url, token: () => clientToken(u) });
    const seqs = [];
    const gaps = [];
    c.on("gap", (g) => gaps.push(g));
    const sub = c.subscribe({ type: "t" }, (e) => seqs.push(e.seq));
    c.connect();
    await sub.ready;
    await publish(w2, { userId: u, type: "t" });
    c.close();
    for (let i = 0; i < 5; i++) await publish(w2, { userId: u, type: "t", timeoutMs: 0 }); // seq 2..6; history keeps 5, 6
    c.connect();
    await waitFor(() => seqs.length === 3, 8000, "the replay");
    assert.deepEqual(seqs, [1, 5, 6]);
    assert.deepEqual(gaps, [{ type: "gap", from: 2, to: 4 }]);
    c.close();
  } finally {
    await w2.stop();
  }
});

for (const transport of ["websocket", "sse"]) {
  test(`a resume longer than a replay page (REPLAY_PAGE_ENVELOPES) continues page by page over ${transport}: every envelope once, in order`, async () => {
    const w2 = await startWorker({ REPLAY_PAGE_ENVELOPES: "10" });
    try {
      const u = user("paged");
      const c = client({ url: w2.url, token: () => clientToken(u), transport });
      const seqs = [];
      const sub = c.subscribe({ type: "t" }, (e) => void seqs.push(e.seq));
      c.connect();
      await sub.ready;
      await publish(w2, { userId: u, type: "t" });
      await waitFor(() => seqs.length === 1, 8000, "the first envelope");
      c.close();
      for (let i = 0; i < 34; i++) await publish(w2, { userId: u, type: "t", timeoutMs: 0 }); // seq 2..35, 4 pages
      c.connect();
      await waitFor(() => seqs.length === 35, 20000, `the paged replay (got ${seqs.length})`);
      assert.deepEqual(seqs, Array.from({ length: 35 }, (_, i) => i + 1));
      // Live envelopes after the replay still arrive, once.
      const r = await publish(w2, { userId: u, type: "t" });
      await waitFor(() => seqs.length === 36, 8000, "a live envelope");
      assert.equal(seqs.at(-1), r.body.seq);
      assert.deepEqual(c.errors, []);
      c.close();
    } finally {
      await w2.stop();
    }
  });
}

test("sse transport: welcome, delivery, acks over POST /ack in the publish response, resume after a reconnect", async () => {
  const u = user("sse");
  let calls = 0;
  const c = client({ token: () => (calls++, clientToken(u)), transport: "sse" });
  const ws = client({ token: clientToken(u) });
  const got = [];
  const sub = c.subscribe({ type: "feed", room: "a" }, (e) => (got.push([e.seq, !!e.replayed]), { via: "sse", seq: e.seq }));
  const wsSub = ws.subscribe({ type: "feed" }, () => ({ via: "ws" }));
  c.connect();
  ws.connect();
  await Promise.all([sub.ready, wsSub.ready]);
  assert.ok(c.connectionId);

  const r = await publish(w, { userId: u, type: "feed", payload: { room: "a", text: "multi\nline" } });
  assert.equal(r.body.clientCount, 2, JSON.stringify(r.body));
  const byConn = Object.fromEntries(r.body.acks.map((a) => [a.connectionId, a.result]));
  assert.deepEqual(byConn, { [c.connectionId]: { via: "sse", seq: 1 }, [ws.connectionId]: { via: "ws" } });
  const nope = await publish(w, { userId: u, type: "feed", payload: { room: "b" } });
  assert.equal(nope.body.clientCount, 1, "the SSE filters are applied by the server");

  c.close();
  await publish(w, { userId: u, type: "feed", payload: { room: "a" }, timeoutMs: 0 }); // seq 3, missed
  c.connect();
  await waitFor(() => got.length === 2, 8000, "the replayed envelope over SSE");
  assert.deepEqual(got, [[1, false], [3, true]]);
  assert.equal(calls, 2, "a token per connection");
  // A new subscription reopens the stream with both filters, without replaying anything twice.
  const sub2 = c.subscribe({ type: "other" }, () => "other-ok");
  await sub2.ready;
  const o = await publish(w, { userId: u, type: "other" });
  assert.deepEqual(o.body.acks, [{ connectionId: c.connectionId, result: "other-ok" }]);
  const f = await publish(w, { userId: u, type: "feed", payload: { room: "a" } });
  assert.deepEqual(got, [[1, false], [3, true], [f.body.seq, false]]);
  assert.deepEqual(c.errors, []);
  c.close();
  ws.close();
});

test("a refused token is reported with the server's code and retried with a new token", async () => {
  const u = user();
  let calls = 0;
  const c = client({
    transport: "sse",
    token: () => (++calls === 1 ? clientToken(u, { exp: Math.floor(Date.now() / 1000) - 3600 }) : clientToken(u)),
  });
  const sub = c.subscribe({ type: "t" }, () => "ok");
  c.connect();
  await sub.ready;
  assert.equal(calls, 2);
  assert.equal(c.errors[0].code, "token_expired");
  assert.equal((await publish(w, { userId: u, type: "t" })).body.results[0], "ok");
  c.close();
});
