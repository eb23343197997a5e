//! Settings, parsed once from the Worker's environment. Every setting has a safe default and a bad
//! value is an error that names the setting (answered as 500 `server_misconfigured`), never a silent
//! fallback. Pure: the environment is read through a lookup function so this is tested on the host.
//!
//! Why one file: it is the code twin of the README's settings table: one parser, read top to bottom,
//! with the checks between settings (ranges that depend on history or webhooks) next to the settings
//! they tie together; about half of it is the tests of those rules.

/// Who may call `/publish` and the connection API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishAuth {
    /// The token's `scope` claim must contain `publish` (the default).
    Scope,
    /// Any valid token may `POST /publish` to one user (`userId`), as in HopeFlow Realtime. Everything
    /// else a backend does (`userIds`, channels, the connection and member APIs) still needs the scope.
    AnyToken,
}

/// Which origins get `access-control-allow-origin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigins {
    Any,
    List(Vec<String>),
}

impl CorsOrigins {
    /// The `access-control-allow-origin` value for a request from `origin`, if any.
    pub fn allow(&self, origin: Option<&str>) -> Option<String> {
        match self {
            CorsOrigins::Any => Some("*".to_string()),
            CorsOrigins::List(list) => {
                let origin = origin?;
                list.iter().any(|o| o == origin).then(|| origin.to_string())
            }
        }
    }
}

/// Where and how the hub sends backend webhooks.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub url: String,
    pub secret: Vec<u8>,
    /// One attempt's time limit.
    pub timeout_ms: u64,
    /// Events older than this are dropped (with an error log) instead of retried.
    pub max_age_seconds: u64,
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// Events one user may have waiting (`WEBHOOK_MAX_BACKLOG`): further `message` frames are refused
    /// with `backlog_full`, and connection events are coalesced into one row.
    pub max_backlog: u64,
    /// Events per request (`WEBHOOK_BATCH_MAX`): 1 sends each event as a structured CloudEvent; more
    /// sends a CloudEvents JSON batch of up to this many, so a backlog drains faster than one per
    /// round trip.
    pub batch_max: usize,
}

/// User online/offline webhooks and the batched cross-user event path (`PRESENCE_WEBHOOKS=on`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceWebhookConfig {
    /// How long a user whose last connection closed stays online before `user.offline` is sent; a
    /// reconnect within it sends nothing (`USER_OFFLINE_DEBOUNCE_SECONDS`).
    pub offline_debounce_seconds: u64,
    /// Event shards (`events/{shard}` objects) the events of all users are spread over
    /// (`PRESENCE_WEBHOOK_SHARDS`); each sends its own batches.
    pub shards: u32,
    /// Events per batch request a shard sends (`PRESENCE_WEBHOOK_BATCH_MAX`).
    pub batch_max: usize,
    /// How long a shard gathers events before a flush, and the least time between its flushes
    /// (`PRESENCE_WEBHOOK_FLUSH_MS`).
    pub flush_ms: u64,
    /// Events one shard may hold (`PRESENCE_WEBHOOK_MAX_BACKLOG`); past it, hand-offs are refused and
    /// stay with their senders (a hub's outbox retries them), so nothing is dropped for room.
    pub max_backlog: u64,
}

impl Default for PresenceWebhookConfig {
    fn default() -> Self {
        PresenceWebhookConfig {
            offline_debounce_seconds: DEFAULT_USER_OFFLINE_DEBOUNCE_SECONDS,
            shards: DEFAULT_PRESENCE_WEBHOOK_SHARDS as u32,
            batch_max: DEFAULT_PRESENCE_WEBHOOK_BATCH_MAX as usize,
            flush_ms: DEFAULT_PRESENCE_WEBHOOK_FLUSH_MS,
            max_backlog: DEFAULT_PRESENCE_WEBHOOK_MAX_BACKLOG,
        }
    }
}

