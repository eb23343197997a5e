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
//! hibernatable WebSocket into this hub (`edge::sse`), so they hibernate, count in `clientCount`
//! and ack like any socket. Frames for them are sent already framed as SSE events.

//!
//! By role: [`state`] (the connection cache and its rebuilding after a wake), [`socket`] (accepting
//! sockets, client frames, closes), [`publish`] (fan-out, acks, idempotency), [`history`] (the
//! record of envelopes and replay), [`channels`] (joins, leaves, lingering, client publishes),
//! [`connections`] (the connection API and lifetimes), [`outbox`] (webhooks and the alarm),
//! [`tickets`] (one-time connect tickets), [`presence`] (a channel's presence batches for the
//! watching connections), [`online`] (online/offline webhooks) and [`reply`] (answers to a client's
//! frame).

mod channels;
mod connections;
mod faults;
mod history;
mod online;
mod outbox;
mod presence;
mod publish;
mod reply;
mod socket;
mod state;
mod tickets;

use crate::core::acks::AckRegistry;
use crate::core::config::Config;
use crate::core::error::Error;
use crate::core::ratelimit::TokenBucket;
use crate::hop::wire::PublishMeta;
use crate::hop::{self, user, user::Call};
use crate::runtime::{http, js, log, settings};
use js_sys::Promise;
use state::Conn;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;
use worker::{durable_object, Env, Request, Response, State, WebSocket, WebSocketIncomingMessage};

/// The tables every hub uses from its first connection: created when a hub first loads.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS subscriptions (conn_id TEXT PRIMARY KEY, filters TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS history (seq INTEGER PRIMARY KEY, at INTEGER NOT NULL, envelope TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS grants (conn_id TEXT PRIMARY KEY, join_grants TEXT NOT NULL, publish_grants TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS conn_presence (conn_id TEXT PRIMARY KEY, data TEXT NOT NULL);";

/// The tables of features a hub may never use (`Idempotency-Key`, webhooks, channels, tickets, online
/// events): created by [`HubSql::exec`] the first time a statement finds one missing. A new hub so
/// creates 5 tables instead of 12 tables and an index, which costs a connect to a new user about
/// 1-2 ms of CPU less and keeps the hub's SQLite smaller in memory (`bench/micro/sql.mjs`).
const LAZY_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS idempotency (key TEXT PRIMARY KEY, seq INTEGER NOT NULL, envelope_id TEXT NOT NULL,
  at INTEGER NOT NULL, body_hash TEXT NOT NULL, response TEXT);
CREATE INDEX IF NOT EXISTS idempotency_at ON idempotency (at);
CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL, body TEXT NOT NULL,
  created INTEGER NOT NULL, attempts INTEGER NOT NULL, next_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS channels (name TEXT PRIMARY KEY, version INTEGER NOT NULL, user_id TEXT NOT NULL,
  left_at INTEGER);
