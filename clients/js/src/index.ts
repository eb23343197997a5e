// Switchboard client: one long-lived connection (WebSocket, or Server-Sent Events) to a Switchboard
// Worker, with token refresh, reconnect with exponential backoff and jitter, re-subscription, resume
// from the last seq seen, de-duplication, keepalive, and acks taken from handler return values.
// Channel presence (who is in a channel), resume across page loads (sessionStorage), and an immediate
// reconnect when the browser comes back online or the page becomes visible.
// Dependency-free; runs in browsers and in Node 22+ (global WebSocket, fetch and streams).
import { Presence, PresenceCore, type PresenceFrame, type PresenceSnapshot } from "./presence.js";
export { Presence, PresenceCore } from "./presence.js";
export type { PresenceMember, PresenceSnapshot, PresenceFrame, PresenceChange, PresenceEvents } from "./presence.js";

/** A subscription filter: `type` must equal the envelope's type; every other key must equal (as a string) the payload's top-level field. */
export type Filter = { type: string } & Record<string, string>;

/** What the backend published, as delivered to this connection. */
export interface Envelope<P = unknown> {
  envelopeId: string;
  /** The user's sequence number (1, 2, 3, ...): increasing, never reused. */
  seq: number;
  type: string;
  userId: string;
  /** RFC 3339 time of the publish. */
  timestamp: string;
  payload: P;
  /** The channel it was published to, for a channel publish. */
  channel?: string;
  /** The publishing user, for a client's channel publish. */
  from?: string;
  /** Present (true) when the envelope was sent again from history after a resume. */
  replayed?: boolean;
}

/** What a client's channel publish reached. */
export interface ChannelTotals {
  users: number;
  succeeded: number;
  failed: number;
  clientCount: number;
  acked: number;
  pending: number;
  closed: number;
  pruned: number;
}

/** The server's first frame on every connection. */
export interface Welcome {
  type: "welcome";
  connectionId: string;
  userId: string;
  /** The latest seq handed out for this user when the connection opened. */
  seq: number;
}

/** Envelopes `from`..`to` (seqs) could not be replayed (they left history): fetch what matters from your backend. */
export interface Gap {
  type: "gap";
  from: number;
  to: number;
}

export type State = "connecting" | "open" | "reconnecting" | "closed";
export type TransportKind = "websocket" | "sse";
/** A token, or a function called before every connection attempt (so expired tokens are replaced). */
export type TokenSource = string | (() => string | Promise<string>);

export interface ReconnectOptions {
  /** Delay before the first retry, before jitter (default 500). */
  minDelayMs?: number;
  /** Upper bound of the delay (default 30000). */
  maxDelayMs?: number;
  /** Growth per failed attempt (default 2). */
  factor?: number;
  /** Fraction of the delay that is random, 0..1 (default 1: "full jitter", a delay in (0, d]). */
  jitter?: number;
  /** Give up (state "closed") after this many consecutive failed attempts (default Infinity). */
  maxAttempts?: number;
}

export interface ClientOptions {
  /** The Worker's base URL: `https://rt.example.com`, `wss://…`, `http://127.0.0.1:8787`. */
  url: string;
  token: TokenSource;
  /** Default "websocket". "sse" receives over `GET /sse` and acks over `POST /ack` (it cannot `send`). */
  transport?: TransportKind;
  /** Backoff settings, or `false` to never reconnect. */
  reconnect?: ReconnectOptions | false;
  /** WebSocket: send `ping` this often and expect `pong` (default 25000; 0 disables). SSE: reconnect after this much silence plus `pongTimeoutMs` (default 30000; the server sends a keep-alive every 15 s). */
  pingIntervalMs?: number;
  /** How long to wait for `pong` before the connection is considered dead (default 10000). */
  pongTimeoutMs?: number;
  /** Give up on an attempt that has not received its welcome within this time (default 15000). */
  connectTimeoutMs?: number;
  /**
   * Ask the server to replay what was missed while disconnected (`since`; default true). `"session"`
   * also keeps the resume point per user in `sessionStorage` (see `storage`), so a new page load in the
   * same tab resumes where the last one stopped instead of starting live.
   */
  resume?: boolean | "session";
  /** Where `resume: "session"` keeps the resume point (default `globalThis.sessionStorage`). */
  storage?: StorageLike;
  /**
   * Reconnect at once, instead of waiting out the backoff, when the browser fires `online` or the page
   * becomes visible; and, when the connection looks open then, send a keepalive ping at once so a
   * connection that died while the page slept is replaced within `pongTimeoutMs` (default true).
   */
  reconnectOnWake?: boolean;
  /** How many envelope ids are remembered to drop duplicates (default 1000). */
  dedupeSize?: number;
  /** WebSocket constructor (default `globalThis.WebSocket`). */
  WebSocket?: WebSocketCtor;
  /** fetch for the SSE transport and for tickets (default `globalThis.fetch`). */
  fetch?: typeof fetch;
  /**
   * Exchange the token for a one-time, 30-second ticket (`POST /tickets`, token in the Authorization
   * header) before each connection attempt, and put only the ticket in the URL, so the long-lived
   * token never reaches request logs, proxies or browser history (default true). A server without
   * `/tickets` (404/405) is remembered, and the token goes in the URL as before.
   */
  tickets?: boolean;
}

/** The part of the Web Storage API the client uses (`sessionStorage` satisfies it). */
export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
}

/** A membership of a channel held by `client.channel()`; `leave()` lets go of it. */
export interface ChannelSubscription {
  readonly channel: string;
  /** Resolves when the server has confirmed the join (rejects with its error: `forbidden`, `channel_full`, …). */
  readonly ready: Promise<void>;
  readonly active: boolean;
  /** Stops this handler; the client leaves the channel once nothing else holds it. */
  leave(): void;
}

export interface CloseInfo {
  code: number;
  reason: string;
  /** Whether the client will try again. */
  reconnect: boolean;
}

export interface ClientEvents {
  state: State;
  welcome: Welcome;
  /** Every new (not duplicate) envelope, before the handlers run. */
  envelope: Envelope;
  gap: Gap;
  close: CloseInfo;
  error: SwitchboardError;
}

/** A handler's return value (or resolved value) is the ack result; `undefined` acks `null`. If it throws, the ack result is `{ error: message }`. */
export type Handler<P = any> = (envelope: Envelope<P>) => unknown;

