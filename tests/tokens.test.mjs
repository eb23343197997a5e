// Token hardening (security review F9, F11): what PUBLISH_AUTH=any-token opens, the cost of a huge
// `userIds`, optional required `exp` and a maximum TTL for connect tokens, JWT_ISSUER/JWT_AUDIENCE, a
// minimum secret length, and one-time connect tickets (POST /tickets) that keep tokens out of URLs.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { execFile } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { ROOT, startWorker, Client, SseClient, publish, clientToken, publishToken, mint, now } from "./harness.mjs";

let n = 0;
const uid = (p = "tok") => `${p}-${++n}-${Math.random().toString(36).slice(2, 8)}`;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Opens a WebSocket to `path` and resolves with its HTTP refusal status, or the open socket's welcome. */
function tryConnect(w, path) {
  return new Promise((resolve) => {
    const ws = new WebSocket(`${w.wsUrl}${path}`);
    ws.once("unexpected-response", (_req, res) => {
      let body = "";
      res.on("data", (d) => (body += d));
      res.on("end", () => resolve({ status: res.statusCode, body: JSON.parse(body || "null") }));
    });
    ws.once("message", (d) => {
      resolve({ status: 101, welcome: JSON.parse(d.toString()), ws });
    });
    ws.once("error", () => {});
  });
}