CREATE TABLE IF NOT EXISTS tickets (hash TEXT PRIMARY KEY, expires_at INTEGER NOT NULL, exp INTEGER,
  join_grants TEXT NOT NULL, publish_grants TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ticket_presence (hash TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS channel_watch (name TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS presence (user_id TEXT PRIMARY KEY, online_at INTEGER NOT NULL, offline_since INTEGER);";

/// The hub's SQLite. A statement that fails because one of [`LAZY_SCHEMA`]'s tables does not exist
/// yet creates them all and runs again, so no caller needs to know which tables are lazy.
pub(crate) struct HubSql<'a> {
    storage: worker::SqlStorage,
    /// The hub's flag: [`LAZY_SCHEMA`] ran since construction.
    lazy_ready: &'a Cell<bool>,
}

impl HubSql<'_> {
    pub(crate) fn exec(
        &self,
        query: &str,
        bindings: impl Into<Option<Vec<worker::SqlStorageValue>>>,
    ) -> worker::Result<worker::SqlCursor> {
        let bindings = bindings.into();
        if self.lazy_ready.get() {
            return self.storage.exec(query, bindings); // no table can be missing: no copy for a retry
        }
        match self.storage.exec(query, bindings.clone()) {
            Err(e) if e.to_string().contains("no such table") => {
                self.ensure_lazy()?;
                self.storage.exec(query, bindings)
            }
            other => other,
        }
    }

    /// A statement with JS values bound as they are, on [`SCHEMA`]'s tables only (no retry).
    pub(crate) fn exec_raw(&self, query: &str, bindings: Vec<JsValue>) -> worker::Result<worker::SqlCursor> {
        self.storage.exec_raw(query, bindings)
    }

    /// Creates [`LAZY_SCHEMA`]'s tables if this construction has not yet, for code that reaches them
    /// without this wrapper (the shared webhook queue).
    pub(crate) fn ensure_lazy(&self) -> worker::Result<()> {
        if !self.lazy_ready.get() {
            self.storage.exec(LAZY_SCHEMA, None)?;
            self.lazy_ready.set(true);
        }
        Ok(())
    }
}

/// The Durable Object. Its state lives behind an `Rc` so a handler that must wait can own a handle
/// to it (`'static` futures): the socket handlers are exported by hand below, synchronous where they
/// can be, instead of through `#[durable_object]`'s always-async exports.
#[durable_object(alarm)]
pub struct UserHub {
    inner: Rc<Inner>,
}

/// The hub's state (see [`UserHub`]); its methods are `UserHub`'s, through `Deref`.
pub struct Inner {
    pub(crate) state: State,
    pub(crate) env: Env,
    /// Open connections by id; `None` until rebuilt after construction (or a wake).
    pub(crate) conns: RefCell<Option<HashMap<String, Conn>>>,
    pub(crate) acks: RefCell<AckRegistry>,
    /// Ends the waits of [`acks`](Self::acks) at their deadlines: one timer for every publish in flight.
    pub(crate) ack_timer: js::Timer,
    /// The last `seq` handed out; valid once `conns` is loaded.
    seq: Cell<u64>,
    /// The oldest stored envelope's `(seq, at)`, to trim history without scanning it.
    oldest: Cell<Option<(u64, i64)>>,
    /// The last version number given to a channel membership update (see [`crate::core::channel::next_version`]).
    pub(crate) version: Cell<u64>,
    /// The newest outbox row an attempt in flight carries (0: none), so it is not changed under it.
    outbox_sending: Cell<i64>,
    /// Events still to send one at a time after the backend refused a batch (to find the culprit).
    outbox_solo: Cell<usize>,
    /// When this object last set its alarm, until that alarm runs (`None`: unknown, ask storage).
    pub(crate) alarm_set_at: Cell<Option<i64>>,
    /// Alarm runs that failed in a row (their retry backs off).
    alarm_failures: Cell<u32>,
    /// `TEST_FAULTS=alarm` has failed this object's alarm once already.
    fault_spent: Cell<bool>,
    /// `TEST_FAULTS=connect` has failed this object's first connection event already.
    connect_fault_spent: Cell<bool>,
    /// [`LAZY_SCHEMA`]'s tables exist (made sure of once per construction, on first need).
    lazy_ready: Cell<bool>,
    /// Whether this object made sure an alarm will age out its history (once per construction).
    history_alarm_checked: Cell<bool>,
    /// This user's client publishes (`CLIENT_PUBLISH_PER_SECOND`), across its connections.
    pub(crate) publish_bucket: RefCell<Option<TokenBucket>>,
    /// This user's joins of new channels (`CHANNEL_JOINS_PER_MINUTE`).
    pub(crate) join_bucket: RefCell<Option<TokenBucket>>,
}

impl std::ops::Deref for UserHub {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

impl UserHub {
    /// Another handle to the same hub, for a future that outlives the call that starts it.
    pub(crate) fn handle(&self) -> UserHub {
        UserHub { inner: Rc::clone(&self.inner) }
    }
}

impl worker::DurableObject for UserHub {
    fn new(state: State, env: Env) -> Self {
        // Exactly `ping` is answered by the runtime without waking the hub.
        if let Ok(pair) = worker::WebSocketRequestResponsePair::new("ping", "pong") {
            state.set_websocket_auto_response(&pair);
        }
        js::install_fast_microtasks();
        let inner = |hub: &std::rc::Weak<Inner>| Inner {
            state,
            env,
            conns: RefCell::new(None),
            acks: RefCell::default(),
            ack_timer: {
                let hub = hub.clone();
                js::Timer::new(move || {
                    if let Some(hub) = hub.upgrade() {
                        hub.expire_acks();
                    }
                })
            },
            seq: Cell::new(0),
            oldest: Cell::new(None),
            version: Cell::new(0),
            outbox_sending: Cell::new(0),
            outbox_solo: Cell::new(0),
            alarm_set_at: Cell::new(None),
            alarm_failures: Cell::new(0),
            fault_spent: Cell::new(false),
            connect_fault_spent: Cell::new(false),
            history_alarm_checked: Cell::new(false),
            lazy_ready: Cell::new(false),
            publish_bucket: RefCell::new(None),
            join_bucket: RefCell::new(None),
        };
        UserHub { inner: Rc::new_cyclic(inner) }
    }

    async fn fetch(&self, mut req: Request) -> worker::Result<Response> {
        let cors = hop::cors(&req);
        // Each call's future is boxed on its own, so the wasm has a state machine per call: V8
        // compiles (lazily) only the calls a hub has served, not all of them at its first connect.
        use futures_util::future::{ready, FutureExt, LocalBoxFuture};
        let answer: LocalBoxFuture<'_, Result<Response, Error>> = match user::read(&req) {
            Err(e) => ready(Err(e)).boxed_local(),
            Ok(Call::Connect(connect)) => self.accept(connect).boxed_local(),
            Ok(Call::Ack) => self.http_ack(&mut req, cors.as_deref()).boxed_local(),
            Ok(Call::ListConnections) => ready(self.list_connections(cors.as_deref())).boxed_local(),
            Ok(Call::Kick { connection_id }) => self.kick(connection_id, cors.as_deref()).boxed_local(),
            Ok(Call::IssueTicket(ticket)) => ready(self.issue_ticket(ticket)).boxed_local(),
        };
        let result = answer.await;
        result.or_else(|e| {
            if e.status() >= 500 {
                log::error!("hub_error", "code" => e.code(), "message" => e.to_string());
            }
            http::error(&e, cors.as_deref())
        })
    }

    async fn alarm(&self) -> worker::Result<Response> {
        self.alarm_set_at.set(None); // this alarm is spent

        // The run re-arms itself, after a failure too; only when no alarm could be set does this
        // throw, so the runtime retries the alarm (with its own backoff).
        if let Err(e) = self.run_alarm().await {
            log::error!("alarm_error", "op" => "rearm", "message" => e.to_string());
            return Err(worker::Error::RustError(format!("the alarm could not be re-armed: {e}")));
        }
        Response::empty()
    }
}

/// The socket handlers, exported by hand (`#[durable_object(alarm)]` leaves them out). An async
/// export costs a Promise, a `queueMicrotask` and several crossings per event even when nothing
/// awaits; an ack, the event a fan-out multiplies, needs none of it, so `webSocketMessage` answers
/// what it can synchronously and only starts a future for what must wait. See BENCHMARKS.md.
#[wasm_bindgen]
impl UserHub {
    #[wasm_bindgen(js_name = webSocketMessage)]
    pub fn websocket_message(&self, ws: web_sys::WebSocket, message: JsValue) -> JsValue {
        let ws = WebSocket::from(ws);
        let message = match message.as_string() {
            Some(text) => WebSocketIncomingMessage::String(text),
            None => WebSocketIncomingMessage::Binary(js_sys::Uint8Array::new(&message).to_vec()),
        };
        let Some(deferred) = self.on_message_now(&ws, message) else { return JsValue::UNDEFINED };
        let hub = self.handle();
        future_to_promise(async move {
            hub.on_message_later(&ws, deferred).await;
            Ok(JsValue::UNDEFINED)
        })
        .into()
    }

    /// RPC: a checked publish from the Worker or a fan-out (see `hop::user::publish`): its fields as
    /// a query string, the payload's JSON text as the JS string it already is. Answers
    /// `[status, body]`: 200 and the publish answer, or an error's status and JSON body.
    #[wasm_bindgen(js_name = publish)]
    pub fn publish_rpc(&self, meta: String, payload: js_sys::JsString, idempotency_key: Option<String>) -> Promise {
        let hub = self.handle();
        future_to_promise(async move {
            let answer = match PublishMeta::from_query_string(&meta) {
                Some(meta) => hub.publish(payload, meta, idempotency_key).await,
                None => Err(Error::Internal("the hop to the hub carried no publish".into())),
            };
            let (status, body) = match answer {
                Ok(body) => (200, body),
                Err(e) => {
                    if e.status() >= 500 {
                        log::error!("hub_error", "code" => e.code(), "message" => e.to_string());
                    }
                    (e.status(), e.body())
                }
            };
            Ok(js_sys::Array::of2(&JsValue::from(status), &JsValue::from(body)).into())
        })
    }

    /// RPC: a channel's presence batch (see `hop::user::presence`): sent to this user's connections
    /// that watch the channel. Answers `undefined`, or a membership version when none watches it any
    /// more (and the user is not lingering in it), so the root stops sending.
    #[wasm_bindgen(js_name = presence)]
    pub fn presence_rpc(&self, channel: String, frame: js_sys::JsString) -> JsValue {
        match self.deliver_presence(&channel, &frame) {
            Ok(Some(version)) => JsValue::from_f64(version as f64),
            Ok(None) => JsValue::UNDEFINED,
            Err(e) => {
                log::error!("hub_error", "code" => e.code(), "message" => e.to_string());
                JsValue::UNDEFINED
            }
        }
    }

    /// RPC: how many of this user's connections joined `channel` (`GET /channels/{c}/presence`).
    #[wasm_bindgen(js_name = channelConnections)]
    pub fn channel_connections_rpc(&self, channel: String) -> f64 {
        if let Err(e) = self.ensure_loaded() {
            log::error!("hub_error", "code" => e.code(), "message" => e.to_string());
        }
        self.joined_count(&channel) as f64
    }

    #[wasm_bindgen(js_name = webSocketClose)]
    pub fn websocket_close(&self, ws: web_sys::WebSocket, code: usize, reason: String, was_clean: bool) -> Promise {
        let hub = self.handle();
        future_to_promise(async move {
            hub.on_close(&WebSocket::from(ws), code, &reason, was_clean).await;
            Ok(JsValue::UNDEFINED)
        })
    }

    #[wasm_bindgen(js_name = webSocketError)]
    pub fn websocket_error(&self, ws: web_sys::WebSocket, error: JsValue) -> Promise {
        let hub = self.handle();
        future_to_promise(async move {
            let message = worker::Error::from(error).to_string();
            hub.on_error(&WebSocket::from(ws), &message).await;
            Ok(JsValue::UNDEFINED)
        })
    }
}

impl UserHub {
    pub(crate) fn config(&self) -> Result<Rc<Config>, Error> {
        settings::get(&self.env)
    }

    fn sql(&self) -> HubSql<'_> {
        HubSql { storage: self.state.storage().sql(), lazy_ready: &self.lazy_ready }
    }

    pub(crate) fn sql_exec(
        &self,
        query: &str,
        bindings: Vec<worker::SqlStorageValue>,
    ) -> Result<worker::SqlCursor, Error> {
        Ok(self.sql().exec(query, Some(bindings))?)
    }

    pub(crate) fn current_seq(&self) -> u64 {
        self.seq.get()
    }
}
