//! A publish to this user: the envelope built once around the payload's own text, recorded, sent to
//! every matching connection, and answered with the acks collected within the timeout. Also
//! `Idempotency-Key` replays and acks over HTTP.

use super::UserHub;
use crate::core::acks::{AckOutcome, Collector};
use crate::core::config::Config;
use crate::core::error::Error;
use crate::core::filter::EnvelopeView;
use crate::core::ids;
use crate::core::protocol::{self, rfc3339, AckOut, PublishResponse, Transport};
use crate::hop::wire::PublishMeta;
use crate::runtime::js::{self, send_shared};
use crate::runtime::{http, log, metrics, rows};
use serde_json::json;
use std::cell::OnceCell;
use worker::{Request, Response};

/// How long past `ACK_TIMEOUT_MAX_MS` an unanswered idempotency row counts as a publish that died.
const STALE_GRACE_MS: i64 = 2_000;

/// A row of `SELECT seq, envelope_id, at, body_hash, response FROM idempotency`.
struct IdempotencyRow {
    seq: i64,
    envelope_id: String,
    at: i64,
    body_hash: String,
    response: Option<String>,
}

impl super::Inner {
    /// The ack timer's callback: ends every wait past its deadline and re-arms for the next one.
    pub(super) fn expire_acks(&self) {
        let now = js::now_ms() as f64;
        // A timeout may fire a hair early by the runtime's clock: within a millisecond counts.
        if let Some(next) = self.acks.borrow_mut().expire(now + 1.0) {
            self.ack_timer.arm_by(next, now);
        }
    }
}

