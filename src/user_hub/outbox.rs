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
//! With `PRESENCE_WEBHOOKS=on` the outbox also holds the user's online/offline events (ids
//! `evs_…`, see `presence.rs`): their delivery is the hop to the user's event shard
//! (`hop::events`), which batches them with other users' events; a failed hand-off is retried like
//! a failed request. The sending and the in-order drain are shared with the event shards
//! (`runtime::webhook`).
//!
//! The same alarm enforces connection lifetimes (token `exp`, `MAX_CONNECTION_SECONDS`), ends
//! lingering channel memberships, and deletes history past `HISTORY_SECONDS`: the hub keeps one
//! alarm at the earliest moment any of them is due. It always re-arms, after an error too.

use super::UserHub;
use crate::core::config::WebhookConfig;
use crate::core::error::Error;
use crate::core::ids;
use crate::core::protocol::rfc3339;
use crate::core::webhook;
use crate::hop;
use crate::runtime::webhook::{Failure, Queue, Target};
use crate::runtime::{log, rows};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use worker::Date;

/// Events sent per alarm run at most; a longer backlog continues from the next alarm at once.
const MAX_EVENTS_PER_RUN: usize = 200;
/// Event ids of coalesced rows start with this, so the tail row can be recognised.
const COALESCED_PREFIX: &str = "evc_";
/// Event ids of rows that go to the user's event shard (`hop::events`) instead of `WEBHOOK_URL`:
/// the online/offline events of `PRESENCE_WEBHOOKS=on`, batched there with other users' events.
pub(crate) const SHARD_PREFIX: &str = "evs_";

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

