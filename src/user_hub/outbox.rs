//! The hub's durable outbox for backend webhooks, and its alarm.
//!
//! Every event is written to the hub's SQLite storage before anything else happens, then sent by the
//! alarm handler, oldest first, so a user's events arrive in order: one structured CloudEvent per
//! request, or with `WEBHOOK_BATCH_MAX` > 1 a CloudEvents JSON batch of up to that many, so a backlog
//! drains faster than one event per round trip. A 2xx deletes what was sent. 408, 429, 5xx, network
//! errors and `WEBHOOK_TIMEOUT_MS` stop the queue, which is retried from a later alarm with
//! exponential backoff and jitter, until `WEBHOOK_MAX_AGE_SECONDS`. Any other 4xx is permanent: the
//! event is dropped at once with an error log and counted (`webhooks.dropped` in the connection
//! list), so one event the backend refuses cannot block the user's queue (a refused batch is re-sent
//! one event at a time to find the culprit). Alarms do not keep the object awake, so the hub
//! hibernates between attempts and an outage costs nothing while it lasts
//! (<https://developers.cloudflare.com/durable-objects/api/alarms/>).
//!
//! The outbox is bounded per user (`WEBHOOK_MAX_BACKLOG`): when it is full a client's `message` is
//! refused with `backlog_full`, and connection events are merged into one `connection.coalesced`
//! event (counts, and the connections open after the last of them) instead of growing the queue.
//!
//! The same alarm enforces connection lifetimes (token `exp`, `MAX_CONNECTION_SECONDS`), ends
//! lingering channel memberships, and deletes history past `HISTORY_SECONDS`: the hub keeps one
//! alarm at the earliest moment any of them is due. It always re-arms, after an error too.

use super::{UserHub, ValueRow};
use crate::core::config::WebhookConfig;
use crate::core::error::Error;
use crate::core::ids;
use crate::core::protocol::rfc3339;
use crate::core::webhook::{self, Delivery};
use crate::runtime::{log, metrics};
use futures_util::future::{select, Either};
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Duration;
use worker::{AbortController, Date, Delay, Fetch, Headers, Method, Request, RequestInit};

/// Events sent per alarm run at most; a longer backlog continues from the next alarm at once.
const MAX_EVENTS_PER_RUN: usize = 200;
/// Event ids of coalesced rows start with this, so the tail row can be recognised.
const COALESCED_PREFIX: &str = "evc_";
/// First retry delay after an alarm run failed; doubles per consecutive failure, up to a minute.
const ALARM_RETRY_MS: i64 = 1_000;
const ALARM_RETRY_MAX_MS: i64 = 60_000;

#[derive(Deserialize)]
struct OutboxRow {
    id: i64,
    event_id: String,
    body: String,
    created: i64,
    attempts: i64,
    next_at: i64,
}

#[derive(Deserialize)]
struct NextRow {
    next_at: i64,
}

#[derive(Deserialize)]
struct SpanRow {
    lo: Option<i64>,
    hi: Option<i64>,
}

#[derive(Deserialize)]
struct TailRow {
    id: i64,
    event_id: String,
    body: String,
}

/// What became of an event handed to [`UserHub::enqueue_event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Enqueued {
    /// Webhooks are not configured.
    Off,
    /// Stored (or merged into the coalesced connection event); the alarm will send it.
    Queued,
    /// The user's outbox holds `WEBHOOK_MAX_BACKLOG` events: refused (only `message` events).
    Full,
}

/// Why an attempt did not deliver: the HTTP status when there was an answer.
struct Failure {
    status: Option<u16>,
    reason: String,
}

impl UserHub {
    /// How many events wait in the outbox. Rows are only ever deleted from the head (oldest first)
    /// and ids are never reused, so the ids are contiguous and the count is read from the primary
    /// key's two ends, not by scanning (rows read are billed).
    pub(crate) fn outbox_len(&self) -> Result<u64, Error> {
        let span =
            self.sql_exec("SELECT min(id) AS lo, max(id) AS hi FROM outbox", Vec::new())?.to_array::<SpanRow>()?;
        Ok(match span.first() {
            Some(SpanRow { lo: Some(lo), hi: Some(hi) }) => (hi - lo + 1).max(0) as u64,
            _ => 0,
        })
    }

    /// Webhook events dropped by this hub so far (permanent refusals and events past their age).
    pub(crate) fn webhooks_dropped(&self) -> Result<i64, Error> {
        Ok(self
            .sql_exec("SELECT value FROM meta WHERE key = 'webhook_dropped'", Vec::new())?
            .to_array::<ValueRow>()?
            .first()
            .map_or(0, |r| r.value))
    }

