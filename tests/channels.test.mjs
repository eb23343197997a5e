// Channels: token grants, join/leave frames, membership in the channel's root across closes,
// crashes and evictions, channel publish with aggregated acks (directly and through relays),
// client publish, partial failures and limits — against workerd.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startWorker, Client, publish, clientToken, publishToken, mint, now } from "./harness.mjs";

let w;
before(async () => (w = await startWorker()));
after(() => w.stop());

let n = 0;
const uid = (p = "ch") => `${p}-${++n}-${Math.random().toString(36).slice(2, 8)}`;
const room = () => `room:${++n}-${Math.random().toString(36).slice(2, 8)}`;
const joinToken = (user, channels = ["lobby", "room:*"], extra = {}) => clientToken(user, { channels, ...extra });

async function members(target, channel, query = "", token = publishToken()) {
  const res = await fetch(`${target.url}/channels/${encodeURIComponent(channel)}/members${query}`, {
    headers: { authorization: `Bearer ${token}` },
  });
  return { status: res.status, body: await res.json() };
}

async function joined(target, user, channel, opts = {}) {
  const c = await Client.connect(target, joinToken(user), opts);
  const r = await c.request({ type: "join", channel, id: `j-${channel}` });
  assert.equal(r.type, "ok", JSON.stringify(r));
  return c;
}

test("join follows the token's channels claim: exact names and prefix patterns", async () => {
  const u = uid();
  const c = await Client.connect(w, joinToken(u));
  assert.equal((await c.request({ type: "join", channel: "lobby", id: 1 })).type, "ok");
  assert.equal((await c.request({ type: "join", channel: "room:42", id: 2 })).type, "ok");
  assert.equal((await c.request({ type: "join", channel: "room:42", id: 3 })).type, "ok", "joining twice is fine");
  const denied = await c.request({ type: "join", channel: "lobby2", id: 4 });
  assert.equal(denied.code, "forbidden");
  assert.match(denied.message, /channels/);
  for (const [channel, id] of [["bad name", 5], ["", 6], [42, 7], ["x".repeat(65), 8], ["room:*", 9]]) {
    const e = await c.request({ type: "join", channel, id });
    assert.equal(e.code, "invalid_channel", JSON.stringify([channel, e]));
  }
  assert.equal((await c.request({ type: "join", id: 10 })).code, "invalid_channel");
  assert.equal((await c.request({ type: "leave", channel: "room:nope", id: 11 })).type, "ok", "leaving a channel not joined is a no-op");
  // A token without the claim may join nothing.
  const plain = await Client.connect(w, clientToken(uid()));
  assert.equal((await plain.request({ type: "join", channel: "lobby", id: 1 })).code, "forbidden");
  // The socket stays open through every refusal.
  assert.equal((await c.request({ type: "subscribe", filters: [], id: 12 })).type, "ok");
  await c.close();
  await plain.close();
});

test("a token with a malformed channels claim is refused at connect", async () => {
  // Refused with invalid_token, the message naming the claim (README: Channels).
  const refusedNaming = (claim) => (e) => e.status === 401 && e.body?.error === "invalid_token" && e.body.message.includes(`\`${claim}\``);
  for (const channels of ["lobby", [1], ["has space"], Array(33).fill("a")]) {
    await assert.rejects(Client.connect(w, clientToken(uid(), { channels })), refusedNaming("channels"), JSON.stringify(channels).slice(0, 40));
  }
  await assert.rejects(Client.connect(w, clientToken(uid(), { publishChannels: "room:*" })), refusedNaming("publishChannels"));
  // The same claim problem on a backend token names the claim.
  const res = await publish(w, { channel: "lobby" }, { token: publishToken({ channels: ["a b"] }) });
  assert.equal(res.status, 401);
  assert.match(res.body.message, /`channels` claim/);
});

