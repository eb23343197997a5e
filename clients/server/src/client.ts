import { SwitchboardError } from "./errors.js";
import { mintToken } from "./token.js";
import type {
  ChannelPublish,
  ChannelPublishResult,
  Connection,
  ConnectionList,
  MembersPage,
  MultiPublishResult,
  PublishInput,
  PublishResult,
  UserPublish,
  UsersPublish,
  Json,
} from "./types.js";

/** How failed attempts are retried. */
export interface RetryOptions {
  /** Attempts in all, the first included (default 4; 1 turns retries off). */
  attempts?: number;
  /** First delay in ms (default 200), doubled per retry with full jitter, up to `maxDelayMs` (default 3000). */
  minDelayMs?: number;
  maxDelayMs?: number;
}

export interface SwitchboardOptions {
  /** The Worker's URL, e.g. `https://switchboard.example.com`. */
  url: string;
  /** The Worker's `JWT_SECRET`: the SDK mints its own short-lived publish tokens from it. */
  secret?: string;
  /** Or a publish token (or a function returning one, called before every request). */
  token?: string | (() => string | Promise<string>);
  retry?: RetryOptions;
  /**
   * Longest wait for one HTTP attempt, in ms. Default: the publish's `timeoutMs` (or 30 s, the server's
   * default cap) plus 10 s for publishes, and 10 s for everything else.
   */
  requestTimeoutMs?: number;
  /** A `fetch` implementation (default: the global one). */
  fetch?: typeof fetch;
}

/** Publish tokens minted from `secret` live this long and are renewed a minute before they expire. */
const MINTED_TOKEN_SECONDS = 600;
const DEFAULT_ACK_WAIT_MS = 30_000;
const REQUEST_GRACE_MS = 10_000;
/** How long past the ack wait an `inProgress` answer is asked again (the Worker's own hop grace is 2 s). */
const POLL_GRACE_MS = 2_000;

/**
 * The backend's client for a Switchboard Worker: publish and read the acks, the connection API and the
 * channel members API. Uses only `fetch`, WebCrypto and timers, so it runs in Node 20+ and Workers (both
 * tested), and in any runtime with those web APIs.
 *
 * Every `publish` carries an `Idempotency-Key` (yours, or a random one per call), and network errors,
 * 429 and 5xx are retried with exponential backoff and full jitter using the same key: the Worker delivers
 * a key once, so a retry never delivers twice.
 */
export class Switchboard {
  readonly url: string;
  #secret?: string;
  #token?: string | (() => string | Promise<string>);
  #minted?: { token: string; renewAt: number };
  #retry: Required<RetryOptions>;
  #requestTimeoutMs?: number;
  #fetch: typeof fetch;

