// The `switchboard` CLI (bin/switchboard.mjs) against the real built Worker in workerd: tokens from
// .dev.vars (Node's env-file parser) or the environment, publish to a user / users / a channel,
// the connection and members APIs, and `listen` verifying real webhook deliveries and refusing a tampered one.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { startWorker, Client, clientToken, SECRET } from "../../../tests/harness.mjs";

const BIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../bin/switchboard.mjs");
let w;
before(async () => (w = await startWorker()));
after(() => w?.stop());

let n = 0;
const uid = (p = "cli") => `${p}-${++n}-${Math.random().toString(36).slice(2, 8)}`;
const empty = fs.mkdtempSync(path.join(os.tmpdir(), "sb-cli-")); // a cwd without .dev.vars
const run = (args, { env = {}, cwd = empty } = {}) =>
  promisify(execFile)(process.execPath, [BIN, ...args], {
    cwd,
    env: { PATH: process.env.PATH, JWT_SECRET: SECRET, SWITCHBOARD_URL: w.url, ...env },
  }).catch((e) => e); // exit code, stdout and stderr are checked either way
const freePort = () =>
  new Promise((resolve) => {
    const s = net.createServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });

test("token mints channel grants; publish --channel prints the totals and every result", async () => {
  const token = (await run(["token", "--user", uid(), "--channels", "lobby,room:*"])).stdout.trim();
  const c = await Client.connect(w, token, { autoAck: () => "seen" });
  const channel = `room:${uid()}`;
  assert.equal((await c.request({ type: "join", channel, id: 1 })).type, "ok");
  assert.equal((await c.request({ type: "join", channel: "elsewhere", id: 2 })).code, "forbidden");
  const out = (await run(["publish", "--channel", channel, "--type", "chat", "--payload", '{"text":"hi"}'])).stdout;
  assert.match(out, new RegExp(`published to ${channel}: 1 member\\(s\\), 1 connection\\(s\\), 1 acked`));
  assert.match(out, /result {3}"seen"/);
  assert.equal((await c.next((f) => f.envelopeId)).channel, channel);
  await c.close();
});

test("publish --user / --users print each ack; --json prints the answer", async () => {
  const [a, b] = [uid(), uid()];
  const ca = await Client.connect(w, clientToken(a), { autoAck: () => ({ by: "a" }) });
  const cb = await Client.connect(w, clientToken(b), { autoAck: () => ({ by: "b" }) });
  await ca.subscribe([{ type: "message" }]);
  await cb.subscribe([{ type: "message" }]);
  const one = await run(["publish", "--user", a, "--payload", '{"n":1}']);
  assert.match(one.stdout, new RegExp(`published seq 1 \\(envelope [^)]+\\) to ${a}: 1 connection\\(s\\) matched`));
  assert.match(one.stdout, new RegExp(`ack {6}${ca.id} {2}\\{"by":"a"\\}`));
  const many = await run(["publish", "--users", `${a},${b}`]);
  assert.match(many.stdout, /published to 2 user\(s\): 2 connection\(s\), 2 acked, 0 pending, 0 closed, 0 failed/);
  const json = JSON.parse((await run(["publish", "--user", a, "--idempotency-key", `k-${a}`, "--json"])).stdout);
  assert.deepEqual(json.results, [{ by: "a" }]);
  const dup = await run(["publish", "--user", a, "--idempotency-key", `k-${a}`]);
  assert.match(dup.stdout, /duplicate: this Idempotency-Key was already published/);
  const bad = await run(["publish", "--user", a, "--type", ""]);
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /400 invalid_type/);
  await Promise.all([ca.close(), cb.close()]);
});

test("connections lists and closes; members prints every page", async () => {
  const u = uid();
  const channel = `room:${uid()}`;
  const c = await Client.connect(w, clientToken(u, { channels: ["room:*"] }));
  const others = [];
  for (let i = 0; i < 3; i++) {
    const o = await Client.connect(w, clientToken(`${channel}-m${i}`, { channels: ["room:*"] }));
    assert.equal((await o.request({ type: "join", channel, id: 1 })).type, "ok");
    others.push(o);
  }
  assert.match((await run(["connections", u])).stdout, new RegExp(`1 open connection\\(s\\) of ${u}\\n {2}${c.id} {2}websocket`));
  const members = JSON.parse((await run(["members", channel, "--limit", "2", "--json"])).stdout);
  assert.deepEqual(members, { channel, count: 3, members: others.map((_, i) => `${channel}-m${i}`) });
  assert.match((await run(["connections", u, "--close"])).stdout, new RegExp(`closed 1 connection\\(s\\) of ${u} \\(code 4002\\)`));
  await c.closeFrame();
  const missing = await run(["connections", u, "--close", "--connection", "nope"]);
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /404 connection_not_found/);
  await Promise.all(others.map((o) => o.close()));
});

