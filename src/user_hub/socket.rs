//! The WebSocket transport inside a hub: accepting a socket, reading client frames, answering
//! closes. Frames are parsed by [`crate::core::protocol`]; this file decides what each one does to the
//! hub. Close codes are in [`crate::core::protocol::close`].

use super::channels::ClientPublish;
use super::outbox::Enqueued;
use super::reply::{reply_ok, send, send_error};
use super::state::{conn_id, deadline, Conn};
use super::UserHub;
use crate::core::acks::AckOutcome;
use crate::core::channel::ChannelGrants;
use crate::core::error::Error;
use crate::core::filter::{self, FilterSet};
use crate::core::protocol::{
    self, reply_close_code, rfc3339, ClientFrame, Skipped, Transport, CLOSE_FLOOD, CLOSE_FRAME_TOO_LARGE,
};
use crate::core::ratelimit::TokenBucket;
use crate::core::{ids, webhook};
use crate::hop::wire::Connect;
use crate::runtime::{log, metrics};
use serde_json::json;
use serde_json::value::RawValue;
use worker::{Date, Response, WebSocket, WebSocketIncomingMessage, WebSocketPair};

/// The part of a client frame that must wait on I/O, handed from the synchronous handler to the
/// asynchronous one.
pub(super) enum Deferred {
    /// Close the connection for abuse.
    Close { id: String, code: u16, reason: &'static str },
    /// A `message`, `join`, `leave` or `publish` frame, checked and counted, to be read again.
    Frame { id: String, text: String },
}

impl UserHub {
    /// Accepts a socket for the user named in the hop's URL and sends `welcome`. An SSE connection
    /// brings its filters (and `since`) in the URL: they are applied, and the replay sent, before
    /// anything live can reach it.
    pub(super) async fn accept(&self, connect: Connect) -> Result<Response, Error> {
        let config = self.config()?;
        let Connect {
            user_id,
            expires_at_ms,
            transport,
            filters,
            since,
            channels,
            publish_channels,
            mut presence,
            ticket,
        } = connect;
        let mut expires_at = expires_at_ms.map(|e| e as f64);
        let mut grants = ChannelGrants { join: channels, publish: publish_channels };
        self.ensure_loaded()?;
        let open = self.conns.borrow().as_ref().map_or(0, |c| c.len());
        if open >= config.max_connections_per_user {
            return Err(Error::TooManyRequests(format!(
                "this user already has {open} open connections (MAX_CONNECTIONS_PER_USER)"
            )));
        }
        if let Some(hash) = &ticket {
            // The token's checked claims were stored with the ticket; the row goes now (single use).
            let stored = self.take_ticket(hash)?;
            expires_at = stored.expires_at_ms.map(|e| e as f64);
            if transport == Transport::WebSocket {
                grants = ChannelGrants { join: stored.channels, publish: stored.publish_channels };
                presence = stored.presence;
            }
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
        // Only a connection that may join channels needs its presence data.
        let presence = presence.filter(|_| !grants.join.is_empty());
        if let Some(data) = &presence {
            self.sql_exec(
                "INSERT INTO conn_presence (conn_id, data) VALUES (?, ?)",
                vec![id.clone().into(), data.clone().into()],
            )?;
        }
        self.state.accept_websocket_with_tags(&pair.server, &[id.as_str()]);
        let deadline = deadline(&config, now, expires_at);
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
            joining: Vec::new(),
            grants: std::rc::Rc::new(grants),
            watching: Vec::new(),
            held: Vec::new(),
            presence: presence.map(|d| std::rc::Rc::from(d.as_str())),
        };
        conn.store_attachment()?;
        conn.send(&protocol::welcome_frame(&id, &user_id, accepted_seq), None);
        if let Some(conns) = self.conns.borrow_mut().as_mut() {
            conns.insert(id.clone(), conn);
        }
        let more = match filters {
            Some(filters) => self.change_filters(&id, &filter::FilterList::from_json(&filters), None, true, since),
            None => false,
        };
        log::info!(
            "connect",
            "userId" => user_id, "connectionId" => id, "transport" => transport.name(), "open" => open + 1,
            "since" => since,
        );
        let data = json!({ "connectionId": id, "transport": transport.name(), "connectedAt": rfc3339(now as u64) });
        let mut stored = self.enqueue_event(webhook::CONNECTION_OPENED, &user_id, data).await.map(|_| ());
        if stored.is_ok() {
            stored = self.online_opened(&id, transport).await;
        }
        if let (Ok(()), Some(d)) = (&stored, deadline) {
            // Only this deadline is new: every other due time was armed when it arose, and the
            // alarm re-arms for all of them when it runs. (`schedule_alarm` would scan them all,
            // at several queries and a pass over every connection per connect.)
            stored = self.set_alarm_at(d.ceil() as i64, false).await;
        }
        if let Err(e) = stored {
            // The socket is accepted already: left alone it would be a ghost that counts against
            // MAX_CONNECTIONS_PER_USER and is never closed at its deadline.
            if let Some(conn) = self.forget(&id) {
                let _ = conn.ws.close(Some(1011), Some("could not be set up; reconnect"));
                self.online_closed().await;
            }
            return Err(e);
        }
        if more && transport == protocol::Transport::Sse {
            // An SSE client cannot ask for the next replay page, so the stream ends after this one
            // (whose `replay_more` event carries `id:`): EventSource reconnects with Last-Event-ID and
            // gets the next page. The frames already sent go out before the close.
            self.close_by_server(&id, 1000, "replay continues: reconnect", "replay").await;
        }
        metrics::connect(transport);
        metrics::flush(&self.env);
        Ok(Response::from_websocket(pair.client)?)
    }

