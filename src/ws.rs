//! The WebSocket transport inside a hub: accepting a socket, reading client frames, answering
//! closes. Frames are parsed by [`crate::protocol`]; this file decides what each one does to the hub.
//!
//! Close codes (see the README's table): 4000-4499 mean "reconnect", 4500-4999 "do not reconnect".

use crate::acks::AckOutcome;
use crate::channel::{self, Grants};
use crate::config::Config;
use crate::error::Error;
use crate::filter::{self, FilterSet};
use crate::hub::{self, ChannelGrants, Conn, Transport, UserHub};
use crate::protocol::{self, ClientFrame, Skipped};
use crate::ratelimit::TokenBucket;
use crate::{ids, log, webhook};
use serde::{Deserialize, Serialize};
use serde_json::json;
use serde_json::value::RawValue;
use worker::{Date, Request, Response, WebSocket, WebSocketIncomingMessage, WebSocketPair};

/// The connect token's `exp` passed: reconnect with a fresh token.
pub const CLOSE_TOKEN_EXPIRED: u16 = 4001;
/// Closed by the backend through the connection API.
pub const CLOSE_BY_BACKEND: u16 = 4002;
/// `MAX_CONNECTION_SECONDS` reached: reconnect.
pub const CLOSE_LIFETIME: u16 = 4003;
/// A frame larger than `MAX_FRAME_BYTES` (reconnecting is fine; resending it is not).
pub const CLOSE_FRAME_TOO_LARGE: u16 = 4009;
/// More frames than `MAX_FRAMES_PER_SECOND` allows (reconnect after a backoff).
pub const CLOSE_FLOOD: u16 = 4029;

/// What each socket carries through hibernation besides its tag (the connection id).
/// Versioned so a deploy that changes it can still read the old shape.
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
}

impl Attachment {
    fn of(conn: &Conn) -> Attachment {
        Attachment {
            v: 1,
            user_id: conn.user_id.clone(),
            connected_at: conn.connected_at,
            expires_at: conn.expires_at,
            transport: conn.transport.name().to_string(),
            accepted_seq: conn.accepted_seq,
            channels: conn.channels.clone(),
        }
    }
}

fn websocket() -> String {
    Transport::WebSocket.name().to_string()
}

/// Whether the request asks for a WebSocket upgrade.
pub fn is_upgrade(req: &Request) -> bool {
    matches!(req.headers().get("upgrade"), Ok(Some(v)) if v.eq_ignore_ascii_case("websocket"))
}

/// The code to answer a client's close with: its own when it may be sent, else 1000
/// (1005 "no code" and 1006 "abnormal" are reserved and cannot be sent).
pub fn reply_close_code(code: usize) -> u16 {
    match code {
        1000 | 3000..=4999 => code as u16,
        _ => 1000,
    }
}

fn conn_id(hub: &UserHub, ws: &WebSocket) -> Option<String> {
    hub.state.get_tags(ws).into_iter().next()
}

fn send(ws: &WebSocket, text: &str) {
    // A socket that is closing refuses sends; its close handler cleans up.
    let _ = ws.send_with_str(text);
}

fn send_error(ws: &WebSocket, code: &str, message: &str, id: Option<&RawValue>, skipped: &[Skipped]) {
    send(ws, &protocol::error_frame(code, message, id, skipped));
}

fn reply_ok(ws: &WebSocket, id: Option<&RawValue>) {
    if let Some(id) = id {
        send(ws, &protocol::ok_frame(id));
    }
}

