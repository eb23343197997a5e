// Unit tests, against the scripted fake socket (the test plays the server), of what issue 15 added to
// the client: the presence state machine (snapshot, frames, the version rule, frames before the
// snapshot, re-sync after a reconnect, shared handles and the deferred leave), channel handlers held
// by join()/channel(), the resume point kept in sessionStorage across page loads, and the immediate
// reconnect on `online` / the page becoming visible.
import { test, afterEach } from "node:test";
import assert from "node:assert/strict";
import { SwitchboardClient, PresenceCore } from "../dist/index.js";
import { tick, waitFor, env, setup, open, okAll, fakeSse } from "./fakes.mjs";

const snap = (version, members, count = members.length, truncated = false) => ({ version, count, members, truncated });
/** Answers the last unanswered join for `channel` with ok (+ snapshot when given). */
function okJoin(ws, channel, presence) {
  const f = ws.frames("join").filter((j) => j.channel === channel).at(-1);
  assert.ok(f, `a join of ${channel}`);
  ws.push(presence ? { type: "ok", id: f.id, presence } : { type: "ok", id: f.id });
  return f;
}
/** Records a presence handle's events as short strings. */
function record(p) {
  const log = [];
  p.on("join", (m) => log.push(`+${m.userId}${m.data !== undefined ? "=" + JSON.stringify(m.data) : ""}`));
  p.on("leave", (m) => log.push(`-${m.userId}`));
  p.on("change", (c) => log.push(`change v${c.version} n${c.count}${c.snapshot ? " snapshot" : ""}`));
  p.on("error", (e) => log.push(`error ${e.code}`));
  return log;
}
const members = (p) => [...p.members].map(([u, d]) => (d === undefined ? u : `${u}=${JSON.stringify(d)}`));

test("presence: join with presence:true, the ok's snapshot, then frames by the version rule", async () => {
  const t = setup();
  const ws = await open(t, 0);
  const p = t.client.presence("room:1");
  const log = record(p);
  await tick();
  const join = ws.frames("join")[0];
  assert.deepEqual({ ...join, id: undefined }, { type: "join", channel: "room:1", presence: true, id: undefined });
  assert.equal(p.synced, false);
  okJoin(ws, "room:1", snap(17, [{ userId: "alice", data: { name: "A" } }, { userId: "bob" }]));
  await p.ready;
  assert.deepEqual(members(p), ['alice={"name":"A"}', "bob"]);
  assert.deepEqual([p.count, p.version, p.synced, p.truncated], [2, 17, true, false]);
  assert.deepEqual(log.splice(0), ['+alice={"name":"A"}', "+bob", "change v17 n2 snapshot"]);

  ws.push({ type: "presence", channel: "room:1", version: 18, joined: [{ userId: "carol", data: 1 }], left: ["bob"], count: 2 });
  assert.deepEqual(members(p), ['alice={"name":"A"}', "carol=1"]);
  assert.deepEqual(log.splice(0), ["-bob", "+carol=1", "change v18 n2"]);
  // At or below the version held: already in the state, ignored (no events, nothing changes).
  ws.push({ type: "presence", channel: "room:1", version: 18, joined: [{ userId: "bob" }], left: ["carol"], count: 9 });
  ws.push({ type: "presence", channel: "room:1", version: 5, left: ["alice"], count: 0 });
  assert.deepEqual(members(p), ['alice={"name":"A"}', "carol=1"]);
  assert.deepEqual([p.count, p.version], [2, 18]);
  assert.deepEqual(log, []);
  // A frame of another channel does not touch this one; a later version applies even after a skip.
  ws.push({ type: "presence", channel: "room:2", version: 99, left: ["alice"], count: 0 });
  ws.push({ type: "presence", channel: "room:1", version: 21, left: ["alice", "nobody"], count: 1 });
  assert.deepEqual(members(p), ["carol=1"]);
  assert.deepEqual(log.splice(0), ["-alice", "change v21 n1"]);
  // A joined user already present with other data is an update, not a join.
  ws.push({ type: "presence", channel: "room:1", version: 22, joined: [{ userId: "carol", data: 2 }], count: 1 });
  assert.deepEqual(log.splice(0), ["change v22 n1"]);
  assert.deepEqual(members(p), ["carol=2"]);
  assert.deepEqual(t.errors, []);
  t.client.close();
});

