// Unit tests of the client against a scripted fake socket / fake event stream: backoff, close-code
// handling, token refresh, re-subscription with `since`, de-duplication, acks, keepalive, SSE parsing.
// (The real Worker is exercised in e2e.test.mjs; this file pins the client's own logic.)
import { test } from "node:test";
import assert from "node:assert/strict";
import { SwitchboardClient, SwitchboardError, backoffDelay, shouldReconnect, matches, filterKey, Recent } from "../dist/index.js";

import { tick, waitFor, fakeSockets, env, setup, open, okAll, fakeSse } from "./fakes.mjs";

test("backoff grows by factor, is capped, and jitter only shortens it", () => {
  const o = { minDelayMs: 100, maxDelayMs: 1000, factor: 2, jitter: 0 };
  assert.deepEqual([0, 1, 2, 3, 4, 10].map((a) => backoffDelay(a, o)), [100, 200, 400, 800, 1000, 1000]);
  assert.equal(backoffDelay(3, { ...o, jitter: 1 }, () => 0), 800);
  assert.equal(backoffDelay(3, { ...o, jitter: 1 }, () => 0.999999), 0);
  assert.equal(backoffDelay(3, { ...o, jitter: 0.5 }, () => 1), 400);
  for (let i = 0; i < 200; i++) {
    const d = backoffDelay(2, { ...o, jitter: 1 });
    assert.ok(d >= 0 && d <= 400, String(d));
  }
  assert.equal(backoffDelay(0, { jitter: 0 }), 500, "default minDelayMs");
  assert.equal(backoffDelay(20, { jitter: 0 }), 30000, "default maxDelayMs");
});

test("close codes: 4500-4999 never reconnect, everything else does", () => {
  for (const c of [1000, 1001, 1006, 1011, 4000, 4001, 4002, 4009, 4029, 4499]) assert.equal(shouldReconnect(c), true, String(c));
  for (const c of [4500, 4501, 4999]) assert.equal(shouldReconnect(c), false, String(c));
});

test("filters match like the server's: type, then string payload fields exactly", () => {
  const e = { type: "chat", payload: { room: "r1", n: 1 } };
  assert.ok(matches({ type: "chat" }, e));
  assert.ok(matches({ type: "chat", room: "r1" }, e));
  assert.ok(!matches({ type: "chat", room: "r2" }, e));
  assert.ok(!matches({ type: "chat", n: "1" }, e), '"1" does not match 1');
  assert.ok(!matches({ type: "other" }, e));
  assert.ok(!matches({ type: "chat", room: "r1" }, { type: "chat", payload: ["r1"] }));
  assert.ok(!matches({ type: "chat", room: "r1" }, { type: "chat", payload: null }));
  assert.equal(filterKey({ type: "a", b: "1" }), filterKey({ b: "1", type: "a" }));
  assert.notEqual(filterKey({ type: "a", b: "1" }), filterKey({ type: "a", b: "2" }));
});

test("Recent keeps the newest entries only", () => {
  const r = new Recent(3);
  for (const k of ["a", "b", "c", "d"]) r.set(k, k.toUpperCase());
  assert.equal(r.has("a"), false);
  assert.equal(r.get("d"), "D");
  r.set("b", "B2"); // refresh b: c is now the oldest
  r.set("e", "E");
  assert.equal(r.has("c"), false);
  assert.equal(r.get("b"), "B2");
});

test("bad options and filters are refused with clear errors", () => {
  const { FakeWS } = fakeSockets();
  assert.throws(() => new SwitchboardClient({ token: "t" }), /url/);
  assert.throws(() => new SwitchboardClient({ tickets: false, url: "ftp://x", token: "t", WebSocket: FakeWS }), /http\(s\) or ws\(s\)/);
  assert.throws(() => new SwitchboardClient({ tickets: false, url: "http://x", token: 5 }), /token/);
  assert.throws(() => new SwitchboardClient({ tickets: false, url: "http://x", token: "t", transport: "carrier-pigeon" }), /transport/);
  const c = new SwitchboardClient({ tickets: false, url: "http://x", token: "t", WebSocket: FakeWS });
  assert.throws(() => c.subscribe([], () => {}), /at least one filter/);
  assert.throws(() => c.subscribe([{ room: "r" }], () => {}), /non-empty string `type`/);
  assert.throws(() => c.subscribe([{ type: "a", n: 1 }], () => {}), /`n` must be a string/);
  assert.throws(() => c.subscribe({ type: "a" }), /handler/);
});