test("secrets come from .dev.vars (Node's env-file parser), the environment wins; usage errors exit 2", async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "sb-cli-vars-"));
  fs.writeFileSync(path.join(dir, ".dev.vars"), `# comment\nJWT_SECRET="${SECRET}"\nOTHER=1\n`);
  const u = uid();
  const fromFile = await run(["token", "--user", u], { cwd: dir, env: { JWT_SECRET: "" } });
  assert.equal((await Client.connect(w, fromFile.stdout.trim())).welcome.userId, u);
  const wrong = await run(["token", "--user", u], { cwd: dir, env: { JWT_SECRET: "from-env" } });
  await assert.rejects(Client.connect(w, wrong.stdout.trim()), (e) => e.status === 401);
  const missing = await run(["token", "--user", u], { env: { JWT_SECRET: "" } });
  assert.equal(missing.code, 2);
  assert.match(missing.stderr, /no JWT_SECRET/);
  for (const args of [["nope"], ["publish"], ["publish", "--user", "a", "--channel", "b"], ["publish", "--user", "a", "--payload", "{"], ["token", "--bogus"]]) {
    assert.equal((await run(args)).code, 2, args.join(" "));
  }
  assert.match((await run(["--help"])).stdout, /usage: switchboard <command>/);
});

test("listen verifies and prints real webhook deliveries and refuses a tampered request", { timeout: 60000 }, async () => {
  const secret = `whsec_${crypto.randomBytes(24).toString("base64")}`;
  const port = await freePort();
  const child = spawn(process.execPath, [BIN, "listen", "--port", String(port), "--json"], {
    cwd: empty,
    env: { PATH: process.env.PATH, WEBHOOK_SECRET: secret },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  let err = "";
  child.stdout.on("data", (d) => (out += d));
  child.stderr.on("data", (d) => (err += d));
  const until = async (pred, what) => {
    const end = Date.now() + 15000;
    while (!pred()) {
      if (Date.now() > end || child.exitCode !== null) throw new Error(`${what}; stdout ${out} stderr ${err}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  const hooked = await startWorker({ WEBHOOK_URL: `http://127.0.0.1:${port}/`, WEBHOOK_SECRET: secret, WEBHOOK_RETRY_BASE_MS: "200" });
  try {
    await until(() => err.includes(`listening on http://127.0.0.1:${port}/`), "listen did not start");
    const u = uid();
    const c = await Client.connect(hooked, clientToken(u));
    assert.equal((await c.request({ type: "message", data: { hi: 1 }, id: 9 })).type, "ok");
    await until(() => out.split("\n").filter((l) => l.includes(u)).length >= 2, "no events printed");
    const events = out.split("\n").filter((l) => l.includes(u)).map((l) => JSON.parse(l));
    assert.deepEqual(events.map((e) => e.type), ["switchboard.connection.opened.v1", "switchboard.client.message.v1"]);
    assert.deepEqual(events[1].data, { connectionId: c.id, data: { hi: 1 }, messageId: 9 });
    const ts = String(Math.floor(Date.now() / 1000));
    const res = await fetch(`http://127.0.0.1:${port}/`, {
      method: "POST",
      headers: { "webhook-id": "evt_forged", "webhook-timestamp": ts, "webhook-signature": "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=" },
      body: JSON.stringify({ ...events[1], subject: "someone-else" }),
    });
    assert.equal(res.status, 400);
    await until(() => /refused POST \/: webhook refused/.test(err), "the forgery was not reported");
    assert.ok(!out.includes("someone-else"), "a forged event is never printed");
    c.ws.terminate();
  } finally {
    child.kill("SIGTERM");
    await hooked.stop();
  }
});