impl UserHub {
    /// Accepts a socket for the user named in the hop's URL and sends `welcome`. An SSE connection
    /// brings its filters (and `since`) in the URL: they are applied, and the replay sent, before
    /// anything live can reach it.
    pub(crate) async fn accept(&self, req: &Request) -> Result<Response, Error> {
        let config = self.config()?;
        let url = req.inner().url();
        let (mut user_id, mut expires_at, mut transport, mut filters, mut since) =
            (None, None, Transport::WebSocket, None, None);
        let mut grants = ChannelGrants::default();
        for (k, v) in crate::query::pairs(&url) {
            match k.as_str() {
                "user" => user_id = Some(v),
                "channels" => grants.join = Grants::from_text(&v),
                "publishChannels" => grants.publish = Grants::from_text(&v),
                "exp" => expires_at = v.parse::<f64>().ok(),
                "transport" => transport = Transport::from_name(&v),
                "filters" => filters = Some(v),
                "since" => since = v.parse::<u64>().ok(),
                _ => {}
            }
        }
        let user_id = user_id.ok_or_else(|| Error::Internal("the hop to the hub carried no user".into()))?;
        self.ensure_loaded()?;
        let open = self.conns.borrow().as_ref().map_or(0, |c| c.len());
        if open >= config.max_connections_per_user {
            return Err(Error::TooManyRequests(format!(
                "this user already has {open} open connections (MAX_CONNECTIONS_PER_USER)"
            )));
        }

        let pair = WebSocketPair::new()?;
        let id = ids::uuid_v4();
        let now = Date::now().as_millis() as f64;
        let accepted_seq = self.current_seq();
        if !grants.is_empty() {
            self.sql_exec(
                "INSERT INTO grants (conn_id, join_grants, publish_grants) VALUES (?, ?, ?)",
                vec![id.clone().into(), grants.join.to_text().into(), grants.publish.to_text().into()],
            )?;
        }
        self.state.accept_websocket_with_tags(&pair.server, &[id.as_str()]);
        let deadline = hub::deadline(&config, now, expires_at);
        let conn = Conn {
            ws: pair.server,
            filters: FilterSet::default(),
            bucket: TokenBucket::new(config.max_frames_per_second, now),
            transport,
            accepted_seq,
            user_id: user_id.clone(),
            connected_at: now,
            expires_at,
            deadline,
            channels: Vec::new(),
            grants: std::rc::Rc::new(grants),
        };
        conn.ws.serialize_attachment(Attachment::of(&conn))?;
        conn.send(&protocol::welcome_frame(&id, &user_id, accepted_seq), None);
        if let Some(conns) = self.conns.borrow_mut().as_mut() {
            conns.insert(id.clone(), conn);
        }
        if let Some(filters) = filters {
            let list = serde_json::from_str(&filters).unwrap_or(serde_json::Value::Null);
            self.change_filters(&id, &list, None, true, since);
        }
        log::info(
            "connect",
            json!({ "userId": user_id, "connectionId": id, "transport": transport.name(), "open": open + 1, "since": since }),
        );
        let data =
            json!({ "connectionId": id, "transport": transport.name(), "connectedAt": hub::rfc3339(now as u64) });
        self.enqueue_event(webhook::CONNECTION_OPENED, &user_id, data).await?;
        if let Some(d) = deadline {
            self.schedule_alarm(Some(d.ceil() as i64), false).await?;
        }
        Ok(Response::from_websocket(pair.client)?)
    }