test("connect: token in the URL, welcome opens, subscriptions sent with since = welcome seq, ready on ok", async () => {
  const t = setup();
  const sub = t.client.subscribe([{ type: "chat", room: "r1" }], () => {});
  const ws = await open(t, 7);
  assert.equal(ws.url.protocol, "ws:");
  assert.equal(ws.url.host, "sb.test:8787");
  assert.equal(ws.url.searchParams.get("token"), "tok1");
  assert.equal(t.client.state, "open");
  assert.equal(t.client.connectionId, "c0");
  assert.equal(t.client.lastSeq, 7);
  const [s] = ws.frames("subscribe");
  assert.deepEqual(s.filters, [{ type: "chat", room: "r1" }]);
  assert.equal(s.since, 7);
  let ready = false;
  sub.ready.then(() => (ready = true));
  await tick();
  assert.equal(ready, false, "not ready before the server's ok");
  await okAll(ws);
  await sub.ready;
  assert.deepEqual(t.states, ["connecting", "open"]);
  // A subscription added while open is sent at once, without since (live only).
  const sub2 = t.client.subscribe({ type: "presence" }, () => {});
  const s2 = ws.frames("subscribe")[1];
  assert.deepEqual(s2.filters, [{ type: "presence" }]);
  assert.equal("since" in s2, false);
  await okAll(ws);
  await sub2.ready;
  t.client.close();
  assert.equal(t.client.state, "closed");
  assert.equal(ws.clientClosed, 1000);
});

test("handler results become acks; a throwing handler acks {error}; duplicates run once", async () => {
  const t = setup();
  const seen = [];
  t.client.subscribe([{ type: "chat" }], async (e) => {
    seen.push(e.envelopeId);
    if (e.payload.fail) throw new Error("boom");
    if (e.payload.none) return undefined;
    return { got: e.seq };
  });
  const ws = await open(t, 0);
  await okAll(ws);
  ws.push(env(1));
  ws.push(env(2, "chat", { fail: true }));
  ws.push(env(3, "chat", { none: true }));
  ws.push(env(1)); // a duplicate while the first is being handled
  await waitFor(() => ws.frames("ack").length >= 3);
  ws.push(env(1, "chat", { room: "r1" }, { replayed: true })); // a duplicate after it was handled
  await waitFor(() => ws.frames("ack").length >= 4);
  assert.deepEqual(seen, ["e1", "e2", "e3"]);
  assert.deepEqual(ws.frames("ack"), [
    { type: "ack", envelopeId: "e1", result: { got: 1 } },
    { type: "ack", envelopeId: "e2", result: { error: "boom" } },
    { type: "ack", envelopeId: "e3" },
    { type: "ack", envelopeId: "e1", result: { got: 1 } },
  ]);
  assert.equal(t.errors.filter((e) => e.code === "handler_error").length, 1);
  assert.equal(t.client.lastSeq, 3);
  t.client.close();
});

test("envelopes go to the matching handlers only; unmatched ones are acked null so the publisher never waits", async () => {
  const t = setup();
  const a = [], b = [];
  t.client.subscribe([{ type: "chat", room: "a" }], (e) => (a.push(e.seq), "A"));
  t.client.subscribe([{ type: "chat", room: "b" }], (e) => (b.push(e.seq), "B"));
  const ws = await open(t);
  await okAll(ws);
  ws.push(env(1, "chat", { room: "a" }));
  ws.push(env(2, "chat", { room: "b" }));
  ws.push(env(3, "chat", { room: "c" }));
  await waitFor(() => ws.frames("ack").length === 3);
  assert.deepEqual([a, b], [[1], [2]]);
  const acks = Object.fromEntries(ws.frames("ack").map((f) => [f.envelopeId, f.result ?? null]));
  assert.deepEqual(acks, { e1: "A", e2: "B", e3: null });
  t.client.close();
});

