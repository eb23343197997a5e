//! Channels, this user's side: `join` and `leave` frames, the channel roots told of the user's first
//! join and last leave, lingering memberships after a close, client `publish` frames, and this hub's
//! answer to a channel publish, and the channel's presence batches for this user's watching
//! connections. See `docs/channels.md`.

use super::reply::{reply_ok, send, send_error};
use super::state::Conn;
use super::UserHub;
use crate::core::channel;
use crate::core::config::Config;
use crate::core::error::Error;
use crate::core::presence::LeftReason;
use crate::core::ratelimit::TokenBucket;
use crate::hop::channel as channel_hop;
use crate::hop::wire::{MemberUpdate, PublishMeta};
use crate::runtime::{log, rows};
use serde_json::json;
use serde_json::value::RawValue;
use std::cell::RefCell;
use worker::{Date, Response, WebSocket};

/// A client's `publish` frame, checked.
pub(super) struct ClientPublish<'a> {
    pub channel: String,
    pub kind: String,
    pub payload: &'a RawValue,
    pub timeout_ms: Option<u64>,
}

impl UserHub {
    /// `join`: the token must allow the channel. The channel's root hears of the user once (when the
    /// user's first connection joins); the join is answered only after the root has it, so a publish
    /// that follows the `ok` reaches this connection. With `presence`, the connection also watches
    /// the channel's presence: its `ok` carries the root's snapshot, and the `presence` frames that
    /// arrive while the root is asked are sent after it.
    pub(super) async fn join(
        &self,
        ws: &WebSocket,
        id: &str,
        channel: String,
        presence: bool,
        frame_id: Option<&RawValue>,
    ) {
        let (allowed, already, count, user_id, data) = {
            let conns = self.conns.borrow();
            let Some(conn) = conns.as_ref().and_then(|c| c.get(id)) else { return };
            let already = conn.channels.iter().any(|(c, _)| *c == channel);
            let data = conn.presence.as_deref().map(str::to_string);
            (conn.grants.join.allows(&channel), already, conn.channels.len(), conn.user_id.clone(), data)
        };
        if !allowed {
            let message = format!("this connection's token does not allow joining `{channel}` (its `channels` claim)");
            return send_error(ws, "forbidden", &message, frame_id, &[]);
        }
        if already && !presence {
            return reply_ok(ws, frame_id);
        }
        if !already && count >= channel::MAX_CHANNELS_PER_CONNECTION {
            let message =
                format!("this connection has already joined {} channels", channel::MAX_CHANNELS_PER_CONNECTION);
            return send_error(ws, "too_many_channels", &message, frame_id, &[]);
        }
        // Frames that arrive while the root is asked may run meanwhile (the input gate is open
        // across the fetch): a `leave` of this channel then finds it here and cancels the join
        // (review F15).
        if let Some(conn) = self.conns.borrow_mut().as_mut().and_then(|c| c.get_mut(id)) {
            conn.joining.push(channel.clone());
            if presence && !conn.held.iter().any(|(c, _)| *c == channel) {
                conn.held.push((channel.clone(), Vec::new()));
            }
        }
        let registered = self.register(&user_id, &channel, presence, data).await;
        let (cancelled, held) = {
            let mut conns = self.conns.borrow_mut();
            let Some(conn) = conns.as_mut().and_then(|c| c.get_mut(id)) else { return };
            let held = match conn.held.iter().position(|(c, _)| *c == channel) {
                Some(i) => conn.held.remove(i).1,
                None => Vec::new(),
            };
            match conn.joining.iter().position(|c| *c == channel) {
                Some(i) => {
                    conn.joining.remove(i);
                    (false, held)
                }
                None => (true, held),
            }
        };
        let snapshot = match registered {
            Ok(snapshot) => snapshot,
            Err(e) => {
                let code = match &e {
                    Error::Limited { code, .. } => code,
                    _ if e.status() == 429 => "channel_full",
                    _ => "unavailable",
                };
                log::error!("join_failed", "userId" => user_id, "channel" => channel, "message" => e.to_string());
                return send_error(ws, code, &format!("could not join `{channel}`: {e}"), frame_id, &[]);
            }
        };
        if cancelled {
            // The leave that followed this join has been answered already; the join ends as a no-op.
            if self.joined_count(&channel) == 0 {
                self.unregister(&user_id, &channel, LeftReason::Leave).await;
            }
            return reply_ok(ws, frame_id);
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
            if presence && !conn.watching.contains(&channel) {
                conn.watching.push(channel.clone());
            }
            conn.store_attachment()
        };
        if let Err(e) = stored {
            // Without the attachment the membership would vanish at the next hibernation, silently:
            // undo it and say so, so the client joins again.
            log::error!("storage_error", "op" => "join", "message" => e.to_string());
            if let Some(conn) = self.conns.borrow_mut().as_mut().and_then(|c| c.get_mut(id)) {
                conn.channels.retain(|(c, _)| *c != channel);
                conn.watching.retain(|c| *c != channel);
            }
            if self.joined_count(&channel) == 0 {
                self.unregister(&user_id, &channel, LeftReason::Leave).await;
            }
            return send_error(ws, "unavailable", &format!("could not join `{channel}`: try again"), frame_id, &[]);
        }
        log::info!("join", "userId" => user_id, "connectionId" => id, "channel" => channel, "presence" => presence);
        match snapshot {
            Some(snapshot) => {
                let mut ok = json!({ "type": "ok", "channel": channel, "presence": snapshot });
                if let Some(frame_id) = frame_id {
                    ok["id"] = serde_json::from_str(frame_id.get()).unwrap_or_default();
                }
                send(ws, &ok.to_string());
                // Frames that came while the root was asked follow the snapshot, in order; the
                // client drops those at or below the snapshot's version.
                for frame in held {
                    crate::runtime::js::send_shared(ws, &frame);
                }
            }
            None => reply_ok(ws, frame_id),
        }
    }