    /// One client frame. Nothing here panics or closes the socket on bad input; only abuse
    /// (an oversized frame, a flood) closes it.
    pub(crate) async fn on_message(&self, ws: &WebSocket, message: WebSocketIncomingMessage) {
        let Some(id) = conn_id(self, ws) else { return };
        let config = match self.config().and_then(|c| self.ensure_loaded().map(|_| c)) {
            Ok(c) => c,
            Err(e) => {
                send_error(ws, "internal_error", &e.to_string(), None, &[]);
                return;
            }
        };
        let text = match message {
            WebSocketIncomingMessage::String(text) => text,
            WebSocketIncomingMessage::Binary(bytes) => {
                if bytes.len() > config.max_frame_bytes {
                    return self.close_by_server(&id, CLOSE_FRAME_TOO_LARGE, "frame too large", "abuse").await;
                }
                if !self.take_token(&id) {
                    return self.close_by_server(&id, CLOSE_FLOOD, "too many frames", "abuse").await;
                }
                return send_error(
                    ws,
                    "unsupported_frame",
                    "binary frames are not supported: send JSON text frames",
                    None,
                    &[],
                );
            }
        };
        if text.len() > config.max_frame_bytes {
            return self.close_by_server(&id, CLOSE_FRAME_TOO_LARGE, "frame too large", "abuse").await;
        }
        let frame = protocol::parse_client_frame(&text);
        // Acks the hub is waiting for are paced by publishes, not by the client: they never count
        // against the flood limit. Everything else does.
        if let Ok(ClientFrame::Ack { envelope_id, result, id: frame_id }) = &frame {
            let outcome = self.acks.borrow_mut().ack(envelope_id, &id, result.map(ToOwned::to_owned));
            if outcome == AckOutcome::Recorded {
                return reply_ok(ws, *frame_id);
            }
            if !self.take_token(&id) {
                return self.close_by_server(&id, CLOSE_FLOOD, "too many frames", "abuse").await;
            }
            // A late or repeated ack is harmless; a HopeFlow client expects silence, so only a frame
            // that asked for a reply (`id`) hears about it.
            if frame_id.is_some() {
                let message = if outcome == AckOutcome::Duplicate {
                    "this envelope was already acknowledged by this connection"
                } else {
                    "no publish is waiting for this ack (unknown envelope, or its timeout has passed)"
                };
                send_error(ws, "unknown_envelope", message, *frame_id, &[]);
            }
            return;
        }
        if !self.take_token(&id) {
            return self.close_by_server(&id, CLOSE_FLOOD, "too many frames", "abuse").await;
        }
        match frame {
            Err(e) => send_error(ws, e.code, &e.message, e.id, &[]),
            Ok(ClientFrame::Ping) => send(ws, "pong"),
            Ok(ClientFrame::Subscribe { filters, since, id: frame_id }) => {
                self.change_filters(&id, &filters, frame_id, true, since)
            }
            Ok(ClientFrame::Unsubscribe { filters, id: frame_id }) => {
                self.change_filters(&id, &filters, frame_id, false, None)
            }
            Ok(ClientFrame::Message { data, id: frame_id }) => self.upstream(ws, &id, data, frame_id).await,
            Ok(ClientFrame::Join { channel, id: frame_id }) => self.join(ws, &id, channel, frame_id).await,
            Ok(ClientFrame::Leave { channel, id: frame_id }) => self.leave(ws, &id, &channel, frame_id).await,
            Ok(ClientFrame::Publish { channel, kind, payload, timeout_ms, id: frame_id }) => {
                let publish = ClientPublish { channel, kind, payload, timeout_ms };
                self.client_publish(ws, &id, publish, frame_id, &config).await
            }
            Ok(ClientFrame::Ack { .. }) => {}
        }
    }

    fn take_token(&self, id: &str) -> bool {
        let now = Date::now().as_millis() as f64;
        self.conns.borrow_mut().as_mut().and_then(|c| c.get_mut(id)).is_none_or(|c| c.bucket.take(now))
    }