/** Errors reported by the server (`code` is its stable code) or by the client (`not_connected`, `disconnected`, `unsupported`, `handler_error`, `transport_error`, `closed`, `protocol_error`). */
export class SwitchboardError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly details?: unknown,
  ) {
    super(message);
    this.name = "SwitchboardError";
  }
}

/** The minimal WebSocket surface the client uses (browsers' and Node's global WebSocket satisfy it). */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((ev: any) => unknown) | null;
  onmessage: ((ev: { data: unknown }) => unknown) | null;
  onclose: ((ev: { code: number; reason: string }) => unknown) | null;
  onerror: ((ev: any) => unknown) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketCtor = new (url: string) => WebSocketLike;

const DEFAULTS = { minDelayMs: 500, maxDelayMs: 30000, factor: 2, jitter: 1, maxAttempts: Infinity };

/** The delay before retry number `attempt` (0-based): min(max, min·factor^attempt), of which a `jitter` fraction is random. */
export function backoffDelay(attempt: number, options: ReconnectOptions = {}, random: () => number = Math.random): number {
  const o = { ...DEFAULTS, ...options };
  const base = Math.min(o.maxDelayMs, o.minDelayMs * Math.pow(o.factor, Math.max(0, attempt)));
  return Math.round(base * (1 - Math.min(1, Math.max(0, o.jitter)) * random()));
}

/** Whether a close code means "reconnect": everything but a client close and the 4500-4999 "do not reconnect" range. */
export function shouldReconnect(code: number): boolean {
  return !(code >= 4500 && code <= 4999);
}

/** Whether `filter` matches `envelope`, by the server's rules (string values compared exactly). */
export function matches(filter: Filter, envelope: Pick<Envelope, "type" | "payload">): boolean {
  if (filter.type !== envelope.type) return false;
  const p = envelope.payload as Record<string, unknown> | null;
  for (const k in filter) {
    if (k === "type") continue;
    if (!p || typeof p !== "object" || Array.isArray(p) || p[k] !== filter[k]) return false;
  }
  return true;
}

/** A canonical key for a filter, independent of key order. */
export function filterKey(f: Filter): string {
  return JSON.stringify(Object.keys(f).sort().map((k) => [k, f[k]]));
}

/** A bounded set of recent keys with a value each (oldest evicted first). */
export class Recent<V> {
  #m = new Map<string, V>();
  constructor(readonly size: number) {}
  get(k: string): V | undefined {
    return this.#m.get(k);
  }
  has(k: string): boolean {
    return this.#m.has(k);
  }
  set(k: string, v: V): void {
    this.#m.delete(k);
    this.#m.set(k, v);
    while (this.#m.size > this.size) this.#m.delete(this.#m.keys().next().value as string);
  }
}

export interface Subscription {
  readonly filters: readonly Filter[];
  /** Resolves once the server has confirmed every filter (rejects with the server's error if it refused some). */
  readonly ready: Promise<void>;
  readonly active: boolean;
  /** Stops the handler; filters no other subscription holds are removed on the server. */
  unsubscribe(): void;
}

interface Sub {
  filters: Filter[];
  keys: string[];
  handler: Handler;
  done: boolean;
  resolve: () => void;
  reject: (e: SwitchboardError) => void;
  active: boolean;
}

/**
 * A channel this client is in. Held by `join()` (until `leave()`), by `channel()` subscriptions and by
 * `presence()` handles; when nothing holds it any more the client leaves it (one task later, so a
 * React component that unmounts and mounts again at once does not leave and re-join).
 */
interface ChannelEntry {
  name: string;
  handlers: Set<Handler<any>>;
  explicit: boolean;
  holds: number;
  presence: PresenceCore | undefined;
  /** The current connection's join request, and whether it asked for presence. */
  joined: Promise<unknown> | undefined;
  /** A join is due at the end of this task (holds taken together share one join). */
  queued: boolean;
  watching: boolean;
  releaseTimer?: ReturnType<typeof setTimeout>;
  ready: Promise<void>;
  settle: { resolve: () => void; reject: (e: SwitchboardError) => void; done: boolean };
}

interface Conn {
  send(frame: string): void;
  close(): void;
  kind: TransportKind;
}

type Listener<T> = (value: T) => void;
const MAX_FILTERS_PER_FRAME = 50;

function validateFilter(f: unknown, i: number): Filter {
  if (!f || typeof f !== "object" || Array.isArray(f)) throw new TypeError(`filter ${i} is not an object`);
  const o = f as Record<string, unknown>;
  if (typeof o.type !== "string" || !o.type) throw new TypeError(`filter ${i} needs a non-empty string \`type\``);
  for (const k in o) if (typeof o[k] !== "string") throw new TypeError(`filter ${i}: \`${k}\` must be a string`);
  return { ...(o as Filter) };
}

function checkChannel(method: string, channel: unknown): void {
  if (typeof channel !== "string" || !channel) throw new TypeError(`${method}: channel must be a non-empty string`);
}

/** Turns a server error frame or HTTP error body into a SwitchboardError. */
function serverError(body: any, fallback: string): SwitchboardError {
  const code = typeof body?.code === "string" ? body.code : typeof body?.error === "string" ? body.error : "server_error";
  return new SwitchboardError(code, typeof body?.message === "string" ? body.message : fallback, body);
}

export class SwitchboardClient {
  #o: Required<Omit<ClientOptions, "reconnect" | "WebSocket" | "fetch">> & { reconnect: ReconnectOptions | false };
  #WS?: WebSocketCtor;
  #fetch?: typeof fetch;
  #listeners = new Map<keyof ClientEvents, Set<Listener<any>>>();
  #state: State = "closed";
  #wanted = false;
  #gen = 0;
  #attempt = 0;
  #conn: Conn | null = null;
  #token = "";
  /** false once the server answered that it has no `/tickets`. */
  #ticketsSupported = true;
  #timers = new Set<ReturnType<typeof setTimeout>>();
  #retryTimer?: ReturnType<typeof setTimeout>;
  #subs: Sub[] = [];
  /** Joined channels; re-joined on every (re)connect, before the resume. */
  #channels = new Map<string, ChannelEntry>();
  #held = new Map<string, { filter: Filter; count: number }>();
  #confirmed = new Set<string>();
  #requests = new Map<string, { resolve: (v: any) => void; reject: (e: SwitchboardError) => void; keys?: string[] }>();
  #nextId = 0;
  #seen: Recent<{ result?: unknown; done: boolean }>;
  #cursor: number | undefined;
  /** While a paged replay is under way, the `since` of its next page: live envelopes then do not move
   * the cursor past envelopes not yet replayed (a reconnect meanwhile resumes from here). */
  #paging: number | undefined;
  #welcome: Welcome | undefined;
  /** Seqs of envelopes whose handlers are running (count per seq): the stored resume point stays below them. */
  #inflight = new Map<number, number>();
  #stored: number | undefined;
  #storage: StorageLike | undefined;
  /** The current SSE stream was opened without `since` (a page load's first stream). */
  #sseLive = false;
  /** The current SSE stream is being reopened with `since` = a point kept by an earlier page load:
   * its envelopes are not handled, because the reopened stream replays them in order after the ones
   * this page missed (handling one now would move the cursor past those). */
  #sseReplacing = false;
  #retryPending = false;

