// Test harness: runs the built Worker (build/index.js + wasm) in workerd through Miniflare 4, and
// gives tests real WebSocket and HTTP clients against it. Nothing of the runtime is mocked.
import { Miniflare } from "miniflare";
import WebSocket from "ws";
import http from "node:http";
import crypto from "node:crypto";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
export const SECRET = "test-secret-" + crypto.randomBytes(16).toString("hex");
export const WORKER = "switchboard";
/** The built Worker to test; SWITCHBOARD_BUILD_DIR points elsewhere (e.g. a private copy). */
export const BUILD_DIR = process.env.SWITCHBOARD_BUILD_DIR || path.join(ROOT, "build");

/**
 * Starts workerd with the built Worker. `vars` override settings; `JWT_SECRET` defaults to SECRET.
 * `persist`: a directory that keeps Durable Object storage across a stop and a new start (a restart
 * with other settings). `analytics`: binds the `METRICS` Analytics Engine dataset (Miniflare's local
 * simulator accepts and discards data points).
 */
/** Polls `pred` every 10 ms until it returns something truthy (which it returns), failing after `ms`. */
export async function waitFor(pred, ms = 10000, what = "condition") {
  const end = Date.now() + ms;
  for (;;) {
    const v = await pred();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

export async function startWorker(vars = {}, { persist, analytics } = {}) {
  const logs = [];
  const bindings = { JWT_SECRET: SECRET, ...vars };
  for (const k of Object.keys(bindings)) if (bindings[k] === undefined) delete bindings[k];
  const mf = new Miniflare({
    name: WORKER,
    scriptPath: path.join(BUILD_DIR, "index.js"),
    modulesRoot: BUILD_DIR,
    modules: true,
    modulesRules: [{ type: "CompiledWasm", include: ["**/*.wasm"], fallthrough: true }],
    compatibilityDate: "2026-08-01",
    compatibilityFlags: ["enable_request_signal"], // as in wrangler.toml
    durableObjects: {
      USER_HUB: { className: "UserHub", useSQLite: true },
      CHANNEL_HUB: { className: "ChannelHub", useSQLite: true },
      EVENT_HUB: { className: "EventHub", useSQLite: true },
    },
    bindings,
    ...(persist ? { durableObjectsPersist: persist } : {}),
    ...(analytics ? { analyticsEngineDatasets: { METRICS: { dataset: "switchboard_metrics" } } } : {}),
    host: "127.0.0.1",
    port: 0,
    handleRuntimeStdio(stdout, stderr) {
      for (const s of [stdout, stderr]) {
        s.setEncoding("utf8");
        let buf = "";
        s.on("data", (d) => {
          buf += d;
          let i;
          while ((i = buf.indexOf("\n")) >= 0) {
            logs.push(buf.slice(0, i));
            buf = buf.slice(i + 1);
          }
        });
      }
    },
  });
  const url = (await mf.ready).toString().replace(/\/$/, "");
  return {
    mf,
    url,
    wsUrl: url.replace(/^http/, "ws"),
    logs,
    /** Structured log events (JSON lines) seen so far. */
    events: () =>
      logs.flatMap((l) => {
        const j = l.indexOf("{");
        if (j < 0) return [];
        try {
          return [JSON.parse(l.slice(j))];
        } catch {
          return [];
        }
      }),
    /**
     * Resolves with the first structured log event matching `pred`, waiting for it (workerd's stdout
     * reaches us asynchronously). Lines of one process arrive in order, so once a later line is here,
     * every earlier one is too: wait for the last expected line before asserting what is absent.
     */
    async event(pred, timeoutMs = 5000) {
      const end = Date.now() + timeoutMs;
      for (;;) {
        const found = this.events().find(pred);
        if (found) return found;
        if (Date.now() > end) throw new Error(`no log event matching ${pred} within ${timeoutMs} ms`);
        await new Promise((r) => setTimeout(r, 20));
      }
    },
    /** Forces the user's hub out of memory, keeping its sockets (hibernation); see evictIfRunning. */
    evict: (userId) => evictIfRunning(mf, "UserHub", { name: userId, webSockets: "hibernate" }),
    /** Wakes the user's hub, then evicts it dropping its sockets without close events (a crash). */
    crash: async (userId) => {
      await fetch(`${url}/users/${encodeURIComponent(userId)}/connections`, { headers: { authorization: `Bearer ${publishToken()}` } });
      await mf.unsafeEvictDurableObject(WORKER, "UserHub", { name: userId, webSockets: "close" });
    },
    /** Forces a channel's root (its member list) out of memory. */
    evictChannel: (channel) => evictIfRunning(mf, "ChannelHub", { name: `root/${channel}` }),
    /** Forces an event shard (`events/{shard}`, its queue of presence webhooks) out of memory. */
    evictEvents: (shard) => evictIfRunning(mf, "EventHub", { name: `events/${shard}` }),
    stop: () => mf.dispose(),
  };
}

/**
 * Evicts a Durable Object; one the runtime has already evicted (idle) is out of memory as asked.
 * Resolves true when it was running (and now is not), false when it was not running: a test that
 * needs the eviction to have happened asserts `true`.
 */
async function evictIfRunning(mf, className, options) {
  try {
    await mf.unsafeEvictDurableObject(WORKER, className, options);
    return true;
  } catch (e) {
    if (!/not currently running/.test(String(e?.message))) throw e;
    return false;
  }
}

const b64url = (x) => Buffer.from(typeof x === "string" ? x : JSON.stringify(x)).toString("base64url");

/** Mints an HS256 JWT (or any header, for hostile tests). */
export function mint(claims, { secret = SECRET, header = { alg: "HS256", typ: "JWT" } } = {}) {
  const data = `${b64url(header)}.${b64url(claims)}`;
  const sig = crypto.createHmac("sha256", secret).update(data).digest("base64url");
  return `${data}.${sig}`;
}

export const now = () => Math.floor(Date.now() / 1000);
export const clientToken = (userId, extra = {}) => mint({ userId, exp: now() + 3600, ...extra });
export const publishToken = (extra = {}) => mint({ sub: "backend", scope: "publish", exp: now() + 3600, ...extra });

/** POST /publish; returns { status, body, headers }. */
export async function publish(w, body, { token = publishToken(), headers = {} } = {}) {
  const res = await fetch(`${w.url}/publish`, {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json", ...headers },
    body: typeof body === "string" || body instanceof Uint8Array ? body : JSON.stringify(body),
  });
  const text = await res.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, body: json, text, headers: res.headers };
}

/**
 * What a client has received and not yet consumed, and the tests waiting on it: an item goes to the
 * first waiter whose predicate matches, else into `items` (a live array tests may inspect or clear).
 */
class Inbox {
  items = [];
  #waiters = [];

  constructor(describe) {
    this.describe = describe; // () => text for the timeout error
  }

  deliver(item) {
    const w = this.#waiters.findIndex((x) => x.pred(item));
    if (w < 0) return void this.items.push(item);
    const [x] = this.#waiters.splice(w, 1);
    clearTimeout(x.timer);
    x.resolve(item);
  }

  next(pred, timeoutMs) {
    const i = this.items.findIndex(pred);
    if (i >= 0) return Promise.resolve(this.items.splice(i, 1)[0]);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#waiters = this.#waiters.filter((x) => x.resolve !== resolve);
        reject(new Error(`nothing matching within ${timeoutMs} ms; ${this.describe()}`));
      }, timeoutMs);
      this.#waiters.push({ pred, resolve, timer });
    });
  }
}