/// Every setting Switchboard reads. See the README's "Settings" table.
#[derive(Debug, Clone)]
pub struct Config {
    /// Secrets accepted for HS256: `JWT_SECRET`, then `JWT_SECRET_PREVIOUS` when set.
    pub jwt_secrets: Vec<Vec<u8>>,
    /// What every token must carry besides a valid signature (`iss`, `aud`), and what a connect
    /// token must (`exp`, its greatest TTL).
    pub token_rules: crate::core::auth::TokenRules,
    /// How long a connect ticket from `POST /tickets` stays valid, in seconds.
    pub ticket_seconds: u64,
    /// How long an `Idempotency-Key` is remembered, in seconds; 0 turns keys off.
    pub idempotency_seconds: u64,
    /// The largest publish answer stored whole for an `Idempotency-Key` retry; a larger one is stored
    /// trimmed (no ack results), so a delivered publish never fails on that write.
    pub idempotency_max_response_bytes: usize,
    /// Test-only fault injection (`TEST_FAULTS`: see [`TestFaults`]).
    pub test_faults: TestFaults,
    pub publish_auth: PublishAuth,
    pub ack_timeout_ms: u64,
    pub ack_timeout_max_ms: u64,
    pub cors_origins: CorsOrigins,
    pub max_publish_bytes: usize,
    pub max_frame_bytes: usize,
    pub max_frames_per_second: u32,
    /// How long envelopes (and idempotency keys) are kept for replay, in seconds; 0 keeps none.
    pub history_seconds: u64,
    /// How many envelopes per user are kept for replay; 0 keeps none.
    pub history_limit: u64,
    /// Seconds between keep-alive comments on idle SSE streams.
    pub sse_keepalive_seconds: u64,
    /// Open connections one user may hold; more are refused with 429.
    pub max_connections_per_user: usize,
    /// A connection's fixed lifetime in seconds (closed with 4003); 0 = no limit.
    pub max_connection_seconds: u64,
    /// Backend webhooks, when `WEBHOOK_URL` and `WEBHOOK_SECRET` are set.
    pub webhook: Option<WebhookConfig>,
    /// User online/offline and channel member webhooks, when `PRESENCE_WEBHOOKS=on` (needs `webhook`).
    pub presence_webhooks: Option<PresenceWebhookConfig>,
    /// Most users one publish may name with `userIds` (each is one subrequest).
    pub max_publish_users: usize,
    /// Most hops one step of a channel's fan-out makes (users, or relays below it).
    pub channel_fanout: usize,
    /// Most users one channel may have as members.
    pub max_channel_users: usize,
    /// How long a user stays a channel's member after its last joined connection closed (not left),
    /// so a client that reconnects and resumes gets what the channel published meanwhile.
    pub channel_linger_seconds: u64,
    /// Least time between two presence batches of one channel (`PRESENCE_INTERVAL_MS`); a channel
    /// with many watchers waits longer (see [`crate::core::presence::batch_interval_ms`]).
    pub presence_interval_ms: u64,
    /// How long past the ack timeout a user's hub (or a relay, per level below it) may take to answer
    /// a multi-user or channel hop before it counts as failed (`HOP_GRACE_MS`).
    pub hop_grace_ms: u64,
    /// `FAULT_INJECTION=on`: the socket frames `__panic` and `__trap` make the hub panic or trap, for
    /// the test that the Worker recovers from both, and `__old_attachment` gives the socket an
    /// attachment this build cannot read (`user_hub::faults`). Never set it in production.
    pub fault_injection: bool,
    /// Largest payload of a client `publish` frame (JSON text): each one is a history row at every
    /// member, so it is far below `MAX_FRAME_BYTES`.
    pub client_publish_max_bytes: usize,
    /// Client publishes per user per second, across the user's connections (bursts of twice that).
    pub client_publish_per_second: u32,
    /// Client publishes per channel per second, across publishers (bursts of twice that).
    pub channel_client_publish_per_second: u32,
    /// Publishes one channel root runs at once; more are refused with 429 `channel_busy`.
    pub channel_max_concurrent_publishes: usize,
    /// Joins of channels the user is not yet a member of, per user per minute (each may create a root).
    pub channel_joins_per_minute: u32,
    /// Largest ack `result` (JSON text); bigger acks are refused and not recorded.
    pub ack_result_max_bytes: usize,
    /// Detail bytes (results and per-user entries) in a `userIds` or channel answer.
    pub publish_results_max_bytes: usize,
    /// Envelopes one replay page reads.
    pub replay_page_envelopes: u64,
    /// Envelope bytes one replay page sends (at least one envelope).
    pub replay_page_bytes: usize,
    /// Bytes queued for an SSE client that is not reading before its stream is closed.
    pub sse_queue_max_bytes: usize,
}

/// Faults the end-to-end suite injects to prove recovery paths (never set in production).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TestFaults {
    /// `alarm`: the first alarm run of each hub object fails before doing anything.
    pub alarm: bool,
    /// `connect`: storing the first `connection.opened` event of each hub object fails, after the
    /// socket was accepted (a storage error at the worst moment).
    pub connect: bool,
}

impl Config {
    /// Whether envelopes are stored for replay.
    pub fn history_enabled(&self) -> bool {
        self.history_seconds > 0 && self.history_limit > 0
    }
}