test("a connection may join at most 16 channels", async () => {
  const c = await Client.connect(w, joinToken(uid()));
  for (let i = 0; i < 16; i++) assert.equal((await c.request({ type: "join", channel: `room:${i}`, id: i })).type, "ok");
  const e = await c.request({ type: "join", channel: "room:16", id: 16 });
  assert.equal(e.code, "too_many_channels");
  assert.equal((await c.request({ type: "leave", channel: "room:0", id: 17 })).type, "ok");
  assert.equal((await c.request({ type: "join", channel: "room:16", id: 18 })).type, "ok", "room again after a leave");
  await c.close();
});

test("a channel publish reaches every joined connection of every member, and only those", async () => {
  const channel = room();
  const users = [uid(), uid(), uid()];
  const clients = [];
  for (const u of users) for (let k = 0; k < 2; k++) clients.push(await joined(w, u, channel, { autoAck: (f) => `${f.userId}/${k}` }));
  // Same user, not joined; another user, not joined; a member's connection subscribed to the type but not joined.
  const bystander = await Client.connect(w, joinToken(users[0]));
  await bystander.subscribe([{ type: "chat" }]);
  const outsider = await Client.connect(w, joinToken(uid()));
  await outsider.subscribe([{ type: "chat" }]);
  const [mb, mo] = [bystander.mark(), outsider.mark()];

  const res = await publish(w, { channel, type: "chat", payload: { text: "hello room" } });
  assert.equal(res.status, 200, res.text);
  assert.equal(res.body.channel, channel);
  assert.equal(res.body.clientCount, 6);
  assert.deepEqual(res.body.totals, { users: 3, succeeded: 3, failed: 0, clientCount: 6, acked: 6, pending: 0, closed: 0, pruned: 0 });
  assert.equal(res.body.results.length, 6);
  assert.deepEqual(res.body.users.map((u) => u.userId).sort(), [...users].sort());
  assert.equal(res.body.truncated, false);
  for (const c of clients) {
    const env = await c.next((f) => f.envelopeId);
    assert.equal(env.channel, channel);
    assert.equal(env.type, "chat");
    assert.deepEqual(env.payload, { text: "hello room" });
    assert.equal(env.userId, c.welcome.userId, "each user's envelope carries its own userId and seq");
  }
  const [sinceB, sinceO] = await Promise.all([bystander.since(mb), outsider.since(mo)]);
  assert.deepEqual(sinceB, [], "joining is the subscription: filters alone do not receive channel envelopes");
  assert.deepEqual(sinceO, [], "another user's connection gets nothing");
  // A user publish is unaffected by channels.
  const direct = await publish(w, { userId: users[0], type: "chat", payload: 1 });
  assert.equal(direct.body.clientCount, 1, "only the subscribed connection gets a user publish");
  await Promise.all([...clients, bystander, outsider].map((c) => c.close()));
});

test("leave stops delivery; the last connection leaving removes the user from the members; a close lingers", async () => {
  const channel = room();
  const [a, b] = [uid(), uid()];
  const a1 = await joined(w, a, channel, { autoAck: true });
  const a2 = await joined(w, a, channel, { autoAck: true });
  const b1 = await joined(w, b, channel, { autoAck: true });
  assert.deepEqual((await members(w, channel)).body.members.sort(), [a, b].sort());

  assert.equal((await a1.request({ type: "leave", channel, id: "l" })).type, "ok");
  const m1 = a1.mark();
  let res = await publish(w, { channel, type: "t" });
  assert.equal(res.body.totals.clientCount, 2, "a2 and b1");
  assert.deepEqual(await a1.since(m1), [], "nothing reaches a connection after its leave");
  assert.deepEqual((await members(w, channel)).body.members.sort(), [a, b].sort(), "a2 still holds a's membership");

  // An explicit leave of b's last connection reaches the root at once.
  await b1.request({ type: "leave", channel, id: "l" });
  assert.deepEqual((await members(w, channel)).body.members, [a]);
  // A close of a's last joined connection does not: a lingers (CHANNEL_LINGER_SECONDS), so what the
  // channel publishes meanwhile goes into a's history for its resume.
  await a2.close();
  res = await publish(w, { channel, type: "t" });
  assert.deepEqual(res.body.totals, { users: 1, succeeded: 1, failed: 0, clientCount: 0, acked: 0, pending: 0, closed: 0, pruned: 0 });
  assert.equal(res.body.users[0].lingering, true);
  assert.equal(res.body.users[0].seq > 0, true, "recorded in a's history");
  await a1.close();
  await b1.close();
});