test("after a drop: backoff, a fresh token, every subscription re-sent with since = last seq", async () => {
  const t = setup();
  t.client.subscribe([{ type: "chat" }], () => {});
  t.client.subscribe([{ type: "presence", room: "r" }], () => {});
  const ws = await open(t, 10);
  await okAll(ws);
  ws.push(env(11));
  ws.push(env(14));
  await waitFor(() => ws.frames("ack").length === 2);
  const closes = [];
  t.client.on("close", (c) => closes.push(c));
  ws.drop(1006);
  assert.equal(t.client.state, "reconnecting");
  assert.deepEqual(closes, [{ code: 1006, reason: "", reconnect: true }]);
  const ws2 = await waitFor(() => t.all[1], 1000, "a second socket");
  assert.equal(ws2.url.searchParams.get("token"), "tok2", "the token provider is called again");
  ws2.welcome(20, "c-second");
  const [s] = ws2.frames("subscribe");
  assert.deepEqual(s.filters, [{ type: "chat" }, { type: "presence", room: "r" }]);
  assert.equal(s.since, 14);
  assert.equal(t.client.connectionId, "c-second");
  t.client.close();
});

test("close codes decide: 4500-4999 stop for good, 4001 retries at once, reconnect:false never retries", async () => {
  const t = setup({ reconnect: { minDelayMs: 10000, maxDelayMs: 10000, jitter: 0 } });
  let ws = await open(t);
  ws.drop(4001, "token expired");
  const ws2 = await waitFor(() => t.all[1], 500, "an immediate retry after 4001 despite a 10 s backoff");
  ws2.welcome(0);
  ws2.drop(4500, "forbidden");
  assert.equal(t.client.state, "closed");
  await new Promise((r) => setTimeout(r, 30));
  assert.equal(t.all.length, 2);
  assert.ok(t.errors.some((e) => e.code === "closed" && /4500/.test(e.message)));

  const u = setup({ reconnect: false });
  ws = await open(u);
  ws.drop(1006);
  await new Promise((r) => setTimeout(r, 30));
  assert.equal(u.client.state, "closed");
  assert.equal(u.all.length, 1);
});

test("maxAttempts gives up; a failing token provider is retried like a failed connection", async () => {
  let calls = 0;
  const { FakeWS, all } = fakeSockets();
  const client = new SwitchboardClient({
    tickets: false,
    url: "ws://x",
    WebSocket: FakeWS,
    token: async () => {
      if (++calls < 3) throw new Error("auth server down");
      return "good";
    },
    reconnect: { minDelayMs: 1, maxDelayMs: 2, jitter: 0, maxAttempts: 5 },
    pingIntervalMs: 0,
  });
  const errors = [];
  client.on("error", (e) => errors.push(e));
  client.connect();
  const ws = await waitFor(() => all[0], 1000, "a socket after two token failures");
  assert.equal(ws.url.searchParams.get("token"), "good");
  assert.equal(errors.filter((e) => e.code === "token_error").length, 2);
  assert.match(errors[0].message, /auth server down/);
  // Now every attempt fails before a welcome: after maxAttempts it gives up.
  ws.drop(1006);
  for (let i = 1; i <= 3; i++) (await waitFor(() => all[i], 1000)).drop(1006);
  await waitFor(() => client.state === "closed", 1000, "giving up");
  assert.ok(errors.some((e) => e.code === "closed" && /gave up/.test(e.message)));
  assert.equal(all.length, 4);
});

test("keepalive: ping every interval; a missing pong drops the socket and reconnects", async () => {
  const t = setup({ pingIntervalMs: 20, pongTimeoutMs: 30 });
  const ws = await open(t);
  await waitFor(() => ws.sent.includes("ping"), 1000, "a ping");
  ws.push("pong");
  const pings = () => ws.sent.filter((s) => s === "ping").length;
  await waitFor(() => pings() >= 2, 1000, "a second ping");
  assert.equal(t.all.length, 1, "answered pings keep the socket");
  // Stop answering: the client gives up on this socket and opens another.
  await waitFor(() => t.all.length === 2, 1000, "a reconnect after a missing pong");
  assert.equal(ws.clientClosed, 1000);
  t.client.close();
});

