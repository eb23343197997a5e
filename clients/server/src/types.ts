/** Any JSON value (payloads and ack results are whatever your app sends). */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** Fields every publish accepts. */
export interface PublishOptions<P = unknown> {
  /** The envelope's `type` (default `"message"` on the server). Client filters match on it. */
  type?: string;
  /** Any JSON value; default `null`. */
  payload?: P;
  /** How long the server waits for acks, in ms (0: don't wait). Default: the server's `ACK_TIMEOUT_MS` (5000). */
  timeoutMs?: number;
  /**
   * Makes retries safe: the same key for the same user is delivered once. Default: a fresh random key per
   * `publish` call, reused by that call's own retries. Pass your own (e.g. your event id) to make retries of
   * your whole job safe too.
   */
  idempotencyKey?: string;
  /** Abort the publish (and its retries). */
  signal?: AbortSignal;
}

export interface UserPublish<P = unknown> extends PublishOptions<P> {
  userId: string;
  /** Deliver to this one connection only (404 `connection_not_found` if it is not open). */
  connectionId?: string;
  userIds?: never;
  channel?: never;
}
export interface UsersPublish<P = unknown> extends PublishOptions<P> {
  /** Up to `MAX_PUBLISH_USERS` (default 1000) users; duplicates are merged. */
  userIds: string[];
  userId?: never;
  channel?: never;
  connectionId?: never;
}
export interface ChannelPublish<P = unknown> extends PublishOptions<P> {
  channel: string;
  userId?: never;
  userIds?: never;
  connectionId?: never;
}
export type PublishInput<P = unknown> = UserPublish<P> | UsersPublish<P> | ChannelPublish<P>;

/** One connection's ack. */
export interface Ack<R = Json> {
  connectionId: string;
  /** What the connection acked with. Absent only in a `trimmed` answer (a stored answer replayed without results). */
  result?: R;
}

/** The answer to a publish to one user. */
export interface PublishResult<R = Json> {
  envelopeId: string;
  /** The user's sequence number for this envelope. */
  seq: number;
  /** Connections whose filters matched and were sent the envelope. */
  clientCount: number;
  /** Ack results in arrival order (HopeFlow's shape). */
  results: R[];
  /** The same results with their connection. */
  acks: Ack<R>[];
  /** Matched connections that had not acked when the answer was made. */
  pending: string[];
  /** Matched connections that closed before acking. */
  closed: string[];
  /** Set when this answer is the stored answer of an earlier publish with the same `Idempotency-Key`: nothing was delivered again. */
  duplicate?: true;
  /**
   * Set when the first publish with this key has not stored its final answer yet (it is still waiting for
   * acks): the envelope was delivered once; ask again for the final answer (the SDK does).
   */
  inProgress?: true;
  /**
   * `"unknown"` when the first publish with this key never stored its final answer because its hub died
   * while it waited for acks (asked later than `ACK_TIMEOUT_MAX_MS` + 2 s after it): the envelope was
   * delivered once, its acks are lost.
   */
  outcome?: "unknown";
  /**
   * Set when this is a stored answer that was over `IDEMPOTENCY_MAX_RESPONSE_BYTES`: `results` is empty and
   * `acks` have no `result` (the first answer was whole). If even that was too large, `acks`, `pending` and
   * `closed` are empty too and only their counts remain (`acked`, `pendingCount`, `closedCount`).
   */
  trimmed?: true;
  /** In the smallest `trimmed` answer: how many connections acked. */
  acked?: number;
  /** In the smallest `trimmed` answer: how many were pending. */
  pendingCount?: number;
  /** In the smallest `trimmed` answer: how many closed before acking. */
  closedCount?: number;
}

/**
 * One user's entry in a `userIds` or channel answer: a one-user answer without `results` (each ack result is
 * in the entry's `acks` and in the answer's flat `results`, kept once).
 */
export interface UserResult<R = Json> extends Omit<PublishResult<R>, "results"> {
  userId: string;
  /**
   * Set when this user's ack results were left out to keep the answer within `PUBLISH_RESULTS_MAX_BYTES`:
   * its `acks` keep their `connectionId` (so who acked stays known) but not their `result`.
   */
  truncated?: true;
  /** On a channel publish: the user's connections that joined the channel. */
  joined?: number;
  /** On a channel publish: the user is kept as a member after its last connection closed (for its resume). */
  lingering?: true;
}

/** Totals of a multi-user or channel publish. */
export interface PublishTotals {
  users: number;
  succeeded: number;
  failed: number;
  clientCount: number;
  acked: number;
  pending: number;
  closed: number;
}

/** A user whose hub failed (or timed out) in a multi-user or channel publish. */
export interface UserFailure {
  userId: string;
  status: number;
  error: string;
  message: string;
}
/** A relay of a large channel that failed: all its users count as failed. */
export interface RelayFailure {
  relay: number | string;
  users: number;
  status: number;
  error: string;
  message: string;
}
export type UserOutcome<R = Json> = UserResult<R> | UserFailure;

/** The answer to a `userIds` publish. */
export interface MultiPublishResult<R = Json> {
  clientCount: number;
  /** Every user's ack results, flat, while they fit in `PUBLISH_RESULTS_MAX_BYTES`. */
  results: R[];
  totals: PublishTotals;
  /** Every user's outcome, in the order asked. */
  users: UserOutcome<R>[];
  /** True when ack results were left out (of `results`, or of an entry's `acks`) to stay within `PUBLISH_RESULTS_MAX_BYTES`; the totals stay exact. */
  truncated: boolean;
}

