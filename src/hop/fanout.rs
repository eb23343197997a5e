//! One publish to many users' hubs at once: at most `in_flight` hops in flight, each raced against the
//! ack timeout plus a grace (`HOP_GRACE_MS`, a setting), so a slow or failing hub becomes an error entry for that user
//! instead of holding the others. Used by multi-user publish (`userIds`) at the edge and by each leaf
//! step of a channel's fan-out tree.
//!
//! Each user is one Durable Object subrequest: callers keep the number of users per invocation within
//! the subrequest limit (<https://developers.cloudflare.com/workers/platform/limits/#subrequests>).

use super::wire::PublishMeta;
use futures_util::future::{select, Either};
use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};
use std::time::Duration;
use worker::{Delay, Env};

/// Hops to hubs in flight at once.
pub const MAX_HOPS_IN_FLIGHT: usize = 50;

/// Sends `base` (with each user in turn) to every user's hub, at most `in_flight` at once, and
/// returns each user's outcome in `users`' order: the hub's answer with `userId`, or
/// `{userId, status, error, message}`. Each hop is raced against `limit_ms` (the ack timeout plus the
/// hop grace), after which the user is a 504 `timeout` entry.
pub async fn fan_out(
    env: &Env,
    base: &PublishMeta,
    payload: &str,
    users: &[String],
    limit_ms: u64,
    idempotency_key: Option<&str>,
    in_flight: usize,
) -> Vec<Value> {
    // One JS string for every hop (an RPC argument is copied by the runtime, never through wasm).
    let payload = &wasm_bindgen::JsValue::from_str(payload);
    let outcomes: Vec<(usize, Value)> = stream::iter(users.iter().enumerate())
        .map(|(i, user)| async move {
            let meta = PublishMeta { user_id: user.clone(), ..base.clone() };
            let hop = Box::pin(super::user::publish(env, &meta, payload, idempotency_key));
            let limit = Delay::from(Duration::from_millis(limit_ms));
            let outcome = match select(hop, limit).await {
                Either::Left((Ok((status, body)), _)) => match serde_json::from_str::<Value>(&body) {
                    Ok(Value::Object(mut o)) if status == 200 => {
                        o.insert("userId".into(), json!(user));
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
            (i, outcome)
        })
        .buffer_unordered(in_flight.max(1))
        .collect()
        .await;
    let mut per_user = vec![Value::Null; users.len()];
    for (i, outcome) in outcomes {
        per_user[i] = outcome;
    }
    per_user
}