test("presence: frames that arrive before the snapshot are held, then applied only above its version", async () => {
  const t = setup();
  const ws = await open(t, 0);
  const p = t.client.presence("room:1");
  const log = record(p);
  await tick();
  // Before the ok: one frame the snapshot already contains (v10), one after it (v12).
  ws.push({ type: "presence", channel: "room:1", version: 10, joined: [{ userId: "bob" }], count: 2 });
  ws.push({ type: "presence", channel: "room:1", version: 12, joined: [{ userId: "carol" }], left: ["alice"], count: 2 });
  assert.equal(p.members.size, 0, "nothing applied before the snapshot");
  okJoin(ws, "room:1", snap(11, [{ userId: "alice" }, { userId: "bob" }]));
  await p.ready;
  assert.deepEqual(members(p), ["bob", "carol"]);
  assert.deepEqual([p.version, p.count], [12, 2]);
  // One change for the snapshot and what followed it: alice was never seen as present.
  assert.deepEqual(log, ["+bob", "+carol", "change v12 n2 snapshot"]);
  t.client.close();
});

test("presence: after a reconnect the join is sent again and a fresh snapshot re-syncs (diffed into join/leave)", async () => {
  const t = setup();
  const ws = await open(t, 0);
  const p = t.client.presence("room:1");
  const log = record(p);
  await tick();
  okJoin(ws, "room:1", snap(40, [{ userId: "alice" }, { userId: "bob", data: "b1" }, { userId: "dave" }]));
  await p.ready;
  log.splice(0);
  ws.drop(1006);
  await tick();
  assert.equal(p.synced, false);
  assert.deepEqual(members(p), ["alice", 'bob="b1"', "dave"], "kept (stale) while disconnected");
  const ws2 = await waitFor(() => t.all[1], 1000, "a new socket");
  await waitFor(() => ws2.readyState === 1);
  ws2.welcome(0);
  await tick();
  assert.deepEqual(ws2.frames("join").map((j) => [j.channel, j.presence]), [["room:1", true]]);
  // A frame of the new connection racing its snapshot, and one older than it.
  ws2.push({ type: "presence", channel: "room:1", version: 45, joined: [{ userId: "erin" }], count: 4 });
  okJoin(ws2, "room:1", snap(44, [{ userId: "alice" }, { userId: "bob", data: "b2" }, { userId: "carol" }]));
  await tick();
  assert.equal(p.synced, true);
  assert.deepEqual(members(p), ["alice", 'bob="b2"', "carol", "erin"]);
  assert.deepEqual(log.splice(0), ["-dave", "+carol", "+erin", "change v45 n4 snapshot"]);
  // Frames the old connection would have had are behind the snapshot now.
  ws2.push({ type: "presence", channel: "room:1", version: 43, left: ["alice"], count: 3 });
  assert.ok(p.members.has("alice"));
  assert.deepEqual(log, []);
  t.client.close();
});

test("presence: handles share one state; the channel is left one task after the last hold, not on a quick release and re-take", async () => {
  const t = setup();
  const ws = await open(t, 0);
  const a = t.client.presence("room:1");
  const b = t.client.presence("room:1");
  await tick();
  assert.equal(ws.frames("join").length, 1, "one join for both handles");
  okJoin(ws, "room:1", snap(1, [{ userId: "u" }]));
  await Promise.all([a.ready, b.ready]);
  assert.equal(a.members, b.members);
  a.close();
  a.close(); // twice is once
  assert.equal(a.active, false);
  await new Promise((r) => setTimeout(r, 5));
  assert.equal(ws.frames("leave").length, 0, "b still holds it");
  // React StrictMode: unmount and mount again at once.
  b.close();
  const c = t.client.presence("room:1");
  await new Promise((r) => setTimeout(r, 5));
  assert.deepEqual([ws.frames("leave").length, ws.frames("join").length], [0, 1], "no leave, no second join");
  assert.equal(c.synced, true);
  c.close();
  await new Promise((r) => setTimeout(r, 5));
  assert.deepEqual(ws.frames("leave").map((f) => f.channel), ["room:1"]);
  assert.equal(c.members.size, 0);
  t.client.close();
});