pub const DEFAULT_ACK_TIMEOUT_MS: u64 = 5_000;
pub const DEFAULT_ACK_TIMEOUT_MAX_MS: u64 = 30_000;
pub const DEFAULT_MAX_PUBLISH_BYTES: usize = 1024 * 1024;
pub const DEFAULT_MAX_FRAME_BYTES: usize = 1024 * 1024;
pub const DEFAULT_MAX_FRAMES_PER_SECOND: u32 = 100;
pub const DEFAULT_HISTORY_SECONDS: u64 = 3_600;
pub const DEFAULT_HISTORY_LIMIT: u64 = 1_000;
pub const DEFAULT_SSE_KEEPALIVE_SECONDS: u64 = 15;
pub const DEFAULT_MAX_CONNECTIONS_PER_USER: u64 = 100;
pub const DEFAULT_WEBHOOK_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_WEBHOOK_MAX_AGE_SECONDS: u64 = 86_400;
pub const DEFAULT_WEBHOOK_RETRY_BASE_MS: u64 = 1_000;
pub const DEFAULT_WEBHOOK_RETRY_MAX_MS: u64 = 300_000;
pub const DEFAULT_CHANNEL_FANOUT: u64 = 500;
pub const DEFAULT_MAX_CHANNEL_USERS: u64 = 100_000;
pub const DEFAULT_CHANNEL_LINGER_SECONDS: u64 = 60;
pub const DEFAULT_JWT_SECRET_MIN_BYTES: u64 = 32;
/// The secret `.dev.vars.example` shows; it is public, so it is refused whatever its length.
const PLACEHOLDER_SECRET: &str = "replace-with-a-long-random-string";
pub const DEFAULT_TICKET_SECONDS: u64 = 30;
pub const DEFAULT_IDEMPOTENCY_SECONDS: u64 = 3_600;
pub const DEFAULT_IDEMPOTENCY_MAX_RESPONSE_BYTES: u64 = 1_000_000;
pub const DEFAULT_WEBHOOK_MAX_BACKLOG: u64 = 1_000;
pub const DEFAULT_WEBHOOK_BATCH_MAX: u64 = 1;
pub const DEFAULT_USER_OFFLINE_DEBOUNCE_SECONDS: u64 = 30;
pub const DEFAULT_PRESENCE_WEBHOOK_SHARDS: u64 = 8;
pub const DEFAULT_PRESENCE_WEBHOOK_BATCH_MAX: u64 = 100;
pub const DEFAULT_PRESENCE_WEBHOOK_FLUSH_MS: u64 = 1_000;
pub const DEFAULT_PRESENCE_WEBHOOK_MAX_BACKLOG: u64 = 100_000;
/// The largest value a Durable Object's SQLite row holds is 2 MB; a stored envelope or webhook event
/// carries a few hundred bytes around the payload, so payloads stay under this.
/// <https://developers.cloudflare.com/durable-objects/platform/limits/>
pub const MAX_STORED_BYTES: u64 = 1_900_000;
pub const DEFAULT_HOP_GRACE_MS: u64 = 2_000;
pub const DEFAULT_PRESENCE_INTERVAL_MS: u64 = 1_000;
/// The most `PRESENCE_DATA_MAX_BYTES` may be: a user's data rides in the URL of its join's hop to
/// the root, and in every presence frame and snapshot (up to 100 members' data in one snapshot).
pub const MAX_PRESENCE_DATA_BYTES: u64 = 4_096;
pub const DEFAULT_CLIENT_PUBLISH_MAX_BYTES: u64 = 16 * 1024;
pub const DEFAULT_CLIENT_PUBLISH_PER_SECOND: u64 = 10;
pub const DEFAULT_CHANNEL_CLIENT_PUBLISH_PER_SECOND: u64 = 100;
pub const DEFAULT_CHANNEL_MAX_CONCURRENT_PUBLISHES: u64 = 32;
pub const DEFAULT_CHANNEL_JOINS_PER_MINUTE: u64 = 60;
pub const DEFAULT_ACK_RESULT_MAX_BYTES: u64 = 16 * 1024;
pub const DEFAULT_PUBLISH_RESULTS_MAX_BYTES: u64 = 512 * 1024;
pub const DEFAULT_REPLAY_PAGE_ENVELOPES: u64 = 200;
pub const DEFAULT_REPLAY_PAGE_BYTES: u64 = 1024 * 1024;
pub const DEFAULT_SSE_QUEUE_MAX_BYTES: u64 = 1024 * 1024;

impl Config {
    /// Reads the settings through `lookup` (an environment variable or secret by name). Empty strings
    /// count as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, String> {
        let get = |name: &str| lookup(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());

        let secret = get("JWT_SECRET").ok_or_else(|| {
            "JWT_SECRET is not set: add it to .dev.vars locally or run `wrangler secret put JWT_SECRET`".to_string()
        })?;
        let mut jwt_secrets = vec![secret.into_bytes()];
        if let Some(previous) = get("JWT_SECRET_PREVIOUS") {
            jwt_secrets.push(previous.into_bytes());
        }
        // A short HS256 secret can be brute-forced offline from one token. The value is never echoed.
        let min_secret = number(&get, "JWT_SECRET_MIN_BYTES", DEFAULT_JWT_SECRET_MIN_BYTES, 0, 1024)? as usize;
        for (name, s) in ["JWT_SECRET", "JWT_SECRET_PREVIOUS"].iter().zip(&jwt_secrets) {
            if s.as_slice() == PLACEHOLDER_SECRET.as_bytes() {
                return Err(format!(
                    "{name} is still the placeholder from .dev.vars.example, which is public: set a random secret"
                ));
            }
            if s.len() < min_secret {
                return Err(format!(
                    "{name} is shorter than {min_secret} bytes (JWT_SECRET_MIN_BYTES): use a random secret of at least {min_secret} bytes, e.g. `openssl rand -base64 32`"
                ));
            }
        }
        let token_rules = crate::core::auth::TokenRules {
            issuer: get("JWT_ISSUER"),
            audience: get("JWT_AUDIENCE"),
            require_exp: flag(&get, "JWT_REQUIRE_EXP")?,
            max_ttl_seconds: number(&get, "JWT_MAX_TTL_SECONDS", 0, 0, 365 * 86_400)?,
            presence_data_max_bytes: number(
                &get,
                "PRESENCE_DATA_MAX_BYTES",
                crate::core::auth::DEFAULT_PRESENCE_DATA_MAX_BYTES as u64,
                4,
                MAX_PRESENCE_DATA_BYTES,
            )? as usize,
        };
        let ticket_seconds = number(&get, "TICKET_SECONDS", DEFAULT_TICKET_SECONDS, 1, 300)?;
        let mut test_faults = TestFaults::default();
        for fault in get("TEST_FAULTS").as_deref().unwrap_or("").split(',').map(str::trim).filter(|f| !f.is_empty()) {
            match fault {
                "alarm" => test_faults.alarm = true,
                "connect" => test_faults.connect = true,
                _ => {
                    return Err(
                        "TEST_FAULTS must be unset, or `alarm` and/or `connect` (for the test suite only)".into()
                    )
                }
            }
        }

        let publish_auth = match get("PUBLISH_AUTH").as_deref() {
            None | Some("scope") => PublishAuth::Scope,
            Some("any-token") => PublishAuth::AnyToken,
            Some(_) => return Err("PUBLISH_AUTH must be `scope` or `any-token`".into()),
        };

        let ack_timeout_ms = number(&get, "ACK_TIMEOUT_MS", DEFAULT_ACK_TIMEOUT_MS, 0, 300_000)?;
        let ack_timeout_max_ms =
            number(&get, "ACK_TIMEOUT_MAX_MS", DEFAULT_ACK_TIMEOUT_MAX_MS.max(ack_timeout_ms), 0, 300_000)?;
        if ack_timeout_max_ms < ack_timeout_ms {
            return Err(format!(
                "ACK_TIMEOUT_MAX_MS ({ack_timeout_max_ms}) must not be below ACK_TIMEOUT_MS ({ack_timeout_ms})"
            ));
        }

