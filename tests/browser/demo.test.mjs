// Real-browser tests: Debian's Chromium (driven by playwright-core, no browser download) opens the demo
// page — the JavaScript client in a real page — against the built Worker in workerd. Two tabs of one
// user (one over WebSocket, one over SSE) and a tab of a second user exchange live updates and ack
// them; then the Worker is restarted under them and every tab reconnects with a fresh token and
// resumes without loss. Screenshots go to test-results/.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import crypto from "node:crypto";
import { execFileSync } from "node:child_process";
import { chromium } from "playwright-core";
import { ROOT } from "../harness.mjs";
import { startDemo } from "../../demo/server.mjs";

const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
const RESULTS = path.join(ROOT, "test-results");
let demo;
let browser;

before(async () => {
  if (!fs.existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: install Debian's chromium (scripts/setup.sh does) or set CHROMIUM_PATH`);
  execFileSync(process.execPath, [path.join(ROOT, "clients/js/build.mjs")], { stdio: "ignore" });
  fs.mkdirSync(RESULTS, { recursive: true });
  demo = await startDemo({ port: 0, workerPort: 0, secret: crypto.randomBytes(24).toString("hex") });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
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
  page.on("console", (m) => m.type() === "error" && page.errors.push(m.text()));
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
const waitReceived = (page, n) => page.waitForFunction((n) => window.demo.received.length >= n, n, { timeout: 15000 });

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
