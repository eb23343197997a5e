// Real-browser tests of the React hooks (`@switchboard/client/react`): Debian's Chromium runs a small
// React 19 app (tests/browser/react-app.jsx, bundled here with esbuild, development build in
// StrictMode) against the built Worker in workerd. useSwitchboard connects, useChannel delivers and
// acks exactly once and leaves on unmount, usePresence shows who is in the channel; the client
// reconnects at once when the browser comes back online or the page becomes visible.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import path from "node:path";
import crypto from "node:crypto";
import { execFileSync } from "node:child_process";
import * as esbuild from "esbuild";
import { ROOT, startWorker, clientToken, publish, publishToken, Client } from "../harness.mjs";
import { launchChromium, presenceMissing, until } from "./support.mjs";

const LINGER_SECONDS = 1;
let w;
let server;
let pageUrl;
let browser;

before(async () => {
  execFileSync(process.execPath, [path.join(ROOT, "clients/js/build.mjs")], { stdio: "ignore" });
  // Resolved the way an app resolves it: @switchboard/client (an npm workspace) and its exports map.
  const bundle = await esbuild.build({
    entryPoints: [path.join(ROOT, "tests/browser/react-app.jsx")],
    bundle: true,
    format: "esm",
    jsx: "automatic",
    write: false,
    define: { "process.env.NODE_ENV": '"development"' },
    logLevel: "silent",
  });
  const js = bundle.outputFiles[0].text;
  w = await startWorker({ CHANNEL_LINGER_SECONDS: String(LINGER_SECONDS) });
  server = http.createServer((req, res) => {
    const u = new URL(req.url, "http://x");
    if (u.pathname === "/app.js") return res.writeHead(200, { "content-type": "text/javascript" }).end(js);
    if (u.pathname === "/token") {
      const user = u.searchParams.get("user");
      return res.writeHead(200, { "content-type": "text/plain" }).end(clientToken(user, { channels: ["room:*"], presence: { name: user.toUpperCase() } }));
    }
    if (u.pathname === "/") return res.writeHead(200, { "content-type": "text/html" }).end('<!doctype html><link rel="icon" href="data:,"><div id="root"></div><script type="module" src="/app.js"></script>');
    res.writeHead(404).end();
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  pageUrl = `http://127.0.0.1:${server.address().port}`;
  browser = await launchChromium();
});
after(async () => {
  await browser?.close();
  server?.closeAllConnections?.();
  await new Promise((r) => (server ? server.close(r) : r()));
  await w?.stop();
});

async function openApp(context, user, channel) {
  const page = await context.newPage();
  page.errors = [];
  page.on("pageerror", (e) => page.errors.push(e.message));
  page.on("console", (m) => m.type() === "error" && page.errors.push(m.text()));
  // Every frame the page's sockets send (Chromium's own WebSocket, seen through the DevTools protocol).
  page.sent = [];
  page.on("websocket", (ws) => ws.on("framesent", (f) => typeof f.payload === "string" && f.payload !== "ping" && page.sent.push(JSON.parse(f.payload))));
  await page.goto(`${pageUrl}/?user=${encodeURIComponent(user)}&worker=${encodeURIComponent(w.url)}&channel=${encodeURIComponent(channel)}`);
  await until(page, () => window.app?.state === "open" && window.app.joined === true);
  return page;
}

const members = async (channel) => {
  const res = await fetch(`${w.url}/channels/${encodeURIComponent(channel)}/members`, { headers: { authorization: `Bearer ${publishToken()}` } });
  return (await res.json()).members;
};
async function waitMembers(channel, expected, timeoutMs = 5000) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const m = (await members(channel)).sort();
    if (JSON.stringify(m) === JSON.stringify(expected)) return;
    if (Date.now() > end) throw new Error(`members of ${channel}: ${JSON.stringify(m)}, expected ${JSON.stringify(expected)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

test("useSwitchboard + useChannel in StrictMode: one join, each envelope handled and acked once, unmount leaves, mount joins again", { timeout: 60000 }, async () => {
  const channel = `room:${crypto.randomBytes(3).toString("hex")}`;
  const user = `ann-${crypto.randomBytes(2).toString("hex")}`;
  const context = await browser.newContext();
  try {
    const page = await openApp(context, user, channel);
    const first = await publish(w, { channel, type: "msg", payload: { text: "one" }, timeoutMs: 3000 });
    assert.equal(first.status, 200, JSON.stringify(first.body));
    assert.deepEqual([first.body.totals.users, first.body.totals.clientCount, first.body.totals.acked], [1, 1, 1]);
    assert.deepEqual(first.body.results, [{ by: user, handled: 1 }], "the hook's handler ran once: StrictMode's second mount left no extra handler");
    await until(page, () => document.querySelectorAll("#messages li").length === 1);
    assert.equal(await page.textContent("#messages"), "one");
    // StrictMode mounted the room twice and its two hooks hold the channel: one join went out, no leave,
    // and it asked for presence (usePresence), so the room's members came in its ok.
    const joins = () => page.sent.filter((f) => f.type === "join" || f.type === "leave").map((f) => `${f.type} ${f.channel}${f.presence ? " presence" : ""}`);
    assert.deepEqual(joins(), [`join ${channel} presence`]);

    // Unmount the room: the client leaves the channel (nothing else holds it).
    await page.click("#toggle");
    await waitMembers(channel, []);
    const away = await publish(w, { channel, type: "msg", payload: { text: "while out" }, timeoutMs: 1000 });
    assert.equal(away.body.totals.users, 0);
    // Mount it again: joined again, live again, the handler still runs once per envelope.
    await page.click("#toggle");
    await until(page, () => window.app.joined === true);
    const again = await publish(w, { channel, type: "msg", payload: { text: "two" }, timeoutMs: 3000 });
    assert.deepEqual(again.body.results, [{ by: user, handled: 2 }]);
    await until(page, () => document.querySelectorAll("#messages li").length === 1);
    assert.deepEqual(await page.evaluate(() => window.app.messages), ["one", "two"]);
    // Mounted while connected, StrictMode again: still one join (both hooks' holds, taken in one task), one leave.
    assert.deepEqual(joins(), [`join ${channel} presence`, `leave ${channel}`, `join ${channel} presence`]);
    assert.deepEqual(page.errors, []);
  } finally {
    await context.close();
  }
});

test("usePresence: who is in the channel, with the token's presence data; unmount and a closed tab leave", { timeout: 60000 }, async (t) => {
  const channel = `room:${crypto.randomBytes(3).toString("hex")}`;
  const missing = await presenceMissing(w, clientToken("probe", { channels: ["room:*"] }), `room:probe-${crypto.randomBytes(3).toString("hex")}`);
  if (missing) return t.skip(missing);
  const observer = await Client.connect(w, clientToken("zz-observer", { channels: ["room:*"] }));
  assert.equal((await observer.request({ type: "join", channel, presence: true, id: "o" })).type, "ok");
  // The observer's own join comes back in a presence frame, batched after the `ok`: let it arrive
  // before the mark, so the room's frames below are only alice's and bob's.
  await observer.next((f) => f?.type === "presence" && (f.joined ?? []).some((m) => m.userId === "zz-observer"), 10000);
  const presenceOf = (frames) => frames.filter((f) => f?.type === "presence").flatMap((f) => [...(f.left ?? []).map((u) => `-${u}`), ...(f.joined ?? []).map((m) => `+${m.userId}`)]);
  const context = await browser.newContext();
  try {
    let mark = observer.mark();
    const alice = await openApp(context, "alice", channel);
    await until(alice, () => window.app.synced && JSON.stringify(window.app.members) === '["alice","zz-observer"]');
    const bob = await openApp(context, "bob", channel);
    await until(bob, () => JSON.stringify(window.app.members) === '["alice","bob","zz-observer"]');
    await until(alice, () => JSON.stringify(window.app.members) === '["alice","bob","zz-observer"]');
    assert.deepEqual(await alice.evaluate(() => [window.app.names, window.app.count]), [["ALICE", "BOB", undefined], 3]);
    assert.match(await alice.textContent("#members"), /BOB/);
    // StrictMode mounted each room twice: the room saw each user join once, nobody leave.
    assert.deepEqual(presenceOf(await observer.since(mark)), ["+alice", "+bob"]);

    // bob's room unmounts (a leave frame): he is gone at once, not after the linger.
    mark = observer.mark();
    await bob.click("#toggle");
    await until(alice, () => JSON.stringify(window.app.members) === '["alice","zz-observer"]');
    assert.equal(await alice.evaluate(() => window.app.count), 2);
    // bob's tab closes with the room mounted again: he leaves after the linger.
    await bob.click("#toggle");
    await until(alice, () => JSON.stringify(window.app.members) === '["alice","bob","zz-observer"]');
    await bob.close();
    await until(alice, () => JSON.stringify(window.app.members) === '["alice","zz-observer"]');
    assert.deepEqual(presenceOf(await observer.since(mark)), ["-bob", "+bob", "-bob"]);
    assert.deepEqual(alice.errors, []);
  } finally {
    await observer.close();
    await context.close();
  }
});

test("the browser coming back online, or the page becoming visible, reconnects at once instead of after the 30 s backoff", { timeout: 60000 }, async () => {
  const channel = `room:${crypto.randomBytes(3).toString("hex")}`;
  const user = `wake-${crypto.randomBytes(2).toString("hex")}`;
  const context = await browser.newContext();
  const kick = () => fetch(`${w.url}/users/${user}/connections`, { method: "DELETE", headers: { authorization: `Bearer ${publishToken()}` } }).then((r) => r.json());
  try {
    const page = await openApp(context, user, channel);
    for (const wake of ["online", "visible"]) {
      const before = await page.evaluate(() => window.app.client.connectionId);
      assert.equal((await kick()).closed.length, 1);
      await until(page, () => window.app.state === "reconnecting");
      await new Promise((r) => setTimeout(r, 300));
      assert.equal(await page.evaluate(() => window.app.state), "reconnecting", "waiting out the backoff");
      const started = Date.now();
      if (wake === "online") {
        // Chromium's own offline/online: the page gets real `offline` and `online` events.
        await context.setOffline(true);
        await context.setOffline(false);
      } else await page.evaluate(() => document.dispatchEvent(new Event("visibilitychange"))); // headless pages are visible
      await until(page, () => window.app.state === "open" && window.app.joined, undefined, 10000);
      const took = Date.now() - started;
      assert.ok(took < 10000, `reconnected after ${took} ms`);
      assert.notEqual(await page.evaluate(() => window.app.client.connectionId), before);
      // The channel was re-joined on the new connection.
      await waitMembers(channel, [user]);
      const r = await publish(w, { channel, type: "msg", payload: { text: wake }, timeoutMs: 3000 });
      assert.deepEqual(r.body.results.map((x) => x.by), [user]);
    }
    assert.deepEqual(page.errors.filter((e) => !/4002/.test(e)), []);
  } finally {
    await context.close();
  }
});
