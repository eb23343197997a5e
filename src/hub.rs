//! The `UserHub` Durable Object: one per user, holding that user's sockets with the WebSocket
//! Hibernation API (<https://developers.cloudflare.com/durable-objects/best-practices/websockets/>).
//!
//! Memory is only a cache. The truth is each socket's tag (its connection id) and attachment, and
//! the object's SQLite storage: filters per connection, the user's `seq`, the history of recent
//! envelopes and the idempotency keys. After the runtime evicts an idle hub, the constructor runs
//! again and the cache is rebuilt from those on first use, so nothing is lost to hibernation.
//! Nothing here sets a timer while idle: the only timer is a publish's ack timeout, which lives
//! exactly as long as that publish's request.
//!
//! SSE clients are connections too: the Worker holds the event stream and bridges it to a
//! hibernatable WebSocket into this hub ([`crate::sse`]), so they hibernate, count in `clientCount`
//! and ack like any socket. Frames for them are sent already framed as SSE events.

use crate::acks::{AckOutcome, AckRegistry, Collector};
use crate::channel::Grants;
use crate::config::Config;
use crate::error::Error;
use crate::filter::{EnvelopeView, FilterSet};
use crate::protocol::{self, AckOut, PublishResponse, StoredEnvelope};
use crate::ratelimit::TokenBucket;
use crate::{http, ids, log, router};
use futures_util::future::{select, Either};
use serde::Deserialize;
use serde_json::json;
use std::cell::{Cell, OnceCell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;
use worker::{
    durable_object, Date, Delay, Env, Headers, Method, Request, RequestInit, Response, State, Stub, WebSocket,
    WebSocketIncomingMessage,
};

/// The binding name of the `UserHub` namespace in wrangler.toml.
pub const BINDING: &str = "USER_HUB";
/// Header carrying the CORS origin decision from the Worker to the hub, so the hub's response can be
/// returned as it is.
pub(crate) const CORS_HEADER: &str = "x-switchboard-cors";
pub(crate) const IDEMPOTENCY_HEADER: &str = "idempotency-key";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS subscriptions (conn_id TEXT PRIMARY KEY, filters TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS history (seq INTEGER PRIMARY KEY, at INTEGER NOT NULL, envelope TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS idempotency (key TEXT PRIMARY KEY, seq INTEGER NOT NULL, envelope_id TEXT NOT NULL,
  at INTEGER NOT NULL, body_hash TEXT NOT NULL, response TEXT);
CREATE INDEX IF NOT EXISTS idempotency_at ON idempotency (at);
CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL, body TEXT NOT NULL,
  created INTEGER NOT NULL, attempts INTEGER NOT NULL, next_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS grants (conn_id TEXT PRIMARY KEY, join_grants TEXT NOT NULL, publish_grants TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS channels (name TEXT PRIMARY KEY, version INTEGER NOT NULL, user_id TEXT NOT NULL,
  left_at INTEGER);";

/// What a connection's token allows it to do with channels (the `channels` and `publishChannels`
/// claims), kept in SQLite because it may not fit the socket's attachment.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ChannelGrants {
    pub join: Grants,
    pub publish: Grants,
}

impl ChannelGrants {
    pub fn is_empty(&self) -> bool {
        self.join.is_empty() && self.publish.is_empty()
    }
}

/// How a connection reaches its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    WebSocket,
    /// Server-Sent Events, bridged by the Worker: frames go out as SSE events.
    Sse,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::Sse => "sse",
        }
    }

    pub fn from_name(name: &str) -> Transport {
        if name == "sse" {
            Transport::Sse
        } else {
            Transport::WebSocket
        }
    }
}

#[wasm_bindgen::prelude::wasm_bindgen]
extern "C" {
    /// A WebSocket as the runtime sees it, to call `send` with a JS string made once: workers-rs's
    /// `send_with_str` decodes the text from wasm memory into a new JS string on every call, which
    /// for a fan-out means once per recipient.
    type RawSocket;
    #[wasm_bindgen(method, catch, js_name = send)]
    fn send_js(this: &RawSocket, data: &js_sys::JsString) -> Result<(), wasm_bindgen::JsValue>;
}

/// Sends an already-made JS string on a socket.
pub(crate) fn send_shared(ws: &WebSocket, text: &js_sys::JsString) -> bool {
    use wasm_bindgen::JsCast;
    let raw: &web_sys::WebSocket = ws.as_ref();
    raw.unchecked_ref::<RawSocket>().send_js(text).is_ok()
}

/// One open connection, as cached in memory.
pub(crate) struct Conn {
    pub ws: WebSocket,
    pub filters: FilterSet,
    pub bucket: TokenBucket,
    pub transport: Transport,
    /// The user's `seq` when this connection opened: envelopes after it may have been delivered live.
    pub accepted_seq: u64,
    pub user_id: String,
    /// When it opened, in ms since the epoch.
    pub connected_at: f64,
    /// The connect token's `exp`, in ms since the epoch.
    pub expires_at: Option<f64>,
    /// When the hub closes it: the earlier of `expires_at` and the `MAX_CONNECTION_SECONDS` lifetime.
    pub deadline: Option<f64>,
    /// Channels joined, each with the user's `seq` at the join (later envelopes were sent live).
    pub channels: Vec<(String, u64)>,
    pub grants: Rc<ChannelGrants>,
}

