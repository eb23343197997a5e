//! The hub's memory, which is only a cache: the open connections, rebuilt after every construction
//! from the sockets' tags and attachments (which survive hibernation) and the stored filters and
//! grants.

use super::{UserHub, SCHEMA};
use crate::core::channel::{ChannelGrants, Grants};
use crate::core::config::Config;
use crate::core::error::Error;
use crate::core::filter::FilterSet;
use crate::core::protocol::{self, Transport};
use crate::core::ratelimit::TokenBucket;
use crate::runtime::{log, rows};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::rc::Rc;
use worker::worker_sys::ext::WebSocketExt;
use worker::{Date, WebSocket};

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
    /// Channels whose `join` is waiting for the root; a `leave` meanwhile removes the name, which
    /// cancels the join (memory only: a join in flight does not outlive the hub).
    pub joining: Vec<String>,
    pub grants: Rc<ChannelGrants>,
    /// Channels joined with `presence: true`: this connection gets their `presence` frames.
    pub watching: Vec<String>,
    /// Channels whose presence join waits for the root's snapshot, with the `presence` frames that
    /// arrived meanwhile: they are sent after the `ok` (memory only, like `joining`).
    pub held: Vec<(String, Vec<js_sys::JsString>)>,
    /// The token's `presence` claim (JSON text): this user's data in a channel this connection is
    /// the first to join.
    pub presence: Option<Rc<str>>,
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

    /// Stores what must survive hibernation in the socket's attachment.
    pub fn store_attachment(&self) -> Result<(), Error> {
        let text = serde_json::to_string(&Attachment::of(self)).map_err(|e| Error::Internal(e.to_string()))?;
        let raw: &web_sys::WebSocket = self.ws.as_ref();
        raw.serialize_attachment(text.into()).map_err(|e| Error::from(worker::Error::from(e)))
    }
}

/// What each socket carries through hibernation besides its tag (the connection id), as JSON text:
/// serde-wasm-bindgen's object form cost 3.7 KB of the gzipped wasm. Versioned so a deploy
/// that changes it can still read the old shape.
#[derive(Serialize, Deserialize, Debug)]
pub struct Attachment {
    pub v: u8,
    #[serde(rename = "u")]
    pub user_id: String,
    /// When the connection opened, in ms since the epoch.
    #[serde(rename = "t")]
    pub connected_at: f64,
    /// The connect token's `exp`, in ms since the epoch.
    #[serde(rename = "e", default)]
    pub expires_at: Option<f64>,
    /// `websocket`, or `sse` for a Server-Sent Events client bridged by the Worker.
    #[serde(rename = "tr", default = "websocket")]
    pub transport: String,
    /// The user's `seq` when the connection opened.
    #[serde(rename = "s", default)]
    pub accepted_seq: u64,
    /// Channels joined, each with the user's `seq` at the join.
    #[serde(rename = "c", default)]
    pub channels: Vec<(String, u64)>,
    /// Which of `channels` this connection watches (joined with `presence: true`): bit `i` is
    /// `channels[i]`. A bit mask, since the attachment holds at most 2 KiB and the names are in it
    /// already.
    #[serde(rename = "w", default)]
    pub watching: u32,
}

impl Attachment {
    /// The socket's attachment, if it holds one this build can read.
    fn load(ws: &WebSocket) -> Option<Attachment> {
        let raw: &web_sys::WebSocket = ws.as_ref();
        serde_json::from_str(&raw.deserialize_attachment().ok()?.as_string()?).ok()
    }

    fn of(conn: &Conn) -> Attachment {
        Attachment {
            v: 1,
            user_id: conn.user_id.clone(),
            connected_at: conn.connected_at,
            expires_at: conn.expires_at,
            transport: conn.transport.name().to_string(),
            accepted_seq: conn.accepted_seq,
            channels: conn.channels.clone(),
            watching: conn
                .channels
                .iter()
                .enumerate()
                .filter(|(_, (c, _))| conn.watching.contains(c))
                .fold(0, |mask, (i, _)| mask | (1 << i)),
        }
    }

