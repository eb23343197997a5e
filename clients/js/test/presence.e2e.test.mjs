// client.presence() against the real built Worker (workerd through Miniflare): the join's snapshot,
// the presence frames of other users joining and leaving (with their token's presence data), the
// version rule holding across a forced eviction of the channel's root, and the re-sync from a fresh
// snapshot after a reconnect that missed changes. Skipped, by a check that names the missing server
// feature, when the Worker under test has no channel presence.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startWorker, clientToken, waitFor } from "../../../tests/harness.mjs";
import { presenceMissing } from "../../../tests/browser/support.mjs";
import { SwitchboardClient } from "../dist/index.js";

const LINGER_SECONDS = 1;
let w;
let missing;
before(async () => {
  w = await startWorker({ CHANNEL_LINGER_SECONDS: String(LINGER_SECONDS) });
  missing = await presenceMissing(w, clientToken("probe", { channels: ["room:*"] }), `room:probe-${Math.random().toString(36).slice(2, 8)}`);
});
after(() => w?.stop());

const clients = [];
after(() => clients.forEach((c) => c.close()));
const rand = () => Math.random().toString(36).slice(2, 8);

function client(userId, opts = {}) {
  const c = new SwitchboardClient({
    url: w.url,
    token: () => clientToken(userId, { channels: ["room:*"], presence: { name: userId.toUpperCase() } }),
    reconnect: { minDelayMs: 50, maxDelayMs: 200, jitter: 0 },
    ...opts,
  });
  c.errors = [];
  c.on("error", (e) => c.errors.push(e));
  clients.push(c);
  return c.connect();
}
/** A presence handle's join/leave events as "+user"/"-user", and every version it held. */
function watch(p) {
  const log = [];
  const versions = [];
  p.on("join", (m) => log.push(`+${m.userId}`));
  p.on("leave", (m) => log.push(`-${m.userId}`));
  p.on("change", (c) => versions.push(c.version));
  return { log, versions };
}
const sorted = (p) => [...p.members.keys()].sort();

test("client.presence: the snapshot, then other users joining (with data) and leaving, as the real Worker sends them", { timeout: 60000 }, async (t) => {
  if (missing) return t.skip(missing);
  const channel = `room:${rand()}`;
  const [alice, bob, carol] = ["alice", "bob", "carol"].map((u) => `${u}-${rand()}`);
  const a = client(alice);
  const pa = a.presence(channel);
  const seen = watch(pa);
  await pa.ready;
  assert.deepEqual(sorted(pa), [alice]);
  assert.deepEqual(pa.members.get(alice), { name: alice.toUpperCase() });
  assert.equal(pa.count, 1);

  const b = client(bob);
  const pb = b.presence(channel);
  await pb.ready;
  assert.deepEqual(sorted(pb), [alice, bob].sort(), "bob's snapshot has alice and bob");
  await waitFor(() => pa.members.has(bob), 10000, "alice sees bob");
  assert.deepEqual(pa.members.get(bob), { name: bob.toUpperCase() });

  // A user that joins without asking for presence is present all the same.
  const c = client(carol);
  await c.join(channel, () => {});
  await waitFor(() => pa.members.has(carol), 10000, "alice sees carol");
  assert.equal(pa.count, 3);

  // A leave frame: bob is gone at the next flush. A closed connection: carol after the linger.
  await b.leave(channel);
  await waitFor(() => !pa.members.has(bob), 10000, "bob's leave");
  c.close();
  await waitFor(() => !pa.members.has(carol), 10000, "carol's leave after the linger");
  assert.deepEqual(sorted(pa), [alice]);
  assert.equal(pa.count, 1);
  assert.deepEqual(seen.log, [`+${alice}`, `+${bob}`, `+${carol}`, `-${bob}`, `-${carol}`], "each change once, in order");
  assert.ok(seen.versions.every((v, i) => i === 0 || v > seen.versions[i - 1]), `versions grow: ${seen.versions}`);
  assert.deepEqual([...a.errors, ...b.errors], []);
});

test("client.presence after a reconnect: a fresh snapshot brings what changed meanwhile; the version keeps growing across a root eviction", { timeout: 60000 }, async (t) => {
  if (missing) return t.skip(missing);
  const channel = `room:${rand()}`;
  const [alice, bob, dave] = ["alice", "bob", "dave"].map((u) => `${u}-${rand()}`);
  // alice's sockets, so the test can drop one the way a network does, and hold her next token.
  const sockets = [];
  class Recorded extends WebSocket {
    constructor(url) {
      super(url);
      sockets.push(this);
    }
  }
  let gate = null;
  const a = client(alice, {
    WebSocket: Recorded,
    token: async () => {
      if (gate) await gate.promise;
      return clientToken(alice, { channels: ["room:*"] });
    },
  });
  const pa = a.presence(channel);
  const b = client(bob);
  const pb = b.presence(channel);
  await Promise.all([pa.ready, pb.ready]);
  await waitFor(() => pa.members.has(bob), 10000, "alice sees bob");
  const seen = watch(pa);
  const versionBefore = pa.version;

  gate = Promise.withResolvers();
  sockets.at(-1).close(4000, "network blip");
  await waitFor(() => a.state === "reconnecting", 5000, "alice away");
  assert.equal(pa.synced, false);
  // While alice is away: bob leaves, dave joins, and the channel's root is evicted.
  await b.leave(channel);
  const d = client(dave);
  await d.join(channel, () => {});
  assert.equal(await w.evictChannel(channel), true, "the root was running and is now evicted");
  gate.resolve();
  gate = null;

  await waitFor(() => a.state === "open" && pa.synced, 10000, "alice back and re-synced");
  assert.deepEqual(sorted(pa), [alice, dave].sort());
  assert.deepEqual([...seen.log].sort(), [`+${dave}`, `-${bob}`].sort(), "the snapshot's difference, as events");
  // The snapshot holds the members as they are now, possibly at the version of the last flush (the
  // batch with bob's leave and dave's join may come after it, and then changes nothing). Live again:
  // dave's leave is applied, which it would not be if the evicted root had restarted its versions.
  d.close();
  await waitFor(() => !pa.members.has(dave), 10000, "dave's leave after the linger");
  assert.deepEqual(sorted(pa), [alice]);
  assert.deepEqual(seen.log.slice(2), [`-${dave}`], "the late batch of the changes the snapshot had brought nothing twice");
  assert.ok(pa.version > versionBefore, `the version grew across the eviction: ${versionBefore} -> ${pa.version}`);
});
