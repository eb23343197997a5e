//! The `UserHub` Durable Object: one per user, holding that user's sockets with the WebSocket
//! Hibernation API (<https://developers.cloudflare.com/durable-objects/best-practices/websockets/>).
//!
//! Memory is only a cache. The truth is each socket's tag (its connection id) and attachment, and
//! the object's SQLite storage (filters per connection, the user's `seq`). After the runtime evicts an
//! idle hub, the constructor runs again and the cache is rebuilt from those on first use, so
//! subscriptions survive hibernation. Nothing here sets a timer while idle: the only timer is a
//! publish's ack timeout, which lives exactly as long as that publish's request.

use crate::acks::{AckRegistry, Collector};
use crate::config::Config;
use crate::error::Error;
use crate::filter::{EnvelopeView, FilterSet};
use crate::protocol::{self, AckOut, Envelope, PublishResponse};
use crate::ratelimit::TokenBucket;
use crate::{http, ids, log, router};
use chrono::{DateTime, SecondsFormat};
use futures_util::future::{select, Either};
use serde::Deserialize;
use serde_json::json;
use std::cell::{Cell, RefCell};
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
const CORS_HEADER: &str = "x-switchboard-cors";

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS subscriptions (conn_id TEXT PRIMARY KEY, filters TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);";

/// One open connection, as cached in memory.
pub(crate) struct Conn {
    pub ws: WebSocket,
    pub filters: FilterSet,
    pub bucket: TokenBucket,
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
}

impl worker::DurableObject for UserHub {
    fn new(state: State, env: Env) -> Self {
        // Exactly `ping` is answered by the runtime without waking the hub.
        if let Ok(pair) = worker::WebSocketRequestResponsePair::new("ping", "pong") {
            state.set_websocket_auto_response(&pair);
        }
        UserHub { state, env, conns: RefCell::new(None), acks: RefCell::default(), seq: Cell::new(0) }
    }

    async fn fetch(&self, mut req: Request) -> worker::Result<Response> {
        let cors = req.headers().get(CORS_HEADER).ok().flatten();
        let result = match req.path().as_str() {
            "/connect" => self.accept(&req),
            "/publish" => self.publish(&mut req, cors.as_deref()).await,
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
        self.on_message(&ws, message);
        Ok(())
    }

    async fn websocket_close(&self, ws: WebSocket, code: usize, reason: String, was_clean: bool) -> worker::Result<()> {
        self.on_close(&ws, code, &reason, was_clean);
        Ok(())
    }

    async fn websocket_error(&self, ws: WebSocket, error: worker::Error) -> worker::Result<()> {
        self.on_error(&ws, &error.to_string());
        Ok(())
    }
}

#[derive(Deserialize)]
struct SubRow {
    conn_id: String,
    filters: String,
}

#[derive(Deserialize)]
struct ValueRow {
    value: i64,
}

impl UserHub {
    pub(crate) fn config(&self) -> Result<Rc<Config>, Error> {
        router::settings(&self.env)
    }

    /// Rebuilds the connection cache from the sockets' tags and the stored filters, once per
    /// construction. Rows of connections that no longer exist are deleted.
    pub(crate) fn ensure_loaded(&self) -> Result<(), Error> {
        if self.conns.borrow().is_some() {
            return Ok(());
        }
        let config = self.config()?;
        let sql = self.state.storage().sql();
        sql.exec(SCHEMA, None)?;
        let seq = sql
            .exec("SELECT value FROM meta WHERE key = 'seq'", None)?
            .to_array::<ValueRow>()?
            .first()
            .map_or(0, |r| r.value.max(0) as u64);
        let mut stored: HashMap<String, String> = sql
            .exec("SELECT conn_id, filters FROM subscriptions", None)?
            .to_array::<SubRow>()?
            .into_iter()
            .map(|r| (r.conn_id, r.filters))
            .collect();
        let now = Date::now().as_millis() as f64;
        let mut conns = HashMap::new();
        for ws in self.state.get_websockets() {
            let Some(id) = self.state.get_tags(&ws).into_iter().next() else { continue };
            let filters = stored.remove(&id).map(|t| FilterSet::from_json(&t)).unwrap_or_default();
            conns.insert(id, Conn { ws, filters, bucket: TokenBucket::new(config.max_frames_per_second, now) });
        }
        for orphan in stored.keys() {
            sql.exec("DELETE FROM subscriptions WHERE conn_id = ?", vec![orphan.clone().into()])?;
        }
        self.seq.set(seq);
        log::info("hub_loaded", json!({ "connections": conns.len(), "seq": seq }));
        *self.conns.borrow_mut() = Some(conns);
        Ok(())
    }

    /// Stores a connection's filters (the cache already holds them).
    pub(crate) fn store_filters(&self, id: &str, filters: &FilterSet) -> Result<(), Error> {
        self.state.storage().sql().exec(
            "INSERT INTO subscriptions (conn_id, filters) VALUES (?, ?) ON CONFLICT(conn_id) DO UPDATE SET filters = excluded.filters",
            vec![id.to_string().into(), filters.to_json().into()],
        )?;
        Ok(())
    }