test("presence() on a channel joined without it asks again with presence:true; envelopes reach every handler of the channel", async () => {
  const t = setup();
  const ws = await open(t, 0);
  const got = [];
  const joined = t.client.join("room:1", (e) => (got.push(`join:${e.seq}`), "from-join"));
  const sub = t.client.channel("room:1", (e) => void got.push(`sub:${e.seq}`));
  await tick();
  assert.equal(ws.frames("join").length, 1);
  const p = t.client.presence("room:1");
  await tick();
  assert.equal(ws.frames("join").length, 1, "the upgrade waits for the first join's answer");
  okJoin(ws, "room:1");
  await joined;
  await tick();
  const again = ws.frames("join");
  assert.deepEqual(again.map((j) => j.presence), [undefined, true]);
  okJoin(ws, "room:1", snap(3, [{ userId: "u" }]));
  await p.ready;
  assert.deepEqual(members(p), ["u"]);

  ws.push(env(1, "msg", {}, { channel: "room:1" }));
  await waitFor(() => ws.frames("ack").length === 1);
  assert.deepEqual(got, ["join:1", "sub:1"]);
  assert.equal(ws.frames("ack")[0].result, "from-join");
  // Dropping the subscription keeps the channel (join() and the presence handle hold it).
  sub.leave();
  await new Promise((r) => setTimeout(r, 5));
  assert.equal(ws.frames("leave").length, 0);
  // leave() leaves at once, whatever holds it, and empties the presence.
  const log = record(p);
  const left = t.client.leave("room:1");
  assert.deepEqual(ws.frames("leave").map((f) => f.channel), ["room:1"]);
  ws.push({ type: "ok", id: ws.frames("leave")[0].id });
  await left;
  assert.deepEqual(log, ["-u", "change v3 n0"]);
  assert.equal(p.members.size, 0);
  t.client.close();
});

test("holds taken in one task share one join: channel() and presence() together send a single join with presence:true", async () => {
  const t = setup();
  const ws = await open(t, 0);
  const sub = t.client.channel("room:1", () => {});
  const p = t.client.presence("room:1");
  await tick();
  assert.deepEqual(ws.frames("join").map((j) => [j.channel, j.presence]), [["room:1", true]]);
  okJoin(ws, "room:1", snap(1, [{ userId: "u" }]));
  await Promise.all([sub.ready, p.ready]);
  await tick();
  assert.equal(ws.frames("join").length, 1);
  t.client.close();
});

test("presence: a refused join and a server without presence reject ready and emit an error", async () => {
  const t = setup();
  const ws = await open(t, 0);
  const refused = t.client.presence("secret");
  const old = t.client.presence("room:1");
  const logs = [record(refused), record(old)];
  await tick();
  const j = ws.frames("join").find((f) => f.channel === "secret");
  ws.push({ type: "error", id: j.id, code: "forbidden", message: "no" });
  okJoin(ws, "room:1"); // an ok without a snapshot
  await assert.rejects(refused.ready, (e) => e.code === "forbidden");
  await assert.rejects(old.ready, (e) => e.code === "unsupported" && /no presence snapshot/.test(e.message));
  assert.deepEqual(logs, [["error forbidden"], ["error unsupported"]]);
  assert.deepEqual(t.errors.map((e) => e.code), ["forbidden"]);
  assert.throws(() => t.client.presence(""), TypeError);
  t.client.close();
  const sse = new SwitchboardClient({ url: "http://sb.test", token: "t", transport: "sse" });
  assert.throws(() => sse.presence("room:1"), (e) => e.code === "unsupported");
});

test("PresenceCore: the count follows the frames also for users beyond a truncated snapshot", () => {
  const core = new PresenceCore("big");
  const changes = [];
  core.handles.add({ _emit: (ev, v) => ev === "change" && changes.push(v) });
  core.joining();
  core.snapshot(snap(7, [{ userId: "a" }, { userId: "b" }], 250, true));
  assert.deepEqual([core.count, core.members.size, core.truncated], [250, 2, true]);
  // A user we never listed leaves: the count moves, the listed members do not.
  core.frame({ type: "presence", channel: "big", version: 8, left: ["zz"], count: 249 });
  assert.deepEqual([core.count, core.members.size, core.version], [249, 2, 8]);
  assert.deepEqual(changes.map((c) => [c.version, c.count, c.joined.length, c.left.length]), [[7, 250, 2, 0], [8, 249, 0, 0]]);
});

// ---- resume across page loads ----

/** A sessionStorage stand-in that survives "page loads" (new clients). */
function memoryStorage() {
  const m = new Map();
  return { getItem: (k) => (m.has(k) ? m.get(k) : null), setItem: (k, v) => m.set(k, String(v)), map: m };
}