test("a member whose sockets vanished without a close is found stale at the next publish and removed", async () => {
  const channel = room();
  const [live, gone] = [uid(), uid()];
  const l = await joined(w, live, channel, { autoAck: true });
  const g = await joined(w, gone, channel);
  await w.crash(gone); // the hub is evicted and its sockets dropped: no close event runs
  await g.closed;
  const res = await publish(w, { channel, type: "t" });
  assert.equal(res.status, 200);
  assert.equal(res.body.totals.users, 1);
  assert.equal(res.body.totals.pruned, 1);
  assert.equal(res.body.totals.acked, 1);
  assert.deepEqual((await members(w, channel)).body.members, [live]);
  // The pruned user's seq did not move: nothing was recorded for it.
  const g2 = await Client.connect(w, joinToken(gone));
  assert.equal(g2.welcome.seq, 0);
  // And it can come back.
  assert.equal((await g2.request({ type: "join", channel, id: 1 })).type, "ok");
  assert.equal((await publish(w, { channel, type: "t", timeoutMs: 0 })).body.totals.clientCount, 2);
  await l.close();
  await g2.close();
});

test("eviction of user hubs and of the channel's root between join and publish loses nothing", async () => {
  const channel = room();
  const users = Array.from({ length: 5 }, () => uid());
  const clients = [];
  for (const u of users) clients.push(await joined(w, u, channel, { autoAck: (f) => f.channel }));
  for (const u of users) await w.evict(u);
  await w.evictChannel(channel);
  const res = await publish(w, { channel, type: "after-eviction", payload: { n: 1 } });
  assert.equal(res.status, 200, res.text);
  assert.deepEqual(res.body.totals, { users: 5, succeeded: 5, failed: 0, clientCount: 5, acked: 5, pending: 0, closed: 0, pruned: 0 });
  assert.deepEqual(res.body.results, Array(5).fill(channel));
  for (const c of clients) assert.equal((await c.next((f) => f.envelopeId)).type, "after-eviction");
  // Leave after an eviction too: membership lives in the socket's attachment.
  await w.evict(users[0]);
  assert.equal((await clients[0].request({ type: "leave", channel, id: 1 })).type, "ok");
  assert.equal((await publish(w, { channel, type: "t" })).body.totals.users, 4);
  await Promise.all(clients.map((c) => c.close()));
});

test("channel envelopes are kept in each user's history and replayed to a rejoined connection", async () => {
  const channel = room();
  const u = uid();
  const c = await joined(w, u, channel, { autoAck: true });
  for (let i = 1; i <= 3; i++) await publish(w, { channel, type: "m", payload: i });
  const lastSeen = (await c.next((f) => f.payload === 3)).seq;
  await c.close();
  // Missed while away: the user has another connection, so it stays a member.
  const keeper = await joined(w, u, channel, { autoAck: true });
  for (let i = 4; i <= 6; i++) await publish(w, { channel, type: "m", payload: i });
  const back = await joined(w, u, channel);
  await back.subscribe([], { since: lastSeen });
  const replayed = [];
  for (let i = 0; i < 3; i++) replayed.push(await back.next((f) => f.replayed));
  assert.deepEqual(replayed.map((f) => f.payload), [4, 5, 6]);
  assert.ok(replayed.every((f) => f.channel === channel));
  await back.close();
  await keeper.close();
});