    /// Queues a webhook event (when webhooks are configured) and makes sure the alarm will send it.
    /// Returns once the event is stored. When the outbox is full, a `message` is refused and a
    /// connection event is merged into the coalesced event at the queue's tail.
    pub(crate) async fn enqueue_event(&self, kind: &str, user_id: &str, data: Value) -> Result<Enqueued, Error> {
        let config = self.config()?;
        if config.test_faults.connect && kind == webhook::CONNECTION_OPENED && !self.connect_fault_spent.replace(true) {
            return Err(Error::Internal("injected storage failure (TEST_FAULTS=connect)".into()));
        }
        let Some(hook) = &config.webhook else { return Ok(Enqueued::Off) };
        let now = Date::now().as_millis() as i64;
        let at = rfc3339(now as u64);
        let sql = self.state.storage().sql();
        if self.outbox_len()? >= hook.max_backlog {
            let opened = kind == webhook::CONNECTION_OPENED;
            if !opened && kind != webhook::CONNECTION_CLOSED {
                return Ok(Enqueued::Full);
            }
            let mut connections: Vec<String> =
                self.conns.borrow().iter().flat_map(|c| c.keys().cloned()).collect::<Vec<_>>();
            connections.sort();
            let tail = sql
                .exec("SELECT id, event_id, body FROM outbox ORDER BY id DESC LIMIT 1", None)?
                .to_array::<TailRow>()?
                .into_iter()
                .next()
                // A row being sent right now is not changed under the attempt: a new one starts.
                .filter(|t| t.event_id.starts_with(COALESCED_PREFIX) && t.id > self.outbox_sending.get());
            let event_id = format!("{COALESCED_PREFIX}{}", ids::uuid_v4().replace('-', ""));
            let previous = tail
                .as_ref()
                .and_then(|t| serde_json::from_str::<Value>(&t.body).ok())
                .and_then(|mut v| v.get_mut("data").map(Value::take));
            let data = webhook::coalesce(previous.as_ref(), opened, &connections, &at);
            let body = webhook::event(&event_id, webhook::CONNECTION_COALESCED, user_id, &at, data);
            match tail {
                // A fresh id: the merged event is a new event, so a receiver that de-duplicates by
                // id never mistakes it for the version it may have seen fail.
                Some(t) => sql.exec(
                    "UPDATE outbox SET event_id = ?, body = ? WHERE id = ?",
                    vec![event_id.into(), body.into(), t.id.into()],
                )?,
                None => sql.exec(
                    "INSERT INTO outbox (event_id, body, created, attempts, next_at) VALUES (?, ?, ?, 0, ?)",
                    vec![event_id.into(), body.into(), now.into(), now.into()],
                )?,
            };
            log::info("webhook_coalesced", json!({ "userId": user_id, "type": kind }));
        } else {
            let event_id = format!("evt_{}", ids::uuid_v4().replace('-', ""));
            let body = webhook::event(&event_id, kind, user_id, &at, data);
            sql.exec(
                "INSERT INTO outbox (event_id, body, created, attempts, next_at) VALUES (?, ?, ?, 0, ?)",
                vec![event_id.into(), body.into(), now.into(), now.into()],
            )?;
        }
        self.schedule_alarm(Some(now), false).await?;
        Ok(Enqueued::Queued)
    }

    /// Sets the alarm to the earliest moment work is due (`hint`, the outbox's next attempt when
    /// webhooks are on, the next connection deadline, the next linger end, the next history expiry),
    /// unless an earlier alarm is already set. `rearm` is for the alarm handler itself: the alarm
    /// that is running is spent, whatever `get_alarm` still says.
    pub(crate) async fn schedule_alarm(&self, hint: Option<i64>, rearm: bool) -> Result<(), Error> {
        let config = self.config()?;
        // With webhooks off the queue is left alone (it is sent if they are switched on again):
        // scheduling for it would fire at once, find nothing to do, and loop.
        let outbox_next = match config.webhook {
            Some(_) => self
                .state
                .storage()
                .sql()
                .exec("SELECT next_at FROM outbox ORDER BY id LIMIT 1", None)?
                .to_array::<NextRow>()?
                .first()
                .map(|r| r.next_at),
            None => None,
        };
        let due = [hint, outbox_next, self.next_deadline(), self.next_linger_end()?, self.next_history_expiry(&config)]
            .into_iter()
            .flatten()
            .min();
        let Some(due) = due else { return Ok(()) };
        self.set_alarm_at(due, rearm).await
    }