    /// Applies a subscribe (`add`) or unsubscribe, stores the result, replays history after `since`,
    /// then replies: `ok` when the frame had an `id`, an `invalid_filter` error when entries were skipped.
    fn change_filters(
        &self,
        id: &str,
        list: &serde_json::Value,
        frame_id: Option<&RawValue>,
        add: bool,
        since: Option<u64>,
    ) {
        let reply = |text: &str| {
            if let Some(conn) = self.conns.borrow().as_ref().and_then(|c| c.get(id)) {
                conn.send(text, None);
            }
        };
        let parsed = match filter::parse_list(list) {
            Ok(p) => p,
            Err(message) => return reply(&protocol::error_frame("invalid_frame", &message, frame_id, &[])),
        };
        let mut skipped: Vec<Skipped> =
            parsed.skipped.into_iter().map(|(index, reason)| Skipped { index, reason }).collect();
        let (before, updated) = {
            let mut conns = self.conns.borrow_mut();
            let Some(conn) = conns.as_mut().and_then(|c| c.get_mut(id)) else { return };
            let before = conn.filters.clone();
            if add {
                for index in conn.filters.add(parsed.valid) {
                    skipped.push(Skipped {
                        index,
                        reason: format!("this connection already holds {} filters", filter::MAX_FILTERS_PER_CONNECTION),
                    });
                }
            } else {
                conn.filters.remove(&parsed.valid);
            }
            (before, conn.filters.clone())
        };
        if updated != before {
            if let Err(e) = self.store_filters(id, &updated) {
                log::error("storage_error", json!({ "op": "store_filters", "message": e.to_string() }));
                return reply(&protocol::error_frame(
                    "internal_error",
                    "the subscription could not be stored; try again",
                    frame_id,
                    &[],
                ));
            }
        }
        if let Some(since) = since {
            if let Err(e) = self.replay(id, since, &before) {
                log::error("storage_error", json!({ "op": "replay", "message": e.to_string() }));
                return reply(&protocol::error_frame(
                    "internal_error",
                    "the history could not be read; try again",
                    frame_id,
                    &[],
                ));
            }
        }
        if skipped.is_empty() {
            if let Some(frame_id) = frame_id {
                reply(&protocol::ok_frame(frame_id));
            }
            return;
        }
        skipped.sort_by_key(|s| s.index);
        let message = format!("{} filter(s) skipped; the others were applied", skipped.len());
        reply(&protocol::error_frame("invalid_filter", &message, frame_id, &skipped));
    }

    /// Sends a client's `message` frame to the backend webhook; `ok` (with an `id`) once it is stored.
    async fn upstream(&self, ws: &WebSocket, id: &str, data: Option<&RawValue>, frame_id: Option<&RawValue>) {
        let user_id = self.conns.borrow().as_ref().and_then(|c| c.get(id)).map(|c| c.user_id.clone());
        let Some(user_id) = user_id else { return };
        let data: serde_json::Value = data.and_then(|d| serde_json::from_str(d.get()).ok()).unwrap_or_default();
        let mut event = json!({ "connectionId": id, "data": data });
        if let Some(frame_id) = frame_id.and_then(|f| serde_json::from_str::<serde_json::Value>(f.get()).ok()) {
            event["messageId"] = frame_id;
        }
        match self.enqueue_event(webhook::CLIENT_MESSAGE, &user_id, event).await {
            Ok(true) => reply_ok(ws, frame_id),
            Ok(false) => send_error(
                ws,
                "no_backend",
                "no backend webhook is configured to receive messages (set WEBHOOK_URL and WEBHOOK_SECRET)",
                frame_id,
                &[],
            ),
            Err(e) => {
                log::error("storage_error", json!({ "op": "enqueue_message", "message": e.to_string() }));
                send_error(ws, "internal_error", "the message could not be stored; send it again", frame_id, &[]);
            }
        }
    }

    /// Closes a connection from the server side (abuse, lifetime, the backend) and forgets it at once
    /// (its close event may never come); the backend hears about it once.
    pub(crate) async fn close_by_server(&self, id: &str, code: u16, reason: &str, by: &str) {
        let Some(conn) = self.forget(id) else { return };
        let _ = conn.ws.close(Some(code), Some(reason));
        self.left_channels(&conn).await;
        log::info(
            "close",
            json!({ "userId": conn.user_id, "connectionId": id, "code": code, "reason": reason, "by": by }),
        );
        self.report_close(&conn, id, code, reason, by).await;
    }

