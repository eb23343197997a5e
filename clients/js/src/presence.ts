// Channel presence, the client's side: who is in a channel (users, not connections), kept from the
// snapshot in the join's `ok` and the `presence` frames that follow it. Pure state: the client feeds it
// frames; nothing here touches a socket, so the unit tests drive it directly.
import type { SwitchboardError } from "./index.js";

/** A user present in a channel, with the token's `presence` claim (left out when the user has none). */
export interface PresenceMember<D = unknown> {
  userId: string;
  data?: D;
}

/** The snapshot in the `ok` of a `join` with `presence: true`. */
export interface PresenceSnapshot {
  version: number;
  /** Every present user, also when `members` was truncated. */
  count: number;
  /** At most 100, sorted by userId. */
  members: PresenceMember[];
  truncated: boolean;
}

/** A `presence` frame: each changed user's final state since the previous frame of this channel. */
export interface PresenceFrame {
  type: "presence";
  channel: string;
  version: number;
  joined?: PresenceMember[];
  left?: string[];
  count: number;
}

/** What one snapshot or frame changed, as seen by this client. */
export interface PresenceChange<D = unknown> {
  /** Users that were not in `members` and now are. */
  joined: PresenceMember<D>[];
  /** Users that were in `members` and are no longer (with the data they had). */
  left: PresenceMember<D>[];
  /** Users already present whose data changed (a snapshot after a reconnect can bring this). */
  updated: PresenceMember<D>[];
  count: number;
  version: number | undefined;
  /** True when a snapshot (a join, or a re-join after a reconnect) was applied rather than a frame. */
  snapshot: boolean;
}

export interface PresenceEvents<D = unknown> {
  join: PresenceMember<D>;
  leave: PresenceMember<D>;
  change: PresenceChange<D>;
  error: SwitchboardError;
}

type Listener<T> = (value: T) => void;

const isMember = (m: unknown): m is PresenceMember =>
  !!m && typeof m === "object" && typeof (m as PresenceMember).userId === "string";

/**
 * One channel's presence state, shared by every `Presence` handle of that channel on one client.
 * The rule that keeps it right across reconnects and overlapping frames:
 * - a snapshot replaces the whole state (it is the server's truth at its `version`);
 * - a frame applies only when its version is above the version held; frames that arrive before the
 *   snapshot of the current join are held back and applied after it by the same rule;
 * - a user is in at most one of a frame's `joined`/`left`, with its final state, so applying a frame
 *   that overlaps the snapshot is idempotent.
 */
export class PresenceCore {
  readonly members = new Map<string, unknown>();
  count = 0;
  version: number | undefined = undefined;
  truncated = false;
  /** Whether the state is the server's as of the current connection (false until the join's snapshot). */
  synced = false;
  /** Frames received since the join was sent and before its snapshot. */
  #early: PresenceFrame[] = [];
  readonly handles = new Set<Presence<any>>();
  #ready: { promise: Promise<void>; resolve: () => void; reject: (e: SwitchboardError) => void; settled: boolean };

  constructor(readonly channel: string) {
    let resolve!: () => void, reject!: (e: SwitchboardError) => void;
    const promise = new Promise<void>((res, rej) => ((resolve = res), (reject = rej)));
    promise.catch(() => {}); // also reported as an "error" event
    this.#ready = { promise, resolve, reject, settled: false };
  }

  get ready(): Promise<void> {
    return this.#ready.promise;
  }

  /** A join with `presence: true` was sent on a new connection: hold frames until its snapshot. */
  joining(): void {
    this.synced = false;
    this.#early = [];
  }

  /** The connection ended: the state is kept (stale) until the next snapshot. */
  lost(): void {
    this.synced = false;
    this.#early = [];
  }

  /** Applies a snapshot (replacing the state), then the frames that came before it. */
  snapshot(s: PresenceSnapshot): void {
    const before = new Map(this.members);
    this.members.clear();
    for (const m of Array.isArray(s?.members) ? s.members : []) if (isMember(m)) this.members.set(m.userId, m.data);
    this.version = typeof s?.version === "number" ? s.version : undefined;
    this.count = typeof s?.count === "number" ? s.count : this.members.size;
    this.truncated = s?.truncated === true;
    this.synced = true;
    const early = this.#early;
    this.#early = [];
    for (const f of early) this.#apply(f);
    this.#emitChange(this.#diff(before, new Set([...before.keys(), ...this.members.keys()]), true));
    if (!this.#ready.settled) ((this.#ready.settled = true), this.#ready.resolve());
  }

  /** A `presence` frame of this channel. */
  frame(f: PresenceFrame): void {
    if (typeof f?.version !== "number") return;
    if (!this.synced) {
      this.#early.push(f);
      return;
    }
    const touched = new Set<string>();
    for (const u of Array.isArray(f.left) ? f.left : []) if (typeof u === "string") touched.add(u);
    for (const m of Array.isArray(f.joined) ? f.joined : []) if (isMember(m)) touched.add(m.userId);
    const before = new Map<string, unknown>();
    for (const u of touched) if (this.members.has(u)) before.set(u, this.members.get(u));
    if (this.#apply(f)) this.#emitChange(this.#diff(before, touched, false));
  }

  /** The version rule: a frame at or below the version held is already in the state. */
  #apply(f: PresenceFrame): boolean {
    if (this.version !== undefined && f.version <= this.version) return false;
    this.version = f.version;
    for (const userId of Array.isArray(f.left) ? f.left : []) if (typeof userId === "string") this.members.delete(userId);
    for (const m of Array.isArray(f.joined) ? f.joined : []) if (isMember(m)) this.members.set(m.userId, m.data);
    if (typeof f.count === "number") this.count = f.count;
    return true;
  }

  /** What changed for `touched` users between `before` (their earlier state) and now. */
  #diff(before: Map<string, unknown>, touched: Set<string>, snapshot: boolean): PresenceChange {
    const change: PresenceChange = { joined: [], left: [], updated: [], count: this.count, version: this.version, snapshot };
    for (const userId of touched) {
      const was = before.has(userId);
      const is = this.members.has(userId);
      if (!was && is) change.joined.push(member(userId, this.members.get(userId)));
      else if (was && !is) change.left.push(member(userId, before.get(userId)));
      else if (was && is && !sameJson(before.get(userId), this.members.get(userId))) change.updated.push(member(userId, this.members.get(userId)));
    }
    return change;
  }

