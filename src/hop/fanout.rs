//! One publish to many users' hubs at once, all hops in flight together under one deadline (the ack
//! timeout plus `HOP_GRACE_MS` from the step's start), so a slow or failing hub becomes an error entry
//! for that user instead of holding the others. Used by multi-user publish (`userIds`) at the edge and
//! by each leaf step of a channel's fan-out tree.
//!
//! Each user is one Durable Object subrequest: callers keep the number of users per invocation within
//! the subrequest limit (<https://developers.cloudflare.com/workers/platform/limits/#subrequests>).

use super::wire::PublishMeta;
use crate::core::aggregate;
use futures_util::future::{join_all, select, Either, FutureExt};
use serde_json::{json, Value};
use std::cell::Cell;
use std::time::Duration;
use wasm_bindgen::JsValue;
use worker::{Delay, Env};

/// Sends `base` (with each user in turn) to every user's hub, all at once, and returns each user's
/// outcome in `users`' order: the hub's answer with `userId`, or `{userId, status, error, message}`.
///
/// The step has one deadline, `limit_ms` from its start, and one timer for it, shared by every hop
/// (`Shared` polls the timer with one waker of its own, so `worker::Delay` keeping only its first
/// waker does not matter). Every hop starts at once, so a hub holding a non-acking connection holds
/// only its own hop; before, 50 hops ran at a time with a timer each, and 51 such users doubled the
/// step's time (review F6). `payload` is one JS string for every hop: an RPC argument is copied by
/// the runtime, never through wasm (review F2). `users` is bounded by `MAX_PUBLISH_USERS` or
/// `CHANNEL_FANOUT`.
///
/// Answers are kept within `budget` bytes as they arrive (`PUBLISH_RESULTS_MAX_BYTES`): one that
/// does not fit keeps its counts and connection ids but not its ack results (review F3).
pub async fn fan_out(
    env: &Env,
    base: &PublishMeta,
    payload: &JsValue,
    users: &[String],
    limit_ms: u64,
    idempotency_key: Option<&str>,
    budget: usize,
) -> Vec<Value> {
    let deadline = Delay::from(Duration::from_millis(limit_ms)).shared();
    let kept = Cell::new(0usize);
    let kept = &kept;
    let hops = users.iter().map(|user| {
        let deadline = deadline.clone();
        async move {
            let meta = PublishMeta { user_id: user.clone(), ..base.clone() };
            let hop = Box::pin(super::user::publish(env, &meta, payload, idempotency_key));
            let outcome = match select(hop, deadline).await {
                Either::Left((Ok((status, body)), _)) => match serde_json::from_str::<Value>(&body) {
                    Ok(Value::Object(mut o)) if status == 200 => {
                        o.insert("userId".into(), json!(user));
                        let size = body.len() + user.len() + 12;
                        if kept.get().saturating_add(size) <= budget {
                            kept.set(kept.get() + size);
                        } else {
                            o.remove("results");
                            aggregate::drop_results(&mut o);
                        }
                        Value::Object(o)
                    }
                    Ok(Value::Object(o)) => json!({
                        "userId": user, "status": status, "error": o.get("error"), "message": o.get("message"),
                    }),
                    _ => json!({ "userId": user, "status": status, "error": "unavailable",
                        "message": "the user's hub answered with something unreadable" }),
                },
                Either::Left((Err(e), _)) => {
                    json!({ "userId": user, "status": e.status(), "error": e.code(), "message": e.to_string() })
                }
                Either::Right(_) => json!({
                    "userId": user, "status": 504, "error": "timeout",
                    "message": format!("the user's hub did not answer within {limit_ms} ms"),
                }),
            };
            outcome
        }
    });
    join_all(hops).await
}

/// Sends a channel's presence batch to every watching user's hub at once, under one deadline of
/// `limit_ms`, and returns the users whose hubs said they no longer watch, each with the version of
/// that answer. A hub that fails or misses the deadline is logged and skipped: presence frames are
/// not acked, and a client that missed one re-syncs from the next join's snapshot.
pub async fn presence_fan_out(
    env: &Env,
    channel: &str,
    frame: &JsValue,
    users: &[String],
    limit_ms: u64,
) -> Vec<(String, u64)> {
    let deadline = Delay::from(Duration::from_millis(limit_ms)).shared();
    let hops = users.iter().map(|user| {
        let deadline = deadline.clone();
        Box::pin(async move {
            let hop = Box::pin(super::user::presence(env, user, channel, frame));
            let failed = match select(hop, deadline).await {
                Either::Left((Ok(stopped), _)) => return stopped.map(|version| (user.clone(), version)),
                Either::Left((Err(e), _)) => e.to_string(),
                Either::Right(_) => format!("no answer within {limit_ms} ms"),
            };
            crate::runtime::log::error!("presence_hop_failed", "channel" => channel, "to" => user, "message" => failed);
            None
        }) as Boxed<'_, Option<(String, u64)>>
    });
    join_boxed(hops.collect()).await.into_iter().flatten().collect()
}

/// A boxed future, as [`join_boxed`] takes them.
pub type Boxed<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + 'a>>;

/// Runs every future at once and returns their outputs in order. Each wake polls the futures not yet
/// done (at most `CHANNEL_FANOUT`, which keeps that cheap), and there is one instance per output type
/// instead of `join_all`'s ordered-stream machinery per future type: the presence paths use this to
/// stay small in the size-budgeted release wasm.
pub async fn join_boxed<T>(futures: Vec<Boxed<'_, T>>) -> Vec<T> {
    let mut slots: Vec<Option<Boxed<'_, T>>> = futures.into_iter().map(Some).collect();
    let mut outputs: Vec<Option<T>> = slots.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (slot, output) in slots.iter_mut().zip(outputs.iter_mut()) {
            if let Some(future) = slot {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => {
                        *output = Some(value);
                        *slot = None;
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}