test('resume: "session" keeps the last handled seq per user and a new page load resumes from it', async () => {
  const storage = memoryStorage();
  const page1 = setup({ resume: "session", storage });
  page1.client.subscribe({ type: "chat" }, () => "ok");
  const ws = await open(page1, 3);
  await okAll(ws);
  assert.equal(ws.frames("subscribe")[0].since, 3);
  assert.deepEqual([...storage.map.values()], ["3"], "kept at the welcome, before any envelope");
  ws.push(env(4));
  ws.push(env(5));
  await waitFor(() => ws.frames("ack").length === 2);
  const key = [...storage.map.keys()][0];
  assert.match(key, /^switchboard:seq:http:\/\/sb\.test:8787\/:u$/);
  assert.equal(storage.getItem(key), "5");
  page1.client.close(); // the page unloads

  // The next page load of this tab: the server is at 9; the client asks for what it missed.
  const page2 = setup({ resume: "session", storage });
  page2.client.subscribe({ type: "chat" }, () => "ok");
  const ws2 = await open(page2, 9);
  await okAll(ws2);
  assert.equal(ws2.frames("subscribe")[0].since, 5);
  assert.equal(page2.client.lastSeq, 5);
  page2.client.close();

  // Without "session" a page load starts live, and nothing is written.
  const plain = setup({ storage: memoryStorage() });
  plain.client.subscribe({ type: "chat" }, () => {});
  const ws3 = await open(plain, 9);
  assert.equal(ws3.frames("subscribe")[0].since, 9);
  plain.client.close();

  // Another user of the same tab has its own point; a kept point above the server's seq (history lost) is not used.
  storage.setItem(key.replace(/:u$/, ":v"), "2");
  storage.setItem(key, "50");
  const page3 = setup({ resume: "session", storage });
  page3.client.subscribe({ type: "chat" }, () => {});
  const ws4 = await open(page3, 9);
  assert.equal(ws4.frames("subscribe")[0].since, 9);
  assert.equal(storage.getItem(key), "9");
  page3.client.close();
  assert.throws(() => new SwitchboardClient({ url: "http://x", token: "t", resume: "local" }), /resume must be/);
});

test('resume: "session" stays below an envelope whose handler has not finished (a reload then gets it again)', async () => {
  const storage = memoryStorage();
  const t = setup({ resume: "session", storage });
  const release = new Map();
  t.client.subscribe({ type: "chat" }, (e) => (e.seq === 2 ? new Promise((r) => release.set(2, r)) : "ok"));
  const ws = await open(t, 0);
  await okAll(ws);
  const stored = () => [...storage.map.values()][0];
  ws.push(env(1));
  await waitFor(() => stored() === "1");
  ws.push(env(2)); // slow handler
  ws.push(env(3));
  await waitFor(() => ws.frames("ack").length === 2);
  assert.equal(t.client.lastSeq, 3);
  assert.equal(stored(), "1", "seq 2 is still being handled");
  release.get(2)("done");
  await waitFor(() => stored() === "3");
  t.client.close();
});

test('resume: "session" over SSE: the first stream of a page load is reopened with since = the kept point', async () => {
  const storage = memoryStorage();
  const { f, streams } = fakeSse();
  storage.setItem("switchboard:seq:http://sb.test:8787/:u", "4");
  const client = new SwitchboardClient({ url: "http://sb.test:8787", token: "t", transport: "sse", fetch: f, tickets: false, resume: "session", storage, pingIntervalMs: 0 });
  const got = [];
  client.subscribe({ type: "chat" }, (e) => void got.push(e.seq));
  client.connect();
  await waitFor(() => streams[0]);
  assert.equal(streams[0].url.searchParams.get("since"), null);
  streams[0].write(`data: ${JSON.stringify({ type: "welcome", connectionId: "c1", userId: "u", seq: 7 })}\n\n`);
  await waitFor(() => streams[1], 1000, "the stream reopened");
  assert.equal(streams[0].aborted, true);
  assert.equal(streams[1].url.searchParams.get("since"), "4");
  streams[1].write(`data: ${JSON.stringify({ type: "welcome", connectionId: "c2", userId: "u", seq: 7 })}\n\n`);
  for (const s of [5, 6, 7]) streams[1].write(`data: ${JSON.stringify(env(s, "chat", {}, { replayed: true }))}\n\n`);
  await waitFor(() => got.length === 3);
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(streams.length, 2, "reopened once");
  assert.deepEqual(got, [5, 6, 7]);
  client.close();
});

