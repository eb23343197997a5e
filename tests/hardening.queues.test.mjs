// Hardening of the queues and the alarm (security review F7, F8, F10, F13): the alarm always re-arms,
// ignores the outbox when webhooks are off and ages history out by itself; the webhook outbox is
// bounded per user, drops permanent refusals, drains in batches, survives a long outage; idempotency
// has its own window, answers first, resolves stale rows and trims a large stored answer; a kick ends
// channel membership at once. Every test runs the built Worker in workerd with a real receiver.
import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { startWorker, Client, publish, clientToken, publishToken, mint, now } from "./harness.mjs";
import { Receiver, WEBHOOK_SECRET, kind } from "./receiver.mjs";

let n = 0;
const uid = (p = "hq") => `${p}-${++n}-${Math.random().toString(36).slice(2, 8)}`;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const hookVars = (receiver, extra = {}) => ({
  WEBHOOK_URL: receiver.url,
  WEBHOOK_SECRET,
  WEBHOOK_RETRY_BASE_MS: "200",
  WEBHOOK_RETRY_MAX_MS: "1000",
  WEBHOOK_TIMEOUT_MS: "2000",
  ...extra,
});

async function connections(w, user) {
  const res = await fetch(`${w.url}/users/${encodeURIComponent(user)}/connections`, {
    headers: { authorization: `Bearer ${publishToken()}` },
  });
  return { status: res.status, body: await res.json() };
}

async function until(pred, ms, what) {
  const end = Date.now() + ms;
  while (!(await pred())) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(50);
  }
}

// ---- F7: the alarm ---------------------------------------------------------------------------

