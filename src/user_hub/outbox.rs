//! The hub's durable outbox for backend webhooks, and its alarm.
//!
//! Every event is written to the hub's SQLite storage before anything else happens, then sent by the
//! alarm handler, oldest first, one at a time, so a user's events arrive in order. A failed attempt
//! (non-2xx, network error, or `WEBHOOK_TIMEOUT_MS`) stops the queue and is retried from a later alarm
//! with exponential backoff and jitter, until a 2xx or `WEBHOOK_MAX_AGE_SECONDS`, after which the event
//! is dropped with an error log. Alarms do not keep the object awake, so the hub hibernates between
//! attempts and an outage costs nothing while it lasts
//! (<https://developers.cloudflare.com/durable-objects/api/alarms/>).
//!
//! The same alarm enforces connection lifetimes (token `exp`, `MAX_CONNECTION_SECONDS`): the hub keeps
//! one alarm at the earliest of "next webhook attempt" and "next connection deadline".

use super::UserHub;
use crate::core::config::WebhookConfig;
use crate::core::error::Error;
use crate::core::protocol::rfc3339;
use crate::core::{ids, webhook};
use crate::runtime::log;
use futures_util::future::{select, Either};
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Duration;
use worker::{AbortController, Date, Delay, Fetch, Headers, Method, Request, RequestInit};

/// Events sent per alarm run at most; a longer backlog continues from the next alarm at once.
const MAX_EVENTS_PER_RUN: usize = 200;

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

impl UserHub {
    /// Queues a webhook event (when webhooks are configured) and makes sure the alarm will send it.
    /// Returns once the event is stored.
    pub(crate) async fn enqueue_event(&self, kind: &str, user_id: &str, data: Value) -> Result<bool, Error> {
        let config = self.config()?;
        if config.webhook.is_none() {
            return Ok(false);
        }
        let now = Date::now().as_millis() as i64;
        let event_id = format!("evt_{}", ids::uuid_v4().replace('-', ""));
        let body = webhook::event(&event_id, kind, user_id, &rfc3339(now as u64), data);
        self.state.storage().sql().exec(
            "INSERT INTO outbox (event_id, body, created, attempts, next_at) VALUES (?, ?, ?, 0, ?)",
            vec![event_id.into(), body.into(), now.into(), now.into()],
        )?;
        self.schedule_alarm(Some(now), false).await?;
        Ok(true)
    }

    /// Sets the alarm to the earliest moment work is due (`hint`, the outbox's next attempt, the next
    /// connection deadline), unless an earlier alarm is already set. `rearm` is for the alarm handler
    /// itself: the alarm that is running is spent, whatever `get_alarm` still says.
    pub(crate) async fn schedule_alarm(&self, hint: Option<i64>, rearm: bool) -> Result<(), Error> {
        let outbox_next = self
            .state
            .storage()
            .sql()
            .exec("SELECT next_at FROM outbox ORDER BY id LIMIT 1", None)?
            .to_array::<NextRow>()?
            .first()
            .map(|r| r.next_at);
        let due = [hint, outbox_next, self.next_deadline(), self.next_linger_end()?].into_iter().flatten().min();
        let Some(due) = due else { return Ok(()) };
        let storage = self.state.storage();
        if !rearm {
            if let Some(current) = storage.get_alarm().await? {
                if current <= due {
                    return Ok(());
                }
            }
        }
        let at = js_sys::Date::new(&wasm_bindgen::JsValue::from_f64(due as f64));
        storage.set_alarm(worker::ScheduledTime::new(at)).await?;
        log::info("alarm_set", json!({ "at": due, "inMs": due - Date::now().as_millis() as i64 }));
        Ok(())
    }

    /// The alarm: close connections past their deadline, send due webhook events, re-arm.
    pub(crate) async fn on_alarm(&self) -> Result<(), Error> {
        self.ensure_loaded()?;
        log::info("alarm", json!({ "now": Date::now().as_millis() }));
        self.enforce_lifetimes().await;
        self.end_lingering().await?;
        if let Some(hook) = self.config()?.webhook.clone() {
            self.drain_outbox(&hook).await?;
        }
        // The alarm that is running is spent: schedule the next one from scratch.
        self.schedule_alarm(None, true).await
    }