/// When a connection must be closed: the token's `exp` or the end of its fixed lifetime.
pub(crate) fn deadline(config: &Config, connected_at: f64, expires_at: Option<f64>) -> Option<f64> {
    let lifetime =
        (config.max_connection_seconds > 0).then_some(connected_at + (config.max_connection_seconds as f64) * 1000.0);
    match (expires_at, lifetime) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl Conn {
    /// Sends a frame the way this connection's transport expects (`seq` becomes the SSE `id:`).
    pub fn send(&self, text: &str, seq: Option<u64>) {
        // A socket that is closing refuses sends; its close handler cleans up.
        let _ = match self.transport {
            Transport::WebSocket => self.ws.send_with_str(text),
            Transport::Sse => self.ws.send_with_str(protocol::sse_event(seq, text)),
        };
    }
}

#[durable_object]
pub struct UserHub {
    pub(crate) state: State,
    pub(crate) env: Env,
    /// Open connections by id; `None` until rebuilt after construction (or a wake).
    pub(crate) conns: RefCell<Option<HashMap<String, Conn>>>,
    pub(crate) acks: RefCell<AckRegistry>,
    /// The last `seq` handed out; valid once `conns` is loaded.
    seq: Cell<u64>,
    /// The oldest stored envelope's `(seq, at)`, to trim history without scanning it.
    oldest: Cell<Option<(u64, i64)>>,
    /// The last version number given to a channel membership update (see [`crate::channel::next_version`]).
    pub(crate) version: Cell<u64>,
}

impl worker::DurableObject for UserHub {
    fn new(state: State, env: Env) -> Self {
        // Exactly `ping` is answered by the runtime without waking the hub.
        if let Ok(pair) = worker::WebSocketRequestResponsePair::new("ping", "pong") {
            state.set_websocket_auto_response(&pair);
        }
        UserHub {
            state,
            env,
            conns: RefCell::new(None),
            acks: RefCell::default(),
            seq: Cell::new(0),
            oldest: Cell::new(None),
            version: Cell::new(0),
        }
    }

    async fn fetch(&self, mut req: Request) -> worker::Result<Response> {
        let cors = req.headers().get(CORS_HEADER).ok().flatten();
        let result = match req.path().as_str() {
            "/connect" => self.accept(&req).await,
            "/publish" => self.publish(&mut req, cors.as_deref()).await,
            "/ack" => self.http_ack(&mut req, cors.as_deref()).await,
            "/connections" if req.method() == Method::Get => self.list_connections(cors.as_deref()),
            "/connections" if req.method() == Method::Delete => self.kick(&req, cors.as_deref()).await,
            other => Err(Error::NotFound(format!("the hub has no route {other}"))),
        };
        result.or_else(|e| {
            if e.status() >= 500 {
                log::error("hub_error", json!({ "code": e.code(), "message": e.to_string() }));
            }
            http::error(&e, cors.as_deref())
        })
    }

    async fn websocket_message(&self, ws: WebSocket, message: WebSocketIncomingMessage) -> worker::Result<()> {
        self.on_message(&ws, message).await;
        Ok(())
    }

    async fn websocket_close(&self, ws: WebSocket, code: usize, reason: String, was_clean: bool) -> worker::Result<()> {
        self.on_close(&ws, code, &reason, was_clean).await;
        Ok(())
    }

    async fn websocket_error(&self, ws: WebSocket, error: worker::Error) -> worker::Result<()> {
        self.on_error(&ws, &error.to_string()).await;
        Ok(())
    }

    async fn alarm(&self) -> worker::Result<Response> {
        if let Err(e) = self.on_alarm().await {
            // Throwing would make the runtime retry the alarm; the outbox re-arms itself instead.
            log::error("alarm_error", json!({ "message": e.to_string() }));
        }
        Response::empty()
    }
}

#[derive(Deserialize)]
struct SubRow {
    conn_id: String,
    filters: String,
}

#[derive(Deserialize)]
struct GrantRow {
    conn_id: String,
    join_grants: String,
    publish_grants: String,
}

#[derive(Deserialize)]
struct OptionalRow {
    value: Option<i64>,
}

#[derive(Deserialize)]
pub(crate) struct ValueRow {
    pub value: i64,
}

#[derive(Deserialize)]
struct OldestRow {
    seq: i64,
    at: i64,
}

#[derive(Deserialize)]
struct HistoryRow {
    seq: i64,
    envelope: String,
}

#[derive(Deserialize)]
struct IdempotencyRow {
    seq: i64,
    envelope_id: String,
    body_hash: String,
    response: Option<String>,
}

impl UserHub {
    pub(crate) fn config(&self) -> Result<Rc<Config>, Error> {
        router::settings(&self.env)
    }

    fn sql(&self) -> worker::SqlStorage {
        self.state.storage().sql()
    }

    pub(crate) fn sql_exec(
        &self,
        query: &str,
        bindings: Vec<worker::SqlStorageValue>,
    ) -> Result<worker::SqlCursor, Error> {
        Ok(self.sql().exec(query, Some(bindings))?)
    }

    /// Rebuilds the connection cache from the sockets' tags and attachments and the stored filters,
    /// once per construction. Rows of connections that no longer exist are deleted.
    pub(crate) fn ensure_loaded(&self) -> Result<(), Error> {
        if self.conns.borrow().is_some() {
            return Ok(());
        }
        let config = self.config()?;
        let sql = self.sql();
        sql.exec(SCHEMA, None)?;
        // The newest envelope's seq is in history when history is on; meta holds it otherwise (and
        // before an age trim could delete the newest row).
        let seq = sql
            .exec(
                "SELECT max(coalesce((SELECT value FROM meta WHERE key = 'seq'), 0), coalesce((SELECT max(seq) FROM history), 0)) AS value",
                None,
            )?
            .to_array::<ValueRow>()?
            .first()
            .map_or(0, |r| r.value.max(0) as u64);
        let oldest = sql
            .exec("SELECT seq, at FROM history ORDER BY seq LIMIT 1", None)?
            .to_array::<OldestRow>()?
            .first()
            .map(|r| (r.seq as u64, r.at));
        let mut stored: HashMap<String, String> = sql
            .exec("SELECT conn_id, filters FROM subscriptions", None)?
            .to_array::<SubRow>()?
            .into_iter()
            .map(|r| (r.conn_id, r.filters))
            .collect();
        let mut grants: HashMap<String, Rc<ChannelGrants>> = sql
            .exec("SELECT conn_id, join_grants, publish_grants FROM grants", None)?
            .to_array::<GrantRow>()?
            .into_iter()
            .map(|r| {
                let g = ChannelGrants {
                    join: Grants::from_text(&r.join_grants),
                    publish: Grants::from_text(&r.publish_grants),
                };
                (r.conn_id, Rc::new(g))
            })
            .collect();
        let now = Date::now().as_millis() as f64;
        let mut conns = HashMap::new();
        for ws in self.state.get_websockets() {
            let Some(id) = self.state.get_tags(&ws).into_iter().next() else { continue };
            let Some(a) = ws.deserialize_attachment::<crate::ws::Attachment>().ok().flatten() else { continue };
            let filters = stored.remove(&id).map(|t| FilterSet::from_json(&t)).unwrap_or_default();
            let conn_grants = grants.remove(&id).unwrap_or_default();
            conns.insert(
                id,
                Conn {
                    channels: a.channels,
                    grants: conn_grants,
                    ws,
                    filters,
                    bucket: TokenBucket::new(config.max_frames_per_second, now),
                    transport: Transport::from_name(&a.transport),
                    accepted_seq: a.accepted_seq,
                    deadline: deadline(&config, a.connected_at, a.expires_at),
                    user_id: a.user_id,
                    connected_at: a.connected_at,
                    expires_at: a.expires_at,
                },
            );
        }
        for orphan in stored.keys() {
            sql.exec("DELETE FROM subscriptions WHERE conn_id = ?", vec![orphan.clone().into()])?;
        }
        for orphan in grants.keys() {
            sql.exec("DELETE FROM grants WHERE conn_id = ?", vec![orphan.clone().into()])?;
        }
        self.seq.set(seq);
        self.oldest.set(oldest);
        log::info("hub_loaded", json!({ "connections": conns.len(), "seq": seq }));
        *self.conns.borrow_mut() = Some(conns);
        Ok(())
    }

    /// Stores a connection's filters (the cache already holds them).
    pub(crate) fn store_filters(&self, id: &str, filters: &FilterSet) -> Result<(), Error> {
        self.sql().exec(
            "INSERT INTO subscriptions (conn_id, filters) VALUES (?, ?) ON CONFLICT(conn_id) DO UPDATE SET filters = excluded.filters",
            vec![id.to_string().into(), filters.to_json().into()],
        )?;
        Ok(())
    }

    /// Forgets a connection everywhere: cache, storage, and the publishes waiting on its ack.
    /// Returns the connection if it was still known (so its close is reported once).
    pub(crate) fn forget(&self, id: &str) -> Option<Conn> {
        let conn = self.conns.borrow_mut().as_mut().and_then(|c| c.remove(id));
        if let Some(conn) = &conn {
            let mut statements = vec!["DELETE FROM subscriptions WHERE conn_id = ?"];
            if !conn.grants.is_empty() {
                statements.push("DELETE FROM grants WHERE conn_id = ?");
            }
            for statement in statements {
                if let Err(e) = self.sql().exec(statement, vec![id.to_string().into()]) {
                    log::error("storage_error", json!({ "op": "forget", "message": e.to_string() }));
                }
            }
        }
        self.acks.borrow_mut().connection_closed(id);
        conn
    }

    /// The earliest connection deadline, in ms since the epoch.
    pub(crate) fn next_deadline(&self) -> Option<i64> {
        let conns = self.conns.borrow();
        conns.as_ref()?.values().filter_map(|c| c.deadline).reduce(f64::min).map(|d| d.ceil() as i64)
    }

    /// Closes every connection past its deadline: 4001 when its token expired (reconnect with a fresh
    /// token), 4003 at the end of `MAX_CONNECTION_SECONDS`.
    pub(crate) async fn enforce_lifetimes(&self) {
        // Alarms are not exact to the millisecond; a deadline this close counts as reached.
        const SLACK_MS: f64 = 250.0;
        let now = Date::now().as_millis() as f64 + SLACK_MS;
        let due: Vec<(String, u16, &'static str)> = self
            .conns
            .borrow()
            .iter()
            .flat_map(|c| c.iter())
            .filter(|(_, c)| c.deadline.is_some_and(|d| d <= now))
            .map(|(id, c)| match c.expires_at {
                Some(exp) if exp <= now => (id.clone(), crate::ws::CLOSE_TOKEN_EXPIRED, "token expired"),
                _ => (id.clone(), crate::ws::CLOSE_LIFETIME, "connection lifetime reached"),
            })
            .collect();
        for (id, code, reason) in due {
            self.close_by_server(&id, code, reason, "lifetime").await;
        }
    }

    /// `GET /connections`: the user's open connections.
    fn list_connections(&self, cors: Option<&str>) -> Result<Response, Error> {
        self.ensure_loaded()?;
        let conns = self.conns.borrow();
        let mut list: Vec<serde_json::Value> = conns
            .iter()
            .flat_map(|c| c.iter())
            .map(|(id, c)| {
                json!({
                    "connectionId": id,
                    "transport": c.transport.name(),
                    "connectedAt": rfc3339(c.connected_at as u64),
                    "expiresAt": c.expires_at.map(|e| rfc3339(e as u64)),
                    "closesAt": c.deadline.map(|d| rfc3339(d as u64)),
                    "filters": c.filters.as_slice(),
                    "lastPingAt": self.last_auto_ping(&c.ws).map(rfc3339),
                })
            })
            .collect();
        list.sort_by(|a, b| a["connectedAt"].as_str().cmp(&b["connectedAt"].as_str()));
        Ok(http::json(200, json!({ "connections": list }).to_string(), cors)?)
    }

    /// When the runtime last answered this socket's `ping` by itself, if ever
    /// (`getWebSocketAutoResponseTimestamp`, not bound by workers-rs).
    fn last_auto_ping(&self, ws: &WebSocket) -> Option<u64> {
        use wasm_bindgen::JsCast;
        let state: &wasm_bindgen::JsValue = self.state.as_raw().as_ref();
        let f = js_sys::Reflect::get(state, &"getWebSocketAutoResponseTimestamp".into()).ok()?;
        let raw: &web_sys::WebSocket = ws.as_ref();
        let date = f.dyn_into::<js_sys::Function>().ok()?.call1(state, raw).ok()?;
        date.dyn_into::<js_sys::Date>().ok().map(|d| d.get_time() as u64)
    }

    /// `DELETE /connections[?id=…]`: closes one connection (or all) with 4002.
    async fn kick(&self, req: &Request, cors: Option<&str>) -> Result<Response, Error> {
        self.ensure_loaded()?;
        let target = crate::query::param(&req.inner().url(), "id");
        let ids: Vec<String> = match &target {
            Some(id) => {
                if !self.conns.borrow().as_ref().is_some_and(|c| c.contains_key(id)) {
                    return Err(Error::ConnectionNotFound(id.clone()));
                }
                vec![id.clone()]
            }
            None => self.conns.borrow().iter().flat_map(|c| c.keys().cloned()).collect(),
        };
        for id in &ids {
            self.close_by_server(id, crate::ws::CLOSE_BY_BACKEND, "closed by the backend", "backend").await;
        }
        Ok(http::json(200, json!({ "closed": ids }).to_string(), cors)?)
    }

    pub(crate) fn current_seq(&self) -> u64 {
        self.seq.get()
    }

    /// Records the next `seq` and stores the envelope in history, before any envelope carrying it
    /// leaves (the output gate holds sends until the write is durable). With history on this is one
    /// INSERT per publish: the seq is recovered from history after an eviction, trimming by count
    /// runs once per batch of publishes, and `meta` is written only before an age trim (the one
    /// thing that could delete the newest row).
    fn record(&self, config: &Config, seq: u64, now_ms: i64, envelope: &js_sys::JsString) -> Result<(), Error> {
        let sql = self.sql();
        let store_seq = || {
            sql.exec(
                "INSERT INTO meta (key, value) VALUES ('seq', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                vec![(seq as i64).into()],
            )
        };
        if !config.history_enabled() {
            store_seq()?;
            self.seq.set(seq);
            return Ok(());
        }
        // The envelope is bound as the JS string it already is: it is never copied into wasm.
        sql.exec_raw(
            "INSERT INTO history (seq, at, envelope) VALUES (?, ?, ?)",
            vec![(seq as f64).into(), (now_ms as f64).into(), envelope.into()],
        )?;
        self.seq.set(seq);
        let cutoff = now_ms - (config.history_seconds as i64) * 1000;
        let Some((oldest_seq, oldest_at)) = self.oldest.get() else {
            self.oldest.set(Some((seq, now_ms)));
            return Ok(());
        };
        // Rows past the limit are ignored by replay, so they can wait for a batch delete.
        let slack = config.history_limit.min(64);
        let keep_from = seq.saturating_sub(config.history_limit) + 1;
        let over_count = oldest_seq + slack < keep_from;
        let expired = oldest_at < cutoff;
        if over_count || expired {
            if expired {
                store_seq()?;
            }
            sql.exec("DELETE FROM history WHERE seq < ? OR at < ?", vec![(keep_from as i64).into(), cutoff.into()])?;
            let oldest = sql
                .exec("SELECT seq, at FROM history ORDER BY seq LIMIT 1", None)?
                .to_array::<OldestRow>()?
                .first()
                .map(|r| (r.seq as u64, r.at));
            self.oldest.set(oldest);
        }
        Ok(())
    }

    /// Replays to connection `id` the stored envelopes after `since` that match its filters, oldest
    /// first, marked `replayed`, after a `gap` frame when history no longer reaches back that far.
    /// `before` is the connection's filter set before this subscribe: envelopes it matched after the
    /// connection opened were delivered live already and are not sent twice. Runs synchronously
    /// (SQLite reads are synchronous), so no publish can interleave with the replay.
    pub(crate) fn replay(&self, id: &str, since: u64, before: &FilterSet) -> Result<(), Error> {
        let current = self.seq.get();
        if since >= current {
            return Ok(());
        }
        let config = self.config()?;
        let rows = if config.history_enabled() {
            let cutoff = Date::now().as_millis() as i64 - (config.history_seconds as i64) * 1000;
            // Rows beyond HISTORY_LIMIT may still be stored until the next batch trim; they don't count.
            let from = since.max(current.saturating_sub(config.history_limit));
            self.sql()
                .exec(
                    "SELECT seq, envelope FROM history WHERE seq > ? AND at >= ? ORDER BY seq",
                    vec![(from as i64).into(), cutoff.into()],
                )?
                .to_array::<HistoryRow>()?
        } else {
            Vec::new()
        };
        let conns = self.conns.borrow();
        let Some(conn) = conns.as_ref().and_then(|c| c.get(id)) else { return Ok(()) };
        let first_kept = rows.first().map_or(current + 1, |r| r.seq as u64);
        if first_kept > since + 1 {
            conn.send(&protocol::gap_frame(since + 1, first_kept - 1), None);
        }
        let mut sent = 0;
        for row in &rows {
            let Ok(stored) = serde_json::from_str::<StoredEnvelope<'_>>(&row.envelope) else { continue };
            let seq = row.seq as u64;
            let wanted = match &stored.channel {
                // A channel's envelopes go to the connections that joined it; those after the join
                // were sent live.
                Some(channel) => conn.channels.iter().any(|(c, joined_at)| c == channel && seq <= *joined_at),
                None => {
                    let view = EnvelopeView::new(&stored.kind, stored.payload.get());
                    let delivered_live = seq > conn.accepted_seq && before.matches(&view);
                    conn.filters.matches(&view) && !delivered_live
                }
            };
            if wanted {
                conn.send(&protocol::replayed(&row.envelope), Some(seq));
                sent += 1;
            }
        }
        log::info(
            "replay",
            json!({ "connectionId": id, "since": since, "replayed": sent, "gap": first_kept > since + 1 }),
        );
        Ok(())
    }

    /// Fans an envelope out to the matching connections and waits for their acks.
    ///
    /// The Worker has checked the publish; the hop carries its fields in the URL and the payload's
    /// JSON text as the body. The payload stays a JS string: the envelope is built around it by
    /// JS string concatenation, bound into SQLite and sent to every socket as that one string, so a
    /// large payload never crosses into wasm here — unless a filter needs the payload's fields.
    async fn publish(&self, req: &mut Request, cors: Option<&str>) -> Result<Response, Error> {
        let config = self.config()?;
        let idempotency_key = req.headers().get(IDEMPOTENCY_HEADER).ok().flatten();
        let p = protocol::PublishMeta::from_query(crate::query::pairs(&req.inner().url()))
            .ok_or_else(|| Error::Internal("the hop to the hub carried no publish".into()))?;
        let payload = body_as_js_string(req).await?;
        self.ensure_loaded()?;
        // A channel publish: how many of the user's connections joined it, counted once.
        let joined = p.channel.as_ref().map(|c| self.joined_count(c));
        let mut lingering = false;
        if let (Some(channel), Some(0)) = (&p.channel, joined) {
            if !self.lingering(&config, channel)? {
                return self.not_a_member(channel, cors);
            }
            // Nobody is connected, but the user's last connection closed within
            // CHANNEL_LINGER_SECONDS: the envelope goes into history for its resume.
            lingering = true;
        }
        if let Some(target) = &p.connection_id {
            if !self.conns.borrow().as_ref().is_some_and(|c| c.contains_key(target)) {
                return Err(Error::ConnectionNotFound(target.clone()));
            }
        }
        let started = Date::now().as_millis();
        let now_ms = started as i64;
        if let Some(key) = &idempotency_key {
            if let Some(answer) = self.idempotent_replay(&config, key, &p.body_hash, now_ms, cors)? {
                return Ok(answer);
            }
        }
        let seq = self.seq.get() + 1;
        let envelope_id = ids::uuid_v4();
        let timestamp = rfc3339(started);
        let head = protocol::channel_envelope_head(
            &envelope_id,
            seq,
            &p.kind,
            &p.user_id,
            &timestamp,
            p.channel.as_deref(),
            p.from.as_deref(),
        );
        let envelope = js_sys::JsString::from(head.as_str()).concat(&payload).concat(&"}".into());
        self.record(&config, seq, now_ms, &envelope)?;
        if let Some(key) = &idempotency_key {
            self.sql().exec(
                "INSERT INTO idempotency (key, seq, envelope_id, at, body_hash) VALUES (?, ?, ?, ?, ?)",
                vec![
                    key.clone().into(),
                    (seq as i64).into(),
                    envelope_id.clone().into(),
                    now_ms.into(),
                    p.body_hash.clone().into(),
                ],
            )?;
        }

        let needs_payload = p.channel.is_none()
            && self.conns.borrow().as_ref().is_some_and(|c| c.values().any(|c| c.filters.needs_payload(&p.kind)));
        let payload_text = if needs_payload { payload.as_string() } else { None };
        let view = EnvelopeView::new(&p.kind, payload_text.as_deref().unwrap_or("null"));
        let sse_text = OnceCell::new();
        let mut expected = Vec::new();
        if let Some(conns) = self.conns.borrow().as_ref() {
            for (id, conn) in conns {
                if p.connection_id.as_ref().is_some_and(|t| t != id) {
                    continue;
                }
                // A channel's envelope goes to every connection that joined it (joining is the
                // subscription), except the client that published it.
                let wanted = match &p.channel {
                    Some(channel) => p.except.as_ref() != Some(id) && conn.channels.iter().any(|(c, _)| c == channel),
                    None => conn.filters.matches(&view),
                };
                if !wanted {
                    continue;
                }
                let shared = match conn.transport {
                    Transport::WebSocket => &envelope,
                    Transport::Sse => sse_text.get_or_init(|| {
                        let text = envelope.as_string().unwrap_or_default();
                        js_sys::JsString::from(protocol::sse_event(Some(seq), &text).as_str())
                    }),
                };
                // A socket that is already closing refuses the send; it is not counted.
                if send_shared(&conn.ws, shared) {
                    expected.push(id.clone());
                }
            }
        }
        let client_count = expected.len();
        let timeout_ms = p.timeout_ms.unwrap_or(config.ack_timeout_ms).min(config.ack_timeout_max_ms);
        let collector = if expected.is_empty() || timeout_ms == 0 {
            Collector::new(expected)
        } else {
            let done = self.acks.borrow_mut().register(&envelope_id, expected);
            let timeout = Delay::from(Duration::from_millis(timeout_ms));
            if let Either::Right(_) = select(done, timeout).await {
                // Timed out: whatever arrived is returned below.
            }
            self.acks.borrow_mut().finish(&envelope_id).unwrap_or_else(|| Collector::new(Vec::new()))
        };
        let response = PublishResponse {
            envelope_id: &envelope_id,
            seq,
            client_count,
            results: collector.acks().map(|(_, r)| r).collect(),
            acks: collector.acks().map(|(c, r)| AckOut { connection_id: c, result: r }).collect(),
            pending: collector.pending().collect(),
            closed: collector.closed_ids().collect(),
            duplicate: false,
            joined,
            lingering,
        };
        log::info(
            "publish",
            json!({
                "userId": p.user_id, "envelopeId": envelope_id, "seq": seq, "type": p.kind,
                "clientCount": client_count, "acked": response.acks.len(), "pending": response.pending.len(),
                "closed": response.closed.len(), "ms": Date::now().as_millis().saturating_sub(started),
            }),
        );
        let body = serde_json::to_string(&response).map_err(|e| Error::Internal(e.to_string()))?;
        if let Some(key) = &idempotency_key {
            // Kept so a retry gets the same answer, acks included.
            self.sql().exec(
                "UPDATE idempotency SET response = ? WHERE key = ?",
                vec![body.clone().into(), key.clone().into()],
            )?;
        }
        Ok(http::json(200, body, cors)?)
    }

    /// How many of this user's connections have joined `channel`.
    pub(crate) fn joined_count(&self, channel: &str) -> usize {
        let conns = self.conns.borrow();
        conns.iter().flat_map(|c| c.values()).filter(|c| c.channels.iter().any(|(n, _)| n == channel)).count()
    }

    /// Whether this user's last connection in `channel` closed less than `CHANNEL_LINGER_SECONDS` ago.
    fn lingering(&self, config: &Config, channel: &str) -> Result<bool, Error> {
        let left_at = self
            .sql_exec("SELECT left_at AS value FROM channels WHERE name = ?", vec![channel.to_string().into()])?
            .to_array::<OptionalRow>()?
            .first()
            .and_then(|r| r.value);
        let now = Date::now().as_millis() as i64;
        Ok(left_at.is_some_and(|at| now < at + (config.channel_linger_seconds as i64) * 1000))
    }

    /// When the earliest lingering membership ends, in ms since the epoch.
    pub(crate) fn next_linger_end(&self) -> Result<Option<i64>, Error> {
        let config = self.config()?;
        let first = self
            .sql_exec("SELECT min(left_at) AS value FROM channels", Vec::new())?
            .to_array::<OptionalRow>()?
            .first()
            .and_then(|r| r.value);
        Ok(first.map(|at| at + (config.channel_linger_seconds as i64) * 1000))
    }

    /// A membership version for an update to a channel's root.
    pub(crate) fn next_version(&self) -> u64 {
        let v = crate::channel::next_version(self.version.get(), Date::now().as_millis());
        self.version.set(v);
        v
    }

    /// The answer to a channel publish for a user none of whose connections is in the channel: the
    /// root removes the user (if this version is newer than the user's join), and this hub forgets
    /// it told the root otherwise. Nothing is recorded: the user's `seq` does not move.
    fn not_a_member(&self, channel: &str, cors: Option<&str>) -> Result<Response, Error> {
        self.sql().exec("DELETE FROM channels WHERE name = ?", vec![channel.to_string().into()])?;
        let body = json!({
            "joined": 0, "version": self.next_version(), "clientCount": 0, "results": [], "acks": [],
            "pending": [], "closed": [],
        });
        Ok(http::json(200, body.to_string(), cors)?)
    }

    /// The answer to a publish whose `Idempotency-Key` was seen within the window: the first
    /// publish's answer with `"duplicate": true` (or its `envelopeId` and `seq` while it is still
    /// waiting for acks). The same key with a different body is a 409.
    fn idempotent_replay(
        &self,
        config: &Config,
        key: &str,
        body_hash: &str,
        now_ms: i64,
        cors: Option<&str>,
    ) -> Result<Option<Response>, Error> {
        let sql = self.sql();
        let cutoff = now_ms - (config.history_seconds as i64) * 1000;
        sql.exec("DELETE FROM idempotency WHERE at < ?", vec![cutoff.into()])?;
        let rows = sql
            .exec(
                "SELECT seq, envelope_id, body_hash, response FROM idempotency WHERE key = ?",
                vec![key.to_string().into()],
            )?
            .to_array::<IdempotencyRow>()?;
        let Some(row) = rows.into_iter().next() else { return Ok(None) };
        if row.body_hash != body_hash {
            return Err(Error::IdempotencyConflict);
        }
        let mut answer: serde_json::Value = match row.response.as_deref().map(serde_json::from_str) {
            Some(Ok(v)) => v,
            _ => json!({
                "envelopeId": row.envelope_id, "seq": row.seq, "clientCount": 0, "results": [], "acks": [],
                "pending": [], "closed": [], "inProgress": true,
            }),
        };
        answer["duplicate"] = json!(true);
        log::info("publish_duplicate", json!({ "envelopeId": row.envelope_id, "seq": row.seq }));
        Ok(Some(http::json(200, answer.to_string(), cors)?))
    }

    /// `POST /ack` from an SSE client (or any client that prefers HTTP for acks).
    async fn http_ack(&self, req: &mut Request, cors: Option<&str>) -> Result<Response, Error> {
        let body = req.bytes().await?;
        let ack = protocol::parse_ack(&body)?;
        self.ensure_loaded()?;
        if !self.conns.borrow().as_ref().is_some_and(|c| c.contains_key(&ack.connection_id)) {
            return Err(Error::ConnectionNotFound(ack.connection_id));
        }
        let outcome =
            self.acks.borrow_mut().ack(&ack.envelope_id, &ack.connection_id, ack.result.map(ToOwned::to_owned));
        match outcome {
            AckOutcome::Recorded => Ok(http::json(200, r#"{"status":"recorded"}"#.into(), cors)?),
            AckOutcome::Duplicate => Ok(http::json(200, r#"{"status":"duplicate"}"#.into(), cors)?),
            AckOutcome::Unknown => Err(Error::UnknownEnvelope),
        }
    }
}

/// The request body as a JS string, decoded by the runtime, without copying it into wasm.
async fn body_as_js_string(req: &Request) -> Result<js_sys::JsString, Error> {
    use wasm_bindgen::JsCast;
    let promise = req.inner().text().map_err(|_| Error::Internal("the hop's body could not be read".into()))?;
    let value = wasm_bindgen_futures::JsFuture::from(promise)
        .await
        .map_err(|_| Error::Internal("the hop's body could not be read".into()))?;
    value.dyn_into::<js_sys::JsString>().map_err(|_| Error::Internal("the hop's body is not text".into()))
}

pub(crate) use crate::protocol::rfc3339;

// ---- Worker side: reaching a user's hub --------------------------------------------------------

fn stub(env: &Env, user_id: &str) -> Result<Stub, Error> {
    Ok(env.durable_object(BINDING)?.id_from_name(user_id)?.get_stub()?)
}

async fn hop(env: &Env, user_id: &str, req: Request) -> Result<Response, Error> {
    stub(env, user_id)?
        .fetch_with_request(req)
        .await
        .map_err(|e| Error::Unavailable(format!("the user's hub did not answer: {e}")))
}

/// What a new connection brings to the hub besides its user.
pub struct ConnectOptions<'a> {
    pub expires_at_ms: Option<i64>,
    pub transport: Transport,
    /// Filters to start with (SSE: from the query), as a JSON array.
    pub filters: Option<&'a str>,
    /// Replay envelopes after this seq (SSE: `Last-Event-ID`).
    pub since: Option<u64>,
    /// The token's channel grants in [`crate::channel::Grants::to_text`] form (empty: none).
    pub channels: String,
    pub publish_channels: String,
}

/// Hands a WebSocket upgrade to the user's hub. Everything travels in the URL (header values cannot
/// carry every Unicode user id).
pub async fn connect(env: &Env, user_id: &str, options: ConnectOptions<'_>) -> Result<Response, Error> {
    let exp = options.expires_at_ms.map(|e| e.to_string());
    let since = options.since.map(|s| s.to_string());
    let mut pairs = vec![("user", user_id), ("transport", options.transport.name())];
    if let Some(exp) = &exp {
        pairs.push(("exp", exp));
    }
    if let Some(filters) = options.filters {
        pairs.push(("filters", filters));
    }
    if let Some(since) = &since {
        pairs.push(("since", since));
    }
    if !options.channels.is_empty() {
        pairs.push(("channels", &options.channels));
    }
    if !options.publish_channels.is_empty() {
        pairs.push(("publishChannels", &options.publish_channels));
    }
    let url = crate::query::build("https://hub/connect", &pairs);
    let headers = Headers::new();
    headers.set("upgrade", "websocket")?;
    let mut init = RequestInit::new();
    init.with_method(Method::Get).with_headers(headers);
    hop(env, user_id, Request::new_with_init(&url, &init)?).await
}

/// `GET` or `DELETE` the user's connections (`connection_id` narrows a DELETE to one).
pub async fn connections(
    env: &Env,
    method: Method,
    user_id: &str,
    connection_id: Option<&str>,
    cors: Option<&str>,
) -> Result<Response, Error> {
    let url = match connection_id {
        Some(id) => crate::query::build("https://hub/connections", &[("id", id)]),
        None => "https://hub/connections".to_string(),
    };
    let headers = Headers::new();
    if let Some(origin) = cors {
        headers.set(CORS_HEADER, origin)?;
    }
    let mut init = RequestInit::new();
    init.with_method(method).with_headers(headers);
    hop(env, user_id, Request::new_with_init(&url, &init)?).await
}

/// Hands a checked publish to the user's hub: its fields in the URL, the payload's JSON text as the
/// body (see `UserHub::publish`), and returns the hub's answer as it is.
pub async fn publish(
    env: &Env,
    meta: &protocol::PublishMeta,
    payload: &str,
    cors: Option<&str>,
    idempotency_key: Option<&str>,
) -> Result<Response, Error> {
    let query = meta.to_query();
    let pairs: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let url = crate::query::build("https://hub/publish", &pairs);
    let headers = Headers::new();
    if let Some(origin) = cors {
        headers.set(CORS_HEADER, origin)?;
    }
    if let Some(key) = idempotency_key {
        headers.set(IDEMPOTENCY_HEADER, key)?;
    }
    let mut init = RequestInit::new();
    init.with_method(Method::Post).with_headers(headers).with_body(Some(payload.into()));
    hop(env, &meta.user_id, Request::new_with_init(&url, &init)?).await
}

/// Hands a checked `POST /ack` body to the user's hub and returns its answer as it is.
pub async fn ack(env: &Env, user_id: &str, body: Vec<u8>, cors: Option<&str>) -> Result<Response, Error> {
    let headers = Headers::new();
    headers.set("content-type", "application/json")?;
    if let Some(origin) = cors {
        headers.set(CORS_HEADER, origin)?;
    }
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_headers(headers)
        .with_body(Some(js_sys::Uint8Array::from(body.as_slice()).into()));
    hop(env, user_id, Request::new_with_init("https://hub/ack", &init)?).await
}