impl UserHub {
    /// The outbox as the shared webhook queue (`runtime::webhook`), batching as `hook` says.
    fn outbox(&self, batch_max: usize) -> Queue<'_> {
        // The queue reads `outbox` through its own handle; a failure here shows in its first query.
        let _ = self.sql().ensure_lazy();
        Queue {
            sql: self.state.storage().sql(),
            sending: &self.outbox_sending,
            solo: &self.outbox_solo,
            batch_max,
            always_batch: false,
            max_events: MAX_EVENTS_PER_RUN,
            until_id: i64::MAX,
            context: json!({}),
        }
    }

    /// How many events wait in the outbox (read from the primary key's two ends, not by scanning).
    pub(crate) fn outbox_len(&self) -> Result<u64, Error> {
        self.outbox(1).len()
    }

    /// Webhook events dropped by this hub so far (permanent refusals and events past their age).
    pub(crate) fn webhooks_dropped(&self) -> Result<i64, Error> {
        self.outbox(1).dropped()
    }

    /// Queues an event for the user's event shard (`PRESENCE_WEBHOOKS=on`): stored in the outbox
    /// like any event (so it survives eviction and is retried), and handed to the shard by the
    /// alarm. Not held to `WEBHOOK_MAX_BACKLOG`: online and offline alternate, and an offline
    /// waits `USER_OFFLINE_DEBOUNCE_SECONDS` after the last close, so they add at most two
    /// events per debounce window, and dropping one would leave the backend's view wrong for good.
    pub(crate) async fn enqueue_shard_event(&self, kind: &str, user_id: &str, data: Value) -> Result<(), Error> {
        let now = Date::now().as_millis() as i64;
        let event_id = format!("{SHARD_PREFIX}{}", ids::uuid_v4().replace('-', ""));
        let body = webhook::event(&event_id, kind, user_id, &rfc3339(now as u64), data);
        self.sql_exec(
            "INSERT INTO outbox (event_id, body, created, attempts, next_at) VALUES (?, ?, ?, 0, ?)",
            vec![event_id.into(), body.into(), now.into(), now.into()],
        )?;
        log::info!("presence_event", "userId" => user_id, "type" => kind);
        self.schedule_alarm(Some(now), false).await
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
            // In id order, through a set (a sort would be its own copy of std's sort in the wasm).
            let mut ids = BTreeSet::new();
            ids.extend(self.conns.borrow().iter().flat_map(|c| c.keys().cloned()));
            let connections: Vec<String> = ids.into_iter().collect();
            // The newest row, as `(id, body)`, if it is a coalesced event; a row being sent right now
            // is not changed under the attempt: a new one starts.
            let tail = rows::first(sql.exec("SELECT id, event_id, body FROM outbox ORDER BY id DESC LIMIT 1", None)?)?
                .filter(|t| {
                    rows::text(t, 1).is_some_and(|e| e.starts_with(COALESCED_PREFIX))
                        && rows::int(t, 0) > self.outbox_sending.get()
                })
                .map(|t| (rows::int(&t, 0), rows::text(&t, 2).unwrap_or_default()));
            let event_id = format!("{COALESCED_PREFIX}{}", ids::uuid_v4().replace('-', ""));
            let previous = tail
                .as_ref()
                .and_then(|(_, body)| serde_json::from_str::<Value>(body).ok())
                .and_then(|mut v| v.get_mut("data").map(Value::take));
            let data = webhook::coalesce(previous.as_ref(), opened, &connections, &at);
            let body = webhook::event(&event_id, webhook::CONNECTION_COALESCED, user_id, &at, data);
            match tail {
                // A fresh id: the merged event is a new event, so a receiver that de-duplicates by
                // id never mistakes it for the version it may have seen fail.
                Some((id, _)) => sql.exec(
                    "UPDATE outbox SET event_id = ?, body = ? WHERE id = ?",
                    vec![event_id.into(), body.into(), id.into()],
                )?,
                None => sql.exec(
                    "INSERT INTO outbox (event_id, body, created, attempts, next_at) VALUES (?, ?, ?, 0, ?)",
                    vec![event_id.into(), body.into(), now.into(), now.into()],
                )?,
            };
            log::info!("webhook_coalesced", "userId" => user_id, "type" => kind);
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
            Some(_) => self.outbox(1).next_at()?,
            None => None,
        };
        let due = [
            hint,
            outbox_next,
            self.next_deadline(),
            self.next_linger_end()?,
            self.next_history_expiry(&config),
            self.next_offline_due(&config)?,
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(due) = due else { return Ok(()) };
        self.set_alarm_at(due, rearm).await
    }

    /// Sets the alarm at `due` unless (`rearm` false) one is already set at or before it.
    pub(crate) async fn set_alarm_at(&self, due: i64, rearm: bool) -> Result<(), Error> {
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
        log::info!("alarm_set", "at" => due, "inMs" => due - Date::now().as_millis() as i64);
        Ok(())
    }

    /// The alarm handler: the work, then always a next alarm. After a failed run the next alarm is
    /// a retry with backoff (whatever failed is retried, and no deadline is skipped for good).
    /// Returns an error only when no alarm could be set, so the runtime retries this one.
    pub(crate) async fn run_alarm(&self) -> Result<(), Error> {
        let outcome = self.on_alarm().await;
        crate::runtime::metrics::flush(&self.env);
        let now = Date::now().as_millis() as i64;
        match outcome {
            Ok(()) => {
                self.alarm_failures.set(0);
                self.schedule_alarm(None, true).await
            }
            Err(e) => {
                let retry_at = crate::runtime::webhook::alarm_failed(&self.alarm_failures, &e, now);
                self.set_alarm_at(retry_at, true).await
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
        log::info!("alarm", "now" => Date::now().as_millis());
        self.enforce_lifetimes().await;
        self.end_lingering().await?;
        self.trim_history_by_age(&config)?;
        // Before the drain, so an offline event that falls due now goes out in this run.
        self.offline_when_due(&config).await?;
        if let Some(hook) = &config.webhook {
            self.drain_outbox(hook).await?;
        }
        Ok(())
    }

    /// Sends due events: to `WEBHOOK_URL` (one by one, or in batches of `WEBHOOK_BATCH_MAX`), and
    /// the online/offline events to the user's event shard, in one hop per run of them.
    async fn drain_outbox(&self, hook: &WebhookConfig) -> Result<(), Error> {
        let config = self.config()?;
        let target = |r: &crate::runtime::webhook::Row| {
            if r.event_id.starts_with(SHARD_PREFIX) {
                Target::Hop
            } else {
                Target::Webhook
            }
        };
        let hand_off =
            |bodies: Vec<String>| -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Failure>> + '_>> {
                let env = &self.env;
                let config = &config;
                Box::pin(async move {
                    // The shard is the user's (the subject of the events): one user's events keep their order.
                    let subject = serde_json::from_str::<Value>(bodies.first().map_or("null", String::as_str))
                        .ok()
                        .and_then(|e| e["subject"].as_str().map(str::to_string))
                        .unwrap_or_default();
                    let shards = config.presence_webhooks.clone().unwrap_or_default().shards;
                    hop::events::send_bodies(env, webhook::shard_of(&subject, shards), &bodies)
                        .await
                        .map_err(|e| Failure::retry(e.to_string()))
                })
            };
        self.outbox(hook.batch_max).drain(hook, &target, &hand_off).await?;
        Ok(())
    }
}