/** A real WebSocket client that records every frame and lets tests wait for the ones they expect. */
export class Client {
  /** `ticket`: connect with `?ticket=` (from `POST /tickets`) instead of the token. */
  static async connect(w, token, { query = true, headers = {}, autoAck = false, ticket } = {}) {
    const c = new Client();
    const url = ticket !== undefined
      ? `${w.wsUrl}/?ticket=${encodeURIComponent(ticket)}`
      : query ? `${w.wsUrl}/?token=${encodeURIComponent(token)}` : `${w.wsUrl}/`;
    c.ws = new WebSocket(url, { headers: query || ticket !== undefined ? headers : { authorization: `Bearer ${token}`, ...headers } });
    c.autoAck = autoAck;
    c.ws.on("message", (data, isBinary) => c.#onFrame(isBinary ? data : data.toString()));
    c.closed = new Promise((resolve) => c.ws.on("close", (code, reason) => resolve({ code, reason: reason.toString() })));
    await new Promise((resolve, reject) => {
      c.ws.once("open", resolve);
      // A refused upgrade: keep the status and the JSON error body, so tests check the code too.
      c.ws.once("unexpected-response", (_req, res) => {
        let text = "";
        res.setEncoding("utf8");
        res.on("data", (d) => (text += d));
        res.on("end", () => {
          let body;
          try {
            body = JSON.parse(text);
          } catch {}
          reject(Object.assign(new Error(`HTTP ${res.statusCode} ${text.slice(0, 200)}`), { status: res.statusCode, body }));
        });
      });
      c.ws.once("error", reject);
    });
    c.welcome = await c.next((f) => f.type === "welcome");
    c.id = c.welcome.connectionId;
    return c;
  }

  #inbox = new Inbox(() => `unconsumed frames: ${JSON.stringify(this.frames).slice(0, 500)}`);
  /** Frames received and not consumed by `next`. */
  frames = this.#inbox.items;

  /** Every frame ever received, consumed or not, in arrival order (what `mark`/`since` read). */
  log = [];

  #onFrame(raw) {
    let frame = raw;
    if (typeof raw === "string" && raw !== "pong") {
      try {
        frame = JSON.parse(raw);
      } catch {
        frame = raw;
      }
    }
    if (this.autoAck && frame && frame.envelopeId) {
      const result = typeof this.autoAck === "function" ? this.autoAck(frame) : { ok: true, by: this.id };
      this.send({ type: "ack", envelopeId: frame.envelopeId, result });
    }
    this.log.push(frame);
    this.#logWatchers = this.#logWatchers.filter((watch) => !watch(this.log.length - 1));
    this.#inbox.deliver(frame);
  }