    /// `leave`: always succeeds (leaving a channel not joined is a no-op).
    pub(super) async fn leave(&self, ws: &WebSocket, id: &str, channel: &str, frame_id: Option<&RawValue>) {
        let left = {
            let mut conns = self.conns.borrow_mut();
            let Some(conn) = conns.as_mut().and_then(|c| c.get_mut(id)) else { return };
            // A join of this channel still waiting for the root is cancelled (see `join`).
            conn.joining.retain(|c| c != channel);
            conn.held.retain(|(c, _)| c != channel);
            let before = conn.channels.len();
            conn.channels.retain(|(c, _)| c != channel);
            conn.watching.retain(|c| c != channel);
            if conn.channels.len() == before {
                None
            } else {
                if let Err(e) = conn.store_attachment() {
                    log::error!("storage_error", "op" => "leave", "message" => e.to_string());
                }
                Some(conn.user_id.clone())
            }
        };
        if let Some(user_id) = left {
            if self.joined_count(channel) == 0 {
                self.unregister(&user_id, channel, LeftReason::Leave).await;
            } else if self.watching_count(channel) == 0 {
                self.unwatch(&user_id, channel).await;
            }
            log::info!("leave", "userId" => user_id, "connectionId" => id, "channel" => channel);
        }
        reply_ok(ws, frame_id);
    }

    /// A closed connection's channels, in those no other connection holds: the user stays a member
    /// for `CHANNEL_LINGER_SECONDS` (its history keeps the channel's envelopes, so a client that
    /// reconnects, joins again and resumes misses nothing); then the alarm tells the root it left.
    /// Without `linger` (a backend's kick) the user leaves at once.
    pub(crate) async fn left_channels(&self, conn: &Conn, linger: bool) {
        let kicked = !linger;
        let linger = if linger { self.config().map_or(0, |c| c.channel_linger_seconds) } else { 0 };
        let now = Date::now().as_millis() as i64;
        let mut lingering = false;
        for (channel, _) in &conn.channels {
            if self.joined_count(channel) > 0 {
                continue;
            }
            if linger == 0 {
                let reason = if kicked { LeftReason::Kick } else { LeftReason::Linger };
                self.unregister(&conn.user_id, channel, reason).await;
                continue;
            }
            let marked = self
                .sql_exec("UPDATE channels SET left_at = ? WHERE name = ?", vec![now.into(), channel.clone().into()]);
            match marked {
                Ok(_) => lingering = true,
                Err(e) => log::error!("storage_error", "op" => "linger", "message" => e.to_string()),
            }
        }
        if lingering {
            if let Err(e) = self.schedule_alarm(Some(now + (linger as i64) * 1000), false).await {
                log::error!("alarm_error", "op" => "linger", "message" => e.to_string());
            }
        }
    }

