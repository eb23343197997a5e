//! The `EventHub` Durable Object: an event shard, named `events/{shard}` (shard = a stable hash of the
//! user id, or of the key the sender chose, modulo `PRESENCE_WEBHOOK_SHARDS`). It batches the
//! webhook events of `PRESENCE_WEBHOOKS=on` across users, so 50,000 users dropping at once is about
//! 50,000 / `PRESENCE_WEBHOOK_BATCH_MAX` requests to the backend instead of 50,000.
//!
//! Senders hand it events through [`crate::hop::events`] (a user hub from its outbox, a channel's
//! root from its flush). It stores them in its SQLite queue before it answers, so an answered
//! hand-off is durable; an event id it still holds is ignored (a sender's retry after a lost answer
//! does not queue it twice). The queue is bounded (`PRESENCE_WEBHOOK_MAX_BACKLOG`): a hand-off that
//! would pass the bound is refused with 503 and stays with its sender, whose own durable queue
//! retries it with backoff, so a long outage pushes back to the senders instead of dropping events.
//!
//! Its alarm sends the queue oldest first as CloudEvents JSON batches through the same code and rules
//! as a hub's outbox (`runtime::webhook`: signing, retry with backoff, permanent 4xx, max age). The
//! first event that finds the shard idle arms the alarm `PRESENCE_WEBHOOK_FLUSH_MS` later, and a
//! flush that leaves events behind arms the next one no sooner than that, so a shard makes at most
//! one flush per interval and each flush sends what had gathered when it started, as full batches. One flush makes at
//! most [`MAX_REQUESTS_PER_FLUSH`] requests (within the subrequest limit of one invocation).

use crate::core::config::PresenceWebhookConfig;
use crate::core::error::Error;
use crate::hop::events::{self, Call};
use crate::runtime::webhook::{Failure, Queue, Target};
use crate::runtime::{http, log, rows, settings};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use std::cell::Cell;
use worker::{durable_object, Date, Env, Request, Response, State};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL, body TEXT NOT NULL,
  created INTEGER NOT NULL, attempts INTEGER NOT NULL, next_at INTEGER NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS outbox_event_id ON outbox (event_id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);";

/// Requests one flush makes at most; a longer queue continues at the next flush.
pub const MAX_REQUESTS_PER_FLUSH: usize = 50;

/// Only `fetch` and `alarm` are exported (no sockets here), which keeps the wasm small.
#[durable_object(alarm)]
pub struct EventHub {
    state: State,
    env: Env,
    /// The schema was made sure of since construction.
    ready: Cell<bool>,
    /// See [`Queue::sending`] (no row is changed under an attempt here, but the queue keeps it).
    sending: Cell<i64>,
    /// See [`Queue::solo`].
    solo: Cell<usize>,
    /// Alarm runs that failed in a row.
    alarm_failures: Cell<u32>,
    /// This shard's number (stored in `meta` by the first hand-off), for the logs.
    shard: Cell<Option<i64>>,
}

/// The one field of an event the shard reads.
#[derive(Deserialize)]
struct EventId {
    id: String,
}

impl worker::DurableObject for EventHub {
    fn new(state: State, env: Env) -> Self {
        EventHub {
            state,
            env,
            ready: Cell::new(false),
            sending: Cell::new(0),
            solo: Cell::new(0),
            alarm_failures: Cell::new(0),
            shard: Cell::new(None),
        }
    }

    async fn fetch(&self, mut req: Request) -> worker::Result<Response> {
        let result = match events::read(&req) {
            Err(e) => Err(e),
            Ok(Call::Enqueue { shard }) => self.enqueue(&mut req, shard).await,
        };
        result.or_else(|e| {
            if e.status() >= 500 && e.status() != 503 {
                log::error!("events_error", "code" => e.code(), "message" => e.to_string());
            }
            http::error(&e, None)
        })
    }

    async fn alarm(&self) -> worker::Result<Response> {
        let outcome = self.flush().await;
        let now = Date::now().as_millis() as i64;
        let next = match outcome {
            Ok(()) => {
                self.alarm_failures.set(0);
                self.next_flush().map_err(|e| worker::Error::RustError(e.to_string()))?
            }
            Err(e) => Some(crate::runtime::webhook::alarm_failed(&self.alarm_failures, &e, now)),
        };
        if let Some(at) = next {
            self.set_alarm(at).await.map_err(|e| worker::Error::RustError(e.to_string()))?;
        }
        Response::empty()
    }
}

impl EventHub {
    fn sql(&self) -> Result<worker::SqlStorage, Error> {
        let sql = self.state.storage().sql();
        if !self.ready.get() {
            sql.exec(SCHEMA, None)?;
            self.shard.set(rows::first_int(sql.exec("SELECT value FROM meta WHERE key = 'shard'", None)?)?);
            self.ready.set(true);
        }
        Ok(sql)
    }