  /** A position in `log`: take it before the action whose consequences `since` will check. */
  mark() {
    return this.log.length;
  }

  /**
   * Every frame received since `mark`, consumed by `next` or not, once the socket is settled: waits
   * `settleMs`, then makes a sentinel round trip through the hub on the same socket (`Ping` → `pong`;
   * not the exact `ping`, which the runtime answers without the hub, so it could overtake the hub's own
   * frames). The hub handles its socket's frames in order and sends in order, so anything it sent
   * before handling the sentinel has arrived once the sentinel's pong has. The sentinel's pong is left
   * out (of the result and of `frames`). Use it for "nothing else arrived":
   * `assert.deepEqual(await c.since(m), [expected...])`. On a closed socket it returns what arrived.
   */
  async since(mark, { settleMs = 200 } = {}) {
    if (settleMs > 0) await new Promise((r) => setTimeout(r, settleMs));
    if (this.ws.readyState !== WebSocket.OPEN) return this.log.slice(mark);
    const sentinel = this.log.length;
    // Only a pong that arrives after the sentinel was sent counts (an older, unconsumed pong in
    // `frames` would otherwise end the wait before the hub has answered).
    const at = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("since: no pong to the sentinel within 5000 ms")), 5000);
      this.#logWatchers.push((i) => {
        if (i < sentinel || this.log[i] !== "pong") return false;
        clearTimeout(timer);
        resolve(i);
        return true;
      });
      this.send("Ping");
    });
    const k = this.frames.lastIndexOf("pong");
    if (k >= 0) this.frames.splice(k, 1);
    return this.log.slice(mark).filter((_, j) => mark + j !== at);
  }

  #logWatchers = [];

  /** Resolves with the first frame (already received or future) matching `pred`. */
  next(pred = () => true, timeoutMs = 5000) {
    return this.#inbox.next(pred, timeoutMs);
  }

  /** Sends a frame and, if it has an `id`, waits for the ok/error reply with that id. */
  async request(frame) {
    const reply = this.next((f) => f && (f.type === "ok" || f.type === "error") && JSON.stringify(f.id) === JSON.stringify(frame.id));
    this.send(frame);
    return reply;
  }

  send(frame) {
    this.ws.send(typeof frame === "string" || Buffer.isBuffer(frame) ? frame : JSON.stringify(frame));
  }

  subscribe(filters, extra = {}) {
    return this.request({ type: "subscribe", filters, id: `sub-${Math.random()}`, ...extra });
  }

  close(code = 1000, reason = "") {
    this.ws.close(code, reason);
    return this.closed;
  }

  /**
   * Resolves with `{ code, reason }` of the server's close frame as soon as it has arrived. For closes
   * the hub starts outside a socket event (kick, expiry), local workerd ends the TCP connection only
   * when the hub idles out, so `closed` (which waits for TCP) can lag by ~10 s; browsers give up after
   * 2 s. With `terminate`, the TCP connection is then dropped instead of waited for. (The code is read
   * from the ws library's own record of the frame, `_closeFrameReceived`/`_closeCode`, since ws emits
   * it only with `close`.)
   */
  async closeFrame(timeoutMs = 10000, { terminate = false } = {}) {
    const end = Date.now() + timeoutMs;
    while (!this.ws._closeFrameReceived) {
      if (Date.now() > end) throw new Error("no close frame");
      await new Promise((r) => setTimeout(r, 10));
    }
    const frame = { code: this.ws._closeCode, reason: this.ws._closeMessage.toString() };
    if (terminate) this.ws.terminate();
    return frame;
  }
}

