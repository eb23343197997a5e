// Real-browser tests: Debian's Chromium (driven by playwright-core, no browser download) opens the demo
// page — the JavaScript client in a real page — against the built Worker in workerd. Two tabs of one
// user (one over WebSocket, one over SSE) and a tab of a second user exchange live updates and ack
// them; then the Worker is restarted under them and every tab reconnects with a fresh token and
// resumes without loss. A tab reloaded while the backend publishes loses nothing (the client keeps its
// resume point in sessionStorage), and the tabs show who is in the room (channel presence), also
// across a reload. Screenshots go to test-results/.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import crypto from "node:crypto";
import { execFileSync } from "node:child_process";
import { ROOT, Client, mint, now } from "../harness.mjs";
import { startDemo } from "../../demo/server.mjs";
import { launchChromium, presenceMissing, until } from "./support.mjs";

const RESULTS = path.join(ROOT, "test-results");
const SECRET = crypto.randomBytes(24).toString("hex");
// A short linger, so a closed tab's user leaves the room within the test (README: Channels).
const LINGER_SECONDS = 2;
let demo;
let browser;

before(async () => {
  execFileSync(process.execPath, [path.join(ROOT, "clients/js/build.mjs")], { stdio: "ignore" });
  fs.mkdirSync(RESULTS, { recursive: true });
  demo = await startDemo({ port: 0, workerPort: 0, secret: SECRET, vars: { CHANNEL_LINGER_SECONDS: String(LINGER_SECONDS) } });
  browser = await launchChromium();
});
after(async () => {
  await browser?.close();
  await demo?.stop();
});

/** Opens a tab of the demo as `user` and waits until its client is connected. */
async function openTab(context, user, transport = "websocket") {
  const page = await context.newPage();
  page.errors = [];
  page.on("pageerror", (e) => page.errors.push(e.message));
  page.on("console", (m) => m.type() === "error" && page.errors.push(`${m.text()} (${m.location()?.url})`));
  await page.goto(`${demo.url}/?user=${user}${transport === "sse" ? "&transport=sse" : ""}`);
  await page.waitForSelector('#state[data-state="open"]', { timeout: 10000 });
  page.tab = await page.evaluate(() => window.demo.tab);
  return page;
}

/** Publishes through the page's form, as a person would, and returns the publish response it shows. */
async function publishFromPage(page, to, text) {
  const before = await page.evaluate(() => window.demo.results.length);
  await page.fill("#to", to);
  await page.fill("#text", text);
  await page.click("#send");
  await page.waitForFunction((n) => window.demo.results.length > n, before, { timeout: 10000 });
  return page.evaluate(() => window.demo.results.at(-1));
}

const received = (page) => page.evaluate(() => window.demo.received);
// Generous: the test checks what arrives, not how fast. (Its earlier timeouts, once at 15 s and once at
// 45 s, were not slowness: the SSE tab's first stream handled a live envelope before reopening with its
// kept point and skipped what lay between; the client fixes that, and its unit test pins it.)
// On a timeout it says what the tab has: its seqs, its state and its last events.
async function waitReceived(page, n) {
  try {
    await page.waitForFunction((n) => window.demo.received.length >= n, n, { timeout: 45000 });
  } catch (e) {
    const seen = await page.evaluate(() => ({
      seqs: window.demo.received.map((m) => `${m.seq}${m.replayed ? "r" : ""}`),
      state: document.querySelector("#state")?.dataset.state,
      events: window.demo.events.slice(-15),
    }));
    throw new Error(`${e.message}: the tab (${page.url()}) has ${seen.seqs.length} of ${n} [${seen.seqs}], state ${seen.state}, last events: ${seen.events.join(" | ")}`);
  }
}