test("a client that reconnects within CHANNEL_LINGER_SECONDS, joins again and resumes misses nothing; later the root forgets it", { timeout: 30000 }, async () => {
  const t = await startWorker({ CHANNEL_LINGER_SECONDS: "2" });
  try {
    const channel = room();
    const [u, other] = [uid(), uid()];
    const keep = await joined(t, other, channel, { autoAck: true });
    const c = await joined(t, u, channel, { autoAck: true });
    await publish(t, { channel, type: "m", payload: 1 });
    const seen = (await c.next((f) => f.payload === 1)).seq;
    await c.close();
    for (let i = 2; i <= 3; i++) await publish(t, { channel, type: "m", payload: i });
    const back = await joined(t, u, channel, { autoAck: true });
    await back.subscribe([], { since: seen });
    assert.deepEqual([(await back.next((f) => f.replayed)).payload, (await back.next((f) => f.replayed)).payload], [2, 3]);
    assert.deepEqual((await members(t, channel)).body.members.sort(), [u, other].sort());
    // Gone for longer than the linger: the hub's alarm tells the root, even when the hub was evicted
    // in between (the alarm wakes it).
    await back.close();
    assert.equal(await t.evict(u), true);
    for (let i = 0; i < 100 && (await members(t, channel)).body.count > 1; i++) await new Promise((r) => setTimeout(r, 100));
    assert.deepEqual((await members(t, channel)).body.members, [other]);
    await keep.close();
  } finally {
    await t.stop();
  }
});

test("through a tree of relays (CHANNEL_FANOUT=3): 30 users, every ack aggregated", { timeout: 60000 }, async () => {
  const t = await startWorker({ CHANNEL_FANOUT: "3" });
  try {
    const channel = room();
    const clients = [];
    for (let i = 0; i < 30; i++) clients.push(await joined(t, uid("tree"), channel, { autoAck: (f) => f.userId }));
    const res = await publish(t, { channel, type: "t", payload: "deep" });
    assert.equal(res.status, 200, res.text);
    assert.deepEqual(res.body.totals, { users: 30, succeeded: 30, failed: 0, clientCount: 30, acked: 30, pending: 0, closed: 0, pruned: 0 });
    assert.deepEqual(res.body.results.sort(), clients.map((c) => c.welcome.userId).sort());
    const log = t.events().find((e) => e.event === "publish_channel");
    assert.equal(log.depth, 4, "30 members with 3 hops per step: root, two relay levels, hubs");
    // A member that crashed is pruned through the relays too.
    await t.crash(clients[7].welcome.userId);
    const again = await publish(t, { channel, type: "t" });
    assert.equal(again.body.totals.pruned, 1);
    assert.equal(again.body.totals.users, 29);
    assert.equal((await members(t, channel)).body.count, 29);
    await Promise.all(clients.map((c) => c.close().catch(() => {})));
  } finally {
    await t.stop();
  }
});

test("partial failure: one user's hub refuses, the others are delivered and counted", async () => {
  const channel = room();
  const [ok1, ok2, bad] = [uid(), uid(), uid()];
  const clients = [];
  for (const u of [ok1, ok2, bad]) clients.push(await joined(w, u, channel, { autoAck: true }));
  const key = `key-${Math.random()}`;
  // The key is already used at `bad`'s hub with another body: that hub answers 409.
  assert.equal((await publish(w, { userId: bad, type: "other" }, { headers: { "idempotency-key": key } })).status, 200);
  const res = await publish(w, { channel, type: "t" }, { headers: { "idempotency-key": key } });
  assert.equal(res.status, 200);
  assert.equal(res.body.totals.users, 3);
  assert.equal(res.body.totals.failed, 1);
  assert.equal(res.body.totals.acked, 2);
  assert.equal(res.body.users[0].userId, bad, "failures come first");
  assert.equal(res.body.users[0].error, "idempotency_conflict");
  // A retry of the same channel publish is a duplicate at every hub that took it.
  const retry = await publish(w, { channel, type: "t" }, { headers: { "idempotency-key": key } });
  assert.equal(retry.body.users.filter((u) => u.duplicate).length, 2);
  await Promise.all(clients.map((c) => c.close()));
});