        let cors_origins = match get("CORS_ORIGINS") {
            None => CorsOrigins::Any,
            Some(v) if v == "*" => CorsOrigins::Any,
            Some(v) => {
                let list: Vec<String> = v
                    .split(',')
                    .map(|s| s.trim().trim_end_matches('/').to_string())
                    .filter(|s| !s.is_empty())
                    .collect();
                if list.iter().any(|o| !(o.starts_with("http://") || o.starts_with("https://"))) {
                    return Err(
                        "CORS_ORIGINS must be `*` or a comma-separated list of origins like https://app.example.com"
                            .into(),
                    );
                }
                CorsOrigins::List(list)
            }
        };

        let max_publish_bytes =
            number(&get, "MAX_PUBLISH_BYTES", DEFAULT_MAX_PUBLISH_BYTES as u64, 1024, 100 * 1024 * 1024)? as usize;
        let max_frame_bytes =
            number(&get, "MAX_FRAME_BYTES", DEFAULT_MAX_FRAME_BYTES as u64, 1024, 32 * 1024 * 1024)? as usize;
        let max_frames_per_second =
            number(&get, "MAX_FRAMES_PER_SECOND", DEFAULT_MAX_FRAMES_PER_SECOND as u64, 1, 100_000)? as u32;

        let history_seconds = number(&get, "HISTORY_SECONDS", DEFAULT_HISTORY_SECONDS, 0, 30 * 86_400)?;
        let history_limit = number(&get, "HISTORY_LIMIT", DEFAULT_HISTORY_LIMIT, 0, 100_000)?;
        let sse_keepalive_seconds = number(&get, "SSE_KEEPALIVE_SECONDS", DEFAULT_SSE_KEEPALIVE_SECONDS, 1, 3_600)?;

        let max_connections_per_user =
            number(&get, "MAX_CONNECTIONS_PER_USER", DEFAULT_MAX_CONNECTIONS_PER_USER, 1, 30_000)? as usize;
        let max_connection_seconds = number(&get, "MAX_CONNECTION_SECONDS", 0, 0, 365 * 86_400)?;
        let webhook = match (get("WEBHOOK_URL"), get("WEBHOOK_SECRET")) {
            (None, None) => None,
            (Some(_), None) => return Err("WEBHOOK_URL is set but WEBHOOK_SECRET is not: set both, or neither".into()),
            (None, Some(_)) => return Err("WEBHOOK_SECRET is set but WEBHOOK_URL is not: set both, or neither".into()),
            (Some(url), Some(secret)) => {
                if !(url.starts_with("https://") || url.starts_with("http://")) || url.contains(char::is_whitespace) {
                    return Err("WEBHOOK_URL must be an http(s) URL".into());
                }
                Some(WebhookConfig {
                    url,
                    secret: crate::core::webhook::parse_secret(&secret)?,
                    timeout_ms: number(&get, "WEBHOOK_TIMEOUT_MS", DEFAULT_WEBHOOK_TIMEOUT_MS, 100, 60_000)?,
                    max_age_seconds: number(
                        &get,
                        "WEBHOOK_MAX_AGE_SECONDS",
                        DEFAULT_WEBHOOK_MAX_AGE_SECONDS,
                        1,
                        30 * 86_400,
                    )?,
                    retry_base_ms: number(&get, "WEBHOOK_RETRY_BASE_MS", DEFAULT_WEBHOOK_RETRY_BASE_MS, 10, 3_600_000)?,
                    retry_max_ms: number(&get, "WEBHOOK_RETRY_MAX_MS", DEFAULT_WEBHOOK_RETRY_MAX_MS, 10, 86_400_000)?,
                    max_backlog: number(&get, "WEBHOOK_MAX_BACKLOG", DEFAULT_WEBHOOK_MAX_BACKLOG, 1, 100_000)?,
                    batch_max: number(&get, "WEBHOOK_BATCH_MAX", DEFAULT_WEBHOOK_BATCH_MAX, 1, 100)? as usize,
                })
            }
        };

        // Read (and checked) even while off, so a bad value is found before it is switched on.
        let presence = PresenceWebhookConfig {
            offline_debounce_seconds: number(
                &get,
                "USER_OFFLINE_DEBOUNCE_SECONDS",
                DEFAULT_USER_OFFLINE_DEBOUNCE_SECONDS,
                0,
                86_400,
            )?,
            shards: number(&get, "PRESENCE_WEBHOOK_SHARDS", DEFAULT_PRESENCE_WEBHOOK_SHARDS, 1, 1_024)? as u32,
            batch_max: number(&get, "PRESENCE_WEBHOOK_BATCH_MAX", DEFAULT_PRESENCE_WEBHOOK_BATCH_MAX, 1, 100)? as usize,
            flush_ms: number(&get, "PRESENCE_WEBHOOK_FLUSH_MS", DEFAULT_PRESENCE_WEBHOOK_FLUSH_MS, 0, 60_000)?,
            max_backlog: number(
                &get,
                "PRESENCE_WEBHOOK_MAX_BACKLOG",
                DEFAULT_PRESENCE_WEBHOOK_MAX_BACKLOG,
                100,
                10_000_000,
            )?,
        };
        let presence_webhooks = match get("PRESENCE_WEBHOOKS").as_deref() {
            None | Some("off") => None,
            Some("on") if webhook.is_none() => {
                return Err(
                    "PRESENCE_WEBHOOKS=on needs WEBHOOK_URL and WEBHOOK_SECRET (where to send the events)".into()
                )
            }
            Some("on") => Some(presence),
            Some(_) => return Err("PRESENCE_WEBHOOKS must be `on` or `off`".into()),
        };