test('resume: "session" over SSE: a live envelope in the first stream\'s welcome chunk waits for the replay (nothing skipped, order kept)', async () => {
  const storage = memoryStorage();
  const { f, streams, acks } = fakeSse();
  storage.setItem("switchboard:seq:http://sb.test:8787/:u", "4");
  const client = new SwitchboardClient({ url: "http://sb.test:8787", token: "t", transport: "sse", fetch: f, tickets: false, resume: "session", storage, pingIntervalMs: 0 });
  const got = [];
  client.subscribe({ type: "chat" }, (e) => void got.push(`${e.seq}${e.replayed ? "r" : ""}`));
  client.connect();
  try {
  await waitFor(() => streams[0]);
  // The page load's first stream (no since): the welcome and a live envelope published right after
  // it arrive in one chunk, before the client can reopen the stream with its kept point.
  streams[0].write(
    `data: ${JSON.stringify({ type: "welcome", connectionId: "c1", userId: "u", seq: 7 })}\n\n` + `data: ${JSON.stringify(env(8))}\n\n`,
  );
  await waitFor(() => streams[1], 1000, "the stream reopened");
  assert.equal(streams[1].url.searchParams.get("since"), "4", "reopened from the kept point, not from the live envelope");
  streams[1].write(`data: ${JSON.stringify({ type: "welcome", connectionId: "c2", userId: "u", seq: 8 })}\n\n`);
  for (const s of [5, 6, 7, 8]) streams[1].write(`data: ${JSON.stringify(env(s, "chat", { room: "r1" }, { replayed: true }))}\n\n`);
  streams[1].write(`data: ${JSON.stringify(env(9))}\n\n`);
  await waitFor(() => got.length === 5);
  await new Promise((r) => setTimeout(r, 20));
  assert.deepEqual(got, ["5r", "6r", "7r", "8r", "9"], "each envelope once, in order");
  assert.equal(client.lastSeq, 9);
  assert.equal(storage.getItem("switchboard:seq:http://sb.test:8787/:u"), "9");
  await waitFor(() => acks.length === 5);
  assert.deepEqual(acks.map((a) => a.body.envelopeId), ["e5", "e6", "e7", "e8", "e9"], "nothing acked on the replaced stream");
  } finally {
    client.close();
  }
});

// ---- reconnect on wake ----

let restore;
/** A window/document stand-in on globalThis (Node has neither). */
function fakeBrowser() {
  const win = new EventTarget();
  const doc = Object.assign(new EventTarget(), { visibilityState: "visible" });
  const saved = { add: globalThis.addEventListener, remove: globalThis.removeEventListener, document: globalThis.document };
  globalThis.addEventListener = win.addEventListener.bind(win);
  globalThis.removeEventListener = win.removeEventListener.bind(win);
  globalThis.document = doc;
  restore = () => {
    globalThis.addEventListener = saved.add;
    globalThis.removeEventListener = saved.remove;
    globalThis.document = saved.document;
  };
  return {
    online: () => win.dispatchEvent(new Event("online")),
    visible: (state) => ((doc.visibilityState = state), doc.dispatchEvent(new Event("visibilitychange"))),
  };
}
afterEach(() => restore?.());

test("wake: `online` and the page becoming visible cut a backoff wait short; a hidden page does not", async () => {
  const b = fakeBrowser();
  const t = setup({ reconnect: { minDelayMs: 60000, maxDelayMs: 60000, jitter: 0 } });
  await open(t, 0);
  t.all[0].drop(1006);
  assert.equal(t.client.state, "reconnecting");
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(t.all.length, 1, "waiting out a 60 s backoff");
  b.visible("hidden");
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(t.all.length, 1);
  b.online();
  const ws2 = await waitFor(() => t.all[1], 500, "a reconnect at once on online");
  await waitFor(() => ws2.readyState === 1);
  b.online(); // an attempt under way: not a second one
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(t.all.length, 2);
  ws2.drop(1006);
  b.visible("visible");
  await waitFor(() => t.all[2], 500, "a reconnect at once on visible");
  t.client.close();
  b.online();
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(t.all.length, 3, "close() removes the listeners");
});

test("wake: an open socket is pinged at once; without a pong it is replaced", async () => {
  const b = fakeBrowser();
  const t = setup({ pingIntervalMs: 60000, pongTimeoutMs: 30 });
  const ws = await open(t, 0);
  b.visible("visible");
  assert.deepEqual(ws.sent.filter((s) => s === "ping").length, 1);
  b.visible("visible"); // one ping outstanding at a time
  assert.deepEqual(ws.sent.filter((s) => s === "ping").length, 1);
  ws.push("pong");
  await new Promise((r) => setTimeout(r, 60));
  assert.equal(t.all.length, 1, "answered: kept");
  b.online();
  assert.deepEqual(ws.sent.filter((s) => s === "ping").length, 2);
  await waitFor(() => t.all[1], 500, "a new socket after the missing pong");
  const off = setup({ pingIntervalMs: 60000, reconnectOnWake: false });
  const ws3 = await open(off, 0);
  b.visible("visible");
  assert.equal(ws3.sent.filter((s) => s === "ping").length, 0, "reconnectOnWake: false ignores the page");
  off.client.close();
  t.client.close();
});