    fn queue(&self, presence: &PresenceWebhookConfig) -> Result<Queue<'_>, Error> {
        Ok(Queue {
            sql: self.sql()?,
            sending: &self.sending,
            solo: &self.solo,
            batch_max: presence.batch_max,
            always_batch: true,
            max_events: MAX_REQUESTS_PER_FLUSH * presence.batch_max,
            until_id: i64::MAX,
            context: json!({ "shard": self.shard.get() }),
        })
    }

    /// The presence settings (their defaults when switched off since the events were queued, so
    /// what is queued still goes out while a webhook is configured).
    fn presence(&self) -> Result<PresenceWebhookConfig, Error> {
        Ok(settings::get(&self.env)?.presence_webhooks.clone().unwrap_or_default())
    }

    /// A hop from [`crate::hop::events::send`]: stores the events, arms the flush, answers 200.
    async fn enqueue(&self, req: &mut Request, shard: Option<u32>) -> Result<Response, Error> {
        let presence = self.presence()?;
        let sql = self.sql()?;
        if let (None, Some(n)) = (self.shard.get(), shard) {
            sql.exec("INSERT OR IGNORE INTO meta (key, value) VALUES ('shard', ?)", vec![i64::from(n).into()])?;
            self.shard.set(Some(i64::from(n)));
        }
        let text = req.text().await?;
        let list: Vec<Box<RawValue>> = serde_json::from_str(&text)
            .map_err(|e| Error::bad_request("invalid_body", format!("the events are not a JSON array: {e}")))?;
        let queue = self.queue(&presence)?;
        let backlog = queue.len()?;
        if backlog + list.len() as u64 > presence.max_backlog {
            log::error!("events_full", "shard" => self.shard.get(), "backlog" => backlog, "refused" => list.len());
            return Err(Error::Unavailable(format!(
                "this event shard holds {backlog} events (PRESENCE_WEBHOOK_MAX_BACKLOG); hand them again later"
            )));
        }
        let now = Date::now().as_millis() as i64;
        for event in &list {
            let id = serde_json::from_str::<EventId>(event.get())
                .map_err(|_| Error::bad_request("invalid_body", "every event needs a string `id`"))?
                .id;
            // An id still queued is a sender's retry: ignored, so it is not sent twice.
            sql.exec(
                "INSERT OR IGNORE INTO outbox (event_id, body, created, attempts, next_at) VALUES (?, ?, ?, 0, ?)",
                vec![id.into(), event.get().to_string().into(), now.into(), now.into()],
            )?;
        }
        let storage = self.state.storage();
        if storage.get_alarm().await?.is_none() {
            self.set_alarm(now + presence.flush_ms as i64).await?;
        }
        log::info!(
            "events_queued",
            "shard" => self.shard.get(), "events" => list.len(), "backlog" => backlog + list.len() as u64,
        );
        Ok(http::json(200, json!({ "queued": list.len() }).to_string(), None)?)
    }

    /// One flush: sends what is due, as batches. Nothing is sent (or re-armed) while no webhook is
    /// configured; the queue waits for one.
    async fn flush(&self) -> Result<(), Error> {
        let config = settings::get(&self.env)?;
        let Some(hook) = &config.webhook else { return Ok(()) };
        let presence = config.presence_webhooks.clone().unwrap_or_default();
        let mut queue = self.queue(&presence)?;
        // What gathered until now: events that arrive during this flush wait for the next one, so a
        // flush sends whole batches and makes ceil(events / PRESENCE_WEBHOOK_BATCH_MAX) requests.
        queue.until_id = queue.last_id()?;
        let started = Date::now().as_millis();
        // Every row goes to WEBHOOK_URL: a shard hands nothing on.
        let done = queue
            .drain(hook, &|_| Target::Webhook, &|_| {
                Box::pin(async { Err(Failure::retry("an event shard does not hop")) })
            })
            .await?;
        log::info!(
            "events_flushed",
            "shard" => self.shard.get(), "events" => done.events, "requests" => done.requests,
            "backlog" => queue.len()?, "ms" => Date::now().as_millis().saturating_sub(started),
        );
        Ok(())
    }

    /// When the next flush is due, if events wait: when the head is due (a retry's backoff), but no
    /// sooner than `PRESENCE_WEBHOOK_FLUSH_MS` from now.
    fn next_flush(&self) -> Result<Option<i64>, Error> {
        let config = settings::get(&self.env)?;
        if config.webhook.is_none() {
            return Ok(None);
        }
        let presence = config.presence_webhooks.clone().unwrap_or_default();
        let now = Date::now().as_millis() as i64;
        Ok(self.queue(&presence)?.next_at()?.map(|at| at.max(now + presence.flush_ms as i64)))
    }

    async fn set_alarm(&self, at: i64) -> Result<(), Error> {
        let when = js_sys::Date::new(&wasm_bindgen::JsValue::from_f64(at as f64));
        self.state.storage().set_alarm(worker::ScheduledTime::new(when)).await?;
        Ok(())
    }
}