    async fn report_close(&self, conn: &Conn, id: &str, code: u16, reason: &str, by: &str) {
        let data = json!({
            "connectionId": id, "transport": conn.transport.name(), "code": code, "reason": reason, "by": by,
            "connectedAt": hub::rfc3339(conn.connected_at as u64),
        });
        if let Err(e) = self.enqueue_event(webhook::CONNECTION_CLOSED, &conn.user_id, data).await {
            log::error("storage_error", json!({ "op": "enqueue_close", "message": e.to_string() }));
        }
    }

    /// The client closed: answer the close (so its handshake completes promptly) and forget it.
    pub(crate) async fn on_close(&self, ws: &WebSocket, code: usize, reason: &str, was_clean: bool) {
        let reply: String = reason.chars().take(100).collect();
        // Already-closing sockets throw here; that is fine.
        let _ = ws.close(Some(reply_close_code(code)), Some(reply));
        let Some(id) = conn_id(self, ws) else { return };
        let _ = self.ensure_loaded();
        // Unknown here means the server closed it first and has reported it already.
        let Some(conn) = self.forget(&id) else { return };
        self.left_channels(&conn).await;
        log::info(
            "close",
            json!({ "userId": conn.user_id, "connectionId": id, "code": code, "reason": reason, "clean": was_clean, "by": "client" }),
        );
        self.report_close(&conn, &id, code.min(u16::MAX as usize) as u16, reason, "client").await;
    }

    pub(crate) async fn on_error(&self, ws: &WebSocket, error: &str) {
        let _ = ws.close(Some(1011), Some("socket error"));
        let Some(id) = conn_id(self, ws) else { return };
        let _ = self.ensure_loaded();
        let Some(conn) = self.forget(&id) else { return };
        self.left_channels(&conn).await;
        log::error("socket_error", json!({ "connectionId": id, "message": error }));
        self.report_close(&conn, &id, 1011, "socket error", "error").await;
    }
}

/// A client's `publish` frame, checked.
struct ClientPublish<'a> {
    channel: String,
    kind: String,
    payload: &'a RawValue,
    timeout_ms: Option<u64>,
}

impl UserHub {
    /// `join`: the token must allow the channel. The channel's root hears of the user once (when the
    /// user's first connection joins); the join is answered only after the root has it, so a publish
    /// that follows the `ok` reaches this connection.
    async fn join(&self, ws: &WebSocket, id: &str, channel: String, frame_id: Option<&RawValue>) {
        let (allowed, already, count, user_id) = {
            let conns = self.conns.borrow();
            let Some(conn) = conns.as_ref().and_then(|c| c.get(id)) else { return };
            let already = conn.channels.iter().any(|(c, _)| *c == channel);
            (conn.grants.join.allows(&channel), already, conn.channels.len(), conn.user_id.clone())
        };
        if !allowed {
            let message = format!("this connection's token does not allow joining `{channel}` (its `channels` claim)");
            return send_error(ws, "forbidden", &message, frame_id, &[]);
        }
        if already {
            return reply_ok(ws, frame_id);
        }
        if count >= channel::MAX_CHANNELS_PER_CONNECTION {
            let message =
                format!("this connection has already joined {} channels", channel::MAX_CHANNELS_PER_CONNECTION);
            return send_error(ws, "too_many_channels", &message, frame_id, &[]);
        }
        if let Err(e) = self.register(&user_id, &channel).await {
            let code = if e.status() == 429 { "channel_full" } else { "unavailable" };
            log::error("join_failed", json!({ "userId": user_id, "channel": channel, "message": e.to_string() }));
            return send_error(ws, code, &format!("could not join `{channel}`: {e}"), frame_id, &[]);
        }
        let joined_at = self.current_seq();
        let stored = {
            let mut conns = self.conns.borrow_mut();
            // The socket may have closed while the root was asked; the root then holds a stale
            // member, which the next publish to the channel removes.
            let Some(conn) = conns.as_mut().and_then(|c| c.get_mut(id)) else { return };
            if !conn.channels.iter().any(|(c, _)| *c == channel) {
                conn.channels.push((channel.clone(), joined_at));
            }
            conn.ws.serialize_attachment(Attachment::of(conn))
        };
        if let Err(e) = stored {
            log::error("storage_error", json!({ "op": "join", "message": e.to_string() }));
        }
        log::info("join", json!({ "userId": user_id, "connectionId": id, "channel": channel }));
        reply_ok(ws, frame_id);
    }

