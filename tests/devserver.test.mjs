// Smoke test of the real `make dev` path: scripts/dev.sh (set-up, .dev.vars, printed tokens) and
// `wrangler dev` on 127.0.0.1. Connects with the printed client token, publishes with the printed
// publish token, checks the ack comes back, and stops the server it started.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import net from "node:net";
import WebSocket from "ws";
import { ROOT } from "./harness.mjs";

const freePort = () =>
  new Promise((resolve) => {
    const s = net.createServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });

test("make dev: wrangler dev serves the Worker with the printed tokens", { timeout: 240000 }, async () => {
  const port = await freePort();
  const child = spawn("bash", ["scripts/dev.sh"], {
    cwd: ROOT,
    env: { ...process.env, PORT: String(port), CI: "true" },
    detached: true, // own process group, so the whole tree is stopped below
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  child.stdout.on("data", (d) => (out += d));
  child.stderr.on("data", (d) => (out += d));
  const stop = () => {
    try {
      process.kill(-child.pid, "SIGTERM");
    } catch {}
  };
  try {
    const deadline = Date.now() + 200000;
    while (!/Ready on/.test(out)) {
      if (Date.now() > deadline || child.exitCode !== null) throw new Error(`wrangler dev did not start:\n${out.slice(-3000)}`);
      await new Promise((r) => setTimeout(r, 250));
    }
    const clientToken = out.match(/Client token[^\n]*\n\s*(\S+)/)[1];
    const publishToken = out.match(/Publish token[^\n]*\n\s*(\S+)/)[1];
    assert.match(out, /curl -s http:\/\/127\.0\.0\.1:\d+\/publish/);

    const ws = new WebSocket(`ws://127.0.0.1:${port}/?token=${clientToken}`);
    const frames = [];
    const waiters = [];
    ws.on("message", (d) => {
      // Non-JSON frames (a `pong`) are kept as text rather than thrown inside the event handler.
      let f;
      try {
        f = JSON.parse(d.toString());
      } catch {
        f = d.toString();
      }
      if (f.envelopeId) ws.send(JSON.stringify({ type: "ack", envelopeId: f.envelopeId, result: "got it" }));
      frames.push(f);
      waiters.splice(0).forEach((w) => w());
    });
    const next = async (pred, timeoutMs = 10000) => {
      const end = Date.now() + timeoutMs;
      for (;;) {
        const i = frames.findIndex(pred);
        if (i >= 0) return frames.splice(i, 1)[0];
        if (Date.now() > end) throw new Error(`nothing matching within ${timeoutMs} ms; frames: ${JSON.stringify(frames).slice(0, 300)}`);
        await new Promise((r) => (waiters.push(r), setTimeout(r, 100)));
      }
    };
    await new Promise((r, j) => (ws.once("open", r), ws.once("error", j)));
    const welcome = await next((f) => f.type === "welcome");
    assert.equal(welcome.userId, "demo-user");
    ws.send(JSON.stringify({ type: "subscribe", filters: [{ type: "message" }], id: 1 }));
    await next((f) => f.type === "ok");

    const res = await fetch(`http://127.0.0.1:${port}/publish`, {
      method: "POST",
      headers: { authorization: `Bearer ${publishToken}`, "content-type": "application/json" },
      body: JSON.stringify({ userId: "demo-user", type: "message", payload: { text: "hello" } }),
    });
    const body = await res.json();
    assert.equal(res.status, 200);
    assert.equal(body.clientCount, 1);
    assert.deepEqual(body.results, ["got it"]);
    const env = await next((f) => f.envelopeId);
    assert.deepEqual(env.payload, { text: "hello" });
    ws.close();
  } finally {
    stop();
    await new Promise((r) => (child.exitCode !== null ? r() : child.once("exit", r)));
  }
});