/** The answer to a channel publish. */
export interface ChannelPublishResult<R = Json> {
  channel: string;
  clientCount: number;
  results: R[];
  totals: PublishTotals & { pruned: number };
  /** At most 1,000 entries, failures first. */
  users: (UserOutcome<R> | RelayFailure)[];
  /** True when `users` or `results` were cut to 1,000 entries, or ack results left out to stay within `PUBLISH_RESULTS_MAX_BYTES` (the totals stay exact). */
  truncated: boolean;
}

/** Whether a per-user outcome is a failure entry. */
export function isFailure(u: UserOutcome<unknown> | RelayFailure): u is UserFailure | RelayFailure {
  return typeof (u as UserFailure).error === "string";
}

/** An open connection, from `GET /users/{userId}/connections`. */
export interface Connection {
  connectionId: string;
  transport: "websocket" | "sse";
  /** RFC 3339 times. */
  connectedAt: string;
  /** The connect token's `exp`. */
  expiresAt: string | null;
  /** When the hub will close it (the earlier of `exp` and `MAX_CONNECTION_SECONDS`). */
  closesAt: string | null;
  filters: Record<string, string>[];
  /** When the runtime last answered the connection's `ping`, or null. */
  lastPingAt: string | null;
}

/** A user's webhook queue, from `GET /users/{userId}/connections` (zeros when webhooks are off). */
export interface WebhookQueue {
  /** Events waiting to be delivered (at most `WEBHOOK_MAX_BACKLOG`, plus one coalesced event). */
  backlog: number;
  /** Events dropped for good so far (a permanent 4xx, or older than `WEBHOOK_MAX_AGE_SECONDS`). */
  dropped: number;
}

/** The whole answer of `GET /users/{userId}/connections`. */
export interface ConnectionList {
  connections: Connection[];
  webhooks: WebhookQueue;
}

/** One page of a channel's member users. */
export interface MembersPage {
  channel: string;
  /** Members in all, not just this page. */
  count: number;
  members: string[];
  /** Pass as `cursor` for the next page; null on the last one. */
  nextCursor: string | null;
}

interface CloudEvent<T extends string, D> {
  specversion: "1.0";
  /** Also the `webhook-id` header: the same on every retry, so deduplicate on it. */
  id: string;
  source: string;
  type: T;
  /** The user id. */
  subject: string;
  /** RFC 3339. */
  time: string;
  datacontenttype: "application/json";
  data: D;
}

export type ConnectionOpenedEvent = CloudEvent<
  "switchboard.connection.opened.v1",
  { connectionId: string; transport: "websocket" | "sse"; connectedAt: string }
>;
export type ConnectionClosedEvent = CloudEvent<
  "switchboard.connection.closed.v1",
  {
    connectionId: string;
    transport: "websocket" | "sse";
    code: number;
    reason: string;
    by: "client" | "backend" | "lifetime" | "abuse" | "error";
    connectedAt: string;
  }
>;
export type ClientMessageEvent<D = Json> = CloudEvent<
  "switchboard.client.message.v1",
  { connectionId: string; data: D; messageId?: Json }
>;
/** Connections opened or closed while the user's webhook queue was full (`WEBHOOK_MAX_BACKLOG`), merged into one event. */
export type ConnectionCoalescedEvent = CloudEvent<
  "switchboard.connection.coalesced.v1",
  {
    opened: number;
    closed: number;
    /** The user's open connection ids after the last of them. */
    connections: string[];
    firstAt: string;
    lastAt: string;
  }
>;
/** `PRESENCE_WEBHOOKS=on`: the user's first connection opened and the user was not online already. */
export type UserOnlineEvent = CloudEvent<
  "switchboard.user.online.v1",
  { connectionId: string; transport: "websocket" | "sse"; at: string }
>;
/** `PRESENCE_WEBHOOKS=on`: the user's last connection closed and none opened within `USER_OFFLINE_DEBOUNCE_SECONDS`. */
export type UserOfflineEvent = CloudEvent<
  "switchboard.user.offline.v1",
  {
    /** When the last connection closed (after a crash: when the hub noticed). */
    at: string;
    /** The `at` of the online this offline ends. */
    onlineAt: string;
  }
>;
/** Why a channel member event happened: `join` for joined; `leave`, `linger`, `kick` or `pruned` for left. */
export type ChannelMemberReason = "join" | "leave" | "linger" | "kick" | "pruned";
/** `PRESENCE_WEBHOOKS=on`: a user became a member of a channel. */
export type ChannelMemberJoinedEvent = CloudEvent<
  "switchboard.channel.member.joined.v1",
  { channel: string; userId: string; data?: Json; reason: ChannelMemberReason }
>;
/** `PRESENCE_WEBHOOKS=on`: a user stopped being a member of a channel. */
export type ChannelMemberLeftEvent = CloudEvent<
  "switchboard.channel.member.left.v1",
  { channel: string; userId: string; data?: Json; reason: ChannelMemberReason }
>;
/** Every event a Switchboard webhook delivers; narrow on `type`. */
export type SwitchboardEvent =
  | ConnectionOpenedEvent
  | ConnectionClosedEvent
  | ClientMessageEvent
  | ConnectionCoalescedEvent
  | UserOnlineEvent
  | UserOfflineEvent
  | ChannelMemberJoinedEvent
  | ChannelMemberLeftEvent;