/**
 * A Server-Sent Events client over fetch streaming, recording every event and comment byte-exactly
 * (EventSource hides comments and headers; tests need them). `ended` resolves with how the stream
 * ended: `{ how: "eof" }` (the server ended it), `{ how: "aborted" }` (this client closed it) or
 * `{ how: "error", error }` (a network or protocol failure): a test of a server-side close asserts
 * `eof`, so a failure cannot pass for a close.
 */
export class SseClient {
  /** `ticket`: connect with `?ticket=` (from `POST /tickets`) instead of the token. */
  static async open(w, token, { filters, lastEventId, query = {}, headers = {}, ticket } = {}) {
    const c = new SseClient();
    c.w = w;
    c.filters = typeof filters === "string" ? undefined : filters;
    const params = new URLSearchParams(ticket !== undefined ? { ticket, ...query } : { token, ...query });
    if (filters !== undefined) params.set("filters", typeof filters === "string" ? filters : JSON.stringify(filters));
    c.abort = new AbortController();
    const h = { ...headers };
    if (lastEventId !== undefined) h["last-event-id"] = String(lastEventId);
    c.response = await fetch(`${w.url}/sse?${params}`, { headers: h, signal: c.abort.signal });
    c.status = c.response.status;
    c.headers = c.response.headers;
    if (c.status !== 200) {
      c.body = await c.response.json().catch(() => undefined);
      return c;
    }
    c.ended = c.#pump();
    c.welcome = (await c.next((e) => e.json?.type === "welcome")).json;
    c.id = c.welcome.connectionId;
    return c;
  }

  #inbox = new Inbox(() => `raw tail: ${this.raw.slice(-400)}`);
  /** Events received and not consumed by `next`. */
  events = this.#inbox.items;
  /** Every event ever received, consumed or not, in arrival order (what `mark`/`since` read). */
  log = [];
  comments = [];
  raw = "";