test("a member's hub that does not answer within timeoutMs + HOP_GRACE_MS is a 504 failure entry; the others are delivered", async () => {
  const t = await startWorker({ HOP_GRACE_MS: "0" }); // see multi.test.mjs: the hop's limit passes first
  try {
    const channel = room();
    const [fast, slow] = [uid(), uid()];
    const a = await joined(t, fast, channel, { autoAck: () => "fast" });
    const b = await joined(t, slow, channel); // never acks
    const res = await publish(t, { channel, type: "t", timeoutMs: 500 });
    assert.equal(res.status, 200, res.text);
    assert.deepEqual(res.body.totals, { users: 2, succeeded: 1, failed: 1, clientCount: 1, acked: 1, pending: 0, closed: 0, pruned: 0 });
    const { message, ...failure } = res.body.users[0];
    assert.deepEqual(failure, { userId: slow, status: 504, error: "timeout" }, "failures come first");
    assert.match(message, /did not answer within 500 ms/);
    assert.deepEqual(res.body.results, ["fast"]);
    assert.equal((await b.next((f) => f.envelopeId)).channel, channel);
    await Promise.all([a.close(), b.close()]);
  } finally {
    await t.stop();
  }
});

test("MAX_CHANNEL_USERS: a join past the limit is refused with channel_full; members of the channel still join more sockets", async () => {
  // No linger: a close frees the place at once.
  const t = await startWorker({ MAX_CHANNEL_USERS: "2", CHANNEL_LINGER_SECONDS: "0" });
  try {
    const channel = room();
    const [a, b, c] = [uid(), uid(), uid()];
    const ca = await joined(t, a, channel);
    const cb = await joined(t, b, channel);
    const cc = await Client.connect(t, joinToken(c));
    const e = await cc.request({ type: "join", channel, id: 1 });
    assert.equal(e.code, "channel_full");
    assert.match(e.message, /MAX_CHANNEL_USERS/);
    const ca2 = await joined(t, a, channel); // a is a member already
    await cb.close();
    for (let i = 0; i < 50 && (await members(t, channel)).body.count > 1; i++) await new Promise((r) => setTimeout(r, 20));
    assert.equal((await cc.request({ type: "join", channel, id: 2 })).type, "ok", "room again after b left");
    await Promise.all([ca, ca2, cc].map((x) => x.close()));
  } finally {
    await t.stop();
  }
});

test("client publish: publishChannels allows it; members get it with `from`, the sender's socket does not", async () => {
  const channel = room();
  const [alice, bob] = [uid(), uid()];
  const tokenA = clientToken(alice, { channels: ["room:*"], publishChannels: ["room:*"] });
  const a1 = await Client.connect(w, tokenA);
  const a2 = await Client.connect(w, tokenA, { autoAck: () => "a2" });
  const b = await Client.connect(w, joinToken(bob), { autoAck: () => "bob" });
  for (const c of [a1, a2, b]) assert.equal((await c.request({ type: "join", channel, id: "j" })).type, "ok");
  const m = a1.mark();
  const ok = await a1.request({ type: "publish", channel, event: "typing", payload: { on: true }, id: "p1" });
  assert.equal(ok.type, "ok", JSON.stringify(ok));
  assert.equal(ok.totals.clientCount, 2);
  assert.equal(ok.totals.acked, 2);
  for (const c of [a2, b]) {
    const env = await c.next((f) => f.envelopeId);
    assert.deepEqual([env.type, env.channel, env.from, env.payload], ["typing", channel, alice, { on: true }]);
  }
  assert.deepEqual(await a1.since(m), [ok], "not echoed to the sender: its socket got only the ok");
  // Bob may join but not publish; nobody may publish where the claim does not reach.
  assert.equal((await b.request({ type: "publish", channel, payload: 1, id: "p" })).code, "forbidden");
  assert.equal((await a1.request({ type: "publish", channel: "lobby", payload: 1, id: "p" })).code, "forbidden");
  assert.equal((await a1.request({ type: "publish", channel, event: 5, id: "p" })).code, "invalid_frame");
  assert.equal((await a1.request({ type: "publish", channel: "a b", id: "p" })).code, "invalid_channel");
  await Promise.all([a1, a2, b].map((c) => c.close()));
});