    /// `leave`: always succeeds (leaving a channel not joined is a no-op).
    async fn leave(&self, ws: &WebSocket, id: &str, channel: &str, frame_id: Option<&RawValue>) {
        let left = {
            let mut conns = self.conns.borrow_mut();
            let Some(conn) = conns.as_mut().and_then(|c| c.get_mut(id)) else { return };
            let before = conn.channels.len();
            conn.channels.retain(|(c, _)| c != channel);
            if conn.channels.len() == before {
                None
            } else {
                if let Err(e) = conn.ws.serialize_attachment(Attachment::of(conn)) {
                    log::error("storage_error", json!({ "op": "leave", "message": e.to_string() }));
                }
                Some(conn.user_id.clone())
            }
        };
        if let Some(user_id) = left {
            if self.joined_count(channel) == 0 {
                self.unregister(&user_id, channel).await;
            }
            log::info("leave", json!({ "userId": user_id, "connectionId": id, "channel": channel }));
        }
        reply_ok(ws, frame_id);
    }

    /// A closed connection's channels, in those no other connection holds: the user stays a member
    /// for `CHANNEL_LINGER_SECONDS` (its history keeps the channel's envelopes, so a client that
    /// reconnects, joins again and resumes misses nothing); then the alarm tells the root it left.
    pub(crate) async fn left_channels(&self, conn: &Conn) {
        let linger = self.config().map_or(0, |c| c.channel_linger_seconds);
        let now = Date::now().as_millis() as i64;
        let mut lingering = false;
        for (channel, _) in &conn.channels {
            if self.joined_count(channel) > 0 {
                continue;
            }
            if linger == 0 {
                self.unregister(&conn.user_id, channel).await;
                continue;
            }
            let marked = self
                .sql_exec("UPDATE channels SET left_at = ? WHERE name = ?", vec![now.into(), channel.clone().into()]);
            match marked {
                Ok(_) => lingering = true,
                Err(e) => log::error("storage_error", json!({ "op": "linger", "message": e.to_string() })),
            }
        }
        if lingering {
            if let Err(e) = self.schedule_alarm(Some(now + (linger as i64) * 1000), false).await {
                log::error("alarm_error", json!({ "op": "linger", "message": e.to_string() }));
            }
        }
    }

    /// The alarm's part: memberships whose linger has ended, with still no connection joined, end.
    pub(crate) async fn end_lingering(&self) -> Result<(), crate::error::Error> {
        #[derive(Deserialize)]
        struct Row {
            name: String,
            user_id: String,
        }
        let config = self.config()?;
        // Alarms are not exact to the millisecond; an end this close counts as reached.
        let cutoff = Date::now().as_millis() as i64 + 250 - (config.channel_linger_seconds as i64) * 1000;
        let due = self
            .sql_exec(
                "SELECT name, user_id FROM channels WHERE left_at IS NOT NULL AND left_at <= ?",
                vec![cutoff.into()],
            )?
            .to_array::<Row>()?;
        for row in due {
            if self.joined_count(&row.name) == 0 {
                self.unregister(&row.user_id, &row.name).await;
            } else {
                // Joined again meanwhile: no longer lingering (so the alarm is not re-armed for it).
                self.sql_exec("UPDATE channels SET left_at = NULL WHERE name = ?", vec![row.name.into()])?;
            }
        }
        Ok(())
    }

