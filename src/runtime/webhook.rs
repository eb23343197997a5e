//! Sending backend webhooks, shared by every durable queue that sends them: a user hub's outbox
//! (`user_hub/outbox.rs`) and the event shards (`event_hub/`). One implementation of the signed
//! attempt ([`send`]) and of draining a queue in order ([`Queue::drain`]), so both follow the same
//! rules: oldest first; a 2xx deletes what was sent; 408, 429, 5xx, network errors and
//! `WEBHOOK_TIMEOUT_MS` stop the queue until a later attempt (exponential backoff with jitter);
//! any other 4xx is permanent (the event is dropped, counted and logged; a refused batch is re-sent
//! one event at a time to find the culprit); events older than `WEBHOOK_MAX_AGE_SECONDS` are
//! dropped. The pure parts (signature, classification, backoff, bodies) are in `core::webhook`.
//!
//! A queue is an SQLite table `outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, event_id, body,
//! created, attempts, next_at)` next to a `meta (key, value)` table that counts drops.

use crate::core::config::WebhookConfig;
use crate::core::error::Error;
use crate::core::ids;
use crate::core::webhook::{self, Delivery};
use crate::runtime::log::{self, Line};
use crate::runtime::rows;
use futures_util::future::{select, Either};
use serde_json::Value;
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use worker::{AbortController, Date, Delay, Fetch, Headers, Method, SqlStorage};

/// After an alarm run that failed: counts it in `failures` (runs failed in a row), logs it, and
/// returns when to retry (`now` plus the backoff of `core::webhook::alarm_retry_ms`). The user hubs
/// and the event shards both retry their alarms this way.
pub fn alarm_failed(failures: &Cell<u32>, error: &Error, now: i64) -> i64 {
    let count = failures.get() + 1;
    failures.set(count);
    let delay = webhook::alarm_retry_ms(count);
    log::error!("alarm_error", "message" => error.to_string(), "failures" => count, "retryInMs" => delay);
    now + delay
}

/// Why an attempt did not deliver: the HTTP status when there was an answer.
pub struct Failure {
    pub status: Option<u16>,
    pub reason: String,
}

impl Failure {
    /// A failure without an HTTP answer (retried).
    pub fn retry(reason: impl Into<String>) -> Failure {
        Failure { status: None, reason: reason.into() }
    }
}

/// One signed attempt. `Ok(status)` on a 2xx.
pub async fn send(hook: &WebhookConfig, webhook_id: &str, body: &str, content_type: &str) -> Result<u16, Failure> {
    let fail = |reason: String| Failure { status: None, reason };
    let timestamp = (Date::now().as_millis() / 1000) as i64;
    let headers = Headers::new();
    let set = |k: &str, v: &str| headers.set(k, v).map_err(|e| fail(e.to_string()));
    set("content-type", content_type)?;
    set("webhook-id", webhook_id)?;
    set("webhook-timestamp", &timestamp.to_string())?;
    set("webhook-signature", &webhook::sign(&hook.secret, webhook_id, timestamp, body))?;
    set("user-agent", "switchboard-webhooks/1")?;
    let req = super::http::new_request(Method::Post, &hook.url, &headers, Some(&body.into()))
        .map_err(|e| fail(e.to_string()))?;
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
    if outcome.as_ref().is_err_and(|e| e.status.is_none() && e.reason.starts_with("no answer")) {
        controller.abort();
    }
    outcome
}

/// One queued event.
pub struct Row {
    pub id: i64,
    pub event_id: String,
    pub body: String,
    pub created: i64,
    pub attempts: i64,
    pub next_at: i64,
}

/// Where a run of consecutive rows goes: to `WEBHOOK_URL`, signed, or through the caller's hop
/// (a user hub hands its online/offline events to an event shard this way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Webhook,
    Hop,
}

impl Row {
    /// A row of `SELECT id, event_id, body, created, attempts, next_at`.
    fn read(r: &[worker::SqlStorageValue]) -> Row {
        Row {
            id: rows::int(r, 0),
            event_id: rows::text(r, 1).unwrap_or_default(),
            body: rows::text(r, 2).unwrap_or_default(),
            created: rows::int(r, 3),
            attempts: rows::int(r, 4),
            next_at: rows::int(r, 5),
        }
    }
}

/// What one [`Queue::drain`] did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Drained {
    /// Events delivered or handed on, and events dropped.
    pub events: usize,
    /// Attempts made (requests to `WEBHOOK_URL` and hops), failed ones included.
    pub requests: usize,
}

/// Hands a run of rows' bodies on (see [`Target::Hop`]).
pub type Hop<'a> = dyn Fn(Vec<String>) -> Pin<Box<dyn Future<Output = Result<(), Failure>> + 'a>> + 'a;