test("a connection without a welcome in time is abandoned and retried", async () => {
  const t = setup({ connectTimeoutMs: 30 });
  t.client.connect();
  await waitFor(() => t.all.length === 2, 1000, "a retry after the connect timeout");
  t.client.close();
});

test("unsubscribe removes a filter on the server only when no other subscription holds it", async () => {
  const t = setup();
  const s1 = t.client.subscribe([{ type: "chat" }, { type: "x" }], () => {});
  const s2 = t.client.subscribe([{ type: "chat" }], () => {});
  const ws = await open(t);
  await okAll(ws);
  await Promise.all([s1.ready, s2.ready]);
  s1.unsubscribe();
  assert.deepEqual(ws.frames("unsubscribe").map((f) => f.filters), [[{ type: "x" }]]);
  assert.equal(s1.active, false);
  s1.unsubscribe(); // idempotent
  s2.unsubscribe();
  assert.deepEqual(ws.frames("unsubscribe").map((f) => f.filters), [[{ type: "x" }], [{ type: "chat" }]]);
  // Resubscribing the same filter sends it again.
  t.client.subscribe([{ type: "chat" }], () => {});
  assert.equal(ws.frames("subscribe").length, 2);
  t.client.close();
});

test("more than 50 filters go in frames of 50, with since only on the last", async () => {
  const t = setup();
  const filters = Array.from({ length: 120 }, (_, i) => ({ type: "t", k: String(i) }));
  const sub = t.client.subscribe(filters, () => {});
  const ws = await open(t, 3);
  const frames = ws.frames("subscribe");
  assert.deepEqual(frames.map((f) => f.filters.length), [50, 50, 20]);
  assert.deepEqual(frames.map((f) => f.since), [undefined, undefined, 3]);
  await okAll(ws);
  await sub.ready;
  t.client.close();
});

test("a refused subscribe rejects ready with the server's error; send() resolves on ok and rejects on error", async () => {
  const t = setup();
  const good = t.client.subscribe([{ type: "a" }], () => {});
  const bad = t.client.subscribe([{ type: "b" }], () => {});
  const ws = await open(t);
  const [s] = ws.frames("subscribe");
  ws.push({ type: "error", code: "invalid_filter", message: "1 filter(s) skipped", id: s.id, skipped: [{ index: 1, reason: "over 100" }] });
  await good.ready;
  await assert.rejects(bad.ready, (e) => e instanceof SwitchboardError && e.code === "invalid_filter");

  const p1 = t.client.send({ hello: 1 });
  const p2 = t.client.send({ hello: 2 });
  const [m1, m2] = ws.frames("message");
  assert.deepEqual(m1.data, { hello: 1 });
  ws.push({ type: "ok", id: m1.id });
  ws.push({ type: "error", code: "no_backend", message: "no webhook", id: m2.id });
  await p1;
  await assert.rejects(p2, (e) => e.code === "no_backend" && e.message === "no webhook");
  const p3 = t.client.send("x");
  ws.drop(1006);
  await assert.rejects(p3, (e) => e.code === "disconnected");
  await assert.rejects(t.client.send("y"), (e) => e.code === "not_connected");
  t.client.close();
});

test("gap frames and error frames without a request surface as events", async () => {
  const t = setup();
  const gaps = [];
  t.client.on("gap", (g) => gaps.push(g));
  const ws = await open(t);
  ws.push({ type: "gap", from: 5, to: 9 });
  ws.push({ type: "error", code: "invalid_json", message: "nope" });
  ws.push("not json at all");
  assert.deepEqual(gaps, [{ type: "gap", from: 5, to: 9 }]);
  assert.deepEqual(t.errors.map((e) => e.code), ["invalid_json", "protocol_error"]);
  t.client.close();
});