  constructor(options: ClientOptions) {
    if (!options || typeof options.url !== "string") throw new TypeError("SwitchboardClient: `url` is required");
    if (typeof options.token !== "string" && typeof options.token !== "function") throw new TypeError("SwitchboardClient: `token` must be a string or a function");
    this.#o = {
      transport: "websocket",
      pingIntervalMs: options.transport === "sse" ? 30000 : 25000,
      pongTimeoutMs: 10000,
      connectTimeoutMs: 15000,
      resume: true,
      dedupeSize: 1000,
      tickets: true,
      reconnectOnWake: true,
      ...options,
      reconnect: options.reconnect === false ? false : { ...DEFAULTS, ...options.reconnect },
    } as any;
    if (this.#o.transport !== "websocket" && this.#o.transport !== "sse") throw new TypeError(`SwitchboardClient: unknown transport ${JSON.stringify(this.#o.transport)}`);
    this.#baseUrl("http"); // throws early on a bad URL
    this.#WS = options.WebSocket ?? (globalThis as any).WebSocket;
    this.#fetch = options.fetch ?? (globalThis.fetch ? globalThis.fetch.bind(globalThis) : undefined);
    this.#seen = new Recent(this.#o.dedupeSize);
    if (this.#o.resume !== true && this.#o.resume !== false && this.#o.resume !== "session") throw new TypeError(`SwitchboardClient: resume must be true, false or "session"`);
    if (this.#o.resume === "session") {
      try {
        this.#storage = options.storage ?? (globalThis as any).sessionStorage;
      } catch {
        // sessionStorage throws in some sandboxed frames: resume then works within this page only.
      }
    }
  }

  get state(): State {
    return this.#state;
  }
  /** The current (or last) connection's id, from its welcome. */
  get connectionId(): string | undefined {
    return this.#welcome?.connectionId;
  }
  get userId(): string | undefined {
    return this.#welcome?.userId;
  }
  /** The highest seq this client has received (resume point); undefined before the first welcome. */
  get lastSeq(): number | undefined {
    return this.#cursor;
  }

  on<E extends keyof ClientEvents>(event: E, listener: Listener<ClientEvents[E]>): () => void {
    let set = this.#listeners.get(event);
    if (!set) this.#listeners.set(event, (set = new Set()));
    set.add(listener);
    return () => this.off(event, listener);
  }
  off<E extends keyof ClientEvents>(event: E, listener: Listener<ClientEvents[E]>): void {
    this.#listeners.get(event)?.delete(listener);
  }
  #emit<E extends keyof ClientEvents>(event: E, value: ClientEvents[E]): void {
    for (const l of [...(this.#listeners.get(event) ?? [])]) {
      try {
        l(value);
      } catch (e) {
        if (event !== "error") this.#error("handler_error", `a "${event}" listener threw: ${(e as Error)?.message ?? e}`, e);
      }
    }
  }
  #error(code: string, message: string, details?: unknown): void {
    this.#emit("error", new SwitchboardError(code, message, details));
  }
  #setState(s: State): void {
    if (s !== this.#state) {
      this.#state = s;
      this.#emit("state", s);
    }
  }