  /** The join failed, or the server sent no snapshot. */
  fail(e: SwitchboardError): void {
    this.#early = [];
    if (!this.#ready.settled) ((this.#ready.settled = true), this.#ready.reject(e));
    for (const h of [...this.handles]) h._emit("error", e);
  }

  /** The channel was left: everyone is gone as far as this client knows. */
  end(): void {
    const change: PresenceChange = { joined: [], left: [...this.members].map(([u, d]) => member(u, d)), updated: [], count: 0, version: this.version, snapshot: false };
    this.members.clear();
    this.count = 0;
    this.synced = false;
    this.#early = [];
    if (change.left.length) this.#emitChange(change);
  }

  /** leave and join events per user, then one change (also for a frame that only moved the count). */
  #emitChange(change: PresenceChange): void {
    for (const h of [...this.handles]) {
      for (const m of change.left) h._emit("leave", m);
      for (const m of change.joined) h._emit("join", m);
      h._emit("change", change);
    }
  }
}

function member(userId: string, data: unknown): PresenceMember<any> {
  return data === undefined ? { userId } : { userId, data };
}

function sameJson(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  try {
    return JSON.stringify(a) === JSON.stringify(b);
  } catch {
    return false;
  }
}

/**
 * Who is in a channel, from `client.presence(channel)`. Handles of one channel share one state; each
 * handle has its own listeners and its own `close()`.
 */
export class Presence<D = unknown> {
  #core: PresenceCore;
  #listeners = new Map<keyof PresenceEvents, Set<Listener<any>>>();
  #release: (() => void) | undefined;
  #onError: (e: unknown, event: string) => void;

  /** @internal Made by `SwitchboardClient.presence()`. */
  constructor(core: PresenceCore, release: () => void, onListenerError: (e: unknown, event: string) => void) {
    this.#core = core;
    this.#release = release;
    this.#onError = onListenerError;
    core.handles.add(this);
  }

  get channel(): string {
    return this.#core.channel;
  }
  /** userId → the user's presence data (`undefined` when none). Read-only; it changes in place. */
  get members(): ReadonlyMap<string, D | undefined> {
    return this.#core.members as Map<string, D | undefined>;
  }
  /** How many users are present (exact, also when the snapshot's member list was truncated). */
  get count(): number {
    return this.#core.count;
  }
  /** The version of the state held (the snapshot's, then each applied frame's). */
  get version(): number | undefined {
    return this.#core.version;
  }
  /** The snapshot listed only the first 100 users: `members` is partial, `count` is exact. */
  get truncated(): boolean {
    return this.#core.truncated;
  }
  /** Whether the state is current for this connection (false while disconnected, until the re-join's snapshot). */
  get synced(): boolean {
    return this.#core.synced;
  }
  /** Resolves at the first snapshot; rejects if the join is refused or the server sends no snapshot. */
  get ready(): Promise<void> {
    return this.#core.ready;
  }
  /** False after `close()`. */
  get active(): boolean {
    return this.#release !== undefined;
  }

  on<E extends keyof PresenceEvents<D>>(event: E, listener: Listener<PresenceEvents<D>[E]>): () => void {
    let set = this.#listeners.get(event);
    if (!set) this.#listeners.set(event, (set = new Set()));
    set.add(listener);
    return () => this.off(event, listener);
  }
  off<E extends keyof PresenceEvents<D>>(event: E, listener: Listener<PresenceEvents<D>[E]>): void {
    this.#listeners.get(event)?.delete(listener);
  }
  /** @internal */
  _emit(event: keyof PresenceEvents, value: unknown): void {
    for (const l of [...(this.#listeners.get(event) ?? [])]) {
      try {
        l(value);
      } catch (e) {
        if (event !== "error") this.#onError(e, event);
      }
    }
  }

  /**
   * Stops this handle (its listeners stop). When no handle, `join()` or `channel()` holds the channel
   * any more, the client leaves it.
   */
  close(): void {
    const release = this.#release;
    if (!release) return;
    this.#release = undefined;
    this.#core.handles.delete(this);
    this.#listeners.clear();
    release();
  }
}