    /// The alarm's part: memberships whose linger has ended, with still no connection joined, end.
    pub(crate) async fn end_lingering(&self) -> Result<(), crate::core::error::Error> {
        let config = self.config()?;
        // Alarms are not exact to the millisecond; an end this close counts as reached.
        let cutoff = Date::now().as_millis() as i64 + 250 - (config.channel_linger_seconds as i64) * 1000;
        let query = "SELECT name, user_id FROM channels WHERE left_at IS NOT NULL AND left_at <= ?";
        for row in rows::all(self.sql_exec(query, vec![cutoff.into()])?)? {
            let (Some(name), Some(user_id)) = (rows::text(&row, 0), rows::text(&row, 1)) else { continue };
            if self.joined_count(&name) == 0 {
                self.unregister(&user_id, &name, LeftReason::Linger).await;
            } else {
                // Joined again meanwhile: no longer lingering (so the alarm is not re-armed for it).
                self.sql_exec("UPDATE channels SET left_at = NULL WHERE name = ?", vec![name.into()])?;
            }
        }
        Ok(())
    }

    /// Makes sure the channel's root lists this user. This hub remembers (in SQLite) which roots
    /// list it, so reconnecting clients that join again cost the root nothing. With `watch` (a
    /// presence join), it also makes sure the root sends this user the channel's presence batches
    /// (the root is told only when that changes, remembered in `channel_watch`), and returns the
    /// root's snapshot: a presence join always asks the root for it.
    pub(super) async fn register(
        &self,
        user_id: &str,
        channel: &str,
        watch: bool,
        data: Option<String>,
    ) -> Result<Option<serde_json::Value>, Error> {
        let name = || channel.to_string().into();
        let known = rows::first(self.sql_exec("SELECT 1 FROM channels WHERE name = ?", vec![name()])?)?.is_some();
        let watched =
            watch && rows::first(self.sql_exec("SELECT 1 FROM channel_watch WHERE name = ?", vec![name()])?)?.is_some();
        if known {
            // Still a member (perhaps lingering after a close): no need to tell the root.
            self.sql_exec("UPDATE channels SET left_at = NULL WHERE name = ?", vec![name()])?;
            if !watch {
                return Ok(None);
            }
            if watched {
                return Ok(Some(channel_hop::snapshot(&self.env, channel).await?));
            }
        }
        // A first join may create the channel's root (an object with storage), and a first watch
        // is a write at the root: both are limited per user, so join/leave churn over fresh names
        // cannot create objects without bound (review F12).
        let per_minute = self.config()?.channel_joins_per_minute;
        if !self.take_limited(&self.join_bucket, || TokenBucket::per_minute(per_minute, now_ms())) {
            return Err(Error::Limited {
                code: "rate_limited",
                message: format!(
                    "this user joined {per_minute} new channels within the last minute (CHANNEL_JOINS_PER_MINUTE); try again later"
                ),
            });
        }
        let version = self.next_version();
        let update = MemberUpdate {
            watch: watch.then_some(true),
            data: if known { None } else { data },
            snapshot: watch,
            ..MemberUpdate::new(channel, user_id, true, version)
        };
        let answer = channel_hop::update_membership(&self.env, &update).await?;
        self.sql_exec(
            "INSERT INTO channels (name, version, user_id) VALUES (?, ?, ?)
             ON CONFLICT(name) DO UPDATE SET version = excluded.version, left_at = NULL",
            vec![name(), (version as i64).into(), user_id.to_string().into()],
        )?;
        if watch {
            self.sql_exec("INSERT INTO channel_watch (name) VALUES (?) ON CONFLICT(name) DO NOTHING", vec![name()])?;
        }
        Ok(watch.then(|| answer["presence"].clone()))
    }

    /// Tells the channel's root this user has left. Best effort: a root that missed it finds out at
    /// the next publish (this hub answers `joined: 0`) and removes the user then.
    pub(super) async fn unregister(&self, user_id: &str, channel: &str, reason: LeftReason) {
        for statement in ["DELETE FROM channels WHERE name = ?", "DELETE FROM channel_watch WHERE name = ?"] {
            if let Err(e) = self.sql_exec(statement, vec![channel.to_string().into()]) {
                log::error!("storage_error", "op" => "unregister", "message" => e.to_string());
            }
        }
        let version = self.next_version();
        let update = MemberUpdate {
            reason: Some(reason.name().to_string()),
            ..MemberUpdate::new(channel, user_id, false, version)
        };
        if let Err(e) = channel_hop::update_membership(&self.env, &update).await {
            log::error!("leave_failed", "userId" => user_id, "channel" => channel, "message" => e.to_string());
        }
    }