impl UserHub {
    /// Fans an envelope out to the matching connections and waits for their acks.
    ///
    /// The Worker has checked the publish; the hop carries its fields in the URL and the payload's
    /// JSON text as the body. The payload stays a JS string: the envelope is built around it by
    /// JS string concatenation, bound into SQLite and sent to every socket as that one string, so a
    /// large payload never crosses into wasm here — unless a filter needs the payload's fields.
    pub(super) async fn publish(
        &self,
        payload: js_sys::JsString,
        p: PublishMeta,
        idempotency_key: Option<String>,
    ) -> Result<String, Error> {
        let config = self.config()?;
        self.ensure_loaded()?;
        let started = js::now_ms();
        let now_ms = started as i64;
        // The key first: a retry is answered as the first publish was, even when its connection
        // has closed or the user has left the channel since.
        let idempotency_key = idempotency_key.filter(|_| config.idempotency_seconds > 0);
        if let Some(key) = &idempotency_key {
            if let Some(answer) = self.idempotent_replay(&config, key, &p.body_hash, now_ms)? {
                return Ok(answer);
            }
        }
        // A channel publish: how many of the user's connections joined it, counted once.
        let joined = p.channel.as_ref().map(|c| self.joined_count(c));
        let mut lingering = false;
        if let (Some(channel), Some(0)) = (&p.channel, joined) {
            if !self.lingering(&config, channel)? {
                return self.not_a_member(channel);
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
        // The key before the envelope: if storing the key fails nothing is recorded (no envelope in
        // history that was never sent, and no second copy on the retry); if recording fails the key
        // goes again, so the retry publishes afresh. Both run with no `await` between them.
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
        if let Err(e) = self.record(&config, seq, now_ms, &envelope) {
            if let Some(key) = &idempotency_key {
                let _ = self.sql().exec("DELETE FROM idempotency WHERE key = ?", vec![key.clone().into()]);
            }
            return Err(e);
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
        if !self.history_alarm_checked.replace(true) {
            // Once per construction: an alarm will delete this history when it expires, even if no
            // publish follows (later publishes find the alarm set, or the alarm re-arms itself).
            if let Some(at) = self.next_history_expiry(&config) {
                if let Err(e) = self.schedule_alarm(Some(at), false).await {
                    log::error!("alarm_error", "op" => "history", "message" => e.to_string());
                }
            }
        }
        let timeout_ms = p.timeout_ms.unwrap_or(config.ack_timeout_ms).min(config.ack_timeout_max_ms);
        let collector = if expected.is_empty() || timeout_ms == 0 {
            Collector::new(expected)
        } else {
            let now = js::now_ms() as f64;
            let deadline = now + timeout_ms as f64;
            let done = self.acks.borrow_mut().register(&envelope_id, expected, deadline);
            self.ack_timer.arm_by(deadline, now);
            // Complete, or expired by the timer (`expire_acks`): whatever arrived is returned below.
            let _ = done.await;
            let collector = self.acks.borrow_mut().finish(&envelope_id).unwrap_or_else(|| Collector::new(Vec::new()));
            if !self.acks.borrow().is_waiting() {
                self.ack_timer.disarm(); // a pending timeout would keep the hub from hibernating
            }
            collector
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
        metrics::delivered(client_count, response.acks.len(), response.pending.len());
        metrics::flush(&self.env);
        // A channel's root logs the publish once with its totals; a member's hub adds a line only
        // when a connection did not ack (a channel of 100,000 is not 100,000 lines).
        let quiet = p.channel.is_some() && response.pending.is_empty() && response.closed.is_empty();
        if !quiet {
            log::info!(
                "publish",
                "userId" => p.user_id, "envelopeId" => envelope_id, "seq" => seq, "type" => p.kind,
                "clientCount" => client_count, "acked" => response.acks.len(), "pending" => response.pending.len(),
                "closed" => response.closed.len(), "ms" => js::now_ms().saturating_sub(started),
            );
        }
        let body = serde_json::to_string(&response).map_err(|e| Error::Internal(e.to_string()))?;
        if let Some(key) = &idempotency_key {
            // Kept so a retry gets the same answer, acks included; trimmed when large (a SQLite value
            // holds at most 2 MB). The envelope is delivered: this write must never fail the answer.
            let stored = if body.len() > config.idempotency_max_response_bytes {
                protocol::trimmed_answer(&response, config.idempotency_max_response_bytes)
            } else {
                body.clone()
            };
            if let Err(e) = self
                .sql()
                .exec("UPDATE idempotency SET response = ? WHERE key = ?", vec![stored.into(), key.clone().into()])
            {
                log::error!("storage_error", "op" => "idempotency_answer", "message" => e.to_string());
            }
        }
        Ok(body)
    }

    /// The answer to a publish whose `Idempotency-Key` was seen within `IDEMPOTENCY_SECONDS`: the
    /// first publish's answer with `"duplicate": true` (or its `envelopeId` and `seq` while it is
    /// still waiting for acks, `"outcome": "unknown"` once it can no longer be). The same key with a
    /// different body is a 409.
    fn idempotent_replay(
        &self,
        config: &Config,
        key: &str,
        body_hash: &str,
        now_ms: i64,
    ) -> Result<Option<String>, Error> {
        let sql = self.sql();
        let cutoff = now_ms - (config.idempotency_seconds as i64) * 1000;
        sql.exec("DELETE FROM idempotency WHERE at < ?", vec![cutoff.into()])?;
        let query = "SELECT seq, envelope_id, at, body_hash, response FROM idempotency WHERE key = ?";
        let Some(r) = rows::first(sql.exec(query, vec![key.into()])?)? else { return Ok(None) };
        let row = IdempotencyRow {
            seq: rows::int(&r, 0),
            envelope_id: rows::text(&r, 1).unwrap_or_default(),
            at: rows::int(&r, 2),
            body_hash: rows::text(&r, 3).unwrap_or_default(),
            response: rows::text(&r, 4),
        };
        if row.body_hash != body_hash {
            return Err(Error::IdempotencyConflict);
        }
        // A publish waits for acks at most ACK_TIMEOUT_MAX_MS; a row still without an answer well
        // after that belongs to a publish whose hub died (its acks lived only in memory).
        let stale = now_ms > row.at + config.ack_timeout_max_ms as i64 + STALE_GRACE_MS;
        let mut answer: serde_json::Value = match row.response.as_deref().map(serde_json::from_str) {
            Some(Ok(v)) => v,
            _ if stale => json!({
                "envelopeId": row.envelope_id, "seq": row.seq, "clientCount": 0, "results": [], "acks": [],
                "pending": [], "closed": [], "outcome": "unknown",
            }),
            _ => json!({
                "envelopeId": row.envelope_id, "seq": row.seq, "clientCount": 0, "results": [], "acks": [],
                "pending": [], "closed": [], "inProgress": true,
            }),
        };
        answer["duplicate"] = json!(true);
        log::info!("publish_duplicate", "envelopeId" => row.envelope_id, "seq" => row.seq);
        Ok(Some(answer.to_string()))
    }

    /// `POST /ack` from an SSE client (or any client that prefers HTTP for acks).
    pub(super) async fn http_ack(&self, req: &mut Request, cors: Option<&str>) -> Result<Response, Error> {
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