    /// Makes sure the channel's root lists this user. This hub remembers (in SQLite) which roots
    /// list it, so reconnecting clients that join again cost the root nothing.
    async fn register(&self, user_id: &str, channel: &str) -> Result<(), crate::error::Error> {
        let known = self
            .sql_exec("SELECT count(*) AS value FROM channels WHERE name = ?", vec![channel.to_string().into()])?
            .to_array::<hub::ValueRow>()?
            .first()
            .is_some_and(|r| r.value > 0);
        if known {
            // Still a member (perhaps lingering after a close): no need to ask the root.
            self.sql_exec("UPDATE channels SET left_at = NULL WHERE name = ?", vec![channel.to_string().into()])?;
            return Ok(());
        }
        let version = self.next_version();
        crate::channel_hub::update_membership(&self.env, channel, user_id, true, version).await?;
        self.sql_exec(
            "INSERT INTO channels (name, version, user_id) VALUES (?, ?, ?)
             ON CONFLICT(name) DO UPDATE SET version = excluded.version, left_at = NULL",
            vec![channel.to_string().into(), (version as i64).into(), user_id.to_string().into()],
        )?;
        Ok(())
    }

    /// Tells the channel's root this user has left. Best effort: a root that missed it finds out at
    /// the next publish (this hub answers `joined: 0`) and removes the user then.
    async fn unregister(&self, user_id: &str, channel: &str) {
        if let Err(e) = self.sql_exec("DELETE FROM channels WHERE name = ?", vec![channel.to_string().into()]) {
            log::error("storage_error", json!({ "op": "unregister", "message": e.to_string() }));
        }
        let version = self.next_version();
        if let Err(e) = crate::channel_hub::update_membership(&self.env, channel, user_id, false, version).await {
            log::error("leave_failed", json!({ "userId": user_id, "channel": channel, "message": e.to_string() }));
        }
    }

    /// A client's `publish` to a channel: the token's `publishChannels` must allow it. Every joined
    /// connection of every member receives it (with `from`), except the publishing connection; with
    /// an `id`, the reply is `ok` with the totals once the acks are in.
    async fn client_publish(
        &self,
        ws: &WebSocket,
        id: &str,
        publish: ClientPublish<'_>,
        frame_id: Option<&RawValue>,
        config: &Config,
    ) {
        let ClientPublish { channel, kind, payload, timeout_ms } = publish;
        let (allowed, user_id) = {
            let conns = self.conns.borrow();
            let Some(conn) = conns.as_ref().and_then(|c| c.get(id)) else { return };
            (conn.grants.publish.allows(&channel), conn.user_id.clone())
        };
        if !allowed {
            let message = format!(
                "this connection's token does not allow publishing to `{channel}` (its `publishChannels` claim)"
            );
            return send_error(ws, "forbidden", &message, frame_id, &[]);
        }
        let meta = protocol::PublishMeta {
            user_id: String::new(),
            kind,
            connection_id: None,
            timeout_ms: Some(timeout_ms.unwrap_or(config.ack_timeout_ms).min(config.ack_timeout_max_ms)),
            body_hash: protocol::fingerprint(payload.get().as_bytes()),
            channel: Some(channel.clone()),
            from: Some(user_id.clone()),
            except: Some(id.to_string()),
        };
        match crate::channel_hub::publish(&self.env, &meta, payload.get(), None, None).await {
            Ok(mut res) => {
                let status = res.status_code();
                let body: serde_json::Value = res.json().await.unwrap_or_default();
                if status != 200 {
                    let code = body["error"].as_str().unwrap_or("unavailable");
                    let message = body["message"].as_str().unwrap_or("the channel did not answer");
                    return send_error(ws, code, message, frame_id, &[]);
                }
                log::info(
                    "client_publish",
                    json!({ "userId": user_id, "connectionId": id, "channel": channel, "totals": body["totals"] }),
                );
                if let Some(frame_id) = frame_id {
                    // `id` is echoed as the client sent it.
                    send(ws, &format!(r#"{{"type":"ok","id":{},"totals":{}}}"#, frame_id.get(), body["totals"]));
                }
            }
            Err(e) => send_error(ws, e.code(), &e.to_string(), frame_id, &[]),
        }
    }
}