  async #pump() {
    const decoder = new TextDecoder();
    let buf = "";
    try {
      for await (const chunk of this.response.body) {
        const text = decoder.decode(chunk, { stream: true });
        this.raw += text;
        buf += text;
        let i;
        while ((i = buf.search(/\r\n\r\n|\n\n|\r\r/)) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + (buf.startsWith("\r\n\r\n", i) ? 4 : 2));
          this.#onBlock(block);
        }
      }
    } catch (error) {
      // Only this client's own abort is a normal end; anything else is reported, not swallowed.
      if (this.abort.signal.aborted) return { how: "aborted" };
      return { how: "error", error };
    }
    if (buf.trim() !== "") return { how: "error", error: new Error(`stream ended inside an event: ${JSON.stringify(buf.slice(0, 200))}`) };
    return { how: "eof" };
  }

  #onBlock(block) {
    const ev = { data: [], id: undefined };
    for (const line of block.split(/\r\n|\r|\n/)) {
      if (line.startsWith(":")) {
        this.comments.push(line);
        continue;
      }
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "data") ev.data.push(value);
      else if (field === "id") ev.id = value;
      else if (field === "retry") this.retry = Number(value);
    }
    if (ev.data.length === 0) return;
    const data = ev.data.join("\n");
    const event = { id: ev.id, data, dataLines: ev.data.length };
    try {
      event.json = JSON.parse(data);
    } catch {}
    this.log.push(event);
    this.#logWatchers = this.#logWatchers.filter((watch) => !watch(this.log.length - 1));
    this.#inbox.deliver(event);
  }

  #logWatchers = [];

  next(pred = () => true, timeoutMs = 5000) {
    return this.#inbox.next(pred, timeoutMs);
  }

  /** A position in `log`: take it before the action whose consequences `since` will check. */
  mark() {
    return this.log.length;
  }

  /**
   * Every event received since `mark`, consumed or not, once the stream is settled. SSE has no
   * upstream, so the sentinel goes through the backend: after `settleMs`, a publish targeted at this
   * connection (`connectionId`) whose type and fields satisfy the stream's first filter, carrying a
   * unique `__sentinel` payload field. The hub sends to a connection in order and the Worker forwards
   * in order, so everything the hub sent before it has arrived once the sentinel has. The sentinel is
   * left out (of the result and of `events`). It is a real envelope: it takes the user's next `seq`
   * and goes into history, so take that into account in seq arithmetic. Needs a stream opened with
   * filters (a stream without any receives no envelope, and a sentinel could not reach it).
   */
  async since(mark, { settleMs = 200 } = {}) {
    if (settleMs > 0) await new Promise((r) => setTimeout(r, settleMs));
    const filter = this.filters?.[0];
    if (!filter || typeof filter.type !== "string") throw new Error("SseClient.since needs a stream opened with a filter");
    const nonce = crypto.randomUUID();
    const { type, ...fields } = filter;
    const arrived = new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("since: the sentinel envelope did not arrive within 5000 ms")), 5000);
      this.#logWatchers.push((i) => {
        if (this.log[i].json?.payload?.__sentinel !== nonce) return false;
        clearTimeout(timer);
        resolve(i);
        return true;
      });
    });
    const res = await publish(this.w, { userId: this.welcome.userId, connectionId: this.id, type, payload: { ...fields, __sentinel: nonce }, timeoutMs: 0 });
    if (res.status !== 200 || res.body.clientCount !== 1) throw new Error(`since: the sentinel publish failed: ${res.status} ${res.text}`);
    const at = await arrived;
    const k = this.events.findIndex((e) => e.json?.payload?.__sentinel === nonce);
    if (k >= 0) this.events.splice(k, 1);
    return this.log.slice(mark).filter((_, j) => mark + j !== at);
  }

  /** POST /ack with this client's token. */
  async ack(w, token, envelopeId, result, connectionId = this.id) {
    const res = await fetch(`${w.url}/ack`, {
      method: "POST",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body: JSON.stringify({ connectionId, envelopeId, result }),
    });
    return { status: res.status, body: await res.json().catch(() => undefined) };
  }

  close() {
    this.abort.abort();
    return this.ended;
  }
}

