//! Calls to the event shards (`EventHub`, named `events/{shard}`): the batched cross-user path for
//! the webhooks of `PRESENCE_WEBHOOKS=on` (user online/offline, channel member joined/left). A shard
//! stores what it is handed in its SQLite queue and sends it from its alarm as CloudEvents batches
//! of up to `PRESENCE_WEBHOOK_BATCH_MAX` events, at most one flush per `PRESENCE_WEBHOOK_FLUSH_MS`,
//! so many users' events cost one request per batch instead of one per event.
//!
//! # Sending events from another role
//!
//! ```ignore
//! use crate::core::webhook::CHANNEL_MEMBER_JOINED;
//! use crate::hop::events;
//!
//! let joined = events::event(CHANNEL_MEMBER_JOINED, "alice", json!({ "channel": "room:1", "userId": "alice", "reason": "join" }));
//! events::send(&env, "room:1", &[joined]).await?; // Ok(0) without a hop when PRESENCE_WEBHOOKS is off
//! ```
//!
//! - [`event`] builds a CloudEvent with a fresh id (`evt_…`, the receiver's deduplication key) and
//!   the current time; `subject` is the user id.
//! - [`send`] hands a list of events to the shard of `shard_key` (a stable hash, see
//!   `core::webhook::shard_of`): events handed with the same key go to the same shard and are
//!   delivered in the order handed. It returns once the shard has **stored** them (`Ok(n)`), so
//!   the caller may forget them then. On `Err` nothing may be assumed stored: keep the events and
//!   hand them again later (the shard ignores an event id it still holds, so a repeat is harmless).
//!   A shard holding `PRESENCE_WEBHOOK_MAX_BACKLOG` events refuses with 503 `unavailable`.
//! - One call is one hop (a subrequest): group a flush's events into one call per key.

use super::wire::{self, events_path};
use crate::core::config::Config;
use crate::core::error::Error;
use crate::core::{ids, protocol::rfc3339, query, webhook};
use crate::runtime::settings;
use serde_json::Value;
use worker::{Date, Env, Method, Request};

/// A CloudEvent of `kind` about user `subject`, with a fresh id and the current time.
pub fn event(kind: &str, subject: &str, data: Value) -> Value {
    let id = format!("evt_{}", ids::uuid_v4().replace('-', ""));
    webhook::event_value(&id, kind, subject, &rfc3339(Date::now().as_millis()), data)
}

/// The shard of `key`, or `None` when presence webhooks are off.
pub fn shard_for(config: &Config, key: &str) -> Option<u32> {
    config.presence_webhooks.as_ref().map(|p| webhook::shard_of(key, p.shards))
}

/// Hands `events` (CloudEvents, each with a string `id`) to the shard of `shard_key` and returns how
/// many were handed once it has stored them: 0, without a hop, when `PRESENCE_WEBHOOKS` is off or
/// the list is empty. See the module docs for what an error means.
pub async fn send(env: &Env, shard_key: &str, events: &[Value]) -> Result<usize, Error> {
    let config = settings::get(env)?;
    let Some(shard) = shard_for(&config, shard_key) else { return Ok(0) };
    if events.is_empty() {
        return Ok(0);
    }
    let bodies: Vec<String> = events.iter().map(Value::to_string).collect();
    send_bodies(env, shard, &bodies).await?;
    Ok(events.len())
}

/// [`send`] for events already serialised (a hub's outbox rows), to shard `shard`.
pub async fn send_bodies(env: &Env, shard: u32, bodies: &[String]) -> Result<(), Error> {
    let body = webhook::batch_body(bodies.iter().map(String::as_str));
    let shard_text = shard.to_string();
    let url = wire::url("events", events_path::ENQUEUE, &[("shard", &shard_text)]);
    let req = super::request(Method::Post, &url, None, None, Some(body.into()))?;
    let mut res = worker::Response::from(
        super::send(env, wire::EVENT_HUB_BINDING, &wire::events_name(shard), req, "the event shard").await?,
    );
    if res.status_code() == 200 {
        return Ok(());
    }
    let answer: Value = res.json().await.unwrap_or_default();
    let message = answer["message"].as_str().unwrap_or("the event shard refused the events");
    Err(Error::Unavailable(format!("event shard {shard}: {message}")))
}

/// What a hop asks of an event shard.
pub enum Call {
    /// Queue the events in the body (a JSON array of CloudEvents); `shard` is the shard's number
    /// (for its logs).
    Enqueue { shard: Option<u32> },
}

/// The shard's side: which call a hop is.
pub fn read(req: &Request) -> Result<Call, Error> {
    match (req.path().as_str(), req.method()) {
        (events_path::ENQUEUE, Method::Post) => {
            let pairs = query::pairs(&req.inner().url());
            Ok(Call::Enqueue { shard: wire::param(&pairs, "shard").and_then(|s| s.parse().ok()) })
        }
        (other, _) => Err(Error::NotFound(format!("the event shard has no route {other}"))),
    }
}
