// SSE in a real browser: Debian's Chromium (driven by playwright-core, no browser download) opens an
// EventSource, the server drops the stream, and the browser reconnects by itself with Last-Event-ID
// and receives what it missed, exactly once, in order.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";
import { startWorker, publish, clientToken, ROOT } from "./harness.mjs";

const CHROMIUM_ARGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
];

let w;
let browser;
before(async () => {
  w = await startWorker();
  browser = await chromium.launch({ executablePath: process.env.CHROMIUM_PATH || "/usr/bin/chromium", args: CHROMIUM_ARGS });
});
after(async () => {
  await browser?.close();
  await w?.stop();
});

test("Chromium's EventSource reconnects with Last-Event-ID and misses nothing", { timeout: 60000 }, async () => {
  const u = `browser-sse-${Math.random().toString(36).slice(2)}`;
  const page = await browser.newPage();
  await page.goto(`${w.url}/healthz`); // same origin as the stream
  const url = `/sse?token=${clientToken(u)}&filters=${encodeURIComponent(JSON.stringify([{ type: "t" }]))}`;
  await page.evaluate((url) => {
    window.seen = [];
    window.opens = 0;
    const es = new EventSource(url);
    es.onopen = () => window.opens++;
    es.onmessage = (e) => {
      const f = JSON.parse(e.data);
      if (f.envelopeId) window.seen.push({ seq: f.seq, id: e.lastEventId, replayed: !!f.replayed });
    };
    window.es = es;
  }, url);
  await page.waitForFunction(() => window.opens === 1);
  await new Promise((r) => setTimeout(r, 200));
  for (let i = 0; i < 3; i++) await publish(w, { userId: u, type: "t", payload: { i }, timeoutMs: 0 });
  await page.waitForFunction(() => window.seen.length === 3);

  // The server side drops every connection of the user; publish while the browser is away.
  await w.mf.unsafeEvictDurableObject("switchboard", "UserHub", { name: u, webSockets: "close" });
  for (let i = 0; i < 5; i++) await publish(w, { userId: u, type: "t", payload: { i: 3 + i }, timeoutMs: 0 });
  await page.waitForFunction(() => window.seen.length >= 8, null, { timeout: 20000 });
  await new Promise((r) => setTimeout(r, 300));
  const { seen, opens } = await page.evaluate(() => ({ seen: window.seen, opens: window.opens }));
  assert.ok(opens >= 2, "the browser reconnected on its own");
  assert.deepEqual(seen.map((e) => e.seq), [1, 2, 3, 4, 5, 6, 7, 8], "every envelope exactly once, in order");
  assert.deepEqual(seen.map((e) => e.id), ["1", "2", "3", "4", "5", "6", "7", "8"]);
  assert.ok(seen.slice(3).every((e) => e.replayed), "the missed ones were replayed from history");
  fs.mkdirSync(path.join(ROOT, "test-results"), { recursive: true });
  await page.setContent(`<pre>${JSON.stringify(seen, null, 1)}</pre>`);
  await page.screenshot({ path: path.join(ROOT, "test-results", "sse-browser-reconnect.png") });
  await page.close();
});