test("two tabs of one user and a second user: live updates, every tab's ack in the publish response", { timeout: 60000 }, async () => {
  const context = await browser.newContext({ viewport: { width: 1100, height: 700 } });
  try {
    const alice1 = await openTab(context, "alice");
    const alice2 = await openTab(context, "alice", "sse");
    const bob = await openTab(context, "bob");

    const r = await publishFromPage(alice1, "alice", "hello from tab 1");
    assert.equal(r.status, 200, JSON.stringify(r));
    assert.equal(r.clientCount, 2);
    assert.deepEqual(r.pending, []);
    assert.deepEqual(r.acks.map((a) => `${a.result.tab}/${a.result.transport}`).sort(), [`${alice1.tab}/websocket`, `${alice2.tab}/sse`].sort());
    await waitReceived(alice2, 1);
    for (const p of [alice1, alice2]) assert.deepEqual((await received(p)).map((m) => [m.seq, m.text, m.replayed]), [[1, "hello from tab 1", false]]);
    // The acks are on the publisher's page, and the message is on the other tab's.
    assert.match(await alice1.textContent("#results"), new RegExp(`ack from tab ${alice2.tab} \\(sse`));
    assert.match(await alice2.textContent("#received"), /hello from tab 1/);

    // The second user's tab receives only what is published to that user.
    const r2 = await publishFromPage(alice2, "bob", "hi bob");
    assert.equal(r2.clientCount, 1);
    assert.deepEqual(r2.acks.map((a) => a.result.tab), [bob.tab]);
    assert.deepEqual((await received(bob)).map((m) => [m.seq, m.text, m.from]), [[1, "hi bob", `alice/${alice2.tab}`]]);
    assert.equal((await received(alice1)).length, 1, "alice's tabs did not get bob's message");

    // Another room of alice matches no tab: delivered to nobody, acked by nobody.
    const other = await demo.publish({ userId: "alice", type: "chat", payload: { room: "elsewhere", text: "x" }, timeoutMs: 500 });
    assert.equal(other.body.clientCount, 0);

    await alice1.screenshot({ path: path.join(RESULTS, "browser-two-tabs-publisher.png"), fullPage: true });
    await alice2.screenshot({ path: path.join(RESULTS, "browser-two-tabs-sse-tab.png"), fullPage: true });
    for (const p of [alice1, alice2, bob]) assert.deepEqual(p.errors, []);
  } finally {
    await context.close();
  }
});

test("the worker restarts under open tabs: they reconnect with fresh tokens and resume without loss", { timeout: 60000 }, async () => {
  const context = await browser.newContext({ viewport: { width: 1100, height: 700 } });
  const user = `carol-${crypto.randomBytes(3).toString("hex")}`;
  try {
    const ws = await openTab(context, user);
    const sse = await openTab(context, user, "sse");
    const first = await publishFromPage(ws, user, "before the restart");
    assert.equal(first.clientCount, 2);
    const ids = await Promise.all([ws, sse].map((p) => p.evaluate(() => window.demo.client.connectionId)));

    // Hold new tokens so the tabs stay away while the backend publishes, then restart through the page.
    const release = demo.holdTokens();
    let released = false;
    try {
      await ws.click("#restart");
      await ws.waitForFunction(() => window.demo.events.includes("worker restarted"), null, { timeout: 20000 });
      for (const p of [ws, sse]) await p.waitForSelector('#state[data-state="reconnecting"]', { timeout: 10000 });
      const missed = [];
      for (const text of ["while away 1", "while away 2"]) {
        missed.push((await demo.publish({ userId: user, type: "chat", payload: { room: "lobby", text, from: "backend" }, timeoutMs: 0 })).body);
      }
      assert.deepEqual(missed.map((m) => [m.seq, m.clientCount]), [[2, 0], [3, 0]], "history survived the restart; nobody was connected");
      release();
      released = true;
    } finally {
      if (!released) release();
    }

    for (const p of [ws, sse]) {
      await p.waitForSelector('#state[data-state="open"]', { timeout: 15000 });
      await waitReceived(p, 3);
    }
    for (const p of [ws, sse]) {
      assert.deepEqual(
        (await received(p)).map((m) => [m.seq, m.text, m.replayed]),
        [[1, "before the restart", false], [2, "while away 1", true], [3, "while away 2", true]],
        "each missed message exactly once, in order, marked replayed",
      );
    }
    const newIds = await Promise.all([ws, sse].map((p) => p.evaluate(() => window.demo.client.connectionId)));
    assert.notDeepEqual(newIds, ids);
    assert.equal(newIds.filter((id, i) => id === ids[i]).length, 0, "both tabs are on new connections");

    // Live again: a publish from the SSE tab is acked by both.
    const after = await publishFromPage(sse, user, "after the restart");
    assert.equal(after.clientCount, 2);
    assert.deepEqual(after.acks.map((a) => a.result.tab).sort(), [ws.tab, sse.tab].sort());
    await waitReceived(ws, 4);
    assert.equal((await received(ws)).length, 4, "nothing handled twice");
    await ws.screenshot({ path: path.join(RESULTS, "browser-restart-resume.png"), fullPage: true });
    // The pages logged the drop and the reconnect.
    const events = await ws.evaluate(() => window.demo.events);
    assert.ok(events.some((e) => e.startsWith("closed ") && e.endsWith("reconnecting")), events.join("\n"));
    assert.equal(events.filter((e) => e.startsWith("welcome")).length >= 2, true);
  } finally {
    await context.close();
  }
});