        let max_publish_users =
            number(&get, "MAX_PUBLISH_USERS", 1_000, 1, crate::core::protocol::MAX_PUBLISH_USERS_LIMIT as u64)?
                as usize;

        let channel_fanout = number(&get, "CHANNEL_FANOUT", DEFAULT_CHANNEL_FANOUT, 2, 1_000)? as usize;
        let max_channel_users = number(&get, "MAX_CHANNEL_USERS", DEFAULT_MAX_CHANNEL_USERS, 1, 10_000_000)? as usize;

        let channel_linger_seconds = number(&get, "CHANNEL_LINGER_SECONDS", DEFAULT_CHANNEL_LINGER_SECONDS, 0, 86_400)?;
        let hop_grace_ms = number(&get, "HOP_GRACE_MS", DEFAULT_HOP_GRACE_MS, 0, 60_000)?;
        let presence_interval_ms = number(&get, "PRESENCE_INTERVAL_MS", DEFAULT_PRESENCE_INTERVAL_MS, 50, 60_000)?;

        let fault_injection = match get("FAULT_INJECTION").as_deref() {
            None | Some("off") => false,
            Some("on") => true,
            Some(other) => return Err(format!("FAULT_INJECTION must be `on` or `off`, not `{other}`")),
        };

        let idempotency_seconds = number(&get, "IDEMPOTENCY_SECONDS", DEFAULT_IDEMPOTENCY_SECONDS, 0, 30 * 86_400)?;
        let idempotency_max_response_bytes = number(
            &get,
            "IDEMPOTENCY_MAX_RESPONSE_BYTES",
            DEFAULT_IDEMPOTENCY_MAX_RESPONSE_BYTES,
            1024,
            MAX_STORED_BYTES,
        )? as usize;

        // Sizes the storage cannot hold would fail every such publish or message after the fact.
        if history_seconds > 0 && history_limit > 0 && max_publish_bytes as u64 > MAX_STORED_BYTES {
            return Err(format!(
                "MAX_PUBLISH_BYTES must be at most {MAX_STORED_BYTES} while history is on (a stored envelope is one SQLite value of at most 2 MB); set HISTORY_LIMIT=0 for larger publishes"
            ));
        }
        if webhook.is_some() && max_frame_bytes as u64 > MAX_STORED_BYTES {
            return Err(format!(
                "MAX_FRAME_BYTES must be at most {MAX_STORED_BYTES} while webhooks are on (a queued `message` event is one SQLite value of at most 2 MB)"
            ));
        }

        const MIB: u64 = 1024 * 1024;
        let client_publish_max_bytes =
            number(&get, "CLIENT_PUBLISH_MAX_BYTES", DEFAULT_CLIENT_PUBLISH_MAX_BYTES, 16, MIB)? as usize;
        let client_publish_per_second =
            number(&get, "CLIENT_PUBLISH_PER_SECOND", DEFAULT_CLIENT_PUBLISH_PER_SECOND, 1, 10_000)? as u32;
        let channel_client_publish_per_second =
            number(&get, "CHANNEL_CLIENT_PUBLISH_PER_SECOND", DEFAULT_CHANNEL_CLIENT_PUBLISH_PER_SECOND, 1, 100_000)?
                as u32;
        let channel_max_concurrent_publishes =
            number(&get, "CHANNEL_MAX_CONCURRENT_PUBLISHES", DEFAULT_CHANNEL_MAX_CONCURRENT_PUBLISHES, 1, 1_000)?
                as usize;
        let channel_joins_per_minute =
            number(&get, "CHANNEL_JOINS_PER_MINUTE", DEFAULT_CHANNEL_JOINS_PER_MINUTE, 1, 100_000)? as u32;
        let ack_result_max_bytes =
            number(&get, "ACK_RESULT_MAX_BYTES", DEFAULT_ACK_RESULT_MAX_BYTES, 16, MIB)? as usize;
        let publish_results_max_bytes =
            number(&get, "PUBLISH_RESULTS_MAX_BYTES", DEFAULT_PUBLISH_RESULTS_MAX_BYTES, 1024, 16 * MIB)? as usize;
        let replay_page_envelopes = number(&get, "REPLAY_PAGE_ENVELOPES", DEFAULT_REPLAY_PAGE_ENVELOPES, 1, 10_000)?;
        let replay_page_bytes = number(&get, "REPLAY_PAGE_BYTES", DEFAULT_REPLAY_PAGE_BYTES, 1024, 16 * MIB)? as usize;
        let sse_queue_max_bytes =
            number(&get, "SSE_QUEUE_MAX_BYTES", DEFAULT_SSE_QUEUE_MAX_BYTES, 64 * 1024, 64 * MIB)? as usize;

        Ok(Config {
            fault_injection,
            client_publish_max_bytes,
            client_publish_per_second,
            channel_client_publish_per_second,
            channel_max_concurrent_publishes,
            channel_joins_per_minute,
            ack_result_max_bytes,
            publish_results_max_bytes,
            replay_page_envelopes,
            replay_page_bytes,
            sse_queue_max_bytes,
            jwt_secrets,
            token_rules,
            ticket_seconds,
            idempotency_seconds,
            idempotency_max_response_bytes,
            test_faults,
            channel_linger_seconds,
            hop_grace_ms,
            presence_interval_ms,
            channel_fanout,
            max_channel_users,
            max_publish_users,
            max_connections_per_user,
            max_connection_seconds,
            webhook,
            presence_webhooks,
            history_seconds,
            history_limit,
            sse_keepalive_seconds,
            publish_auth,
            ack_timeout_ms,
            ack_timeout_max_ms,
            cors_origins,
            max_publish_bytes,
            max_frame_bytes,
            max_frames_per_second,
        })
    }
}

