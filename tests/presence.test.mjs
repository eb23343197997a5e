// Channel presence (issue 15, part A): the `presence` join option and its `ok` snapshot, batched
// `presence` frames to the watching members only, the `presence` token claim, GET
// /channels/{c}/presence, and correctness across root and hub evictions, crashes (pruned), kicks and
// reconnects within the linger (nothing emitted) — against workerd.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startWorker, Client, publish, clientToken, publishToken } from "./harness.mjs";
import { Receiver, WEBHOOK_SECRET } from "./receiver.mjs";

let w;
// The member webhooks (switchboard.channel.member.joined/left.v1) go to a real receiver, which verifies
// every signature; the batched event path itself is tested in presence.webhooks.test.mjs.
const hooks = new Receiver();
const hookVars = () => ({
  WEBHOOK_URL: hooks.url, WEBHOOK_SECRET, PRESENCE_WEBHOOKS: "on", PRESENCE_WEBHOOK_FLUSH_MS: "100",
});
/** The member event of `user` in `channel` of kind `joined`/`left` that arrives first. */
async function memberEvent(user, channel, kind, ms = 10000) {
  const end = Date.now() + ms;
  for (;;) {
    const e = hooks.of(user).find((x) => x.type === `switchboard.channel.member.${kind}.v1` && x.data.channel === channel);
    if (e) return e;
    if (Date.now() > end) throw new Error(`no member.${kind} event for ${user} in ${channel}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
// A short interval keeps the tests quick; the coalescing test starts its own worker with a long one.
before(async () => {
  await hooks.start();
  w = await startWorker({ PRESENCE_INTERVAL_MS: "100", CHANNEL_LINGER_SECONDS: "0", ...hookVars() });
});
after(async () => {
  await w.stop();
  await hooks.stop();
});

let n = 0;
const uid = (p = "pr") => `${p}-${++n}-${Math.random().toString(36).slice(2, 8)}`;
const room = () => `room:p${++n}-${Math.random().toString(36).slice(2, 8)}`;
const token = (user, extra = {}) => clientToken(user, { channels: ["room:*"], ...extra });
const isPresence = (f) => f && f.type === "presence";

async function connect(target, user, extra) {
  return Client.connect(target, token(user, extra));
}

/** Joins `channel` (watching when `presence`), asserts the `ok`, returns it. */
async function join(c, channel, presence = false) {
  const ok = await c.request({ type: "join", channel, id: `j-${channel}`, ...(presence ? { presence: true } : {}) });
  assert.equal(ok.type, "ok", JSON.stringify(ok));
  return ok;
}

/** The next presence frame of `channel` whose version is above `after` (older ones are consumed). */
async function frameAfter(c, channel, after, timeoutMs = 8000) {
  return c.next((f) => isPresence(f) && f.channel === channel && f.version > after, timeoutMs);
}

async function presenceApi(target, channel, query = "", t = publishToken()) {
  const res = await fetch(`${target.url}/channels/${encodeURIComponent(channel)}/presence${query}`, {
    headers: { authorization: `Bearer ${t}` },
  });
  return { status: res.status, body: await res.json() };
}

const strip = (f) => ({ joined: f.joined, left: f.left, count: f.count });

test("a presence join gets a snapshot; joins and leaves reach the watching members as presence frames, and only them", async () => {
  const channel = room();
  const [alice, bob, carol] = [uid("alice"), uid("bob"), uid("carol")].sort();
  const a = await connect(w, alice, { presence: { name: "A" } });
  const okA = await join(a, channel, true);
  assert.deepEqual(okA.presence, { version: 0, count: 1, members: [{ userId: alice, data: { name: "A" } }], truncated: false });
  assert.equal(okA.channel, channel);
  // Alice's own join is the channel's first batch.
  const f1 = await frameAfter(a, channel, 0);
  assert.deepEqual(strip(f1), { joined: [{ userId: alice, data: { name: "A" } }], left: [], count: 1 });

  const b = await connect(w, bob);
  const markB = b.mark();
  const plainOk = await join(b, channel);
  assert.equal(plainOk.presence, undefined, "a join without presence gets the usual ok");
  const f2 = await frameAfter(a, channel, f1.version);
  assert.deepEqual(strip(f2), { joined: [{ userId: bob }], left: [], count: 2 }, "no data claim, no data field");
  assert.ok(f2.version > f1.version);

  const c = await connect(w, carol, { presence: [1, 2] });
  const okC = await join(c, channel, true);
  assert.equal(okC.presence.count, 3);
  assert.deepEqual(okC.presence.members, [
    { userId: alice, data: { name: "A" } },
    { userId: bob },
    { userId: carol, data: [1, 2] },
  ]);
  const f3 = await frameAfter(a, channel, f2.version);
  assert.deepEqual(strip(f3), { joined: [{ userId: carol, data: [1, 2] }], left: [], count: 3 });
  await frameAfter(c, channel, okC.presence.version);

  const markA = a.mark();
  const markC = c.mark();
  await b.request({ type: "leave", channel, id: "l" });
  const f4 = await frameAfter(a, channel, f3.version);
  assert.deepEqual(strip(f4), { joined: [], left: [bob], count: 2 });
  const seenC = await frameAfter(c, channel, f3.version);
  assert.deepEqual(seenC, f4, "every watcher gets the same frame");
  // Exactly one frame each, and bob (not watching) got none at all: only his join and leave replies.
  assert.deepEqual(await a.since(markA), [f4]);
  assert.deepEqual(await c.since(markC), [f4]);
  assert.deepEqual((await b.since(markB)).map((f) => f.type), ["ok", "ok"]);
  await Promise.all([a.close(), b.close(), c.close()]);
});

test("changes within one interval are one batch holding each user's net change; a leave and re-join inside it sends nothing", { timeout: 30000 }, async () => {
  const t = await startWorker({ PRESENCE_INTERVAL_MS: "2500", CHANNEL_LINGER_SECONDS: "0" });
  try {
    const channel = room();
    const [alice, bob, carol, dave] = [uid("a"), uid("b"), uid("c"), uid("d")];
    const a = await connect(t, alice);
    await join(a, channel, true);
    const f1 = await frameAfter(a, channel, 0);
    const b = await connect(t, bob);
    await join(b, channel);
    const f2 = await frameAfter(a, channel, f1.version); // bob is present at this batch
    assert.deepEqual(strip(f2), { joined: [{ userId: bob }], left: [], count: 2 });
    const mark = a.mark();
    // Within the next interval: bob leaves and comes back, carol joins, dave joins and leaves.
    await b.request({ type: "leave", channel, id: 1 });
    await join(b, channel);
    const c = await connect(t, carol);
    await join(c, channel);
    const d = await connect(t, dave);
    await join(d, channel);
    await d.request({ type: "leave", channel, id: 2 });
    const f3 = await frameAfter(a, channel, f2.version);
    assert.equal(f3.version, f2.version + 1);
    assert.deepEqual(strip(f3), { joined: [{ userId: carol }], left: [], count: 3 });
    assert.deepEqual(await a.since(mark), [f3], "one batch, nothing for bob or dave");
    await Promise.all([a.close(), b.close(), c.close(), d.close()]);
  } finally {
    await t.stop();
  }
});

test("a reconnect within the linger emits nothing; the end of the linger is one left", { timeout: 30000 }, async () => {
  const t = await startWorker({ PRESENCE_INTERVAL_MS: "100", CHANNEL_LINGER_SECONDS: "2", ...hookVars() });
  try {
    const channel = room();
    const [alice, bob] = [uid("a"), uid("b")];
    const a = await connect(t, alice);
    await join(a, channel, true);
    let f = await frameAfter(a, channel, 0);
    let b = await connect(t, bob);
    await join(b, channel, true);
    f = await frameAfter(a, channel, f.version);
    assert.deepEqual(strip(f), { joined: [{ userId: bob }], left: [], count: 2 });
    const mark = a.mark();
    // Bob's tab reloads: close, reconnect, join again (with presence) within the linger.
    await b.close();
    b = await connect(t, bob);
    const ok = await join(b, channel, true);
    assert.equal(ok.presence.count, 2);
    assert.equal(ok.presence.version, f.version, "no batch since");
    await new Promise((r) => setTimeout(r, 600));
    assert.deepEqual(await a.since(mark), [], "no flapping: nothing was emitted");
    // Gone for good: after the linger, one left.
    const mark2 = a.mark();
    await b.close();
    const left = await frameAfter(a, channel, f.version, 10000);
    assert.deepEqual(strip(left), { joined: [], left: [bob], count: 1 });
    const event = await memberEvent(bob, channel, "left");
    assert.deepEqual(event.data, { channel, userId: bob, reason: "linger" });
    // One joined and one left for bob: the reconnect within the linger sent no webhook either.
    const bobs = hooks.of(bob).filter((x) => x.data.channel === channel).map((x) => [x.type.split(".")[3], x.data.reason]);
    assert.deepEqual(bobs, [["joined", "join"], ["left", "linger"]]);
    assert.deepEqual(await a.since(mark2), [left]);
    await a.close();
  } finally {
    await t.stop();
  }
});

test("presence survives evictions of the root and of the hubs: versions keep growing, watchers keep watching", { timeout: 30000 }, async () => {
  const channel = room();
  const [alice, bob, carol] = [uid("a"), uid("b"), uid("c")];
  const a = await connect(w, alice, { presence: "A" });
  await join(a, channel, true);
  let f = await frameAfter(a, channel, 0);
  const b = await connect(w, bob);
  await join(b, channel);
  f = await frameAfter(a, channel, f.version);
  // Wait for the root to be idle, then force everything out of memory (sockets kept).
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(await w.evictChannel(channel), true, "the root was running");
  await w.evict(alice);
  await w.evict(bob);
  const mark = a.mark();
  const c = await connect(w, carol);
  const okC = await join(c, channel, true);
  assert.equal(okC.presence.version, f.version, "the version is persisted");
  assert.deepEqual(okC.presence.members.map((m) => m.userId), [alice, bob, carol].sort());
  assert.deepEqual(okC.presence.members.find((m) => m.userId === alice).data, "A", "the data is persisted");
  const f2 = await frameAfter(a, channel, f.version);
  assert.equal(f2.version, f.version + 1);
  assert.deepEqual(strip(f2), { joined: [{ userId: carol }], left: [], count: 3 });
  // Alice's watching survived her hub's eviction (the socket's attachment), bob's leave after his.
  await w.evict(alice);
  await w.evict(bob);
  await w.evictChannel(channel);
  await b.request({ type: "leave", channel, id: 1 });
  const f3 = await frameAfter(a, channel, f2.version);
  assert.deepEqual(strip(f3), { joined: [], left: [bob], count: 2 });
  assert.deepEqual(await a.since(mark), [f2, f3]);
  await Promise.all([a.close(), b.close(), c.close()]);
});

test("a crashed member leaves when the next publish prunes it; a kicked one at once", { timeout: 30000 }, async () => {
  const channel = room();
  const [alice, bob, carol] = [uid("a"), uid("b"), uid("c")];
  const a = await connect(w, alice);
  await join(a, channel, true);
  let f = await frameAfter(a, channel, 0);
  const b = await connect(w, bob);
  await join(b, channel);
  const c = await connect(w, carol);
  await join(c, channel);
  while (f.count < 3) f = await frameAfter(a, channel, f.version);
  const mark = a.mark();
  await w.crash(bob); // sockets dropped without a close event: nothing tells the root
  await new Promise((r) => setTimeout(r, 400));
  assert.deepEqual((await a.since(mark)).filter(isPresence), [], "a crash alone is not seen");
  const res = await publish(w, { channel, type: "t", payload: 1, timeoutMs: 0 });
  assert.equal(res.body.totals.pruned, 1, JSON.stringify(res.body));
  const pruned = await frameAfter(a, channel, f.version);
  assert.deepEqual(strip(pruned), { joined: [], left: [bob], count: 2 });
  const m = a.mark();
  const kick = await fetch(`${w.url}/users/${encodeURIComponent(carol)}/connections`, {
    method: "DELETE", headers: { authorization: `Bearer ${publishToken()}` },
  });
  assert.equal(kick.status, 200);
  const kicked = await frameAfter(a, channel, pruned.version);
  assert.deepEqual(strip(kicked), { joined: [], left: [carol], count: 1 });
  const frames = (await a.since(m)).filter((x) => x.envelopeId === undefined);
  assert.deepEqual(frames, [kicked]);
  // The member webhooks carry the reasons.
  for (const [user, reason] of [[bob, "pruned"], [carol, "kick"]]) {
    const e = await memberEvent(user, channel, "left");
    assert.deepEqual(e.data, { channel, userId: user, reason });
  }
  await a.close();
});

test("GET /channels/{c}/presence lists present users with data and connection counts, in pages", async () => {
  const channel = room();
  const [alice, bob] = [uid("a"), uid("b")].sort();
  const a1 = await connect(w, alice, { presence: { n: 1 } });
  const a2 = await connect(w, alice, { presence: { n: 2 } });
  await join(a1, channel);
  await join(a2, channel);
  const b = await connect(w, bob);
  await join(b, channel);
  const all = await presenceApi(w, channel);
  assert.equal(all.status, 200);
  assert.deepEqual(all.body, {
    channel, count: 2, nextCursor: null,
    members: [{ userId: alice, data: { n: 1 }, connections: 2 }, { userId: bob, connections: 1 }],
  });
  const p1 = await presenceApi(w, channel, "?limit=1");
  assert.deepEqual(p1.body.members.map((m) => m.userId), [alice]);
  assert.equal(p1.body.nextCursor, alice);
  const p2 = await presenceApi(w, channel, `?limit=1&cursor=${encodeURIComponent(alice)}`);
  assert.deepEqual(p2.body.members, [{ userId: bob, connections: 1 }]);
  assert.equal(p2.body.nextCursor, null);
  await a1.close();
  await new Promise((r) => setTimeout(r, 200));
  assert.equal((await presenceApi(w, channel)).body.members[0].connections, 1);
  for (const q of ["?limit=0", "?limit=101", "?limit=x"]) {
    const bad = await presenceApi(w, channel, q);
    assert.equal(bad.status, 400, q);
    assert.equal(bad.body.error, "invalid_limit");
  }
  const denied = await presenceApi(w, channel, "", clientToken(alice));
  assert.equal(denied.status, 403);
  assert.equal(denied.body.error, "forbidden");
  const badName = await presenceApi(w, "bad name");
  assert.equal(badName.body.error, "invalid_channel");
  await Promise.all([a2.close(), b.close()]);
});

test("the presence claim is size-capped; a ticket carries it; a bad presence field is refused and loses nothing", async () => {
  const big = { s: "x".repeat(1100) };
  await assert.rejects(connect(w, uid(), { presence: big }), (e) =>
    e.status === 401 && e.body?.error === "invalid_token" && e.body.message.includes("`presence`") && e.body.message.includes("PRESENCE_DATA_MAX_BYTES"));
  const t = await startWorker({ PRESENCE_DATA_MAX_BYTES: "2000", PRESENCE_INTERVAL_MS: "100" });
  try {
    const user = uid();
    const c = await connect(t, user, { presence: big });
    const channel = room();
    const ok = await join(c, channel, true);
    assert.deepEqual(ok.presence.members, [{ userId: user, data: big }]);
    // A ticket keeps the claim for the connection it opens.
    const tok = token(uid("tk"), { presence: { via: "ticket" } });
    const res = await fetch(`${t.url}/tickets`, { method: "POST", headers: { authorization: `Bearer ${tok}` } });
    const { ticket } = await res.json();
    const viaTicket = await Client.connect(t, undefined, { ticket });
    const ok2 = await join(viaTicket, channel, true);
    assert.deepEqual(ok2.presence.members.find((m) => m.userId === viaTicket.welcome.userId).data, { via: "ticket" });
    const bad = await c.request({ type: "join", channel: room(), presence: "yes", id: 9 });
    assert.equal(bad.code, "invalid_frame");
    assert.match(bad.message, /presence/);
    assert.equal((await c.request({ type: "subscribe", filters: [], id: 10 })).type, "ok", "the socket stays open");
    await Promise.all([c.close(), viaTicket.close()]);
  } finally {
    await t.stop();
  }
  const settings = await startWorker({ PRESENCE_INTERVAL_MS: "10" });
  try {
    const r = await fetch(`${settings.url}/publish`, { method: "POST", headers: { authorization: `Bearer ${publishToken()}` }, body: "{}" });
    const body = await r.json();
    assert.equal(r.status, 500);
    assert.equal(body.error, "server_misconfigured");
    assert.match(body.message, /PRESENCE_INTERVAL_MS/);
  } finally {
    await settings.stop();
  }
});

test("joining with presence a channel already joined starts watching; a leave of the last watching connection stops the batches to that user", { timeout: 30000 }, async () => {
  const channel = room();
  const [alice, bob, carol] = [uid("a"), uid("b"), uid("c")];
  const a1 = await connect(w, alice);
  const a2 = await connect(w, alice);
  await join(a1, channel);
  await join(a2, channel);
  const upgraded = await join(a1, channel, true);
  assert.deepEqual(upgraded.presence.members, [{ userId: alice }]);
  const m2 = a2.mark();
  const b = await connect(w, bob);
  await join(b, channel);
  const f = await frameAfter(a1, channel, upgraded.presence.version);
  assert.deepEqual(f.joined.map((x) => x.userId), [bob]);
  assert.deepEqual((await a2.since(m2)).filter(isPresence), [], "only the watching connection gets frames");
  // a1 leaves; a2 stays joined without watching: the root stops sending to alice's hub.
  await a1.request({ type: "leave", channel, id: "l1" });
  const c = await connect(w, carol);
  await join(c, channel);
  const batch = await w.event((e) => e.event === "presence_batch" && e.channel === channel && e.version > f.version && e.changes >= 1, 8000);
  assert.equal(batch.watchers, 0, JSON.stringify(batch));
  await Promise.all([a1.close(), a2.close(), b.close(), c.close()]);
});

test("presence frames go through the relays of a deep tree to every watcher", { timeout: 30000 }, async () => {
  const t = await startWorker({ PRESENCE_INTERVAL_MS: "100", CHANNEL_FANOUT: "2" });
  try {
    const channel = room();
    const users = Array.from({ length: 7 }, () => uid("r"));
    const clients = [];
    for (const u of users) {
      const c = await connect(t, u);
      await join(c, channel, true);
      clients.push(c);
    }
    const newcomer = uid("z");
    // Let earlier batches land first, so the newcomer's is the one to look for.
    await new Promise((r) => setTimeout(r, 500));
    const late = await connect(t, newcomer);
    await join(late, channel);
    for (const c of clients) {
      const f = await c.next((x) => isPresence(x) && x.joined.some((m) => m.userId === newcomer), 8000);
      assert.equal(f.count, 8);
    }
    const batch = await t.event((e) => e.event === "presence_batch" && e.channel === channel && e.count === 8);
    assert.equal(batch.watchers, 7);
    await Promise.all([...clients.map((c) => c.close()), late.close()]);
  } finally {
    await t.stop();
  }
});
