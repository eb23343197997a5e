//! One publish to many users' hubs at once: at most `in_flight` hops in flight, each raced against the
//! ack timeout plus [`HOP_GRACE_MS`], so a slow or failing hub becomes an error entry for that user
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
/// How long past the ack timeout a hub may take to answer before it counts as timed out.
pub const HOP_GRACE_MS: u64 = 2_000;

/// Sends `base` (with each user in turn) to every user's hub, at most `in_flight` at once, and
/// returns each user's outcome in `users`' order: the hub's answer with `userId`, or
/// `{userId, status, error, message}`. Each hop is raced against `timeout_ms` + [`HOP_GRACE_MS`].
pub async fn fan_out(
    env: &Env,
    base: &PublishMeta,
    payload: &str,
    users: &[String],
    timeout_ms: u64,
    idempotency_key: Option<&str>,
    in_flight: usize,
) -> Vec<Value> {
    let outcomes: Vec<(usize, Value)> = stream::iter(users.iter().enumerate())
        .map(|(i, user)| async move {
            let meta = PublishMeta { user_id: user.clone(), ..base.clone() };
            let hop = Box::pin(super::user::publish(env, &meta, payload, None, idempotency_key));
            let limit = Delay::from(Duration::from_millis(timeout_ms + HOP_GRACE_MS));
            let outcome = match select(hop, limit).await {
                Either::Left((Ok(mut res), _)) => {
                    let status = res.status_code();
                    match res.json::<Value>().await {
                        Ok(Value::Object(mut o)) if status == 200 => {
                            o.insert("userId".into(), json!(user));
                            Value::Object(o)
                        }
                        Ok(Value::Object(o)) => json!({
                            "userId": user, "status": status, "error": o.get("error"), "message": o.get("message"),
                        }),
                        _ => json!({ "userId": user, "status": status, "error": "unavailable",
                            "message": "the user's hub answered with something unreadable" }),
                    }
                }
                Either::Left((Err(e), _)) => {
                    json!({ "userId": user, "status": e.status(), "error": e.code(), "message": e.to_string() })
                }
                Either::Right(_) => json!({
                    "userId": user, "status": 504, "error": "timeout",
                    "message": format!("the user's hub did not answer within {} ms", timeout_ms + HOP_GRACE_MS),
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