/// A queue in an object's SQLite storage, and how it is drained.
pub struct Queue<'a> {
    pub sql: SqlStorage,
    /// The newest row an attempt in flight carries (0: none), so the owner does not change it.
    pub sending: &'a Cell<i64>,
    /// Events still to send one at a time after the backend refused a batch (to find the culprit).
    pub solo: &'a Cell<usize>,
    /// Events per request.
    pub batch_max: usize,
    /// Send a single event as a one-event batch too (the event shards always send batches); else
    /// `batch_max` 1 sends structured events.
    pub always_batch: bool,
    /// Events sent per run at most; the owner's next alarm continues.
    pub max_events: usize,
    /// Send only rows up to this id (an event shard's flush sends what had gathered when it started;
    /// later events wait for the next flush). `i64::MAX`: everything.
    pub until_id: i64,
    /// Fields naming the queue in its log lines (e.g. `{"shard": 3}`).
    pub context: Value,
}

impl Queue<'_> {
    /// How many events wait. Rows are only ever deleted from the head (oldest first) and ids are
    /// never reused, so the count is read from the primary key's two ends, not by scanning (rows
    /// read are billed); an id skipped by an ignored insert only makes it larger.
    pub fn len(&self) -> Result<u64, Error> {
        let span = rows::first(self.sql.exec("SELECT min(id), max(id) FROM outbox", None)?)?;
        Ok(match span.map(|r| (rows::opt_int(&r, 0), rows::opt_int(&r, 1))) {
            Some((Some(lo), Some(hi))) => (hi - lo + 1).max(0) as u64,
            _ => 0,
        })
    }

    /// The newest row's id (0 when empty).
    pub fn last_id(&self) -> Result<i64, Error> {
        Ok(rows::first_int(self.sql.exec("SELECT max(id) FROM outbox", None)?)?.unwrap_or(0))
    }

    /// When the head event is due, if any event waits.
    pub fn next_at(&self) -> Result<Option<i64>, Error> {
        rows::first_int(self.sql.exec("SELECT next_at FROM outbox ORDER BY id LIMIT 1", None)?)
    }

    /// Events dropped from this queue so far (permanent refusals and events past their age).
    pub fn dropped(&self) -> Result<i64, Error> {
        Ok(rows::first_int(self.sql.exec("SELECT value FROM meta WHERE key = 'webhook_dropped'", None)?)?.unwrap_or(0))
    }

    /// Sends due events, oldest first, until the queue is empty, the head is not due, an attempt
    /// failed (the head is retried later, and nothing after it is sent before it), or `max_events`
    /// were sent. `target` says where each row goes; a run of consecutive rows with the same target
    /// goes in one request (or one `hop` call, with the rows' bodies). A hop's failure is always
    /// retried.
    /// (Trait objects, not generics: one copy of this code in the wasm for every queue.)
    pub async fn drain(
        &self,
        hook: &WebhookConfig,
        target: &dyn Fn(&Row) -> Target,
        hop: &Hop<'_>,
    ) -> Result<Drained, Error> {
        let mut done = Drained::default();
        while done.events < self.max_events {
            let limit = if self.solo.get() > 0 { 1 } else { self.batch_max };
            let query =
                "SELECT id, event_id, body, created, attempts, next_at FROM outbox WHERE id <= ? ORDER BY id LIMIT ?";
            let bindings = vec![self.until_id.into(), (limit as i64).into()];
            let rows: Vec<Row> = rows::all(self.sql.exec(query, bindings)?)?.iter().map(|r| Row::read(r)).collect();
            let Some(head) = rows.first() else { return Ok(done) };
            let now = Date::now().as_millis() as i64;
            let too_old = |r: &Row| r.created < now - (hook.max_age_seconds as i64) * 1000;
            if too_old(head) {
                self.drop_event(head, None, "older than WEBHOOK_MAX_AGE_SECONDS")?;
                done.events += 1;
                continue;
            }
            if head.next_at > now {
                return Ok(done); // not due yet; in order, so nothing after it is sent either
            }
            let to = target(head);
            let batch: Vec<&Row> = rows.iter().take_while(|r| !too_old(r) && target(r) == to).collect();
            let last = batch.last().map_or(head.id, |r| r.id);
            let started = Date::now().as_millis();
            self.sending.set(last);
            done.requests += 1;
            let (webhook_id, outcome) = match to {
                Target::Webhook => {
                    let (webhook_id, body, content_type) = if self.batch_max == 1 && !self.always_batch {
                        (head.event_id.clone(), head.body.clone(), webhook::CONTENT_TYPE)
                    } else {
                        let body = webhook::batch_body(batch.iter().map(|r| r.body.as_str()));
                        (webhook::batch_id(&head.event_id, batch.len()), body, webhook::BATCH_CONTENT_TYPE)
                    };
                    let outcome = send(hook, &webhook_id, &body, content_type).await;
                    crate::runtime::metrics::webhook_attempt(
                        outcome.as_ref().map_or_else(|f| f.status, |s| Some(*s)),
                        is_timeout(&outcome),
                    );
                    (webhook_id, outcome.map(Some))
                }
                Target::Hop => {
                    let bodies = batch.iter().map(|r| r.body.clone()).collect();
                    (webhook::batch_id(&head.event_id, batch.len()), hop(bodies).await.map(|()| None))
                }
            };
            self.sending.set(0);
            let ms = Date::now().as_millis().saturating_sub(started);
            let failure = match outcome {
                Ok(status) => {
                    self.sql.exec("DELETE FROM outbox WHERE id >= ? AND id <= ?", vec![head.id.into(), last.into()])?;
                    let event = if to == Target::Hop { "webhook_handed_off" } else { "webhook" };
                    self.log_info(
                        Line::new(event)
                            .field("eventId", &head.event_id)
                            .field("webhookId", &webhook_id)
                            .field("events", &batch.len())
                            .field("status", &status)
                            .field("attempt", &(head.attempts + 1))
                            .field("ms", &ms),
                    );
                    done.events += batch.len();
                    self.solo.set(self.solo.get().saturating_sub(batch.len()));
                    continue;
                }
                Err(f) => f,
            };
            if failure.status.is_some_and(|s| webhook::classify(s) == Delivery::Permanent) {
                if batch.len() > 1 {
                    self.log_error(
                        Line::new("webhook_refused")
                            .field("webhookId", &webhook_id)
                            .field("events", &batch.len())
                            .field("reason", &failure.reason)
                            .field("then", "one event at a time"),
                    );
                    self.solo.set(batch.len());
                    continue;
                }
                self.drop_event(head, failure.status, &format!("permanent refusal ({})", failure.reason))?;
                self.solo.set(self.solo.get().saturating_sub(1));
                done.events += 1;
                continue;
            }
            let attempts = head.attempts + 1;
            let jitter = f64::from(ids::random_u32()) / f64::from(u32::MAX);
            let delay = webhook::backoff_ms(attempts as u32, hook.retry_base_ms, hook.retry_max_ms, jitter);
            let next_at = Date::now().as_millis() as i64 + delay as i64;
            self.sql.exec(
                "UPDATE outbox SET attempts = ?, next_at = ? WHERE id = ?",
                vec![attempts.into(), next_at.into(), head.id.into()],
            )?;
            self.log_error(
                Line::new("webhook_failed")
                    .field("eventId", &head.event_id)
                    .field("webhookId", &webhook_id)
                    .field("events", &batch.len())
                    .field("attempt", &attempts)
                    .field("reason", &failure.reason)
                    .field("retryInMs", &delay)
                    .field("ms", &ms),
            );
            return Ok(done);
        }
        Ok(done)
    }

    /// Drops the head event for good: deleted, counted, and logged with what identifies it (the log
    /// line is the dead letter; the event's body stays out of the log).
    fn drop_event(&self, row: &Row, status: Option<u16>, reason: &str) -> Result<(), Error> {
        self.sql.exec("DELETE FROM outbox WHERE id = ?", vec![row.id.into()])?;
        crate::runtime::metrics::webhook_dropped();
        self.sql.exec(
            "INSERT INTO meta (key, value) VALUES ('webhook_dropped', 1) ON CONFLICT(key) DO UPDATE SET value = value + 1",
            None,
        )?;
        let event: Value = serde_json::from_str(&row.body).unwrap_or_default();
        self.log_error(
            Line::new("webhook_dropped")
                .field("eventId", &row.event_id)
                .field("type", &event["type"])
                .field("userId", &event["subject"])
                .field("status", &status)
                .field("attempts", &(row.attempts + 1))
                .field("reason", reason)
                .field("dropped", &self.dropped()?),
        );
        Ok(())
    }

    /// Logs `line` with the fields that name this queue.
    fn log_info(&self, line: Line) {
        log::write_info(line.fields(&self.context));
    }

    fn log_error(&self, line: Line) {
        log::write_error(line.fields(&self.context));
    }
}

/// Whether an attempt failed for want of an answer in time (counted apart from other failures).
fn is_timeout(outcome: &Result<u16, Failure>) -> bool {
    outcome.as_ref().is_err_and(|e| e.status.is_none() && e.reason.starts_with("no answer"))
}