/**
 * A webhook receiver on 127.0.0.1 that verifies every request the way a backend would (its own HMAC,
 * not Switchboard's code) and records every attempt, failed or not: `attempts` holds
 * `{ webhookId, timestamp, at, status, valid, event }` in arrival order (`at`: this process's clock
 * in ms when the request arrived; `status`: what it answered, or null while it hangs). `mode` decides
 * the answer: "up" (204 when valid, 400 when not; 503 where `refuse(attempt)` says so), "503", "hang" (accept and never answer, to test
 * WEBHOOK_TIMEOUT_MS) or "down" (not listening, after `stop`).
 */
export class WebhookReceiver {
  /** `secretBytes`: the key (what `whsec_<base64>` decodes to). */
  constructor(secretBytes) {
    this.key = secretBytes;
  }

  attempts = [];
  mode = "up";
  /** In mode "up", attempts for which this returns true are answered 503 all the same. */
  refuse = () => false;
  #waiters = [];
  #hanging = [];

  /** Verified events the receiver accepted (2xx), in arrival order, retries included. */
  get events() {
    return this.attempts.filter((a) => a.valid && a.status === 204).map((a) => ({ webhookId: a.webhookId, event: a.event }));
  }

  /** Attempts whose signature, timestamp or content type was wrong. */
  get bad() {
    return this.attempts.filter((a) => !a.valid);
  }

  async start(port = 0) {
    this.server = http.createServer((req, res) => {
      let body = "";
      req.on("data", (d) => (body += d));
      req.on("end", () => {
        const id = req.headers["webhook-id"];
        const ts = req.headers["webhook-timestamp"];
        const sig = req.headers["webhook-signature"];
        const expected = crypto.createHmac("sha256", this.key).update(`${id}.${ts}.${body}`).digest("base64");
        const fresh = Math.abs(Date.now() / 1000 - Number(ts)) < 300;
        const signed = typeof sig === "string" && sig.split(" ").some((s) => s === `v1,${expected}`);
        const valid = signed && fresh && !!req.headers["content-type"]?.startsWith("application/cloudevents+json");
        let event;
        try {
          event = JSON.parse(body);
        } catch {}
        const attempt = { webhookId: id, timestamp: Number(ts), at: Date.now(), status: null, valid, event, headers: req.headers, body };
        this.attempts.push(attempt);
        if (this.mode === "hang") {
          this.#hanging.push(res);
        } else {
          attempt.status = !valid ? 400 : this.mode === "503" || this.refuse(attempt) ? 503 : 204;
          res.writeHead(attempt.status).end();
        }
        this.#waiters.splice(0).forEach((w) => w());
      });
    });
    await new Promise((r) => this.server.listen(port, "127.0.0.1", r));
    this.port = this.server.address().port;
    this.mode = "up";
    return this;
  }

  async stop() {
    this.mode = "down";
    for (const res of this.#hanging.splice(0)) res.destroy();
    const closed = new Promise((r) => this.server.close(r));
    this.server.closeAllConnections?.();
    await closed;
  }

  /** Accepted events with distinct webhook ids, in first-arrival order. */
  unique() {
    const seen = new Set();
    return this.events.filter((e) => !seen.has(e.webhookId) && seen.add(e.webhookId));
  }

  /** Waits (on arrivals, with a 100 ms poll as a backstop) until `pred(this)` holds. */
  async until(pred, ms = 15000) {
    const end = Date.now() + ms;
    while (!pred(this)) {
      if (Date.now() > end) throw new Error(`receiver: timed out; attempts ${JSON.stringify(this.attempts.map((a) => [a.event?.type, a.status]))}`);
      await new Promise((r) => (this.#waiters.push(r), setTimeout(r, 100)));
    }
  }
}