    /// Forgets a connection everywhere: cache, storage, and the publishes waiting on its ack.
    pub(crate) fn forget(&self, id: &str) {
        let known = self.conns.borrow_mut().as_mut().and_then(|c| c.remove(id)).is_some();
        if known {
            if let Err(e) = self
                .state
                .storage()
                .sql()
                .exec("DELETE FROM subscriptions WHERE conn_id = ?", vec![id.to_string().into()])
            {
                log::error("storage_error", json!({ "op": "forget", "message": e.to_string() }));
            }
        }
        self.acks.borrow_mut().connection_closed(id);
    }

    /// Hands out the user's next `seq`, stored before any envelope carrying it leaves.
    fn next_seq(&self) -> Result<u64, Error> {
        let seq = self.seq.get() + 1;
        self.state.storage().sql().exec(
            "INSERT INTO meta (key, value) VALUES ('seq', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            vec![(seq as i64).into()],
        )?;
        self.seq.set(seq);
        Ok(seq)
    }

    pub(crate) fn current_seq(&self) -> u64 {
        self.seq.get()
    }

    /// Fans an envelope out to the matching connections and waits for their acks.
    async fn publish(&self, req: &mut Request, cors: Option<&str>) -> Result<Response, Error> {
        let config = self.config()?;
        let body = req.bytes().await?;
        let p = protocol::parse_publish(&body)?;
        self.ensure_loaded()?;
        if let Some(target) = &p.connection_id {
            if !self.conns.borrow().as_ref().is_some_and(|c| c.contains_key(target)) {
                return Err(Error::ConnectionNotFound(target.clone()));
            }
        }
        let started = Date::now().as_millis();
        let seq = self.next_seq()?;
        let envelope_id = ids::uuid_v4();
        let timestamp = rfc3339(started);
        let text = Envelope {
            envelope_id: &envelope_id,
            seq,
            kind: &p.kind,
            user_id: &p.user_id,
            timestamp: &timestamp,
            payload: p.payload,
            replayed: false,
        }
        .to_json();
        let view = EnvelopeView::new(&p.kind, p.payload.get());
        let mut expected = Vec::new();
        if let Some(conns) = self.conns.borrow().as_ref() {
            for (id, conn) in conns {
                if p.connection_id.as_ref().is_some_and(|t| t != id) {
                    continue;
                }
                // A socket that is already closing refuses the send; it is not counted.
                if conn.filters.matches(&view) && conn.ws.send_with_str(&text).is_ok() {
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
        Ok(http::json(200, body, cors)?)
    }
}

fn rfc3339(ms: u64) -> String {
    DateTime::from_timestamp_millis(ms as i64).unwrap_or_default().to_rfc3339_opts(SecondsFormat::Millis, true)
}

// ---- Worker side: reaching a user's hub --------------------------------------------------------

fn stub(env: &Env, user_id: &str) -> Result<Stub, Error> {
    Ok(env.durable_object(BINDING)?.id_from_name(user_id)?.get_stub()?)
}

/// Hands a WebSocket upgrade to the user's hub. The user id travels in the URL (header values
/// cannot carry every Unicode user id).
pub async fn connect(env: &Env, user_id: &str, expires_at_ms: Option<i64>) -> Result<Response, Error> {
    let mut url = worker::Url::parse("https://hub/connect").map_err(|e| Error::Internal(e.to_string()))?;
    url.query_pairs_mut().append_pair("user", user_id);
    if let Some(exp) = expires_at_ms {
        url.query_pairs_mut().append_pair("exp", &exp.to_string());
    }
    let headers = Headers::new();
    headers.set("upgrade", "websocket")?;
    let mut init = RequestInit::new();
    init.with_method(Method::Get).with_headers(headers);
    let req = Request::new_with_init(url.as_str(), &init)?;
    stub(env, user_id)?
        .fetch_with_request(req)
        .await
        .map_err(|e| Error::Unavailable(format!("the user's hub did not answer: {e}")))
}

/// Hands a checked publish body to the user's hub and returns its answer as it is.
pub async fn publish(env: &Env, user_id: &str, body: Vec<u8>, cors: Option<&str>) -> Result<Response, Error> {
    let headers = Headers::new();
    headers.set("content-type", "application/json")?;
    if let Some(origin) = cors {
        headers.set(CORS_HEADER, origin)?;
    }
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_headers(headers)
        .with_body(Some(js_sys::Uint8Array::from(body.as_slice()).into()));
    let req = Request::new_with_init("https://hub/publish", &init)?;
    stub(env, user_id)?
        .fetch_with_request(req)
        .await
        .map_err(|e| Error::Unavailable(format!("the user's hub did not answer: {e}")))
}