    /// One client frame, answered at once where nothing needs to wait: acks, subscriptions, pings
    /// and refusals, the hot path, which so costs no Promise and no microtask (see the exports in
    /// `mod.rs`). What must wait is handed back ([`Deferred`]) for [`UserHub::on_message_later`].
    /// Nothing here panics or closes the socket on bad input; only abuse (an oversized frame, a
    /// flood) closes it.
    pub(super) fn on_message_now(&self, ws: &WebSocket, message: WebSocketIncomingMessage) -> Option<Deferred> {
        let id = conn_id(self, ws)?;
        let config = match self.config().and_then(|c| self.ensure_loaded().map(|_| c)) {
            Ok(c) => c,
            Err(e) => {
                // The details (runtime and SQLite messages) go to the log, not to the client.
                log::error!("hub_error", "op" => "load", "message" => e.to_string());
                send_error(ws, "internal_error", "the hub could not load its state; try again", None, &[]);
                return None;
            }
        };
        let too_large =
            |id: String| Some(Deferred::Close { id, code: CLOSE_FRAME_TOO_LARGE, reason: "frame too large" });
        let flood = |id: String| Some(Deferred::Close { id, code: CLOSE_FLOOD, reason: "too many frames" });
        let text = match message {
            WebSocketIncomingMessage::String(text) => text,
            WebSocketIncomingMessage::Binary(bytes) => {
                if bytes.len() > config.max_frame_bytes {
                    return too_large(id);
                }
                if !self.take_token(&id) {
                    return flood(id);
                }
                send_error(
                    ws,
                    "unsupported_frame",
                    "binary frames are not supported: send JSON text frames",
                    None,
                    &[],
                );
                return None;
            }
        };
        if text.len() > config.max_frame_bytes {
            return too_large(id);
        }
        if config.fault_injection {
            super::faults::inject(ws, &text);
        }
        // Acks the hub is waiting for are paced by publishes, not by the client: they never count
        // against the flood limit. Everything else does, and pays before it is parsed, so a flood
        // of large frames is closed before it costs a parse each (security review F16). An ack in
        // another shape than `{"type":"ack",...}` pays like any frame.
        let ack_shaped = text.starts_with(protocol::ACK_PREFIX);
        if !ack_shaped && !self.take_token(&id) {
            return flood(id);
        }
        let frame = protocol::parse_client_frame(&text);
        if let Ok(ClientFrame::Ack { envelope_id, result, id: frame_id }) = &frame {
            if result.is_some_and(|r| r.get().len() > config.ack_result_max_bytes) {
                if ack_shaped && !self.take_token(&id) {
                    return flood(id);
                }
                // Said even without an `id`: the client must learn that this ack did not count.
                let message = format!(
                    "the ack's result is larger than {} bytes (ACK_RESULT_MAX_BYTES); it was not recorded: ack again with a smaller result",
                    config.ack_result_max_bytes
                );
                send_error(ws, "result_too_large", &message, *frame_id, &[]);
                return None;
            }
            let outcome = self.acks.borrow_mut().ack(envelope_id, &id, result.map(ToOwned::to_owned));
            if outcome == AckOutcome::Recorded {
                reply_ok(ws, *frame_id);
                return None;
            }
            if ack_shaped && !self.take_token(&id) {
                return flood(id);
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
            return None;
        }
        if ack_shaped && !self.take_token(&id) {
            return flood(id);
        }
        match frame {
            Err(e) => send_error(ws, e.code, &e.message, e.id, &[]),
            Ok(ClientFrame::Ping) => send(ws, "pong"),
            Ok(ClientFrame::Subscribe { filters, since, id: frame_id }) => {
                self.change_filters(&id, &filters, frame_id, true, since);
            }
            Ok(ClientFrame::Unsubscribe { filters, id: frame_id }) => {
                self.change_filters(&id, &filters, frame_id, false, None);
            }
            Ok(ClientFrame::Message { .. } | ClientFrame::Join { .. } | ClientFrame::Leave { .. })
            | Ok(ClientFrame::Publish { .. }) => return Some(Deferred::Frame { id, text }),
            Ok(ClientFrame::Ack { .. }) => {}
        }
        None
    }

    /// What [`UserHub::on_message_now`] could not finish: a close for abuse (the channels and the
    /// backend hear of it), or a frame that talks to a channel's root or stores a webhook event.
    pub(super) async fn on_message_later(&self, ws: &WebSocket, deferred: Deferred) {
        let (id, text) = match deferred {
            Deferred::Close { id, code, reason } => return self.close_by_server(&id, code, reason, "abuse").await,
            Deferred::Frame { id, text } => (id, text),
        };
        let config = match self.config() {
            Ok(c) => c,
            Err(e) => return send_error(ws, "internal_error", &e.to_string(), None, &[]),
        };
        match protocol::parse_client_frame(&text) {
            Ok(ClientFrame::Message { data, id: frame_id }) => self.upstream(ws, &id, data, frame_id).await,
            Ok(ClientFrame::Join { channel, presence, id: frame_id }) => {
                self.join(ws, &id, channel, presence, frame_id).await
            }
            Ok(ClientFrame::Leave { channel, id: frame_id }) => self.leave(ws, &id, &channel, frame_id).await,
            Ok(ClientFrame::Publish { channel, kind, payload, timeout_ms, id: frame_id }) => {
                let publish = ClientPublish { channel, kind, payload, timeout_ms };
                self.client_publish(ws, &id, publish, frame_id, &config).await
            }
            // Only the frames above are deferred (already checked and counted against the limit).
            _ => {}
        }
    }

    fn take_token(&self, id: &str) -> bool {
        let now = Date::now().as_millis() as f64;
        self.conns.borrow_mut().as_mut().and_then(|c| c.get_mut(id)).is_none_or(|c| c.bucket.take(now))
    }

    /// Applies a subscribe (`add`) or unsubscribe, stores the result, replays history after `since`,
    /// then replies: `ok` when the frame had an `id`, an `invalid_filter` error when entries were skipped.
    /// Returns whether the replay stopped at the end of a page with more history to send.
    fn change_filters(
        &self,
        id: &str,
        list: &filter::FilterList,
        frame_id: Option<&RawValue>,
        add: bool,
        since: Option<u64>,
    ) -> bool {
        let reply = |text: &str| {
            if let Some(conn) = self.conns.borrow().as_ref().and_then(|c| c.get(id)) {
                conn.send(text, None);
            }
        };
        let parsed = match filter::parse_list(list) {
            Ok(p) => p,
            Err(message) => {
                metrics::rejected("invalid_frame");
                reply(&protocol::error_frame("invalid_frame", &message, frame_id, &[]));
                return false;
            }
        };
        let mut skipped: Vec<Skipped> =
            parsed.skipped.into_iter().map(|(index, reason)| Skipped { index, reason }).collect();
        let (before, updated) = {
            let mut conns = self.conns.borrow_mut();
            let Some(conn) = conns.as_mut().and_then(|c| c.get_mut(id)) else { return false };
            let before = conn.filters.clone();
            if add {
                // Both lists are in index order: each of these goes in at its place, so the reply
                // lists every skipped entry in the frame's order (no sort: its own copy of std's
                // sort in the wasm).
                for index in conn.filters.add(parsed.valid) {
                    let at = skipped.partition_point(|s| s.index < index);
                    let reason =
                        format!("this connection already holds {} filters", filter::MAX_FILTERS_PER_CONNECTION);
                    skipped.insert(at, Skipped { index, reason });
                }
            } else {
                conn.filters.remove(&parsed.valid);
            }
            (before, conn.filters.clone())
        };
        if updated != before {
            if let Err(e) = self.store_filters(id, &updated) {
                // Memory goes back to what storage holds, so the two never differ after an eviction.
                if let Some(conn) = self.conns.borrow_mut().as_mut().and_then(|c| c.get_mut(id)) {
                    conn.filters = before;
                }
                log::error!("storage_error", "op" => "store_filters", "message" => e.to_string());
                metrics::rejected("internal_error");
                reply(&protocol::error_frame(
                    "internal_error",
                    "the subscription could not be stored; try again",
                    frame_id,
                    &[],
                ));
                return false;
            }
        }
        let mut more = false;
        if let Some(since) = since {
            match self.replay(id, since, &before) {
                Ok(m) => more = m,
                Err(e) => {
                    log::error!("storage_error", "op" => "replay", "message" => e.to_string());
                    metrics::rejected("internal_error");
                    reply(&protocol::error_frame(
                        "internal_error",
                        "the history could not be read; try again",
                        frame_id,
                        &[],
                    ));
                    return false;
                }
            }
        }
        if skipped.is_empty() {
            if let Some(frame_id) = frame_id {
                reply(&protocol::ok_frame(frame_id));
            }
            return more;
        }
        let message = format!("{} filter(s) skipped; the others were applied", skipped.len());
        metrics::rejected("invalid_filter");
        reply(&protocol::error_frame("invalid_filter", &message, frame_id, &skipped));
        more
    }

    /// Sends a client's `message` frame to the backend webhook; `ok` (with an `id`) once it is stored.
    async fn upstream(&self, ws: &WebSocket, id: &str, data: Option<&RawValue>, frame_id: Option<&RawValue>) {
        let user_id = self.conns.borrow().as_ref().and_then(|c| c.get(id)).map(|c| c.user_id.clone());
        let Some(user_id) = user_id else { return };
        // `data` was only checked as JSON text; a value nested past serde_json's 128 levels would
        // become `null` in the event, so it is refused instead of forwarded wrong (review F17).
        let data: serde_json::Value = match data.map(|d| serde_json::from_str(d.get())) {
            None => serde_json::Value::Null,
            Some(Ok(v)) => v,
            Some(Err(_)) => {
                let message = "`data` nests deeper than 128 levels; it cannot be forwarded to the backend";
                return send_error(ws, "invalid_frame", message, frame_id, &[]);
            }
        };
        let mut event = json!({ "connectionId": id, "data": data });
        if let Some(frame_id) = frame_id.and_then(|f| serde_json::from_str::<serde_json::Value>(f.get()).ok()) {
            event["messageId"] = frame_id;
        }
        match self.enqueue_event(webhook::CLIENT_MESSAGE, &user_id, event).await {
            Ok(Enqueued::Queued) => reply_ok(ws, frame_id),
            Ok(Enqueued::Full) => send_error(
                ws,
                "backlog_full",
                "this user's webhook queue is full (WEBHOOK_MAX_BACKLOG events wait for the backend): send it again later",
                frame_id,
                &[],
            ),
            Ok(Enqueued::Off) => send_error(
                ws,
                "no_backend",
                "no backend webhook is configured to receive messages (set WEBHOOK_URL and WEBHOOK_SECRET)",
                frame_id,
                &[],
            ),
            Err(e) => {
                log::error!("storage_error", "op" => "enqueue_message", "message" => e.to_string());
                send_error(ws, "internal_error", "the message could not be stored; send it again", frame_id, &[]);
            }
        }
    }

    /// Closes a connection from the server side (abuse, lifetime, the backend) and forgets it at once
    /// (its close event may never come); the backend hears about it once.
    pub(crate) async fn close_by_server(&self, id: &str, code: u16, reason: &str, by: &str) {
        let Some(conn) = self.forget(id) else { return };
        let _ = conn.ws.close(Some(code), Some(reason));
        metrics::close(code);
        // A backend's kick ends the channel memberships at once: the linger is for clients that
        // reconnect, and the backend has just said this one should not be there.
        self.left_channels(&conn, by != "backend").await;
        log::info!(
            "close",
            "userId" => conn.user_id, "connectionId" => id, "code" => code, "reason" => reason, "by" => by,
        );
        self.report_close(&conn, id, code, reason, by).await;
        self.online_closed().await;
    }

    async fn report_close(&self, conn: &Conn, id: &str, code: u16, reason: &str, by: &str) {
        let data = json!({
            "connectionId": id, "transport": conn.transport.name(), "code": code, "reason": reason, "by": by,
            "connectedAt": rfc3339(conn.connected_at as u64),
        });
        if let Err(e) = self.enqueue_event(webhook::CONNECTION_CLOSED, &conn.user_id, data).await {
            log::error!("storage_error", "op" => "enqueue_close", "message" => e.to_string());
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
        metrics::close(code.min(u16::MAX as usize) as u16);
        metrics::flush(&self.env);
        self.left_channels(&conn, true).await;
        log::info!(
            "close",
            "userId" => conn.user_id, "connectionId" => id, "code" => code, "reason" => reason, "clean" => was_clean,
            "by" => "client",
        );
        self.report_close(&conn, &id, code.min(u16::MAX as usize) as u16, reason, "client").await;
        self.online_closed().await;
    }

    pub(crate) async fn on_error(&self, ws: &WebSocket, error: &str) {
        let _ = ws.close(Some(1011), Some("socket error"));
        let Some(id) = conn_id(self, ws) else { return };
        let _ = self.ensure_loaded();
        let Some(conn) = self.forget(&id) else { return };
        metrics::close(1011);
        self.left_channels(&conn, true).await;
        log::error!("socket_error", "connectionId" => id, "message" => error);
        self.report_close(&conn, &id, 1011, "socket error", "error").await;
        self.online_closed().await;
    }
}