  constructor(options: SwitchboardOptions) {
    let url: URL;
    try {
      url = new URL(options.url);
    } catch {
      throw new SwitchboardError("invalid_argument", `url must be an absolute http(s) URL, got ${JSON.stringify(options.url)}`);
    }
    if (url.protocol !== "http:" && url.protocol !== "https:") throw new SwitchboardError("invalid_argument", "url must be http(s)");
    this.url = url.toString().replace(/\/+$/, "");
    if (!options.secret && !options.token) throw new SwitchboardError("invalid_argument", "give secret (JWT_SECRET) or token (a publish token)");
    this.#secret = options.secret;
    this.#token = options.token;
    const r = options.retry ?? {};
    this.#retry = { attempts: r.attempts ?? 4, minDelayMs: r.minDelayMs ?? 200, maxDelayMs: r.maxDelayMs ?? 3000 };
    if (!Number.isInteger(this.#retry.attempts) || this.#retry.attempts < 1) throw new SwitchboardError("invalid_argument", "retry.attempts must be a whole number >= 1");
    this.#requestTimeoutMs = options.requestTimeoutMs;
    const f = options.fetch ?? globalThis.fetch;
    if (typeof f !== "function") throw new SwitchboardError("invalid_argument", "no fetch: pass options.fetch");
    this.#fetch = f.bind(globalThis);
  }

  /**
   * Publishes an envelope and resolves with the acks: to one user (`userId`, optionally one
   * `connectionId`), to many (`userIds`), or to a channel's members (`channel`).
   *
   * ```ts
   * const r = await sb.publish({ userId: "alice", type: "chat", payload: { text: "hi" } });
   * r.results; // what alice's connections acked, e.g. [{ seen: true }]
   * ```
   */
  publish<R = Json, P = unknown>(input: UserPublish<P>): Promise<PublishResult<R>>;
  publish<R = Json, P = unknown>(input: UsersPublish<P>): Promise<MultiPublishResult<R>>;
  publish<R = Json, P = unknown>(input: ChannelPublish<P>): Promise<ChannelPublishResult<R>>;
  async publish(input: PublishInput): Promise<PublishResult | MultiPublishResult | ChannelPublishResult> {
    const targets = ["userId", "userIds", "channel"].filter((k) => (input as unknown as Record<string, unknown>)[k] !== undefined);
    if (targets.length !== 1) throw new SwitchboardError("invalid_argument", "publish needs exactly one of userId, userIds and channel");
    const body: Record<string, unknown> = {};
    for (const k of ["userId", "userIds", "channel", "connectionId", "type", "payload", "timeoutMs"] as const) {
      const v = (input as unknown as Record<string, unknown>)[k];
      if (v !== undefined) body[k] = v;
    }
    const key = input.idempotencyKey ?? crypto.randomUUID();
    const timeout = this.#requestTimeoutMs ?? (input.timeoutMs ?? DEFAULT_ACK_WAIT_MS) + REQUEST_GRACE_MS;
    const text = JSON.stringify(body);
    const started = Date.now();
    let answer = await this.#request<PublishResult>("POST", "/publish", { body: text, key, timeout, signal: input.signal });
    // A retry can land while the first attempt's hub still waits for acks: the Worker then answers
    // `inProgress` with the envelope's id. Ask again (same key: nothing is delivered again) until the
    // final answer is stored or the ack wait the caller asked for is over.
    const pollUntil = started + (input.timeoutMs ?? DEFAULT_ACK_WAIT_MS) + POLL_GRACE_MS;
    let polls = 0;
    while (answer.inProgress && input.userId !== undefined && Date.now() < pollUntil) {
      await sleep(this.#delay(++polls), input.signal);
      answer = await this.#request<PublishResult>("POST", "/publish", { body: text, key, timeout, signal: input.signal });
    }
    return answer;
  }

  /** The user's open connections (WebSocket and SSE). */
  async connections(userId: string, options: { signal?: AbortSignal } = {}): Promise<Connection[]> {
    return (await this.connectionList(userId, options)).connections;
  }

  /** The user's open connections and the user's webhook queue (`webhooks: { backlog, dropped }`), in one answer. */
  async connectionList(userId: string, options: { signal?: AbortSignal } = {}): Promise<ConnectionList> {
    return this.#request<ConnectionList>("GET", `/users/${segment(userId, "userId")}/connections`, options);
  }

  /** Closes one connection of the user (close code 4002); 404 `connection_not_found` if it is not open. Resolves with the closed ids. */
  async closeConnection(userId: string, connectionId: string, options: { signal?: AbortSignal } = {}): Promise<string[]> {
    const path = `/users/${segment(userId, "userId")}/connections/${segment(connectionId, "connectionId")}`;
    return (await this.#request<{ closed: string[] }>("DELETE", path, options)).closed;
  }

  /** Closes every connection of the user (4002): "log out everywhere". Resolves with the closed ids. */
  async closeConnections(userId: string, options: { signal?: AbortSignal } = {}): Promise<string[]> {
    return (await this.#request<{ closed: string[] }>("DELETE", `/users/${segment(userId, "userId")}/connections`, options)).closed;
  }

  /** One page of a channel's member users (`limit` 1-1000, default 100 on the server). */
  async membersPage(channel: string, options: { limit?: number; cursor?: string | null; signal?: AbortSignal } = {}): Promise<MembersPage> {
    const q = new URLSearchParams();
    if (options.limit !== undefined) q.set("limit", String(options.limit));
    if (options.cursor) q.set("cursor", options.cursor);
    const qs = q.size ? `?${q}` : "";
    return this.#request<MembersPage>("GET", `/channels/${segment(channel, "channel")}/members${qs}`, { signal: options.signal });
  }

  /**
   * Every page of a channel's members, fetched as you iterate:
   * ```ts
   * for await (const page of sb.members("room:42", { limit: 500 })) console.log(page.members);
   * ```
   */
  async *members(channel: string, options: { limit?: number; signal?: AbortSignal } = {}): AsyncGenerator<MembersPage, void, undefined> {
    let cursor: string | null = null;
    do {
      const page: MembersPage = await this.membersPage(channel, { ...options, cursor });
      yield page;
      cursor = page.nextCursor;
    } while (cursor);
  }

  async #authorization(): Promise<string> {
    if (this.#token !== undefined) return typeof this.#token === "function" ? await this.#token() : this.#token;
    const now = Date.now();
    if (!this.#minted || now >= this.#minted.renewAt) {
      const token = await mintToken({ secret: this.#secret!, publish: true, expiresIn: MINTED_TOKEN_SECONDS, claims: { sub: "switchboard-server-sdk" } });
      this.#minted = { token, renewAt: now + (MINTED_TOKEN_SECONDS - 60) * 1000 };
    }
    return this.#minted.token;
  }

  /** Full jitter: a random delay up to min(max, min * 2^(n-1)), so many backends retrying do not move in step. */
  #delay(retry: number): number {
    const cap = Math.min(this.#retry.maxDelayMs, this.#retry.minDelayMs * 2 ** (retry - 1));
    return Math.round(Math.random() * cap);
  }

  async #request<T>(
    method: string,
    path: string,
    opts: { body?: string; key?: string; timeout?: number; signal?: AbortSignal } = {},
  ): Promise<T> {
    const timeout = opts.timeout ?? this.#requestTimeoutMs ?? REQUEST_GRACE_MS;
    let last: SwitchboardError | undefined;
    let retryAfterMs: number | undefined;
    for (let attempt = 1; attempt <= this.#retry.attempts; attempt++) {
      if (attempt > 1) await sleep(retryAfterMs ?? this.#delay(attempt - 1), opts.signal);
      retryAfterMs = undefined;
      const headers: Record<string, string> = { authorization: `Bearer ${await this.#authorization()}` };
      if (opts.body !== undefined) headers["content-type"] = "application/json";
      if (opts.key !== undefined) headers["idempotency-key"] = opts.key;
      const ctl = new AbortController();
      const onAbort = () => ctl.abort(opts.signal?.reason);
      opts.signal?.addEventListener("abort", onAbort, { once: true });
      const timer = setTimeout(() => ctl.abort(), timeout);
      try {
        const res = await this.#fetch(`${this.url}${path}`, { method, headers, body: opts.body, signal: ctl.signal });
        const text = await res.text();
        let json: unknown;
        try {
          json = text ? JSON.parse(text) : undefined;
        } catch {
          json = undefined;
        }
        if (res.ok) {
          if (json === undefined) throw new SwitchboardError("invalid_response", `${method} ${path} answered ${res.status} with a body that is not JSON`, { status: res.status, attempts: attempt });
          return json as T;
        }
        const e = json as { error?: unknown; message?: unknown } | undefined;
        const code = typeof e?.error === "string" ? e.error : `http_${res.status}`;
        const message = typeof e?.message === "string" ? e.message : text.slice(0, 200) || res.statusText;
        last = new SwitchboardError(code, `${method} ${path}: ${res.status} ${code}: ${message}`, { status: res.status, body: json, attempts: attempt });
        if (!last.retryable) throw last;
        retryAfterMs = parseRetryAfter(res.headers.get("retry-after"));
      } catch (err) {
        if (opts.signal?.aborted) throw opts.signal.reason ?? err;
        if (ctl.signal.aborted) {
          // Our own per-attempt timer fired (while connecting, or while reading the answer).
          last = new SwitchboardError("request_timeout", `${method} ${path}: no answer within ${timeout} ms`, { attempts: attempt, cause: err });
        } else if (err instanceof SwitchboardError) {
          throw err; // an answer that retrying cannot change
        } else {
          last = new SwitchboardError("network_error", `${method} ${path}: cannot reach ${this.url} (${describe(err)})`, { attempts: attempt, cause: err });
        }
      } finally {
        clearTimeout(timer);
        opts.signal?.removeEventListener("abort", onAbort);
      }
    }
    throw last!;
  }
}

function segment(value: string, name: string): string {
  if (typeof value !== "string" || !value) throw new SwitchboardError("invalid_argument", `${name} must be a non-empty string`);
  return encodeURIComponent(value);
}

function describe(e: unknown): string {
  const cause = (e as { cause?: { code?: string; message?: string } })?.cause;
  return cause?.code ?? cause?.message ?? (e instanceof Error ? e.message : String(e));
}

function parseRetryAfter(h: string | null): number | undefined {
  if (!h) return undefined;
  const s = Number(h);
  return Number.isFinite(s) && s >= 0 ? Math.min(s * 1000, 60_000) : undefined;
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const t = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(signal!.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