    /// The channels the mask says this connection watches.
    pub(super) fn watched(&self) -> Vec<String> {
        self.channels
            .iter()
            .enumerate()
            .filter(|(i, _)| self.watching & (1 << i) != 0)
            .map(|(_, (c, _))| c.clone())
            .collect()
    }
}

fn websocket() -> String {
    Transport::WebSocket.name().to_string()
}

/// A socket's connection id: its tag.
pub(super) fn conn_id(hub: &UserHub, ws: &WebSocket) -> Option<String> {
    crate::runtime::js::socket_id(ws, || hub.state.get_tags(ws).into_iter().next())
}

impl UserHub {
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
        let seq = rows::first_int(sql.exec(
            "SELECT max(coalesce((SELECT value FROM meta WHERE key = 'seq'), 0), coalesce((SELECT max(seq) FROM history), 0))",
            None,
        )?)?
        .map_or(0, |n| n.max(0) as u64);
        self.reload_oldest(&sql)?;
        let text = |r: &[_], i| rows::text(r, i).unwrap_or_default();
        let mut stored: HashMap<String, String> =
            rows::all(sql.exec("SELECT conn_id, filters FROM subscriptions", None)?)?
                .iter()
                .map(|r| (text(r, 0), text(r, 1)))
                .collect();
        let mut grants: HashMap<String, Rc<ChannelGrants>> =
            rows::all(sql.exec("SELECT conn_id, join_grants, publish_grants FROM grants", None)?)?
                .iter()
                .map(|r| {
                    let g =
                        ChannelGrants { join: Grants::from_text(&text(r, 1)), publish: Grants::from_text(&text(r, 2)) };
                    (text(r, 0), Rc::new(g))
                })
                .collect();
        let mut presence: HashMap<String, Rc<str>> =
            rows::all(sql.exec("SELECT conn_id, data FROM conn_presence", None)?)?
                .iter()
                .map(|r| (text(r, 0), Rc::from(text(r, 1))))
                .collect();
        let now = Date::now().as_millis() as f64;
        let mut conns = HashMap::new();
        for ws in self.state.get_websockets() {
            let Some(id) = crate::runtime::js::socket_id(&ws, || self.state.get_tags(&ws).into_iter().next()) else {
                continue;
            };
            let Some(a) = Attachment::load(&ws) else {
                // No attachment this build can read (a deploy ends every socket, so an older shape is
                // rare): closed, so the client reconnects, rather than kept open without its state.
                let _ = ws.close(Some(1011), Some("the hub could not read this connection's state; reconnect"));
                continue;
            };
            let filters = stored.remove(&id).map(|t| FilterSet::from_json(&t)).unwrap_or_default();
            let conn_grants = grants.remove(&id).unwrap_or_default();
            let watching = a.watched();
            let data = presence.remove(&id);
            conns.insert(
                id,
                Conn {
                    watching,
                    held: Vec::new(),
                    presence: data,
                    channels: a.channels,
                    joining: Vec::new(),
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
        for orphan in presence.keys() {
            sql.exec("DELETE FROM conn_presence WHERE conn_id = ?", vec![orphan.clone().into()])?;
        }
        self.seq.set(seq);
        log::info!("hub_loaded", "connections" => conns.len(), "seq" => seq);
        *self.conns.borrow_mut() = Some(conns);
        self.online_after_load();
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
            if conn.presence.is_some() {
                statements.push("DELETE FROM conn_presence WHERE conn_id = ?");
            }
            for statement in statements {
                if let Err(e) = self.sql().exec(statement, vec![id.to_string().into()]) {
                    log::error!("storage_error", "op" => "forget", "message" => e.to_string());
                }
            }
        }
        self.acks.borrow_mut().connection_closed(id);
        conn
    }
}