    /// A client's `publish` to a channel: the token's `publishChannels` must allow it. Every joined
    /// connection of every member receives it (with `from`), except the publishing connection; with
    /// an `id`, the reply is `ok` with the totals once the acks are in.
    pub(super) async fn client_publish(
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
        // Each client publish becomes a history row at every member: its size and rate are held far
        // below what one connection may send, or one client could fill every member's history with
        // its own traffic (review F1). A refused publish reaches nobody.
        let size = payload.get().len();
        if size > config.client_publish_max_bytes {
            let message = format!(
                "the payload is {size} bytes; a client publish carries at most {} (CLIENT_PUBLISH_MAX_BYTES); nothing was sent",
                config.client_publish_max_bytes
            );
            return send_error(ws, "payload_too_large", &message, frame_id, &[]);
        }
        let rate = config.client_publish_per_second;
        if !self.take_limited(&self.publish_bucket, || TokenBucket::new(rate, now_ms())) {
            let message = format!(
                "this user publishes more than {rate} times per second (CLIENT_PUBLISH_PER_SECOND); nothing was sent: publish again later"
            );
            return send_error(ws, "rate_limited", &message, frame_id, &[]);
        }
        let meta = PublishMeta {
            user_id: String::new(),
            kind,
            connection_id: None,
            timeout_ms: Some(timeout_ms.unwrap_or(config.ack_timeout_ms).min(config.ack_timeout_max_ms)),
            body_hash: String::new(), // no Idempotency-Key on a client publish
            channel: Some(channel.clone()),
            from: Some(user_id.clone()),
            except: Some(id.to_string()),
        };
        let payload = js_sys::JsString::from(payload.get());
        match channel_hop::publish(&self.env, &meta, &payload, None, None).await {
            Ok(res) => {
                let mut res = Response::from(res);
                let status = res.status_code();
                let body: serde_json::Value = res.json().await.unwrap_or_default();
                if status != 200 {
                    let code = body["error"].as_str().unwrap_or("unavailable");
                    let message = body["message"].as_str().unwrap_or("the channel did not answer");
                    return send_error(ws, code, message, frame_id, &[]);
                }
                log::info!(
                    "client_publish",
                    "userId" => user_id, "connectionId" => id, "channel" => channel, "totals" => body["totals"],
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

fn now_ms() -> f64 {
    Date::now().as_millis() as f64
}

impl UserHub {
    /// Takes a token from one of the hub's per-user buckets, made on first use. The buckets live in
    /// memory: a hub evicted while idle starts them full again, which an idle user cannot abuse.
    fn take_limited(&self, bucket: &RefCell<Option<TokenBucket>>, make: impl FnOnce() -> TokenBucket) -> bool {
        bucket.borrow_mut().get_or_insert_with(make).take(now_ms())
    }

    /// How many of this user's connections have joined `channel`.
    pub(crate) fn joined_count(&self, channel: &str) -> usize {
        let conns = self.conns.borrow();
        conns.iter().flat_map(|c| c.values()).filter(|c| c.channels.iter().any(|(n, _)| n == channel)).count()
    }

    /// Whether this user's last connection in `channel` closed less than `CHANNEL_LINGER_SECONDS` ago.
    pub(super) fn lingering(&self, config: &Config, channel: &str) -> Result<bool, Error> {
        let left_at =
            rows::first_int(self.sql_exec("SELECT left_at FROM channels WHERE name = ?", vec![channel.into()])?)?;
        let now = Date::now().as_millis() as i64;
        Ok(left_at.is_some_and(|at| now < at + (config.channel_linger_seconds as i64) * 1000))
    }

    /// When the earliest lingering membership ends, in ms since the epoch.
    pub(crate) fn next_linger_end(&self) -> Result<Option<i64>, Error> {
        let config = self.config()?;
        let first = rows::first_int(self.sql_exec("SELECT min(left_at) FROM channels", Vec::new())?)?;
        Ok(first.map(|at| at + (config.channel_linger_seconds as i64) * 1000))
    }

    /// A membership version for an update to a channel's root.
    pub(crate) fn next_version(&self) -> u64 {
        let v = crate::core::channel::next_version(self.version.get(), Date::now().as_millis());
        self.version.set(v);
        v
    }

    /// The answer to a channel publish for a user none of whose connections is in the channel: the
    /// root removes the user (if this version is newer than the user's join), and this hub forgets
    /// it told the root otherwise. Nothing is recorded: the user's `seq` does not move.
    pub(super) fn not_a_member(&self, channel: &str) -> Result<String, Error> {
        self.sql().exec("DELETE FROM channels WHERE name = ?", vec![channel.to_string().into()])?;
        self.sql().exec("DELETE FROM channel_watch WHERE name = ?", vec![channel.to_string().into()])?;
        let body = json!({
            "joined": 0, "version": self.next_version(), "clientCount": 0, "results": [], "acks": [],
            "pending": [], "closed": [],
        });
        Ok(body.to_string())
    }
}