    /// Sets the alarm at `due` unless (`rearm` false) one is already set at or before it.
    async fn set_alarm_at(&self, due: i64, rearm: bool) -> Result<(), Error> {
        let storage = self.state.storage();
        if !rearm {
            // Set by this object and not run yet: no need to ask storage (a connect used to pay a
            // `getAlarm` round trip every time).
            if self.alarm_set_at.get().is_some_and(|at| at <= due) {
                return Ok(());
            }
            if let Some(current) = storage.get_alarm().await? {
                if current <= due {
                    return Ok(());
                }
            }
        }
        let at = js_sys::Date::new(&wasm_bindgen::JsValue::from_f64(due as f64));
        storage.set_alarm(worker::ScheduledTime::new(at)).await?;
        self.alarm_set_at.set(Some(due));
        log::info("alarm_set", json!({ "at": due, "inMs": due - Date::now().as_millis() as i64 }));
        Ok(())
    }

    /// The alarm handler: the work, then always a next alarm. After a failed run the next alarm is
    /// a retry with backoff (whatever failed is retried, and no deadline is skipped for good).
    /// Returns an error only when no alarm could be set, so the runtime retries this one.
    pub(crate) async fn run_alarm(&self) -> Result<(), Error> {
        let outcome = self.on_alarm().await;
        metrics::flush(&self.env);
        let now = Date::now().as_millis() as i64;
        match outcome {
            Ok(()) => {
                self.alarm_failures.set(0);
                self.schedule_alarm(None, true).await
            }
            Err(e) => {
                let failures = self.alarm_failures.get() + 1;
                self.alarm_failures.set(failures);
                let delay = (ALARM_RETRY_MS << (failures - 1).min(6)).min(ALARM_RETRY_MAX_MS);
                log::error(
                    "alarm_error",
                    json!({ "message": e.to_string(), "failures": failures, "retryInMs": delay }),
                );
                self.set_alarm_at(now + delay, true).await
            }
        }
    }

    /// One alarm run: close connections past their deadline, end lingering memberships, delete
    /// expired history, send due webhook events.
    async fn on_alarm(&self) -> Result<(), Error> {
        let config = self.config()?;
        if config.test_faults.alarm && !self.fault_spent.replace(true) {
            return Err(Error::Internal("injected alarm failure (TEST_FAULTS=alarm)".into()));
        }
        self.ensure_loaded()?;
        log::info("alarm", json!({ "now": Date::now().as_millis() }));
        self.enforce_lifetimes().await;
        self.end_lingering().await?;
        self.trim_history_by_age(&config)?;
        if let Some(hook) = &config.webhook {
            self.drain_outbox(hook).await?;
        }
        Ok(())
    }

    async fn drain_outbox(&self, hook: &WebhookConfig) -> Result<(), Error> {
        let mut sent = 0;
        while sent < MAX_EVENTS_PER_RUN {
            // After a refused batch, events go one by one until the refused one is found.
            let limit = if self.outbox_solo.get() > 0 { 1 } else { hook.batch_max };
            let rows = self
                .sql_exec(
                    "SELECT id, event_id, body, created, attempts, next_at FROM outbox ORDER BY id LIMIT ?",
                    vec![(limit as i64).into()],
                )?
                .to_array::<OutboxRow>()?;
            let Some(head) = rows.first() else { return Ok(()) };
            let now = Date::now().as_millis() as i64;
            let too_old = |r: &OutboxRow| r.created < now - (hook.max_age_seconds as i64) * 1000;
            if too_old(head) {
                self.drop_event(head, None, "older than WEBHOOK_MAX_AGE_SECONDS")?;
                continue;
            }
            if head.next_at > now {
                return Ok(()); // not due yet; in order, so nothing after it is sent either
            }
            let batch: Vec<&OutboxRow> = rows.iter().take_while(|r| !too_old(r)).collect();
            let last = batch.last().map_or(head.id, |r| r.id);
            let (webhook_id, body, content_type) = if hook.batch_max == 1 {
                (head.event_id.clone(), head.body.clone(), webhook::CONTENT_TYPE)
            } else {
                let body = webhook::batch_body(batch.iter().map(|r| r.body.as_str()));
                (webhook::batch_id(&head.event_id, batch.len()), body, webhook::BATCH_CONTENT_TYPE)
            };
            let started = Date::now().as_millis();
            self.outbox_sending.set(last);
            let outcome = send(hook, &webhook_id, &body, content_type).await;
            metrics::webhook_attempt(outcome.as_ref().map_or_else(|f| f.status, |s| Some(*s)), is_timeout(&outcome));
            self.outbox_sending.set(0);
            let ms = Date::now().as_millis().saturating_sub(started);
            let failure = match outcome {
                Ok(status) => {
                    self.sql_exec("DELETE FROM outbox WHERE id >= ? AND id <= ?", vec![head.id.into(), last.into()])?;
                    log::info(
                        "webhook",
                        json!({ "eventId": head.event_id, "webhookId": webhook_id, "events": batch.len(), "status": status, "attempt": head.attempts + 1, "ms": ms }),
                    );
                    sent += batch.len();
                    self.outbox_solo.set(self.outbox_solo.get().saturating_sub(batch.len()));
                    continue;
                }
                Err(f) => f,
            };
            if failure.status.is_some_and(|s| webhook::classify(s) == Delivery::Permanent) {
                if batch.len() > 1 {
                    log::error(
                        "webhook_refused",
                        json!({ "webhookId": webhook_id, "events": batch.len(), "reason": failure.reason, "then": "one event at a time" }),
                    );
                    self.outbox_solo.set(batch.len());
                    continue;
                }
                self.drop_event(head, failure.status, &format!("permanent refusal ({})", failure.reason))?;
                self.outbox_solo.set(self.outbox_solo.get().saturating_sub(1));
                sent += 1;
                continue;
            }
            let attempts = head.attempts + 1;
            let jitter = f64::from(ids::random_u32()) / f64::from(u32::MAX);
            let delay = webhook::backoff_ms(attempts as u32, hook.retry_base_ms, hook.retry_max_ms, jitter);
            let next_at = Date::now().as_millis() as i64 + delay as i64;
            self.sql_exec(
                "UPDATE outbox SET attempts = ?, next_at = ? WHERE id = ?",
                vec![attempts.into(), next_at.into(), head.id.into()],
            )?;
            log::error(
                "webhook_failed",
                json!({ "eventId": head.event_id, "webhookId": webhook_id, "events": batch.len(), "attempt": attempts, "reason": failure.reason, "retryInMs": delay, "ms": ms }),
            );
            return Ok(());
        }
        Ok(())
    }