    async fn drain_outbox(&self, hook: &WebhookConfig) -> Result<(), Error> {
        for _ in 0..MAX_EVENTS_PER_RUN {
            let sql = self.state.storage().sql();
            let Some(row) = sql
                .exec("SELECT id, event_id, body, created, attempts, next_at FROM outbox ORDER BY id LIMIT 1", None)?
                .to_array::<OutboxRow>()?
                .into_iter()
                .next()
            else {
                return Ok(());
            };
            let now = Date::now().as_millis() as i64;
            if row.created < now - (hook.max_age_seconds as i64) * 1000 {
                sql.exec("DELETE FROM outbox WHERE id = ?", vec![row.id.into()])?;
                log::error(
                    "webhook_dropped",
                    json!({ "eventId": row.event_id, "attempts": row.attempts, "reason": "older than WEBHOOK_MAX_AGE_SECONDS" }),
                );
                continue;
            }
            if row.next_at > now {
                return Ok(()); // not due yet; in order, so nothing after it is sent either
            }
            let started = Date::now().as_millis();
            let outcome = send(hook, &row.event_id, &row.body).await;
            let ms = Date::now().as_millis().saturating_sub(started);
            let sql = self.state.storage().sql();
            match outcome {
                Ok(status) => {
                    sql.exec("DELETE FROM outbox WHERE id = ?", vec![row.id.into()])?;
                    log::info(
                        "webhook",
                        json!({ "eventId": row.event_id, "status": status, "attempt": row.attempts + 1, "ms": ms }),
                    );
                }
                Err(reason) => {
                    let attempts = row.attempts + 1;
                    let jitter = f64::from(ids::random_u32()) / f64::from(u32::MAX);
                    let delay = webhook::backoff_ms(attempts as u32, hook.retry_base_ms, hook.retry_max_ms, jitter);
                    let next_at = Date::now().as_millis() as i64 + delay as i64;
                    sql.exec(
                        "UPDATE outbox SET attempts = ?, next_at = ? WHERE id = ?",
                        vec![attempts.into(), next_at.into(), row.id.into()],
                    )?;
                    log::error(
                        "webhook_failed",
                        json!({ "eventId": row.event_id, "attempt": attempts, "reason": reason, "retryInMs": delay, "ms": ms }),
                    );
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

/// One signed attempt. `Ok(status)` on a 2xx; `Err(reason)` otherwise.
async fn send(hook: &WebhookConfig, event_id: &str, body: &str) -> Result<u16, String> {
    let timestamp = (Date::now().as_millis() / 1000) as i64;
    let headers = Headers::new();
    let set = |k: &str, v: &str| headers.set(k, v).map_err(|e| e.to_string());
    set("content-type", "application/cloudevents+json; charset=utf-8")?;
    set("webhook-id", event_id)?;
    set("webhook-timestamp", &timestamp.to_string())?;
    set("webhook-signature", &webhook::sign(&hook.secret, event_id, timestamp, body))?;
    set("user-agent", "switchboard-webhooks/1")?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post).with_headers(headers).with_body(Some(body.into()));
    let req = Request::new_with_init(&hook.url, &init).map_err(|e| e.to_string())?;
    let controller = AbortController::default();
    let signal = controller.signal();
    let fetch = Fetch::Request(req);
    let outcome = {
        let attempt = Box::pin(fetch.send_with_signal(&signal));
        let timeout = Delay::from(Duration::from_millis(hook.timeout_ms));
        match select(attempt, timeout).await {
            Either::Left((Ok(res), _)) if (200..300).contains(&res.status_code()) => Ok(res.status_code()),
            Either::Left((Ok(res), _)) => Err(format!("HTTP {}", res.status_code())),
            Either::Left((Err(e), _)) => Err(format!("network error: {e}")),
            Either::Right(_) => Err(format!("no answer within {} ms", hook.timeout_ms)),
        }
    };
    if outcome.as_ref().is_err_and(|e| e.starts_with("no answer")) {
        controller.abort();
    }
    outcome
}
