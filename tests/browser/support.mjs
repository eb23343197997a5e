// Shared by the real-browser tests: launching Debian's Chromium through playwright-core, and the
// check that decides whether the Worker under test has channel presence (issue 15, part A).
import fs from "node:fs";
import { chromium } from "playwright-core";
import { Client } from "../harness.mjs";

export const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";

export async function launchChromium() {
  if (!fs.existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: install Debian's chromium (scripts/setup.sh does) or set CHROMIUM_PATH`);
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
}

/**
 * Why presence tests cannot run against this Worker, or undefined when they can: a raw socket joins a
 * channel with `presence: true`, and a Worker with presence answers with a snapshot in the `ok`.
 * `w` has `wsUrl`; `token` may join `channel`.
 */
export async function presenceMissing(w, token, channel) {
  const c = await Client.connect(w, token);
  try {
    const ok = await c.request({ type: "join", channel, presence: true, id: "probe" });
    if (ok.type !== "ok") return `the probe's join was refused: ${JSON.stringify(ok)}`;
    await c.request({ type: "leave", channel, id: "probe-leave" });
    return ok.presence && typeof ok.presence.version === "number"
      ? undefined
      : "the Worker sends no presence snapshot in a join's ok: channel presence (issue 15 part A, branch t15presence) is not in this build";
  } finally {
    await c.close();
  }
}

/** Waits until `fn()` (evaluated in the page) is truthy. */
export const until = (page, fn, arg, timeout = 15000) => page.waitForFunction(fn, arg, { timeout });