    /// Drops the head event for good: deleted, counted, and logged with what identifies it (the log
    /// line is the dead letter; the event's body stays out of the log).
    fn drop_event(&self, row: &OutboxRow, status: Option<u16>, reason: &str) -> Result<(), Error> {
        self.sql_exec("DELETE FROM outbox WHERE id = ?", vec![row.id.into()])?;
        metrics::webhook_dropped();
        self.sql_exec(
            "INSERT INTO meta (key, value) VALUES ('webhook_dropped', 1) ON CONFLICT(key) DO UPDATE SET value = value + 1",
            Vec::new(),
        )?;
        let event: Value = serde_json::from_str(&row.body).unwrap_or_default();
        log::error(
            "webhook_dropped",
            json!({
                "eventId": row.event_id, "type": event["type"], "userId": event["subject"], "status": status,
                "attempts": row.attempts + 1, "reason": reason, "dropped": self.webhooks_dropped()?,
            }),
        );
        Ok(())
    }
}

/// One signed attempt. `Ok(status)` on a 2xx.
async fn send(hook: &WebhookConfig, webhook_id: &str, body: &str, content_type: &str) -> Result<u16, Failure> {
    let fail = |reason: String| Failure { status: None, reason };
    let timestamp = (Date::now().as_millis() / 1000) as i64;
    let headers = Headers::new();
    let set = |k: &str, v: &str| headers.set(k, v).map_err(|e| fail(e.to_string()));
    set("content-type", content_type)?;
    set("webhook-id", webhook_id)?;
    set("webhook-timestamp", &timestamp.to_string())?;
    set("webhook-signature", &webhook::sign(&hook.secret, webhook_id, timestamp, body))?;
    set("user-agent", "switchboard-webhooks/1")?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post).with_headers(headers).with_body(Some(body.into()));
    let req = Request::new_with_init(&hook.url, &init).map_err(|e| fail(e.to_string()))?;
    let controller = AbortController::default();
    let signal = controller.signal();
    let fetch = Fetch::Request(req);
    let outcome = {
        let attempt = Box::pin(fetch.send_with_signal(&signal));
        let timeout = Delay::from(Duration::from_millis(hook.timeout_ms));
        match select(attempt, timeout).await {
            Either::Left((Ok(res), _)) if (200..300).contains(&res.status_code()) => Ok(res.status_code()),
            Either::Left((Ok(res), _)) => {
                Err(Failure { status: Some(res.status_code()), reason: format!("HTTP {}", res.status_code()) })
            }
            Either::Left((Err(e), _)) => Err(fail(format!("network error: {e}"))),
            Either::Right(_) => Err(fail(format!("no answer within {} ms", hook.timeout_ms))),
        }
    };
    if is_timeout(&outcome) {
        controller.abort();
    }
    outcome
}

/// Whether the attempt ended at `WEBHOOK_TIMEOUT_MS` with no answer.
fn is_timeout(outcome: &Result<u16, Failure>) -> bool {
    outcome.as_ref().is_err_and(|e| e.status.is_none() && e.reason.starts_with("no answer"))
}