/// A whole-number setting. The error names the setting and the range, never the value: it is
/// answered to unauthenticated callers.
fn number(get: &impl Fn(&str) -> Option<String>, name: &str, default: u64, min: u64, max: u64) -> Result<u64, String> {
    match get(name) {
        None => Ok(default),
        Some(v) => match v.parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(format!("{name} must be a whole number from {min} to {max}")),
        },
    }
}

/// A `true`/`false` setting (unset: false).
fn flag(get: &impl Fn(&str) -> Option<String>, name: &str) -> Result<bool, String> {
    match get(name).as_deref() {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") => Ok(true),
        Some(_) => Err(format!("{name} must be `true` or `false`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A secret long enough for JWT_SECRET_MIN_BYTES.
    const S: &str = "a-test-secret-that-is-long-enough-0123";

    fn parse(pairs: &[(&str, &str)]) -> Result<Config, String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults() {
        let c = parse(&[("JWT_SECRET", S)]).unwrap();
        assert_eq!(c.jwt_secrets, vec![S.as_bytes().to_vec()]);
        assert_eq!(c.token_rules, crate::core::auth::TokenRules::default());
        assert_eq!((c.ticket_seconds, c.idempotency_seconds, c.idempotency_max_response_bytes), (30, 3600, 1_000_000));
        assert_eq!(c.test_faults, TestFaults::default());
        assert_eq!(c.publish_auth, PublishAuth::Scope);
        assert_eq!(c.ack_timeout_ms, 5000);
        assert_eq!(c.ack_timeout_max_ms, 30000);
        assert_eq!(c.cors_origins, CorsOrigins::Any);
        assert_eq!(c.max_publish_bytes, 1 << 20);
        assert_eq!(c.max_frame_bytes, 1 << 20);
        assert_eq!((c.history_seconds, c.history_limit, c.sse_keepalive_seconds), (3600, 1000, 15));
        assert!(c.history_enabled());
        assert_eq!(
            (c.client_publish_max_bytes, c.client_publish_per_second, c.channel_client_publish_per_second),
            (16384, 10, 100)
        );
        assert_eq!((c.channel_max_concurrent_publishes, c.channel_joins_per_minute), (32, 60));
        assert_eq!((c.ack_result_max_bytes, c.publish_results_max_bytes), (16384, 512 * 1024));
        assert_eq!((c.replay_page_envelopes, c.replay_page_bytes, c.sse_queue_max_bytes), (200, 1 << 20, 1 << 20));
        assert_eq!(c.hop_grace_ms, 2000);
    }

    #[test]
    fn presence_settings_have_defaults_and_bounds() {
        let c = parse(&[("JWT_SECRET", S)]).unwrap();
        assert_eq!((c.presence_interval_ms, c.token_rules.presence_data_max_bytes), (1000, 1024));
        let c =
            parse(&[("JWT_SECRET", S), ("PRESENCE_INTERVAL_MS", "50"), ("PRESENCE_DATA_MAX_BYTES", "4096")]).unwrap();
        assert_eq!((c.presence_interval_ms, c.token_rules.presence_data_max_bytes), (50, 4096));
        for (name, bad) in [
            ("PRESENCE_INTERVAL_MS", "49"),
            ("PRESENCE_INTERVAL_MS", "60001"),
            ("PRESENCE_INTERVAL_MS", "1s"),
            ("PRESENCE_DATA_MAX_BYTES", "3"),
            ("PRESENCE_DATA_MAX_BYTES", "4097"),
        ] {
            let e = parse(&[("JWT_SECRET", S), (name, bad)]).unwrap_err();
            assert!(e.to_string().contains(name), "{e}");
        }
    }

    #[test]
    fn hop_grace_is_a_setting_with_bounds() {
        assert_eq!(parse(&[("JWT_SECRET", S), ("HOP_GRACE_MS", "0")]).unwrap().hop_grace_ms, 0);
        let e = parse(&[("JWT_SECRET", S), ("HOP_GRACE_MS", "60001")]).unwrap_err();
        assert!(e.to_string().contains("HOP_GRACE_MS"), "{e}");
        assert!(parse(&[("JWT_SECRET", S), ("HOP_GRACE_MS", "soon")]).is_err());
    }

    #[test]
    fn webhook_needs_url_and_secret_together() {
        assert!(parse(&[("JWT_SECRET", S)]).unwrap().webhook.is_none());
        assert!(parse(&[("JWT_SECRET", S), ("WEBHOOK_URL", "https://b.example/hook")])
            .unwrap_err()
            .contains("WEBHOOK_SECRET"));
        assert!(parse(&[("JWT_SECRET", S), ("WEBHOOK_SECRET", "x")]).unwrap_err().contains("WEBHOOK_URL"));
        assert!(parse(&[("JWT_SECRET", S), ("WEBHOOK_URL", "ftp://x"), ("WEBHOOK_SECRET", "x")])
            .unwrap_err()
            .contains("WEBHOOK_URL"));
        let c = parse(&[
            ("JWT_SECRET", S),
            ("WEBHOOK_URL", "https://b.example/hook"),
            ("WEBHOOK_SECRET", "whsec_aGVsbG8="),
        ])
        .unwrap();
        let w = c.webhook.unwrap();
        assert_eq!(w.secret, b"hello");
        assert_eq!((w.timeout_ms, w.max_age_seconds, w.retry_base_ms), (10_000, 86_400, 1_000));
        assert_eq!(c.max_connections_per_user, 100);
        assert_eq!(c.max_connection_seconds, 0);
    }

    #[test]
    fn zero_turns_history_off() {
        assert!(!parse(&[("JWT_SECRET", S), ("HISTORY_LIMIT", "0")]).unwrap().history_enabled());
        assert!(!parse(&[("JWT_SECRET", S), ("HISTORY_SECONDS", "0")]).unwrap().history_enabled());
    }

    #[test]
    fn missing_secret_names_the_setting() {
        assert!(parse(&[]).unwrap_err().contains("JWT_SECRET"));
        assert!(parse(&[("JWT_SECRET", "  ")]).unwrap_err().contains("JWT_SECRET"));
    }

    #[test]
    fn previous_secret_is_accepted_second() {
        let (new, old) = (format!("new-{S}"), format!("old-{S}"));
        let c = parse(&[("JWT_SECRET", &new), ("JWT_SECRET_PREVIOUS", &old)]).unwrap();
        assert_eq!(c.jwt_secrets, vec![new.into_bytes(), old.into_bytes()]);
    }

    #[test]
    fn bad_values_are_errors_naming_the_setting() {
        for (k, v) in [
            ("PUBLISH_AUTH", "everyone"),
            ("ACK_TIMEOUT_MS", "-1"),
            ("ACK_TIMEOUT_MS", "5s"),
            ("MAX_PUBLISH_BYTES", "10"),
            ("MAX_FRAME_BYTES", "lots"),
            ("CORS_ORIGINS", "example.com"),
            ("MAX_FRAMES_PER_SECOND", "0"),
            ("HISTORY_SECONDS", "forever"),
            ("HISTORY_LIMIT", "1000000"),
            ("SSE_KEEPALIVE_SECONDS", "0"),
            ("MAX_CONNECTIONS_PER_USER", "0"),
            ("MAX_CONNECTION_SECONDS", "-5"),
            ("MAX_PUBLISH_USERS", "20000"),
            ("CLIENT_PUBLISH_MAX_BYTES", "2000000"),
            ("CLIENT_PUBLISH_PER_SECOND", "0"),
            ("CHANNEL_CLIENT_PUBLISH_PER_SECOND", "x"),
            ("CHANNEL_MAX_CONCURRENT_PUBLISHES", "0"),
            ("CHANNEL_JOINS_PER_MINUTE", "0"),
            ("ACK_RESULT_MAX_BYTES", "1"),
            ("PUBLISH_RESULTS_MAX_BYTES", "100"),
            ("REPLAY_PAGE_ENVELOPES", "0"),
            ("REPLAY_PAGE_BYTES", "10"),
            ("SSE_QUEUE_MAX_BYTES", "1000"),
        ] {
            let err = parse(&[("JWT_SECRET", S), (k, v)]).unwrap_err();
            assert!(err.contains(k), "{err}");
        }
        let err = parse(&[("JWT_SECRET", S), ("ACK_TIMEOUT_MS", "9000"), ("ACK_TIMEOUT_MAX_MS", "100")]).unwrap_err();
        assert!(err.contains("ACK_TIMEOUT_MAX_MS"));
    }

    #[test]
    fn any_token_and_cors_list() {
        let c = parse(&[
            ("JWT_SECRET", S),
            ("PUBLISH_AUTH", "any-token"),
            ("CORS_ORIGINS", "https://a.example, http://localhost:5173/"),
        ])
        .unwrap();
        assert_eq!(c.publish_auth, PublishAuth::AnyToken);
        assert_eq!(c.cors_origins.allow(Some("https://a.example")).as_deref(), Some("https://a.example"));
        assert_eq!(c.cors_origins.allow(Some("http://localhost:5173")).as_deref(), Some("http://localhost:5173"));
        assert_eq!(c.cors_origins.allow(Some("https://evil.example")), None);
        assert_eq!(c.cors_origins.allow(None), None);
        assert_eq!(CorsOrigins::Any.allow(None).as_deref(), Some("*"));
    }

    #[test]
    fn timeout_max_follows_a_larger_default() {
        let c = parse(&[("JWT_SECRET", S), ("ACK_TIMEOUT_MS", "60000")]).unwrap();
        assert_eq!(c.ack_timeout_max_ms, 60000);
    }

    #[test]
    fn short_secrets_are_refused_without_echoing_them() {
        for pairs in
            [vec![("JWT_SECRET", "abc-short-secret")], vec![("JWT_SECRET", S), ("JWT_SECRET_PREVIOUS", "old-short")]]
        {
            let err = parse(&pairs).unwrap_err();
            assert!(err.contains("32 bytes"), "{err}");
            assert!(!err.contains("abc-short") && !err.contains("old-short"), "{err}");
        }
        assert!(parse(&[("JWT_SECRET", "abc"), ("JWT_SECRET_MIN_BYTES", "0")]).is_ok());
    }

    #[test]
    fn misconfiguration_never_echoes_the_value() {
        for (k, v) in [
            ("PUBLISH_AUTH", "secret-ish-value"),
            ("CORS_ORIGINS", "secret-ish-value"),
            ("ACK_TIMEOUT_MS", "secret-ish-value"),
            ("JWT_REQUIRE_EXP", "secret-ish-value"),
            ("TEST_FAULTS", "secret-ish-value"),
        ] {
            let err = parse(&[("JWT_SECRET", S), (k, v)]).unwrap_err();
            assert!(err.contains(k) && !err.contains(v), "{err}");
        }
        let err = parse(&[("JWT_SECRET", S), ("WEBHOOK_URL", "ftp://secret-ish-value"), ("WEBHOOK_SECRET", "x")])
            .unwrap_err();
        assert!(err.contains("WEBHOOK_URL") && !err.contains("secret-ish-value"), "{err}");
    }

    #[test]
    fn token_rules_ticket_and_idempotency_settings() {
        let c = parse(&[
            ("JWT_SECRET", S),
            ("JWT_ISSUER", "https://auth.example"),
            ("JWT_AUDIENCE", "switchboard"),
            ("JWT_REQUIRE_EXP", "true"),
            ("JWT_MAX_TTL_SECONDS", "600"),
            ("TICKET_SECONDS", "5"),
            ("IDEMPOTENCY_SECONDS", "0"),
            ("TEST_FAULTS", "alarm, connect"),
        ])
        .unwrap();
        assert_eq!(c.token_rules.issuer.as_deref(), Some("https://auth.example"));
        assert_eq!(c.token_rules.audience.as_deref(), Some("switchboard"));
        assert!(c.token_rules.require_exp);
        assert_eq!(c.token_rules.max_ttl_seconds, 600);
        assert_eq!((c.ticket_seconds, c.idempotency_seconds), (5, 0));
        assert!(c.test_faults.alarm && c.test_faults.connect);
        for (k, v) in
            [("TICKET_SECONDS", "0"), ("IDEMPOTENCY_MAX_RESPONSE_BYTES", "3000000"), ("JWT_MAX_TTL_SECONDS", "x")]
        {
            assert!(parse(&[("JWT_SECRET", S), (k, v)]).unwrap_err().contains(k));
        }
    }

    #[test]
    fn webhook_backlog_and_batch() {
        let hook = [("JWT_SECRET", S), ("WEBHOOK_URL", "https://b.example/h"), ("WEBHOOK_SECRET", "x")];
        let w = parse(&hook).unwrap().webhook.unwrap();
        assert_eq!((w.max_backlog, w.batch_max), (1000, 1));
        let mut more = hook.to_vec();
        more.extend([("WEBHOOK_MAX_BACKLOG", "4"), ("WEBHOOK_BATCH_MAX", "50")]);
        let w = parse(&more).unwrap().webhook.unwrap();
        assert_eq!((w.max_backlog, w.batch_max), (4, 50));
        let mut bad = hook.to_vec();
        bad.push(("WEBHOOK_BATCH_MAX", "101"));
        assert!(parse(&bad).unwrap_err().contains("WEBHOOK_BATCH_MAX"));
    }

    #[test]
    fn presence_webhooks_are_opt_in_and_need_a_webhook() {
        let hook = [("JWT_SECRET", S), ("WEBHOOK_URL", "https://b.example/h"), ("WEBHOOK_SECRET", "x")];
        assert!(parse(&hook).unwrap().presence_webhooks.is_none());
        let mut on = hook.to_vec();
        on.push(("PRESENCE_WEBHOOKS", "on"));
        let p = parse(&on).unwrap().presence_webhooks.unwrap();
        assert_eq!(
            p,
            PresenceWebhookConfig {
                offline_debounce_seconds: 30,
                shards: 8,
                batch_max: 100,
                flush_ms: 1000,
                max_backlog: 100_000
            }
        );
        assert_eq!(p, PresenceWebhookConfig::default());
        let err = parse(&[("JWT_SECRET", S), ("PRESENCE_WEBHOOKS", "on")]).unwrap_err();
        assert!(err.contains("PRESENCE_WEBHOOKS") && err.contains("WEBHOOK_URL"), "{err}");
        assert!(parse(&[("JWT_SECRET", S), ("PRESENCE_WEBHOOKS", "yes")]).unwrap_err().contains("PRESENCE_WEBHOOKS"));
        for (k, v) in [
            ("USER_OFFLINE_DEBOUNCE_SECONDS", "86401"),
            ("PRESENCE_WEBHOOK_SHARDS", "0"),
            ("PRESENCE_WEBHOOK_BATCH_MAX", "101"),
            ("PRESENCE_WEBHOOK_FLUSH_MS", "x"),
            ("PRESENCE_WEBHOOK_MAX_BACKLOG", "99"),
        ] {
            // Checked while off too.
            assert!(parse(&[("JWT_SECRET", S), (k, v)]).unwrap_err().contains(k), "{k}");
        }
        let mut tuned = on.clone();
        tuned.extend([("USER_OFFLINE_DEBOUNCE_SECONDS", "0"), ("PRESENCE_WEBHOOK_SHARDS", "2")]);
        let p = parse(&tuned).unwrap().presence_webhooks.unwrap();
        assert_eq!((p.offline_debounce_seconds, p.shards), (0, 2));
    }

    #[test]
    fn sizes_the_storage_cannot_hold_are_refused() {
        let err = parse(&[("JWT_SECRET", S), ("MAX_PUBLISH_BYTES", "5000000")]).unwrap_err();
        assert!(err.contains("MAX_PUBLISH_BYTES"), "{err}");
        assert!(parse(&[("JWT_SECRET", S), ("MAX_PUBLISH_BYTES", "5000000"), ("HISTORY_LIMIT", "0")]).is_ok());
        let hook = [("JWT_SECRET", S), ("WEBHOOK_URL", "https://b.example/h"), ("WEBHOOK_SECRET", "x")];
        let mut big = hook.to_vec();
        big.push(("MAX_FRAME_BYTES", "4000000"));
        assert!(parse(&big).unwrap_err().contains("MAX_FRAME_BYTES"));
        assert!(parse(&[("JWT_SECRET", S), ("MAX_FRAME_BYTES", "4000000")]).is_ok());
    }
}
