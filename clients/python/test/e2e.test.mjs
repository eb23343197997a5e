// switchboard-server (Python) against the real built Worker in workerd: this Node test starts the Worker
// (tests/harness.mjs) and real WebSocket clients, and drives the Python SDK, installed with
// `pip install ./clients/python` into .tools/venv by scripts/setup.sh, through test/driver.py, with
// both the sync (httpx.Client) and async (httpx.AsyncClient) clients.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import readline from "node:readline";
import { startWorker, Client, clientToken, ROOT, SECRET } from "../../../tests/harness.mjs";

const PYTHON = path.join(ROOT, ".tools/venv/bin/python");
const WEBHOOK_SECRET = `whsec_${crypto.randomBytes(24).toString("base64")}`;

/** The Python driver: one JSON command per line, one answer per line; `paused` events are handed to `onPause`. */
class Driver {
  #next = 1;
  #waiting = new Map();
  onPause = null;
  start() {
    assert.ok(fs.existsSync(PYTHON), `${PYTHON} is missing: run bash scripts/setup.sh`);
    this.proc = spawn(PYTHON, [path.join(ROOT, "clients/python/test/driver.py")], { stdio: ["pipe", "pipe", "inherit"], cwd: "/" });
    this.ready = new Promise((resolve) => (this.#waiting.set("ready", resolve)));
    readline.createInterface({ input: this.proc.stdout }).on("line", async (line) => {
      const msg = JSON.parse(line);
      if (msg.event === "ready") return this.#waiting.get("ready")(msg);
      if (msg.event === "paused") {
        await this.onPause?.();
        return this.proc.stdin.write("\n");
      }
      this.#waiting.get(msg.id)?.(msg);
      this.#waiting.delete(msg.id);
    });
    return this.ready;
  }
  call(op, args = {}, extra = {}) {
    const id = this.#next++;
    const cmd = { id, op, args, url: w.url, secret: SECRET, mode: "sync", ...extra };
    return new Promise((resolve) => {
      this.#waiting.set(id, resolve);
      this.proc.stdin.write(JSON.stringify(cmd) + "\n");
    });
  }
  stop() {
    this.proc.stdin.end();
    return new Promise((r) => this.proc.once("exit", r));
  }
}

/** Keeps every raw webhook request the Worker's outbox delivers. */
class Recorder {
  raw = [];
  async start() {
    this.server = http.createServer((req, res) => {
      let body = "";
      req.on("data", (d) => (body += d));
      req.on("end", () => (this.raw.push({ headers: req.headers, body }), res.writeHead(204).end()));
    });
    await new Promise((r) => this.server.listen(0, "127.0.0.1", r));
    return this;
  }
}

let w;
let py;
let rec;
before(async () => {
  rec = await new Recorder().start();
  w = await startWorker({ WEBHOOK_URL: `http://127.0.0.1:${rec.server.address().port}/`, WEBHOOK_SECRET });
  py = new Driver();
  const ready = await py.start();
  assert.match(ready.version, /^3\.(1[0-9])/);
});
after(async () => {
  await py?.stop();
  await w?.stop();
  rec?.server.close();
});

let n = 0;
const uid = (p = "py") => `${p}-${++n}-${Math.random().toString(36).slice(2, 8)}`;
const envelopes = (frames) => frames.filter((f) => f && f.envelopeId);

for (const mode of ["sync", "async"]) {
  test(`${mode}: publish to a user, many users and a channel returns the acks`, async () => {
    const [a, b] = [uid(), uid()];
    const ca = await Client.connect(w, clientToken(a, { channels: ["room:*"] }), { autoAck: (e) => ({ a: e.payload }) });
    const cb = await Client.connect(w, clientToken(b, { channels: ["room:*"] }), { autoAck: () => "b" });
    await ca.subscribe([{ type: "t" }]);
    await cb.subscribe([{ type: "t" }]);
    const one = await py.call("publish", { user_id: a, type: "t", payload: { x: 1 } }, { mode });
    assert.deepEqual(one.ok.results, [{ a: { x: 1 } }], JSON.stringify(one));
    assert.deepEqual(one.ok.acks, [{ connectionId: ca.id, result: { a: { x: 1 } } }]);
    assert.equal(one.keys.length, 1);
    const many = await py.call("publish", { user_ids: [a, b], type: "t", payload: 2 }, { mode });
    assert.deepEqual(many.ok.totals, { users: 2, succeeded: 2, failed: 0, clientCount: 2, acked: 2, pending: 0, closed: 0 });
    const channel = `room:${uid()}`;
    for (const c of [ca, cb]) assert.equal((await c.request({ type: "join", channel, id: 1 })).type, "ok");
    const ch = await py.call("publish", { channel, type: "t", payload: 3 }, { mode });
    assert.deepEqual([ch.ok.channel, ch.ok.totals.acked, ch.ok.results.length], [channel, 2, 2]);
    const only = await py.call("publish", { user_id: a, connection_id: "nope" }, { mode });
    assert.deepEqual([only.error.code, only.error.status, only.error.attempts], ["connection_not_found", 404, 1]);
    await Promise.all([ca.close(), cb.close()]);
  });

  test(`${mode}: a lost answer is retried with the same key across a forced hub eviction, delivered once`, async () => {
    const u = uid();
    const c = await Client.connect(w, clientToken(u), { autoAck: () => "seen" });
    await c.subscribe([{ type: "order" }]);
    const mark = c.mark();
    py.onPause = () => w.evict(u); // between the first attempt's delivery and its lost answer
    const r = await py.call("publish", { user_id: u, type: "order", payload: { id: 1 } }, { mode, faults: ["lose"] });
    py.onPause = null;
    assert.equal(r.keys.length, 2, JSON.stringify(r));
    assert.equal(r.keys[0], r.keys[1], "the retry reused the automatic key");
    assert.equal(r.ok.duplicate, true);
    assert.deepEqual(r.ok.results, ["seen"]);
    assert.equal(envelopes(await c.since(mark)).length, 1, "delivered once");
    await c.close();
  });

  test(`${mode}: 503 and 429 are retried with the same key; 4xx raise SwitchboardError at once`, async () => {
    const u = uid();
    const c = await Client.connect(w, clientToken(u), { autoAck: () => 1 });
    await c.subscribe([{ type: "t" }]);
    const mark = c.mark();
    const faults = [
      { status: 503, body: { error: "unavailable", message: "down" } },
      { status: 429, body: { error: "too_many_requests", message: "slow" }, headers: { "retry-after": "0" } },
    ];
    const r = await py.call("publish", { user_id: u, type: "t" }, { mode, faults });
    assert.deepEqual([r.keys.length, new Set(r.keys).size, r.ok.results], [3, 1, [1]]);
    assert.equal(envelopes(await c.since(mark)).length, 1);
    const bad = await py.call("publish", { user_id: u, type: "" }, { mode });
    assert.deepEqual([bad.error.code, bad.error.status, bad.error.attempts, bad.error.retryable], ["invalid_type", 400, 1, false]);
    const gone = await py.call("publish", { user_id: u }, { mode, url: "http://127.0.0.1:9", retry: { attempts: 2, min_delay: 0.001 } });
    assert.deepEqual([gone.error.code, gone.error.status, gone.error.attempts], ["network_error", 0, 2]);
    const forbidden = await py.call("connections", { user_id: u }, { mode, token: clientToken(u) });
    assert.deepEqual([forbidden.error.code, forbidden.error.status], ["forbidden", 403]);
    await c.close();
  });

  test(`${mode}: an attempt past request_timeout is retried with the same key and polled to the final answer`, async () => {
    const u = uid();
    const c = await Client.connect(w, clientToken(u)); // never acks: the first attempt waits the full 1.5 s
    await c.subscribe([{ type: "t" }]);
    const mark = c.mark();
    const r = await py.call("publish", { user_id: u, type: "t", timeout_ms: 1500 }, { mode, request_timeout: 0.3 });
    assert.ok(r.keys.length >= 2 && new Set(r.keys).size === 1, JSON.stringify(r));
    assert.deepEqual([r.ok.duplicate, r.ok.inProgress, r.ok.pending], [true, undefined, [c.id]]);
    assert.equal(envelopes(await c.since(mark)).length, 1, "delivered once");
    await c.close();
  });

  test(`${mode}: connections, close one and all, and members page by page`, async () => {
    const u = uid();
    const a = await Client.connect(w, clientToken(u));
    const b = await Client.connect(w, clientToken(u));
    const list = await py.call("connections", { user_id: u }, { mode });
    assert.deepEqual(list.ok.map((x) => x.connectionId).sort(), [a.id, b.id].sort());
    const whole = await py.call("connection_list", { user_id: u }, { mode });
    assert.deepEqual([whole.ok.connections.map((x) => x.connectionId).sort(), whole.ok.webhooks], [[a.id, b.id].sort(), { backlog: 0, dropped: 0 }]);
    assert.deepEqual((await py.call("close_connection", { user_id: u, connection_id: a.id }, { mode })).ok, [a.id]);
    await a.closeFrame();
    assert.deepEqual((await py.call("close_connections", { user_id: u }, { mode })).ok, [b.id]);
    await b.closeFrame();

    const channel = `room:${uid()}`;
    const users = Array.from({ length: 5 }, (_, i) => `pm${i}-${uid()}`);
    const joined = [];
    for (const m of users) {
      const c = await Client.connect(w, clientToken(m, { channels: ["room:*"] }));
      assert.equal((await c.request({ type: "join", channel, id: 1 })).type, "ok");
      joined.push(c);
    }
    const pages = (await py.call("members", { channel, limit: 2 }, { mode })).ok;
    assert.deepEqual(pages.map((p) => p.members.length), [2, 2, 1]);
    assert.deepEqual(pages.flatMap((p) => p.members), [...users].sort());
    assert.ok(pages.every((p) => p.count === 5));
    await Promise.all(joined.map((c) => c.close()));
  });
}

test("mint_token (PyJWT): the Worker accepts client tokens with channel grants and publish tokens", async () => {
  const u = uid();
  const token = (await py.call("mint_token", { secret: SECRET, user_id: u, channels: ["room:*"], expires_in: 60 })).ok;
  const c = await Client.connect(w, token);
  assert.equal(c.welcome.userId, u);
  assert.equal((await c.request({ type: "join", channel: "room:x", id: 1 })).type, "ok");
  assert.equal((await c.request({ type: "join", channel: "lobby", id: 2 })).code, "forbidden");
  const pub = (await py.call("mint_token", { secret: SECRET, publish: true })).ok;
  assert.equal((await py.call("connections", { user_id: u }, { token: pub })).ok.length, 1);
  const none = await py.call("mint_token", { secret: SECRET });
  assert.equal(none.error.code, "invalid_argument");
  await c.close();
});

test("verify_webhook (standardwebhooks): real deliveries from the outbox verify; tampered ones are refused", async () => {
  const u = uid();
  const c = await Client.connect(w, clientToken(u));
  assert.equal((await c.request({ type: "message", data: { text: "to python" }, id: "m" })).type, "ok");
  const end = Date.now() + 15000;
  let real;
  while (!(real = rec.raw.find((r) => r.body.includes("to python") && r.body.includes(u)))) {
    if (Date.now() > end) throw new Error("no webhook delivery");
    await new Promise((r) => setTimeout(r, 50));
  }
  const ok = await py.call("verify_webhook", { secret: WEBHOOK_SECRET, body: real.body, headers: real.headers });
  assert.deepEqual([ok.ok.type, ok.ok.subject, ok.ok.data.data], ["switchboard.client.message.v1", u, { text: "to python" }]);
  const refused = async (body, headers, secret = WEBHOOK_SECRET) => {
    const r = await py.call("verify_webhook", { secret, body, headers });
    assert.equal(r.error?.type, "WebhookVerificationError", JSON.stringify(r));
  };
  await refused(real.body.replace("to python", "to mallory"), real.headers);
  await refused(real.body, { ...real.headers, "webhook-signature": "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=" });
  await refused(real.body, { ...real.headers, "webhook-timestamp": String(Number(real.headers["webhook-timestamp"]) - 3600) });
  await refused(real.body, real.headers, `whsec_${crypto.randomBytes(24).toString("base64")}`);
  const { "webhook-id": _drop, ...noId } = real.headers;
  await refused(real.body, noId);
  await c.close();
});