test("client publish: timeoutMs bounds the wait; a member that does not ack is pending in the totals", async () => {
  const channel = room();
  const [alice, bob] = [uid(), uid()];
  const a = await Client.connect(w, clientToken(alice, { channels: ["room:*"], publishChannels: ["room:*"] }));
  const b = await Client.connect(w, joinToken(bob)); // never acks
  for (const c of [a, b]) assert.equal((await c.request({ type: "join", channel, id: "j" })).type, "ok");
  const started = Date.now();
  const ok = await a.request({ type: "publish", channel, event: "e", payload: 1, timeoutMs: 300, id: "p" });
  const elapsed = Date.now() - started;
  assert.ok(elapsed >= 250 && elapsed < 2500, `waited for the 300 ms timeout (${elapsed} ms)`);
  assert.equal(ok.type, "ok", JSON.stringify(ok));
  assert.deepEqual(ok.totals, { users: 2, succeeded: 2, failed: 0, clientCount: 1, acked: 0, pending: 1, closed: 0, pruned: 0 });
  assert.equal((await b.next((f) => f.envelopeId)).from, alice);
  for (const timeoutMs of [-1, "5", 1.5]) {
    const e = await a.request({ type: "publish", channel, payload: 1, timeoutMs, id: "bad" });
    assert.equal(e.code, "invalid_frame", JSON.stringify(timeoutMs));
  }
  await Promise.all([a, b].map((c) => c.close()));
});

test("backend endpoints check scope and input", async () => {
  const channel = room();
  const code = (r) => [r.status, r.body.error];
  assert.deepEqual(code(await members(w, channel, "", clientToken("x"))), [403, "forbidden"]);
  assert.deepEqual(code(await members(w, "bad name")), [400, "invalid_channel"]);
  for (const q of ["?limit=0", "?limit=abc", "?limit=1001", "?limit=-1", "?limit=1.5"]) {
    const r = await members(w, channel, q);
    assert.deepEqual(code(r), [400, "invalid_limit"], q);
    assert.match(r.body.message, /limit/);
  }
  // The bounds themselves are allowed.
  assert.deepEqual((await members(w, channel, "?limit=1")).body, { channel, count: 0, members: [], nextCursor: null });
  assert.equal((await members(w, channel, "?limit=1000")).status, 200);
  const post = await fetch(`${w.url}/channels/${channel}/members`, { method: "POST", headers: { authorization: `Bearer ${publishToken()}` } });
  assert.deepEqual([post.status, (await post.json()).error], [405, "method_not_allowed"]);
  const nope = await fetch(`${w.url}/channels/${channel}`, { headers: { authorization: `Bearer ${publishToken()}` } });
  assert.deepEqual([nope.status, (await nope.json()).error], [404, "not_found"]);
  // Each body has the one code the README's error table gives it.
  for (const [body, code] of [
    [{ channel, userId: "u" }, "invalid_channel"],
    [{ channel, userIds: ["u"] }, "invalid_channel"],
    [{ channel: 5 }, "invalid_channel"],
    [{ channel: "" }, "invalid_channel"],
    [{ channel: "has space" }, "invalid_channel"],
    [{ channel: "x".repeat(65) }, "invalid_channel"],
    [{ channel, connectionId: "c" }, "invalid_connection_id"],
  ]) {
    const res = await publish(w, body);
    assert.equal(res.status, 400, JSON.stringify(body));
    assert.equal(res.body.error, code, JSON.stringify(body));
  }
  const forbidden = await publish(w, { channel }, { token: clientToken("x") });
  assert.deepEqual([forbidden.status, forbidden.body.error], [403, "forbidden"]);
  const expired = await publish(w, { channel }, { token: mint({ scope: "publish", exp: now() - 3600 }) });
  assert.deepEqual([expired.status, expired.body.error], [401, "token_expired"]);
});

test("members are listed in pages", async () => {
  const channel = room();
  const users = Array.from({ length: 7 }, (_, i) => `page-${i}-${Math.random().toString(36).slice(2, 6)}`);
  const clients = [];
  for (const u of users) clients.push(await joined(w, u, channel));
  const seen = [];
  let cursor = "";
  for (let i = 0; i < 10; i++) {
    const page = await members(w, channel, `?limit=3${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`);
    assert.equal(page.body.count, 7);
    seen.push(...page.body.members);
    if (!page.body.nextCursor) break;
    cursor = page.body.nextCursor;
  }
  assert.deepEqual(seen, [...users].sort());
  await Promise.all(clients.map((c) => c.close()));
});