test("a tab reloaded while the backend publishes loses nothing: it resumes from the seq kept in sessionStorage", { timeout: 90000 }, async () => {
  const context = await browser.newContext({ viewport: { width: 1100, height: 700 } });
  const user = `dave-${crypto.randomBytes(3).toString("hex")}`;
  const N = 30;
  try {
    const ws = await openTab(context, user);
    const sse = await openTab(context, user, "sse");
    const pub = (i) => demo.publish({ userId: user, type: "chat", payload: { room: "lobby", text: `m${i}`, from: "backend" }, timeoutMs: 0 }).then((r) => r.body);
    const answers = [];
    for (let i = 1; i <= 3; i++) answers.push(await pub(i));
    for (const p of [ws, sse]) await waitReceived(p, 3);

    // The backend keeps publishing, one every 20 ms, while both tabs reload. Their token requests
    // are held for a while, so part of the stream is published while neither tab is connected.
    let publishing = (async () => {
      for (let i = 4; i <= N; i++) {
        answers.push(await pub(i));
        await new Promise((r) => setTimeout(r, 20));
      }
    })();
    const release = demo.holdTokens();
    try {
      await Promise.all([ws, sse].map((p) => p.reload({ waitUntil: "domcontentloaded" })));
      await new Promise((r) => setTimeout(r, 300));
    } finally {
      release();
    }
    await publishing;
    const unseen = answers.filter((a) => a.clientCount === 0).map((a) => a.seq);
    assert.ok(unseen.length >= 5, `published while no tab was connected: ${unseen}`);

    for (const p of [ws, sse]) {
      await p.waitForSelector('#state[data-state="open"]', { timeout: 15000 });
      await waitReceived(p, N);
    }
    // The sentinel: one more publish after the stream, seen live by both, so nothing is still on its way.
    const last = await pub(N + 1);
    assert.equal(last.clientCount, 2);
    for (const p of [ws, sse]) {
      await waitReceived(p, N + 1);
      const got = await received(p);
      assert.equal(await p.evaluate(() => window.demo.loads), 2, "the tab was reloaded once");
      assert.deepEqual(got.map((m) => m.seq), Array.from({ length: N + 1 }, (_, i) => i + 1), "every seq exactly once, in order, across the reload");
      assert.deepEqual(got.map((m) => m.text), [...Array.from({ length: N }, (_, i) => `m${i + 1}`), `m${N + 1}`]);
      // What the reloaded page replayed is exactly what the first page had not seen.
      const firstLoad = got.filter((m) => m.load === 1).map((m) => m.seq);
      const replayed = got.filter((m) => m.replayed).map((m) => m.seq);
      assert.ok(firstLoad.length >= 3);
      assert.ok(unseen.every((s) => replayed.includes(s)), `replayed ${replayed}, unseen ${unseen}`);
      assert.ok(replayed.every((s) => !firstLoad.includes(s)));
      // Over SSE an ack is a POST /ack; for these publishes (timeoutMs 0) nobody waits for it, so the
      // Worker answers 404 unknown_envelope, which the client ignores and Chromium logs.
      assert.deepEqual(p.errors.filter((e) => !/^Failed to load resource: .* 404 .*\/ack\)$/.test(e)), []);
    }
    await ws.screenshot({ path: path.join(RESULTS, "browser-reload-resume.png"), fullPage: true });
  } finally {
    await context.close();
  }
});