  /** Opens the connection (idempotent); it is kept open, reconnecting as needed, until `close()`. */
  connect(): this {
    if (this.#wanted) return this;
    this.#wanted = true;
    this.#attempt = 0;
    this.#listenWake(true);
    this.#open("connecting");
    return this;
  }

  /** Closes the connection for good (until `connect()` is called again). */
  close(): void {
    this.#wanted = false;
    this.#listenWake(false);
    clearTimeout(this.#retryTimer);
    this.#retryPending = false;
    this.#drop();
    this.#setState("closed");
  }

  #listenWake(on: boolean): void {
    if (!this.#o.reconnectOnWake) return;
    const g = globalThis as any;
    const method = on ? "addEventListener" : "removeEventListener";
    if (typeof g[method] === "function") g[method]("online", this.#wake);
    if (typeof g.document?.[method] === "function") g.document[method]("visibilitychange", this.#wake);
  }

  /**
   * The browser is back online, or the page became visible: a backoff wait is cut short (the network
   * or the laptop is back, waiting longer only loses time), and an open socket is checked at once.
   */
  #wake = (ev?: { type?: string }): void => {
    if (!this.#wanted) return;
    if (ev?.type === "visibilitychange" && (globalThis as any).document?.visibilityState !== "visible") return;
    if (this.#state === "reconnecting" && this.#retryPending) {
      clearTimeout(this.#retryTimer);
      this.#retryPending = false;
      this.#open("reconnecting");
      return;
    }
    const conn = this.#conn;
    if (this.#state === "open" && conn?.kind === "websocket" && this.#o.pingIntervalMs > 0 && !(this.#pong !== undefined && this.#timers.has(this.#pong))) {
      const gen = this.#gen;
      conn.send("ping");
      this.#pong = this.#later(this.#o.pongTimeoutMs, () => this.#abandon(gen, 1006, `no pong within ${this.#o.pongTimeoutMs} ms`));
    }
  };

  /**
   * Subscribes to envelopes matching any of `filters`; `handler` runs once per envelope (duplicates are
   * dropped) and its return value is the ack result. Subscriptions are kept across reconnects.
   */
  subscribe<P = any>(filters: Filter | Filter[], handler: Handler<P>): Subscription {
    const list = (Array.isArray(filters) ? filters : [filters]).map(validateFilter);
    if (!list.length) throw new TypeError("subscribe: at least one filter is needed");
    if (typeof handler !== "function") throw new TypeError("subscribe: handler must be a function");
    let resolve!: () => void, reject!: (e: SwitchboardError) => void;
    const ready = new Promise<void>((res, rej) => ((resolve = res), (reject = rej)));
    ready.catch(() => {}); // a refusal is also reported as an "error" event
    const sub: Sub = { filters: list, keys: list.map(filterKey), handler, done: false, resolve, reject, active: true };
    this.#subs.push(sub);
    const added: Filter[] = [];
    list.forEach((f, i) => {
      const h = this.#held.get(sub.keys[i]);
      if (h) h.count++;
      else {
        this.#held.set(sub.keys[i], { filter: f, count: 1 });
        added.push(f);
      }
    });
    if (added.length) {
      if (this.#conn?.kind === "sse") this.#restartSoon();
      else if (this.#state === "open") this.#sendSubscribe(added, undefined);
    }
    this.#checkReady();
    return {
      filters: list,
      ready,
      get active() {
        return sub.active;
      },
      unsubscribe: () => this.#unsubscribe(sub),
    };
  }

  #unsubscribe(sub: Sub): void {
    if (!sub.active) return;
    sub.active = false;
    this.#subs = this.#subs.filter((s) => s !== sub);
    const removed: Filter[] = [];
    sub.keys.forEach((k) => {
      const h = this.#held.get(k)!;
      if (--h.count === 0) {
        this.#held.delete(k);
        this.#confirmed.delete(k);
        removed.push(h.filter);
      }
    });
    if (!sub.done) sub.reject(new SwitchboardError("unsubscribed", "unsubscribed before the server confirmed"));
    if (!removed.length) return;
    if (this.#conn?.kind === "sse") this.#restartSoon();
    else if (this.#state === "open")
      for (let i = 0; i < removed.length; i += MAX_FILTERS_PER_FRAME) this.#send({ type: "unsubscribe", filters: removed.slice(i, i + MAX_FILTERS_PER_FRAME) });
  }

  /**
   * Joins `channel` (the token's `channels` claim must allow it); `handler` (optional; several may be
   * added by joining again) runs once per envelope published to the channel, and its return value is
   * the ack result. Joins are kept across reconnects, until `leave(channel)`. Resolves when the server
   * has confirmed the join (on the next connection when not connected). WebSocket only.
   */
  join<P = any>(channel: string, handler?: Handler<P>): Promise<void> {
    if (this.#o.transport === "sse") return Promise.reject(new SwitchboardError("unsupported", "join() needs the websocket transport"));
    checkChannel("join", channel);
    if (handler !== undefined && typeof handler !== "function") throw new TypeError("join: handler must be a function");
    const e = this.#hold(channel, false);
    if (e.explicit) e.holds--; // one hold for every join() of a channel
    e.explicit = true;
    if (handler) e.handlers.add(handler);
    return e.ready;
  }

  /**
   * Joins `channel` for as long as the returned subscription is held: `leave()` on it removes this
   * handler, and the client leaves the channel once no subscription, `join()` or `presence()` holds it.
   * Made for components that mount and unmount (the React hooks use it). WebSocket only.
   */
  channel<P = any>(channel: string, handler: Handler<P>): ChannelSubscription {
    if (this.#o.transport === "sse") throw new SwitchboardError("unsupported", "channel() needs the websocket transport");
    checkChannel("channel", channel);
    if (typeof handler !== "function") throw new TypeError("channel: handler must be a function");
    const e = this.#hold(channel, false);
    const own: Handler<P> = (env) => handler(env); // its own identity: the same function twice is two subscriptions
    e.handlers.add(own);
    let active = true;
    return {
      channel,
      ready: e.ready,
      get active() {
        return active;
      },
      leave: () => {
        if (!active) return;
        active = false;
        e.handlers.delete(own);
        this.#release(e);
      },
    };
  }

  /**
   * Who is in `channel`: joins it with `presence: true` (or asks again for presence if it is joined
   * already) and returns a handle on the channel's members, kept current by the server's `presence`
   * frames and re-synced from a fresh snapshot after every reconnect. `close()` the handle when done.
   * WebSocket only.
   */
  presence<D = unknown>(channel: string): Presence<D> {
    if (this.#o.transport === "sse") throw new SwitchboardError("unsupported", "presence() needs the websocket transport");
    checkChannel("presence", channel);
    const e = this.#hold(channel, true);
    return new Presence<D>(e.presence!, () => this.#release(e), (err, event) => this.#error("handler_error", `a presence "${event}" listener threw: ${(err as Error)?.message ?? err}`, err));
  }

  /** Leaves `channel` at once, whatever holds it; its handlers stop running and its presence empties. */
  leave(channel: string): Promise<void> {
    const e = this.#channels.get(channel);
    if (!e) return Promise.resolve();
    this.#channels.delete(channel);
    clearTimeout(e.releaseTimer);
    e.presence?.end();
    if (this.#state !== "open" || !e.joined) return Promise.resolve();
    return this.#request({ type: "leave", channel }).then(() => undefined);
  }

  /** Takes a hold on `name`'s entry (made if new), joining it now when connected. */
  #hold(name: string, presence: boolean): ChannelEntry {
    let e = this.#channels.get(name);
    if (e) {
      clearTimeout(e.releaseTimer);
      e.releaseTimer = undefined;
    } else {
      let resolve!: () => void, reject!: (e: SwitchboardError) => void;
      const ready = new Promise<void>((res, rej) => ((resolve = res), (reject = rej)));
      ready.catch(() => {}); // also reported as an "error" event
      e = { name, handlers: new Set(), explicit: false, holds: 0, presence: undefined, joined: undefined, queued: false, watching: false, ready, settle: { resolve, reject, done: false } };
      this.#channels.set(name, e);
    }
    e.holds++;
    const upgrade = presence && !e.presence;
    if (presence) e.presence ??= new PresenceCore(name);
    if (this.#state === "open") {
      if (!e.joined && !e.queued) {
        // At the end of this task, so that holds taken together (a component's useChannel and
        // usePresence effects) send one join, with presence if any of them wants it.
        e.queued = true;
        const entry = e;
        queueMicrotask(() => {
          entry.queued = false;
          if (this.#channels.get(name) === entry && this.#state === "open" && !entry.joined) this.#sendJoin(entry);
        });
      } else if (e.joined && upgrade && !e.watching) {
        // Joined without presence on this connection: join again asking for it (the server answers
        // an existing membership's join with the snapshot), once the first join has its answer.
        const entry = e;
        const prev = e.joined;
        e.watching = true;
        prev.then(
          () => this.#channels.get(name) === entry && entry.joined === prev && this.#sendJoin(entry),
          () => {},
        );
      }
    }
    return e;
  }

  /** Lets go of one hold; with none left the channel is left one task later (unless held again by then). */
  #release(e: ChannelEntry): void {
    if (--e.holds > 0) return;
    clearTimeout(e.releaseTimer);
    e.releaseTimer = setTimeout(() => {
      e.releaseTimer = undefined;
      if (e.holds > 0 || this.#channels.get(e.name) !== e) return;
      this.#channels.delete(e.name);
      e.presence?.end();
      if (this.#state === "open" && e.joined) this.#request({ type: "leave", channel: e.name }).catch(() => {});
    }, 0);
  }

  /** Sends `e`'s join on the current connection; its `ok` carries the presence snapshot when asked. */
  #sendJoin(e: ChannelEntry): void {
    const presence = e.presence !== undefined;
    e.watching = presence;
    e.presence?.joining();
    const req = this.#request(presence ? { type: "join", channel: e.name, presence: true } : { type: "join", channel: e.name });
    e.joined = req;
    req.then(
      (ok: any) => {
        if (this.#channels.get(e.name) !== e || e.joined !== req) return;
        if (!e.settle.done) ((e.settle.done = true), e.settle.resolve());
        if (!presence || !e.presence) return;
        if (ok?.presence && typeof ok.presence === "object") e.presence.snapshot(ok.presence as PresenceSnapshot);
        else e.presence.fail(new SwitchboardError("unsupported", `the server sent no presence snapshot for \`${e.name}\` (a server without channel presence)`));
      },
      (err: SwitchboardError) => {
        // A connection that ended re-joins on the next one.
        if (err.code === "disconnected" || this.#channels.get(e.name) !== e || e.joined !== req) return;
        this.#channels.delete(e.name);
        clearTimeout(e.releaseTimer);
        if (!e.settle.done) ((e.settle.done = true), e.settle.reject(err));
        e.presence?.fail(err);
        this.#emit("error", err);
      },
    );
  }

  /**
   * Publishes to every other joined connection of `channel` (the token's `publishChannels` claim
   * must allow it); resolves with the totals once their acks are in. WebSocket only.
   */
  publish(channel: string, event: string, payload?: unknown, options: { timeoutMs?: number } = {}): Promise<ChannelTotals> {
    if (this.#o.transport === "sse") return Promise.reject(new SwitchboardError("unsupported", "publish() needs the websocket transport"));
    if (this.#state !== "open") return Promise.reject(new SwitchboardError("not_connected", "not connected"));
    return this.#request({ type: "publish", channel, event, payload, ...options }).then((ok: any) => ok.totals as ChannelTotals);
  }

  /** Sends `data` upstream (a `message` frame, for the backend's webhook); resolves when the server accepts it. WebSocket only. */
  send(data: unknown): Promise<void> {
    if (this.#o.transport === "sse") return Promise.reject(new SwitchboardError("unsupported", "send() needs the websocket transport"));
    if (this.#state !== "open") return Promise.reject(new SwitchboardError("not_connected", "not connected"));
    return this.#request({ type: "message", data }).then(() => undefined);
  }

  // ---- connection lifecycle ----

  #baseUrl(scheme: "http" | "ws"): URL {
    const loc = (globalThis as any).location?.href;
    const u = new URL(this.#o.url, loc);
    if (!/^(http|ws)s?:$/.test(u.protocol)) throw new TypeError(`SwitchboardClient: url must be http(s) or ws(s), got ${u.protocol}`);
    const secure = u.protocol === "https:" || u.protocol === "wss:";
    u.protocol = scheme + (secure ? "s:" : ":");
    u.search = "";
    u.hash = "";
    if (!u.pathname.endsWith("/")) u.pathname += "/";
    return u;
  }

  #clear(t: ReturnType<typeof setTimeout> | undefined): void {
    if (t === undefined) return;
    clearTimeout(t);
    this.#timers.delete(t);
  }

  #later(ms: number, fn: () => void): ReturnType<typeof setTimeout> {
    const t = setTimeout(() => {
      this.#timers.delete(t);
      fn();
    }, ms);
    this.#timers.add(t);
    return t;
  }

  async #open(state: State): Promise<void> {
    this.#setState(state);
    const gen = ++this.#gen;
    let token: string;
    try {
      const t = this.#o.token;
      token = typeof t === "function" ? await t() : t;
      if (typeof token !== "string" || !token) throw new Error("the token provider returned no token");
    } catch (e) {
      if (gen !== this.#gen || !this.#wanted) return;
      this.#error("token_error", `could not get a token: ${(e as Error)?.message ?? e}`, e);
      this.#closed(gen, 1006, "token provider failed");
      return;
    }
    if (gen !== this.#gen || !this.#wanted) return;
    this.#token = token;
    this.#connectTimer = this.#later(this.#o.connectTimeoutMs, () => {
      if (gen === this.#gen && this.#state !== "open") this.#abandon(gen, 1006, `no welcome within ${this.#o.connectTimeoutMs} ms`);
    });
    const credential = await this.#credential(gen, token);
    if (!credential || gen !== this.#gen || !this.#wanted) return;
    try {
      this.#conn = this.#o.transport === "sse" ? this.#openSse(gen, credential) : this.#openWs(gen, credential);
    } catch (e) {
      this.#error("transport_error", `could not open a connection: ${(e as Error)?.message ?? e}`, e);
      this.#closed(gen, 1006, "could not open");
    }
  }

  /**
   * What goes in the connection URL: a one-time ticket for `token` when the server issues them, else
   * the token itself. `undefined` when the attempt is over (refused, superseded, or failed and
   * already reported).
   */
  async #credential(gen: number, token: string): Promise<[name: "ticket" | "token", value: string] | undefined> {
    const f = this.#fetch;
    if (!this.#o.tickets || !this.#ticketsSupported || !f) return ["token", token];
    const u = this.#baseUrl("http");
    u.pathname += "tickets";
    let res: Response;
    let body: any;
    try {
      res = await f(u.toString(), { method: "POST", headers: { authorization: `Bearer ${token}` }, cache: "no-store" });
      body = await res.json().catch(() => undefined);
    } catch (e) {
      if (gen !== this.#gen || !this.#wanted) return undefined;
      this.#error("transport_error", `POST /tickets failed: ${(e as Error)?.message ?? e}`, e);
      this.#closed(gen, 1006, "tickets request failed");
      return undefined;
    }
    if (gen !== this.#gen || !this.#wanted) return undefined;
    if (res.ok && typeof body?.ticket === "string") return ["ticket", body.ticket];
    if (res.status === 404 || res.status === 405) {
      // An older server: the token goes in the URL, as it did before tickets existed.
      this.#ticketsSupported = false;
      return ["token", token];
    }
    const err = serverError(body, `POST /tickets answered ${res.status}`);
    this.#error(err.code, err.message, body);
    // As for a refused connect: an expired token (401), 429 and 5xx are retried with a fresh token.
    this.#closed(gen, [400, 403].includes(res.status) ? 4500 : 1006, `HTTP ${res.status} ${err.code}`);
    return undefined;
  }

  /** Stops the current connection without reporting anything. */
  #drop(): void {
    this.#gen++;
    this.#sseReplacing = false;
    for (const t of this.#timers) clearTimeout(t);
    this.#timers.clear();
    const c = this.#conn;
    this.#conn = null;
    this.#lost();
    c?.close();
  }

  /** Closes the current connection from the client's side and handles it as a drop. */
  #abandon(gen: number, code: number, reason: string): void {
    if (gen !== this.#gen) return;
    this.#conn?.close();
    this.#closed(gen, code, reason);
  }

  /** SSE carries its filters in the URL: a change reopens the stream (once per tick), resuming from the cursor. */
  #restartSoon(): void {
    if (this.#restartQueued) return;
    this.#restartQueued = true;
    queueMicrotask(() => {
      this.#restartQueued = false;
      if (this.#conn?.kind !== "sse") return;
      this.#drop();
      this.#open(this.#state === "open" ? "reconnecting" : this.#state);
    });
  }
  #restartQueued = false;

  #lost(): void {
    this.#confirmed.clear();
    for (const e of this.#channels.values()) {
      e.joined = undefined;
      e.watching = false;
      e.presence?.lost();
    }
    for (const [id, r] of this.#requests) {
      this.#requests.delete(id);
      if (!r.keys) r.reject(new SwitchboardError("disconnected", "the connection closed before the server replied"));
    }
  }

  /** A connection ended (by the server, the network, or a failed attempt). */
  #closed(gen: number, code: number, reason: string): void {
    if (gen !== this.#gen) return;
    this.#drop();
    const o = this.#o.reconnect;
    const retry = this.#wanted && o !== false && shouldReconnect(code) && this.#attempt < (o.maxAttempts ?? Infinity);
    this.#emit("close", { code, reason, reconnect: retry });
    if (!retry) {
      if (this.#wanted && o !== false && shouldReconnect(code)) this.#error("closed", `gave up after ${this.#attempt} attempts`);
      else if (this.#wanted && !shouldReconnect(code)) this.#error("closed", `the server closed the connection for good (${code}${reason ? ": " + reason : ""})`, { code, reason });
      this.#wanted = false;
      this.#setState("closed");
      return;
    }
    // 4001: token expired, retry at once with a fresh one; 4029: flooding, back off harder.
    const delay = code === 4001 && this.#attempt === 0 ? 0 : backoffDelay(this.#attempt + (code === 4029 ? 3 : 0), o);
    this.#attempt++;
    this.#setState("reconnecting");
    this.#retryPending = true;
    this.#retryTimer = setTimeout(() => {
      this.#retryPending = false;
      if (this.#wanted) this.#open("reconnecting");
    }, delay);
  }

  #openWs(gen: number, [name, value]: ["ticket" | "token", string]): Conn {
    if (!this.#WS) throw new SwitchboardError("unsupported", "no WebSocket implementation: pass options.WebSocket");
    const u = this.#baseUrl("ws");
    u.searchParams.set(name, value);
    const ws = new this.#WS(u.toString());
    ws.onmessage = (ev) => {
      if (gen !== this.#gen) return;
      if (typeof ev.data === "string") this.#frame(gen, ev.data);
    };
    ws.onclose = (ev) => this.#closed(gen, ev.code, ev.reason || "");
    ws.onerror = () => {};
    if (this.#o.pingIntervalMs > 0) {
      const ping = () => {
        if (gen !== this.#gen) return;
        // One ping outstanding at a time (a wake may have sent one): its pong clears the one timer.
        if (ws.readyState === 1 && !(this.#pong !== undefined && this.#timers.has(this.#pong))) {
          ws.send("ping");
          this.#pong = this.#later(this.#o.pongTimeoutMs, () => this.#abandon(gen, 1006, `no pong within ${this.#o.pongTimeoutMs} ms`));
        }
        this.#later(this.#o.pingIntervalMs, ping);
      };
      this.#later(this.#o.pingIntervalMs, ping);
    }
    return {
      kind: "websocket",
      send: (f) => ws.readyState === 1 && ws.send(f),
      close: () => {
        ws.onclose = ws.onmessage = null;
        try {
          ws.close(1000);
        } catch {
          /* already closed */
        }
      },
    };
  }
  #pong?: ReturnType<typeof setTimeout>;
  #connectTimer?: ReturnType<typeof setTimeout>;

  #openSse(gen: number, [name, value]: ["ticket" | "token", string]): Conn {
    const f = this.#fetch;
    if (!f) throw new SwitchboardError("unsupported", "no fetch implementation: pass options.fetch");
    const u = this.#baseUrl("http");
    u.pathname += "sse";
    u.searchParams.set(name, value);
    u.searchParams.set("filters", JSON.stringify([...this.#held.values()].map((h) => h.filter)));
    // `since` rather than a Last-Event-ID header: a custom header would need a CORS preflight.
    if (this.#o.resume && this.#cursor !== undefined) u.searchParams.set("since", String(this.#cursor));
    this.#sseLive = this.#cursor === undefined;
    const headers = { accept: "text/event-stream" };
    const abort = new AbortController();
    const keys = [...this.#held.keys()];
    let idle: ReturnType<typeof setTimeout> | undefined;
    const alive = () => {
      if (!this.#o.pingIntervalMs) return;
      this.#clear(idle);
      const ms = this.#o.pingIntervalMs + this.#o.pongTimeoutMs;
      idle = this.#later(ms, () => this.#abandon(gen, 1006, `nothing received for ${ms} ms`));
    };
    (async () => {
      const res = await f(u.toString(), { headers, signal: abort.signal, cache: "no-store" });
      if (!res.ok || !res.body) {
        let body: unknown;
        try {
          body = await res.json();
        } catch {
          /* not JSON */
        }
        const err = serverError(body, `GET /sse answered ${res.status}`);
        this.#error(err.code, err.message, body);
        // Refusals that no retry can fix end the client; the rest (401 expired, 429, 5xx) are retried.
        return this.#closed(gen, [400, 403, 404, 405].includes(res.status) ? 4500 : 1006, `HTTP ${res.status} ${err.code}`);
      }
      alive();
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "",
        data: string[] = [];
      for (;;) {
        const { value, done } = await reader.read();
        if (done || gen !== this.#gen) break;
        alive();
        buf += value;
        // A trailing \r may be the first half of \r\n: keep it for the next chunk.
        const hold = buf.endsWith("\r");
        const lines = (hold ? buf.slice(0, -1) : buf).split(/\r\n|\r|\n/);
        buf = lines.pop()! + (hold ? "\r" : "");
        for (const line of lines) {
          if (gen !== this.#gen) break; // dropped by a frame of this chunk: the rest is not ours
          if (line === "") {
            if (data.length) this.#frame(gen, data.join("\n"), keys);
            data = [];
          } else if (line.startsWith(":")) continue;
          else {
            const i = line.indexOf(":");
            const field = i < 0 ? line : line.slice(0, i);
            const v = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
            if (field === "data") data.push(v);
          }
        }
      }
      this.#closed(gen, 1006, "the event stream ended");
    })().catch((e) => {
      if (gen !== this.#gen) return;
      this.#error("transport_error", `event stream failed: ${(e as Error)?.message ?? e}`, e);
      this.#closed(gen, 1006, "event stream failed");
    });
    return { kind: "sse", send: () => {}, close: () => abort.abort() };
  }

  // ---- frames ----

  #send(frame: object): void {
    this.#conn?.send(JSON.stringify(frame));
  }

  #request(frame: Record<string, unknown>, keys?: string[]): Promise<unknown> {
    const id = `sb${++this.#nextId}`;
    return new Promise((resolve, reject) => {
      this.#requests.set(id, { resolve, reject, keys });
      this.#send({ ...frame, id });
    });
  }

  /** Sends subscribe frames for `filters` (at most 50 a frame); `since` only on the last, so one replay covers them all. */
  #sendSubscribe(filters: Filter[], since: number | undefined): void {
    for (let i = 0; i < filters.length; i += MAX_FILTERS_PER_FRAME) {
      const chunk = filters.slice(i, i + MAX_FILTERS_PER_FRAME);
      const last = i + MAX_FILTERS_PER_FRAME >= filters.length;
      const frame: Record<string, unknown> = { type: "subscribe", filters: chunk };
      if (last && since !== undefined) frame.since = since;
      const keys = chunk.map(filterKey);
      this.#request(frame, keys).then(
        () => this.#confirm(keys, []),
        (e: SwitchboardError) => {
          const skipped = new Set<number>(((e.details as any)?.skipped ?? []).map((s: any) => s.index));
          this.#confirm(keys.filter((_, j) => !skipped.has(j)), skipped.size ? keys.filter((_, j) => skipped.has(j)) : keys, e);
        },
      );
    }
  }

  #confirm(ok: string[], refused: string[], err?: SwitchboardError): void {
    for (const k of ok) if (this.#held.has(k)) this.#confirmed.add(k);
    if (err) {
      this.#emit("error", err);
      for (const s of this.#subs) if (!s.done && s.keys.some((k) => refused.includes(k))) ((s.done = true), s.reject(err));
    }
    this.#checkReady();
  }

  #checkReady(): void {
    for (const s of this.#subs) if (!s.done && s.keys.every((k) => this.#confirmed.has(k))) ((s.done = true), s.resolve());
  }

  #frame(gen: number, raw: string, sseKeys?: string[]): void {
    if (raw === "pong") {
      this.#clear(this.#pong);
      return;
    }
    let f: any;
    try {
      f = JSON.parse(raw);
    } catch {
      return this.#error("protocol_error", `unreadable frame: ${raw.slice(0, 100)}`);
    }
    if (!f || typeof f !== "object") return;
    if (typeof f.envelopeId === "string") {
      if (sseKeys !== undefined && this.#sseReplacing) return; // the reopened stream replays it
      return void this.#envelope(gen, f as Envelope);
    }
    if (f.type === "welcome") return this.#onWelcome(f as Welcome, sseKeys);
    if (f.type === "gap") return this.#emit("gap", f as Gap);
    if (f.type === "presence" && typeof f.channel === "string") return this.#channels.get(f.channel)?.presence?.frame(f as PresenceFrame);
    if (f.type === "replay_more" && typeof f.since === "number") return this.#replayMore(f.since, sseKeys !== undefined || this.#conn?.kind === "sse");
    if ((f.type === "ok" || f.type === "error") && typeof f.id === "string" && this.#requests.has(f.id)) {
      const r = this.#requests.get(f.id)!;
      this.#requests.delete(f.id);
      return f.type === "ok" ? r.resolve(f) : r.reject(serverError(f, "refused"));
    }
    if (f.type === "error") this.#emit("error", serverError(f, "error frame"));
  }

  #onWelcome(w: Welcome, sseKeys?: string[]): void {
    this.#welcome = w;
    this.#clear(this.#connectTimer);
    // The first welcome sets the resume point: from then on nothing matching is missed. With
    // `resume: "session"` a point kept by an earlier page load of this tab comes first. A welcome seq
    // below it means the server lost its history (e.g. a local dev server restarted without storage).
    let sseCatchUp = false;
    if (this.#cursor === undefined) {
      const kept = this.#loadSeq(w.userId);
      this.#cursor = kept !== undefined && kept < w.seq ? kept : w.seq;
      // An SSE stream carries `since` in its URL, and the user (whose point it is) is known only now.
      sseCatchUp = sseKeys !== undefined && this.#sseLive && this.#cursor < w.seq;
    } else if (w.seq < this.#cursor) this.#cursor = w.seq;
    this.#persist();
    // A new connection's resume starts from the cursor; its own pages set this again.
    this.#paging = undefined;
    const since = this.#o.resume ? this.#cursor : undefined;
    const gen = this.#gen;
    this.#later(5000, () => gen === this.#gen && (this.#attempt = 0)); // stable: reset the backoff
    this.#setState("open");
    this.#emit("welcome", w);
    if (sseKeys) {
      this.#confirm(sseKeys, []);
      if (sseCatchUp && this.#o.resume) {
        // Reopen with since = the kept point. Envelopes already on their way in this stream (the
        // same chunk as the welcome can carry live ones) are left to that replay.
        this.#sseReplacing = true;
        this.#restartSoon();
      }
    } else {
      // Joins first: the hub handles a socket's frames in order, so the resume below replays the
      // channels' envelopes too.
      for (const e of this.#channels.values()) this.#sendJoin(e);
      const all = [...this.#held.values()].map((h) => h.filter);
      if (all.length) this.#sendSubscribe(all, since);
      else if (this.#channels.size && since !== undefined) this.#request({ type: "subscribe", filters: [], since }).catch(() => {});
    }
  }

  /**
   * A replay page ended with more history after `since` (the server bounds each page). Over a socket
   * the next page is asked for at once; over SSE the server ends the stream and the reconnect resumes
   * from `since`.
   */
  #replayMore(since: number, sse: boolean): void {
    this.#paging = since;
    if (this.#cursor === undefined || this.#cursor > since) this.#cursor = since;
    if (sse) return;
    this.#request({ type: "subscribe", filters: [], since }).then(
      () => {
        if (this.#paging === since) this.#paging = undefined;
      },
      () => {},
    );
  }

  async #envelope(gen: number, env: Envelope): Promise<void> {
    const moves = this.#paging === undefined || env.replayed === true;
    if (moves && typeof env.seq === "number" && (this.#cursor === undefined || env.seq > this.#cursor)) this.#cursor = env.seq;
    const connectionId = this.#welcome?.connectionId;
    const prior = this.#seen.get(env.envelopeId);
    if (prior) {
      if (prior.done) this.#ack(gen, connectionId, env.envelopeId, prior.result);
      return;
    }
    const entry: { result?: unknown; done: boolean } = { done: false };
    this.#seen.set(env.envelopeId, entry);
    const seq = typeof env.seq === "number" ? env.seq : undefined;
    if (seq !== undefined) this.#inflight.set(seq, (this.#inflight.get(seq) ?? 0) + 1);
    this.#emit("envelope", env);
    const channel = typeof env.channel === "string" ? this.#channels.get(env.channel) : undefined;
    const handlers = env.channel !== undefined ? (channel ? [...channel.handlers] : []) : this.#subs.filter((s) => s.filters.some((f) => matches(f, env))).map((s) => s.handler);
    const outcomes = await Promise.allSettled(handlers.map(async (h) => h(env)));
    if (seq !== undefined) {
      const n = this.#inflight.get(seq)! - 1;
      if (n > 0) this.#inflight.set(seq, n);
      else this.#inflight.delete(seq);
      this.#persist();
    }
    let result: unknown = undefined;
    for (const o of outcomes) {
      if (o.status === "rejected") {
        const message = (o.reason as Error)?.message ?? String(o.reason);
        this.#error("handler_error", `handler failed for envelope ${env.envelopeId}: ${message}`, o.reason);
        result = { error: message };
        break;
      }
      if (result === undefined) result = o.value;
    }
    entry.done = true;
    entry.result = result;
    this.#ack(gen, connectionId, env.envelopeId, result);
  }

  // ---- resume across page loads ----

  #seqKey(userId: string): string {
    return `switchboard:seq:${this.#baseUrl("http").href}:${userId}`;
  }

  /** The resume point an earlier page load of this tab kept for `userId`, if any. */
  #loadSeq(userId: string): number | undefined {
    if (!this.#storage) return undefined;
    try {
      const v = this.#storage.getItem(this.#seqKey(userId));
      const n = v === null ? NaN : Number(v);
      return Number.isSafeInteger(n) && n >= 0 ? n : undefined;
    } catch {
      return undefined;
    }
  }

  /**
   * Keeps the resume point for the next page load: the cursor, but below every envelope whose
   * handler has not finished, so a reload while a handler runs gets that envelope again rather than
   * never (at least once across page loads; exactly once within one).
   */
  #persist(): void {
    const userId = this.#welcome?.userId;
    if (!this.#storage || userId === undefined || this.#cursor === undefined) return;
    let point = this.#cursor;
    for (const s of this.#inflight.keys()) if (s - 1 < point) point = s - 1;
    if (point === this.#stored) return;
    try {
      this.#storage.setItem(this.#seqKey(userId), String(point));
      this.#stored = point;
    } catch {
      // Storage full or denied: the resume point is kept in memory only.
    }
  }

  #ack(gen: number, connectionId: string | undefined, envelopeId: string, result: unknown): void {
    const frame: Record<string, unknown> = { type: "ack", envelopeId };
    if (result !== undefined) frame.result = result;
    let body: string;
    try {
      body = JSON.stringify(frame);
    } catch (e) {
      body = JSON.stringify({ type: "ack", envelopeId, result: { error: `ack result is not JSON: ${(e as Error)?.message ?? e}` } });
    }
    // An ack only counts on the connection that received the envelope.
    if (gen !== this.#gen) return;
    if (this.#conn?.kind !== "sse") return this.#conn?.send(body);
    const u = this.#baseUrl("http");
    u.pathname += "ack";
    const { type: _t, ...rest } = JSON.parse(body);
    this.#fetch!(u.toString(), {
      method: "POST",
      headers: { authorization: `Bearer ${this.#token}`, "content-type": "application/json" },
      body: JSON.stringify({ connectionId, ...rest }),
    }).then(
      async (r) => {
        if (!r.ok) {
          const b = await r.json().catch(() => undefined);
          const err = serverError(b, `POST /ack answered ${r.status}`);
          // As over a socket: an ack nobody waits for (replayed, timed out) is not an error, nor is
          // one for a stream that has ended meanwhile (a replay page ends its stream; a reconnect).
          if (err.code !== "unknown_envelope" && err.code !== "connection_not_found") this.#error(err.code, err.message, b);
        }
      },
      (e) => this.#error("transport_error", `POST /ack failed: ${(e as Error)?.message ?? e}`, e),
    );
  }
}
