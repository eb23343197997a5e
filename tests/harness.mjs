// Test harness: runs the built Worker (build/index.js + wasm) in workerd through Miniflare 4, and
// gives tests real WebSocket and HTTP clients against it. Nothing of the runtime is mocked.
import { Miniflare } from "miniflare";
import WebSocket from "ws";
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
 * with other settings).
 */
export async function startWorker(vars = {}, { persist } = {}) {
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
    },
    bindings,
    ...(persist ? { durableObjectsPersist: persist } : {}),
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
    /** Forces the user's hub out of memory, keeping its sockets (hibernation). */
    evict: (userId) => evictIfRunning(mf, "UserHub", { name: userId, webSockets: "hibernate" }),
    /** Wakes the user's hub, then evicts it dropping its sockets without close events (a crash). */
    crash: async (userId) => {
      await fetch(`${url}/users/${encodeURIComponent(userId)}/connections`, { headers: { authorization: `Bearer ${publishToken()}` } });
      await mf.unsafeEvictDurableObject(WORKER, "UserHub", { name: userId, webSockets: "close" });
    },
    /** Forces a channel's root (its member list) out of memory. */
    evictChannel: (channel) => evictIfRunning(mf, "ChannelHub", { name: `root/${channel}` }),
    stop: () => mf.dispose(),
  };
}

/** Evicts a Durable Object; one the runtime has already evicted (idle) is out of memory as asked. */
async function evictIfRunning(mf, className, options) {
  try {
    await mf.unsafeEvictDurableObject(WORKER, className, options);
  } catch (e) {
    if (!/not currently running/.test(String(e?.message))) throw e;
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
      c.ws.once("unexpected-response", (_req, res) => reject(Object.assign(new Error(`HTTP ${res.statusCode}`), { status: res.statusCode })));
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
   * frames). Anything the hub sent before the pong has then arrived. The sentinel's pong is left out.
   * Use it for "nothing else arrived": `assert.deepEqual(await c.since(m), [expected...])`.
   */
  async since(mark, { settleMs = 200 } = {}) {
    if (settleMs > 0) await new Promise((r) => setTimeout(r, settleMs));
    if (this.ws.readyState === WebSocket.OPEN) {
      const sentinel = this.log.length;
      const pong = this.#inbox.next((f) => f === "pong", 5000);
      this.send("Ping");
      await pong;
      const i = this.log.indexOf("pong", sentinel);
      return this.log.slice(mark).filter((_, k) => mark + k !== i);
    }
    return this.log.slice(mark);
  }

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

  /** Resolves once nothing has arrived for `ms` (to assert silence). */
  async quiet(ms = 300) {
    const before = this.frames.length;
    await new Promise((r) => setTimeout(r, ms));
    return this.frames.slice(before);
  }

  close(code = 1000, reason = "") {
    this.ws.close(code, reason);
    return this.closed;
  }

  /**
   * Resolves when the server's close frame has arrived (readyState CLOSING or CLOSED). For closes the
   * hub starts outside a socket event (kick, expiry), local workerd ends the TCP connection only when
   * the hub idles out, so `closed` (which waits for TCP) can lag by ~10 s; browsers give up after 2 s.
   */
  async closeFrame(timeoutMs = 10000) {
    const end = Date.now() + timeoutMs;
    while (this.ws.readyState < 2) {
      if (Date.now() > end) throw new Error("no close frame");
      await new Promise((r) => setTimeout(r, 10));
    }
  }
}

/**
 * A Server-Sent Events client over fetch streaming, recording every event and comment byte-exactly
 * (EventSource hides comments and headers; tests need them).
 */
export class SseClient {
  /** `ticket`: connect with `?ticket=` (from `POST /tickets`) instead of the token. */
  static async open(w, token, { filters, lastEventId, query = {}, headers = {}, ticket } = {}) {
    const c = new SseClient();
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
    } catch {
      // aborted
    }
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
    this.#inbox.deliver(event);
  }

  next(pred = () => true, timeoutMs = 5000) {
    return this.#inbox.next(pred, timeoutMs);
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