test("F7a: with webhooks switched off, queued events no longer make the alarm loop", { timeout: 30000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "sb-f7-"));
  const receiver = await new Receiver().start();
  receiver.answer = () => 503;
  const u = uid();
  try {
    const w1 = await startWorker(hookVars(receiver), { persist: dir });
    const c = await Client.connect(w1, clientToken(u));
    assert.equal((await c.request({ type: "message", data: 1, id: 1 })).type, "ok");
    await c.close();
    await until(() => receiver.requests.length > 0, 5000, "a failed attempt");
    await w1.stop();

    // The operator removes WEBHOOK_URL/WEBHOOK_SECRET while the queue still holds events.
    const w2 = await startWorker({}, { persist: dir });
    try {
      const d = await Client.connect(w2, clientToken(u)); // wakes the hub; its token expires in 1 h
      await sleep(3000);
      const alarms = w2.events().filter((e) => e.event === "alarm").length;
      assert.ok(alarms <= 1, `the alarm ran ${alarms} times in 3 s with nothing due`);
      await d.close();
    } finally {
      await w2.stop();
    }
  } finally {
    await receiver.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("F7b: an alarm that fails is re-armed: the token-expiry close still happens", { timeout: 30000 }, async () => {
  // TEST_FAULTS=alarm makes each hub's first alarm run fail (a storage error stand-in).
  const w = await startWorker({ TEST_FAULTS: "alarm" });
  try {
    const c = await Client.connect(w, mint({ userId: uid(), exp: now() + 2 }));
    const started = Date.now();
    await c.closeFrame(8000);
    assert.ok(Date.now() - started < 7000);
    assert.deepEqual(await c.closed, { code: 4001, reason: "token expired" });
    assert.ok(w.events().some((e) => e.event === "alarm_error"), "the injected failure happened");
  } finally {
    await w.stop();
  }
});

test("F7c: history past HISTORY_SECONDS is deleted by the alarm, without another publish", { timeout: 30000 }, async () => {
  const w = await startWorker({ HISTORY_SECONDS: "1" });
  try {
    const u = uid();
    for (let i = 0; i < 3; i++) assert.equal((await publish(w, { userId: u, type: "t", payload: i })).status, 200);
    await until(() => w.events().some((e) => e.event === "history_trimmed"), 8000, "a history_trimmed log");
    const trimmed = w.events().filter((e) => e.event === "history_trimmed");
    assert.equal(trimmed.reduce((s, e) => s + e.deleted, 0), 3);
    assert.equal(trimmed.at(-1).remaining, 0);
  } finally {
    await w.stop();
  }
});

// ---- F10: the webhook outbox ---------------------------------------------------------------

test("F10a: a 4xx other than 408/429 is permanent: dropped once, counted, and the queue moves on", { timeout: 40000 }, async () => {
  const receiver = await new Receiver().start();
  const seen = new Map();
  receiver.answer = (events) => {
    const data = events[0].data?.data;
    const times = (seen.get(events[0].id) ?? 0) + 1;
    seen.set(events[0].id, times);
    if (data?.poison) return 400;
    if (data?.flaky && times === 1) return 429; // retried
    if (data?.slow && times === 1) return 408; // retried
    return 204;
  };
  const w = await startWorker(hookVars(receiver));
  try {
    const u = uid();
    const c = await Client.connect(w, clientToken(u));
    for (const [i, data] of [{ poison: true }, { flaky: true }, { slow: true }, { n: 1 }].entries()) {
      assert.equal((await c.request({ type: "message", data, id: i })).type, "ok");
    }
    await c.close(1000, "bye");
    await receiver.until((r) => r.of(u).length === 5, 15000, "for the events behind the poison");
    assert.deepEqual(receiver.of(u).map((e) => [kind(e), e.data.data ?? null]), [
      ["connection.opened", null],
      ["client.message", { flaky: true }],
      ["client.message", { slow: true }],
      ["client.message", { n: 1 }],
      ["connection.closed", null],
    ]);
    const poison = receiver.requests.filter((r) => r.events[0].subject === u && r.events[0].data?.data?.poison);
    assert.equal(poison.length, 1, "a permanent refusal is not retried");
    const dropped = w.events().filter((e) => e.event === "webhook_dropped");
    assert.equal(dropped.length, 1);
    assert.equal(dropped[0].status, 400);
    assert.deepEqual((await connections(w, u)).body.webhooks, { backlog: 0, dropped: 1 });
  } finally {
    await w.stop();
    await receiver.stop();
  }
});

test("F10b: the outbox is bounded per user: `backlog_full` for messages, connect/close coalesced", { timeout: 40000 }, async () => {
  const receiver = await new Receiver().start();
  receiver.answer = () => 503;
  const w = await startWorker(hookVars(receiver, { WEBHOOK_MAX_BACKLOG: "4" }));
  try {
    const u = uid();
    const a = await Client.connect(w, clientToken(u)); // event 1
    for (let i = 1; i <= 3; i++) assert.equal((await a.request({ type: "message", data: { i }, id: i })).type, "ok");
    const full = await a.request({ type: "message", data: { i: 4 }, id: 4 });
    assert.equal(full.type, "error");
    assert.equal(full.code, "backlog_full");
    assert.equal((await connections(w, u)).body.webhooks.backlog, 4);
    const b = await Client.connect(w, clientToken(u));
    await b.close();
    await until(async () => (await connections(w, u)).body.connections.length === 1, 3000, "b's close");
    const c = await Client.connect(w, clientToken(u));
    assert.equal((await connections(w, u)).body.webhooks.backlog, 5, "one coalesced row for three lifecycle events");

    receiver.answer = () => 204;
    await receiver.until((r) => r.of(u).length === 5, 15000, "for the backlog");
    const events = receiver.of(u);
    assert.deepEqual(events.map(kind), ["connection.opened", "client.message", "client.message", "client.message", "connection.coalesced"]);
    assert.deepEqual(events.slice(1, 4).map((e) => e.data.data.i), [1, 2, 3]);
    const co = events[4].data;
    assert.deepEqual([co.opened, co.closed], [2, 1]);
    assert.deepEqual([...co.connections].sort(), [a.id, c.id].sort());
    // Drained: messages are accepted again and arrive after the coalesced event.
    assert.equal((await a.request({ type: "message", data: { i: 5 }, id: 5 })).type, "ok");
    await receiver.until((r) => r.of(u).length === 6, 10000, "for the message after the drain");
    assert.deepEqual(receiver.of(u)[5].data.data, { i: 5 });
    assert.deepEqual(receiver.bad, []);
    await a.close();
    await c.close();
  } finally {
    await w.stop();
    await receiver.stop();
  }
});

test("F10c: a backlog drains in batches (WEBHOOK_BATCH_MAX), in order, each event once", { timeout: 40000 }, async () => {
  const receiver = await new Receiver().start();
  receiver.delayMs = 150; // a slow backend: one event per round trip would take 40 × 150 ms
  const w = await startWorker(hookVars(receiver, { WEBHOOK_BATCH_MAX: "10" }));
  try {
    const u = uid();
    const c = await Client.connect(w, clientToken(u));
    for (let i = 0; i < 40; i++) c.send({ type: "message", data: { i } });
    await c.request({ type: "message", data: { i: 40 }, id: "last" });
    const started = Date.now();
    await receiver.until((r) => r.of(u).length === 42, 15000, "for 42 events");
    const ms = Date.now() - started;
    const events = receiver.of(u);
    assert.equal(kind(events[0]), "connection.opened");
    assert.deepEqual(events.slice(1).map((e) => e.data.data.i), [...Array(41).keys()]);
    assert.equal(new Set(events.map((e) => e.id)).size, 42, "each event once");
    const requests = receiver.requests.filter((r) => r.events[0].subject === u);
    assert.ok(requests.length <= 12, `${requests.length} requests for 42 events`);
    assert.ok(requests.some((r) => r.events.length > 1), "at least one batch");
    assert.ok(ms < 4000, `drained in ${ms} ms`);
    await c.close();
  } finally {
    await w.stop();
    await receiver.stop();
  }
});

test("fault: the receiver is down for 60 s, then back: every event arrives once, in order", { timeout: 120000 }, async () => {
  const receiver = await new Receiver().start();
  const port = receiver.port;
  const w = await startWorker(hookVars(receiver, { WEBHOOK_RETRY_BASE_MS: "500", WEBHOOK_RETRY_MAX_MS: "3000" }));
  try {
    const users = [uid("fault"), uid("fault")];
    const expected = new Map(users.map((u) => [u, []]));
    await receiver.stop(); // connection refused from now on
    const downAt = Date.now();
    let i = 0;
    // Connections churn and clients keep talking for the whole outage.
    while (Date.now() - downAt < 60000) {
      for (const u of users) {
        const c = await Client.connect(w, clientToken(u));
        expected.get(u).push("connection.opened");
        for (let k = 0; k < 3; k++, i++) {
          assert.equal((await c.request({ type: "message", data: { i }, id: i })).type, "ok");
          expected.get(u).push(`client.message:${i}`);
        }
        await c.close();
        expected.get(u).push("connection.closed");
      }
      if (i % 60 === 0) await w.evict(users[0]); // the queue lives in storage, not memory
      await sleep(2500);
    }
    assert.equal(receiver.events.length, 0);
    await receiver.start(port);
    for (const u of users) {
      const want = expected.get(u);
      await receiver.until((r) => r.of(u).length >= want.length, 25000, `for ${u}'s ${want.length} events`);
    }
    await sleep(1000); // anything duplicated would arrive now
    for (const u of users) {
      const got = receiver.of(u).map((e) => (e.data.data !== undefined ? `${kind(e)}:${e.data.data.i}` : kind(e)));
      assert.deepEqual(got, expected.get(u));
      assert.equal(new Set(receiver.of(u).map((e) => e.id)).size, got.length, "each event once");
    }
    assert.deepEqual(receiver.bad, []);
  } finally {
    await w.stop();
    await receiver.stop().catch(() => {});
  }
});

// ---- F8: idempotency -------------------------------------------------------------------------

test("F8a: a stored answer over IDEMPOTENCY_MAX_RESPONSE_BYTES is trimmed, not a failure", async () => {
  const w = await startWorker({ IDEMPOTENCY_MAX_RESPONSE_BYTES: "8000" });
  try {
    const u = uid();
    const big = "r".repeat(3000);
    const cs = await Promise.all([0, 1, 2].map(() => Client.connect(w, clientToken(u), { autoAck: () => big })));
    await Promise.all(cs.map((c) => c.subscribe([{ type: "t" }])));
    const headers = { "idempotency-key": "big-1" };
    const first = await publish(w, { userId: u, type: "t", payload: 1 }, { headers });
    assert.equal(first.status, 200);
    assert.equal(first.body.acks.length, 3);
    assert.ok(first.body.acks.every((a) => a.result === big), "the live answer is whole");
    const again = await publish(w, { userId: u, type: "t", payload: 1 }, { headers });
    assert.equal(again.status, 200);
    assert.equal(again.body.duplicate, true);
    assert.equal(again.body.trimmed, true);
    assert.equal(again.body.envelopeId, first.body.envelopeId);
    assert.equal(again.body.seq, first.body.seq);
    assert.deepEqual(again.body.acks.map((a) => a.connectionId).sort(), cs.map((c) => c.id).sort());
    assert.ok(again.text.length < 8000, `${again.text.length} bytes`);
    await Promise.all(cs.map((c) => c.close()));
  } finally {
    await w.stop();
  }
});

test("F8b: a key whose publish died with its hub is answered `outcome: unknown` once stale", { timeout: 40000 }, async () => {
  // The whole runtime stops while the publish waits for its ack (a crash): the key's row is stored,
  // its answer never is. A restart on the same storage then holds only the row.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "sb-f8b-"));
  const vars = { ACK_TIMEOUT_MS: "1000", ACK_TIMEOUT_MAX_MS: "1000" };
  const u = uid();
  const headers = { "idempotency-key": "crash-1" };
  const body = { userId: u, type: "t", payload: 1, timeoutMs: 1000 };
  try {
    const w1 = await startWorker(vars, { persist: dir });
    const c = await Client.connect(w1, clientToken(u));
    await c.subscribe([{ type: "t" }]);
    const first = publish(w1, body, { headers }).catch(() => undefined);
    await c.next((f) => f.envelopeId);
    const concurrent = await publish(w1, body, { headers });
    assert.equal(concurrent.body.inProgress, true, "in progress while the first waits");
    c.ws.terminate();
    await w1.stop();
    await first;

    const w2 = await startWorker(vars, { persist: dir });
    try {
      await sleep(3500); // past ACK_TIMEOUT_MAX_MS and its grace
      const after = await publish(w2, body, { headers });
      assert.equal(after.status, 200);
      assert.equal(after.body.duplicate, true);
      assert.equal(after.body.outcome, "unknown");
      assert.equal(after.body.inProgress, undefined);
      assert.equal(after.body.envelopeId, concurrent.body.envelopeId);
    } finally {
      await w2.stop();
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("F8c: the key is checked first: a retry after its connection closed is a duplicate, not a 404", async () => {
  const w = await startWorker();
  try {
    const u = uid();
    const c = await Client.connect(w, clientToken(u), { autoAck: true });
    await c.subscribe([{ type: "t" }]);
    const headers = { "idempotency-key": "conn-1" };
    const body = { userId: u, connectionId: c.id, type: "t", payload: 1 };
    const first = await publish(w, body, { headers });
    assert.equal(first.status, 200);
    await c.close();
    const again = await publish(w, body, { headers });
    assert.equal(again.status, 200, JSON.stringify(again.body));
    assert.equal(again.body.duplicate, true);
    assert.equal(again.body.envelopeId, first.body.envelopeId);
  } finally {
    await w.stop();
  }
});

test("F8d: IDEMPOTENCY_SECONDS is its own window: keys work with HISTORY_SECONDS=0", async () => {
  const w = await startWorker({ HISTORY_SECONDS: "0" });
  try {
    const u = uid();
    const c = await Client.connect(w, clientToken(u), { autoAck: true });
    await c.subscribe([{ type: "t" }]);
    const mark = c.mark();
    const headers = { "idempotency-key": "nohist-1" };
    const first = await publish(w, { userId: u, type: "t", payload: 1 }, { headers });
    const again = await publish(w, { userId: u, type: "t", payload: 1 }, { headers });
    assert.equal(again.body.duplicate, true);
    assert.equal(again.body.envelopeId, first.body.envelopeId);
    const got = await c.since(mark);
    assert.deepEqual(got.map((f) => f.envelopeId), [first.body.envelopeId], "delivered once");
    await c.close();
  } finally {
    await w.stop();
  }
});

// ---- F13: a kick ends channel membership -----------------------------------------------------

test("F13: a kick by the backend ends the user's channel membership at once (no linger)", async () => {
  const w = await startWorker();
  try {
    const u = uid();
    const channel = `room:${uid()}`;
    const c = await Client.connect(w, clientToken(u, { channels: ["room:*"] }));
    assert.equal((await c.request({ type: "join", channel, id: 1 })).type, "ok");
    const kick = await fetch(`${w.url}/users/${encodeURIComponent(u)}/connections`, {
      method: "DELETE",
      headers: { authorization: `Bearer ${publishToken()}` },
    });
    assert.equal(kick.status, 200);
    const res = await fetch(`${w.url}/channels/${encodeURIComponent(channel)}/members`, {
      headers: { authorization: `Bearer ${publishToken()}` },
    });
    assert.deepEqual((await res.json()).members, []);
    const pub = await publish(w, { channel, type: "t", payload: 1 });
    assert.equal(pub.body.totals.users, 0, JSON.stringify(pub.body));
  } finally {
    await w.stop();
  }
});