async function call(w, path, { method = "GET", token, body } = {}) {
  const headers = {};
  if (token) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  const res = await fetch(`${w.url}${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  return { status: res.status, body: await res.json().catch(() => undefined) };
}

// ---- F9 -------------------------------------------------------------------------------------

test("F9: PUBLISH_AUTH=any-token opens only POST /publish with `userId`", async () => {
  const w = await startWorker({ PUBLISH_AUTH: "any-token" });
  try {
    const [a, b] = [uid(), uid()];
    const victim = await Client.connect(w, clientToken(b));
    const token = clientToken(a); // an end user's token, no publish scope
    assert.equal((await publish(w, { userId: b, type: "t" }, { token })).status, 200, "HopeFlow's any-token publish");
    for (const [path, method, body] of [
      [`/users/${b}/connections`, "DELETE"],
      [`/users/${b}/connections`, "GET"],
      [`/channels/room:1/members`, "GET"],
      ["/publish", "POST", { channel: "room:1", type: "t" }],
      ["/publish", "POST", { userIds: [a, b], type: "t" }],
    ]) {
      const r = await call(w, path, { method, token, body });
      assert.equal(r.status, 403, `${method} ${path} ${JSON.stringify(body)}: ${JSON.stringify(r.body)}`);
      assert.equal(r.body.error, "forbidden");
    }
    // A publish-scope token still may do all of it.
    assert.equal((await call(w, `/users/${b}/connections`, { token: publishToken() })).status, 200);
    assert.equal(victim.ws.readyState, WebSocket.OPEN, "the victim was never kicked");
    await victim.close();
  } finally {
    await w.stop();
  }
});

test("F9: a huge `userIds` is refused by its length before any de-duplication work", { timeout: 60000 }, async () => {
  const w = await startWorker();
  try {
    const ids = Array.from({ length: 80000 }, (_, i) => `u${i.toString(36).padStart(5, "0")}`);
    const started = Date.now();
    const r = await publish(w, { userIds: ids, type: "t" });
    const ms = Date.now() - started;
    assert.equal(r.status, 400);
    assert.equal(r.body.error, "invalid_user_ids");
    assert.match(r.body.message, /MAX_PUBLISH_USERS/);
    assert.ok(ms < 1500, `refused in ${ms} ms`);
  } finally {
    await w.stop();
  }
});

// ---- F11: token options ---------------------------------------------------------------------

test("F11: JWT_REQUIRE_EXP and JWT_MAX_TTL_SECONDS bound connect tokens", async () => {
  const w = await startWorker({ JWT_REQUIRE_EXP: "true", JWT_MAX_TTL_SECONDS: "600" });
  try {
    const u = uid();
    const noExp = await tryConnect(w, `/?token=${mint({ userId: u })}`);
    assert.equal(noExp.status, 401);
    assert.equal(noExp.body.error, "invalid_token");
    assert.match(noExp.body.message, /exp/);
    const tooLong = await tryConnect(w, `/?token=${mint({ userId: u, exp: now() + 3600 })}`);
    assert.equal(tooLong.status, 401);
    assert.match(tooLong.body.message, /JWT_MAX_TTL_SECONDS/);
    const ok = await tryConnect(w, `/?token=${mint({ userId: u, exp: now() + 300 })}`);
    assert.equal(ok.status, 101);
    ok.ws.close();
    // SSE connects follow the same rule.
    const sse = await SseClient.open(w, mint({ userId: u }));
    assert.equal(sse.status, 401);
  } finally {
    await w.stop();
  }
});

test("F11: JWT_ISSUER and JWT_AUDIENCE are checked when set", async () => {
  const w = await startWorker({ JWT_ISSUER: "https://auth.example", JWT_AUDIENCE: "switchboard" });
  try {
    const u = uid();
    const base = { userId: u, exp: now() + 300 };
    for (const [claims, want] of [
      [{ iss: "https://auth.example", aud: "switchboard" }, 101],
      [{ iss: "https://auth.example", aud: ["other", "switchboard"] }, 101],
      [{ iss: "https://auth.example", aud: "other-service" }, 401],
      [{ iss: "https://auth.example" }, 401],
      [{ aud: "switchboard" }, 401],
      [{ iss: "https://evil.example", aud: "switchboard" }, 401],
      [{ iss: "https://auth.example", aud: 5 }, 401],
    ]) {
      const r = await tryConnect(w, `/?token=${mint({ ...base, ...claims })}`);
      assert.equal(r.status, want, JSON.stringify(claims));
      r.ws?.close();
    }
    // Backend tokens too.
    const pub = await publish(w, { userId: u, type: "t" }, { token: publishToken({ aud: "other" }) });
    assert.equal(pub.status, 401);
  } finally {
    await w.stop();
  }
});

test("F11: a JWT_SECRET shorter than 32 bytes is a clear misconfiguration that echoes nothing", async () => {
  const short = "abc-short-secret";
  const w = await startWorker({ JWT_SECRET: short });
  try {
    const r = await call(w, "/healthz");
    assert.equal(r.status, 500);
    assert.equal(r.body.error, "server_misconfigured");
    assert.match(r.body.message, /JWT_SECRET/);
    assert.match(r.body.message, /32/);
    assert.ok(!r.body.message.includes(short), "the secret is never echoed");
  } finally {
    await w.stop();
  }
});

test("F11: make dev checks .dev.vars' secret before starting (scripts/check-secret.mjs)", async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "sb-secret-"));
  const run = async (content) => {
    fs.writeFileSync(path.join(dir, ".dev.vars"), content);
    try {
      await promisify(execFile)(process.execPath, [path.join(ROOT, "scripts/check-secret.mjs"), path.join(dir, ".dev.vars")]);
      return { code: 0, stderr: "" };
    } catch (e) {
      return { code: e.code, stderr: e.stderr };
    }
  };
  try {
    const short = await run("JWT_SECRET=abc-short-secret\n");
    assert.equal(short.code, 1);
    assert.match(short.stderr, /JWT_SECRET .* shorter than 32 bytes/);
    assert.ok(!short.stderr.includes("abc-short-secret"), "the secret is not echoed");
    assert.equal((await run("JWT_SECRET=replace-with-a-long-random-string\n")).code, 1, "the public placeholder");
    assert.equal((await run(`JWT_SECRET=${"k".repeat(40)}\nJWT_SECRET_PREVIOUS=old\n`)).code, 1);
    assert.equal((await run(`JWT_SECRET="${"k".repeat(40)}"\n`)).code, 0);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

// ---- F11: one-time connect tickets ----------------------------------------------------------

test("tickets: POST /tickets gives a one-time, short-lived ticket that connects without the token in the URL", async () => {
  const w = await startWorker();
  try {
    const u = uid();
    const token = clientToken(u, { channels: ["room:*"] });
    const issued = await call(w, "/tickets", { method: "POST", token });
    assert.equal(issued.status, 200, JSON.stringify(issued.body));
    assert.equal(typeof issued.body.ticket, "string");
    assert.equal(issued.body.expiresIn, 30);
    assert.ok(!issued.body.ticket.includes(token.split(".")[2]), "not the token");

    const first = await tryConnect(w, `/?ticket=${encodeURIComponent(issued.body.ticket)}`);
    assert.equal(first.status, 101);
    assert.equal(first.welcome.type, "welcome");
    assert.equal(first.welcome.userId, u);
    // The token's grants came with the ticket.
    const joined = new Promise((r) => first.ws.on("message", (d) => r(JSON.parse(d.toString()))));
    first.ws.send(JSON.stringify({ type: "join", channel: "room:1", id: 1 }));
    assert.equal((await joined).type, "ok");

    const again = await tryConnect(w, `/?ticket=${encodeURIComponent(issued.body.ticket)}`);
    assert.equal(again.status, 401, "single use");
    assert.equal(again.body.error, "invalid_ticket");
    first.ws.close();

    // Forged or tampered tickets name no stored ticket.
    const [prefix, user, secret] = issued.body.ticket.split(".");
    for (const t of ["nope", `${prefix}.${user}.${"A".repeat(secret.length)}`, `${prefix}.${Buffer.from("other").toString("base64url")}.${secret}`, ""]) {
      const r = await tryConnect(w, `/?ticket=${encodeURIComponent(t)}`);
      assert.equal(r.status, 401, t);
    }
    // A ticket works for SSE too.
    const t2 = (await call(w, "/tickets", { method: "POST", token })).body.ticket;
    const res = await fetch(`${w.url}/sse?ticket=${encodeURIComponent(t2)}`);
    assert.equal(res.status, 200);
    await res.body.cancel();

    // Refusals: no token, a token without userId, a GET.
    assert.equal((await call(w, "/tickets", { method: "POST" })).status, 401);
    assert.equal((await call(w, "/tickets", { method: "POST", token: publishToken() })).body.error, "invalid_token");
    assert.equal((await call(w, "/tickets", { token })).status, 405);
  } finally {
    await w.stop();
  }
});

test("tickets: a ticket expires after TICKET_SECONDS, and a user holds a bounded number", { timeout: 30000 }, async () => {
  const w = await startWorker({ TICKET_SECONDS: "1" });
  try {
    const u = uid();
    const token = clientToken(u);
    const t = (await call(w, "/tickets", { method: "POST", token })).body;
    assert.equal(t.expiresIn, 1);
    await sleep(1600);
    const late = await tryConnect(w, `/?ticket=${encodeURIComponent(t.ticket)}`);
    assert.equal(late.status, 401);
    assert.equal(late.body.error, "invalid_ticket");
  } finally {
    await w.stop();
  }
  const w2 = await startWorker(); // tickets live 30 s: they pile up
  try {
    const token = clientToken(uid());
    const statuses = [];
    for (let i = 0; i < 101; i++) statuses.push((await call(w2, "/tickets", { method: "POST", token })).status);
    assert.deepEqual(statuses.slice(0, 100), Array(100).fill(200));
    assert.equal(statuses[100], 429, "a user holds at most 100 unused tickets");
    const refused = await call(w2, "/tickets", { method: "POST", token });
    assert.equal(refused.body.error, "too_many_requests");
    // Another user is not affected.
    assert.equal((await call(w2, "/tickets", { method: "POST", token: clientToken(uid()) })).status, 200);
  } finally {
    await w2.stop();
  }
});