test("a welcome seq below the resume point (server lost its history) resets it", async () => {
  const t = setup();
  t.client.subscribe([{ type: "chat" }], () => {});
  const ws = await open(t, 50);
  ws.drop(1006);
  const ws2 = await waitFor(() => t.all[1]);
  ws2.welcome(0);
  assert.equal(ws2.frames("subscribe")[0].since, 0);
  assert.equal(t.client.lastSeq, 0);
  t.client.close();
});

test("sse: filters in the query, events parsed across chunk boundaries, acks over POST /ack, Last-Event-ID on reconnect", async () => {
  const { f, streams, acks } = fakeSse();
  const client = new SwitchboardClient({
    tickets: false,
    url: "https://sb.test/base",
    token: (() => {
      let n = 0;
      return () => `sse${++n}`;
    })(),
    transport: "sse",
    fetch: f,
    reconnect: { minDelayMs: 1, maxDelayMs: 2, jitter: 0 },
  });
  const got = [];
  const sub = client.subscribe([{ type: "chat", room: "r1" }], (e) => (got.push(e.payload.text), { ok: e.seq }));
  client.connect();
  const s = await waitFor(() => streams[0]);
  assert.equal(s.url.pathname, "/base/sse");
  assert.equal(s.url.searchParams.get("token"), "sse1");
  assert.deepEqual(JSON.parse(s.url.searchParams.get("filters")), [{ type: "chat", room: "r1" }]);
  assert.equal(s.url.searchParams.get("since"), null);
  s.write(`: keepalive\n\ndata: ${JSON.stringify({ type: "welcome", connectionId: "sc1", userId: "u", seq: 2 })}\n\n`);
  await sub.ready;
  assert.equal(client.state, "open");
  const e3 = JSON.stringify(env(3, "chat", { room: "r1", text: "multi\nline?" }));
  const cut = e3.indexOf('"seq"'); // between JSON tokens: the server may split data lines there
  s.write(`id: 3\nevent: message\ndata: ${e3.slice(0, 10)}`);
  s.write(`${e3.slice(10, cut)}\r`);
  s.write(`\ndata: ${e3.slice(cut)}\r`); // \r|\n split across chunks, then a second data line
  s.write(`\n\r\n`);
  await waitFor(() => acks.length === 1, 1000, "an ack");
  assert.deepEqual(acks[0], { auth: "Bearer sse1", body: { connectionId: "sc1", envelopeId: "e3", result: { ok: 3 } } });
  assert.deepEqual(got, ["multi\nline?"]);
  await assert.rejects(client.send("x"), (e) => e.code === "unsupported");
  s.end(); // the server ends the stream: reconnect, resuming after seq 3
  const s2 = await waitFor(() => streams[1], 1000, "a second stream");
  assert.equal(s2.url.searchParams.get("since"), "3");
  assert.equal(s2.url.searchParams.get("token"), "sse2");
  s2.write(`data: ${JSON.stringify({ type: "welcome", connectionId: "sc2", userId: "u", seq: 4 })}\n\n`);
  s2.write(`id: 3\ndata: ${e3}\n\n`); // a duplicate is not handled twice
  s2.write(`id: 4\ndata: ${JSON.stringify(env(4, "chat", { room: "r1", text: "four" }))}\n\n`);
  await waitFor(() => acks.length === 3, 1000, "two more acks");
  assert.deepEqual(got, ["multi\nline?", "four"]);
  assert.deepEqual(acks.map((a) => a.body.connectionId), ["sc1", "sc2", "sc2"]);
  // A new subscription changes the filters: the stream is reopened with them, resuming.
  client.subscribe({ type: "presence" }, () => {});
  const s3 = await waitFor(() => streams[2], 1000, "a reopened stream");
  assert.ok(s2.aborted);
  assert.deepEqual(JSON.parse(s3.url.searchParams.get("filters")), [{ type: "chat", room: "r1" }, { type: "presence" }]);
  assert.equal(s3.url.searchParams.get("since"), "4");
  // Several changes in one tick reopen the stream once.
  client.subscribe({ type: "p2" }, () => {});
  client.subscribe({ type: "p3" }, () => {});
  const s4 = await waitFor(() => streams[3], 1000, "one more stream");
  assert.deepEqual(JSON.parse(s4.url.searchParams.get("filters")).map((f) => f.type), ["chat", "presence", "p2", "p3"]);
  await tick();
  assert.equal(streams.length, 4);
  client.close();
  assert.ok(s4.aborted);
});