/** A raw socket of `userId` joined to `channel` with presence, watching what the room sends. */
async function watcher(userId, channel) {
  const w = { wsUrl: demo.workerUrl.replace(/^http/, "ws") };
  const c = await Client.connect(w, mint({ userId, exp: now() + 600, channels: ["room:*"], presence: { name: userId } }, { secret: SECRET }));
  const ok = await c.request({ type: "join", channel, presence: true, id: "w" });
  assert.equal(ok.type, "ok", JSON.stringify(ok));
  return { c, snapshot: ok.presence };
}
/** The presence frames among `frames`, as "+user"/"-user" strings. */
const presenceOf = (frames) => frames.filter((f) => f?.type === "presence").flatMap((f) => [...(f.left ?? []).map((u) => `-${u}`), ...(f.joined ?? []).map((m) => `+${m.userId}`)]);

test("who is in the room: tabs show the room's members, joins and leaves, with no flapping on a reload", { timeout: 90000 }, async (t) => {
  const room = `r${crypto.randomBytes(3).toString("hex")}`;
  const channel = `room:${room}`;
  const missing = await presenceMissing({ wsUrl: demo.workerUrl.replace(/^http/, "ws") }, mint({ userId: "probe", exp: now() + 60, channels: ["room:*"] }, { secret: SECRET }), `room:probe-${room}`);
  if (missing) return t.skip(missing);
  const context = await browser.newContext({ viewport: { width: 1100, height: 700 } });
  const open = async (user) => {
    const page = await context.newPage();
    page.errors = [];
    page.on("pageerror", (e) => page.errors.push(e.message));
    await page.goto(`${demo.url}/?user=${user}&room=${room}`);
    await page.waitForSelector('#state[data-state="open"]', { timeout: 10000 });
    return page;
  };
  const members = (page) => page.evaluate(() => window.demo.presence);
  const waitMembers = (page, list) => until(page, (l) => JSON.stringify(window.demo.presence) === JSON.stringify(l), list);
  const { c: observer } = await watcher("zz-observer", channel);
  try {
    const alice = await open("alice");
    await waitMembers(alice, ["alice", "zz-observer"]);
    const bob = await open("bob");
    await waitMembers(bob, ["alice", "bob", "zz-observer"]);
    await waitMembers(alice, ["alice", "bob", "zz-observer"]);
    assert.match(await alice.textContent("#members"), /bob/);
    assert.equal(await alice.textContent("#count"), "3");
    // The snapshot brought alice and the observer (sorted), then a frame brought bob.
    assert.deepEqual(await alice.evaluate(() => window.demo.presenceEvents), ["+alice", "+zz-observer", "+bob"]);
    await alice.screenshot({ path: path.join(RESULTS, "browser-presence.png"), fullPage: true });

    // bob reloads: back within the linger, so the room sees nothing (no leave, no join).
    const mark = observer.mark();
    const aliceMark = (await alice.evaluate(() => window.demo.presenceEvents)).length;
    await bob.reload();
    await bob.waitForSelector('#state[data-state="open"]', { timeout: 10000 });
    await waitMembers(bob, ["alice", "bob", "zz-observer"]);
    // Past the linger and the next presence flush, a sentinel (carol joins) settles the room's frames.
    await new Promise((r) => setTimeout(r, LINGER_SECONDS * 1000 + 1500));
    const carol = await open("carol");
    await waitMembers(alice, ["alice", "bob", "carol", "zz-observer"]);
    assert.deepEqual(presenceOf(await observer.since(mark)), ["+carol"], "bob's reload emitted nothing");
    assert.deepEqual((await alice.evaluate(() => window.demo.presenceEvents)).slice(aliceMark), ["+carol"]);

    // bob closes his tab: after the linger he leaves, once.
    const mark2 = observer.mark();
    await bob.close();
    await waitMembers(alice, ["alice", "carol", "zz-observer"]);
    assert.deepEqual(await members(carol), ["alice", "carol", "zz-observer"]);
    assert.deepEqual(presenceOf(await observer.since(mark2)), ["-bob"]);
    for (const p of [alice, carol]) assert.deepEqual(p.errors, []);
  } finally {
    await observer.close();
    await context.close();
  }
});