test("sse: a subscription added while the stream is still connecting reopens it with the new filters", async () => {
  const { f, streams } = fakeSse();
  const client = new SwitchboardClient({ tickets: false, url: "http://sb.test", token: "t", transport: "sse", fetch: f });
  const a = client.subscribe({ type: "a" }, () => {});
  client.connect();
  const s1 = await waitFor(() => streams[0]);
  const b = client.subscribe({ type: "b" }, () => {}); // before the welcome
  const s2 = await waitFor(() => streams[1], 1000, "a reopened stream");
  assert.ok(s1.aborted);
  assert.deepEqual(JSON.parse(s2.url.searchParams.get("filters")), [{ type: "a" }, { type: "b" }]);
  s2.write(`data: ${JSON.stringify({ type: "welcome", connectionId: "x", userId: "u", seq: 0 })}\n\n`);
  await Promise.all([a.ready, b.ready]);
  assert.equal(client.state, "open");
  client.close();
});

test("sse: an HTTP refusal is reported with the server's code; 400 stops, 401 retries with a new token", async () => {
  let n = 0;
  const statuses = [401, 400];
  const f = async () => {
    const status = statuses[n++];
    return new Response(JSON.stringify({ error: status === 401 ? "token_expired" : "invalid_filter", message: `m${status}` }), { status });
  };
  const client = new SwitchboardClient({ tickets: false, url: "http://x", token: () => `t${n}`, transport: "sse", fetch: f, reconnect: { minDelayMs: 1, jitter: 0 } });
  const errors = [];
  client.on("error", (e) => errors.push(e));
  client.connect();
  await waitFor(() => client.state === "closed" && n === 2, 1000, "closed after the 400");
  assert.deepEqual(errors.slice(0, 2).map((e) => [e.code, e.message]), [["token_expired", "m401"], ["invalid_filter", "m400"]]);
});

test("tickets: the token is exchanged at POST /tickets and only the ticket goes in the URL; a server without /tickets gets the token", async () => {
  const posts = [];
  const answers = [
    () => new Response(JSON.stringify({ ticket: "T1", expiresIn: 30 }), { status: 200 }),
    () => new Response(JSON.stringify({ error: "token_expired", message: "expired" }), { status: 401 }),
    () => new Response(JSON.stringify({ ticket: "T2", expiresIn: 30 }), { status: 200 }),
  ];
  const f = async (url, init = {}) => {
    posts.push({ url: new URL(url), method: init.method, auth: init.headers?.authorization });
    return answers[posts.length - 1]();
  };
  const t = setup({ tickets: true, fetch: f });
  const ws = await open(t);
  assert.deepEqual([posts[0].url.pathname, posts[0].method, posts[0].auth], ["/tickets", "POST", "Bearer tok1"]);
  assert.equal(ws.url.searchParams.get("ticket"), "T1");
  assert.equal(ws.url.searchParams.get("token"), null, "the token stays out of the URL");
  // A refused exchange is reported and retried with a fresh token, like a refused connect.
  ws.drop(1006);
  const ws2 = await waitFor(() => t.all[1], 1000, "a second socket");
  assert.equal(ws2.url.searchParams.get("ticket"), "T2");
  assert.equal(posts[2].auth, "Bearer tok3");
  assert.deepEqual(t.errors.map((e) => e.code), ["token_expired"]);
  t.client.close();

  // An older server answers 404: the token goes in the URL, and /tickets is not asked again.
  let asked = 0;
  const old = setup({ tickets: true, fetch: async () => (asked++, new Response("{}", { status: 404 })) });
  const w1 = await open(old);
  assert.equal(w1.url.searchParams.get("token"), "tok1");
  w1.drop(1006);
  const w2 = await waitFor(() => old.all[1], 1000, "a second socket");
  assert.equal(w2.url.searchParams.get("token"), "tok2");
  assert.equal(asked, 1);
  old.client.close();
});
