//! One publish to many users' hubs at once, all hops in flight together under one deadline, the
//! ack timeout plus [`HOP_GRACE_MS`] from the step's start, so a slow or failing hub becomes an error entry for that user
//! instead of holding the others. Used by multi-user publish (`userIds`) at the edge and by each leaf
//! step of a channel's fan-out tree.
//!
//! Each user is one Durable Object subrequest: callers keep the number of users per invocation within
//! the subrequest limit (<https://developers.cloudflare.com/workers/platform/limits/#subrequests>).

use super::wire::PublishMeta;
use crate::core::aggregate;
use futures_util::future::join_all;
use futures_util::future::{select, Either};
use serde_json::{json, Value};
use std::cell::Cell;
use std::time::Duration;
use worker::{Date, Delay, Env};

/// How long past the ack timeout a hub may take to answer before it counts as timed out.
pub const HOP_GRACE_MS: u64 = 2_000;

/// Sends `base` (with each user in turn) to every user's hub, all at once, and returns each user's
/// outcome in `users`' order: the hub's answer with `userId`, or `{userId, status, error, message}`.
///
/// The step has one deadline, `timeout_ms` + [`HOP_GRACE_MS`] from its start. Every hop starts at
/// once, so a hub holding a non-acking connection holds only its own hop; before, 50 hops ran at a
/// time with a timer each, and 51 such users doubled the step's time (review F6). The payload is one
/// JS string shared by every hop, so starting them all costs no copy per hop (review F2); `users`
/// is bounded by `MAX_PUBLISH_USERS` or `CHANNEL_FANOUT`.
///
/// Answers are kept within `budget` bytes as they arrive (`PUBLISH_RESULTS_MAX_BYTES`): one that
/// does not fit keeps its counts and connection ids but not its ack results (review F3).
pub async fn fan_out(
    env: &Env,
    base: &PublishMeta,
    payload: &js_sys::JsString,
    users: &[String],
    timeout_ms: u64,
    idempotency_key: Option<&str>,
    budget: usize,
) -> Vec<Value> {
    let limit_ms = timeout_ms + HOP_GRACE_MS;
    let deadline = Date::now().as_millis() + limit_ms;
    let kept = Cell::new(0usize);
    let kept = &kept;
    let hops = users.iter().map(|user| async move {
        let meta = PublishMeta { user_id: user.clone(), ..base.clone() };
        let hop = Box::pin(super::user::publish(env, &meta, payload, None, idempotency_key));
        let left = deadline.saturating_sub(Date::now().as_millis());
        let outcome = match select(hop, Delay::from(Duration::from_millis(left))).await {
            Either::Left((Ok(mut res), _)) => {
                let status = res.status_code();
                match res.json::<Value>().await {
                    Ok(Value::Object(mut o)) if status == 200 => {
                        o.insert("userId".into(), json!(user));
                        let size = serde_json::to_string(&o).map_or(usize::MAX, |t| t.len());
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
                }
            }
            Either::Left((Err(e), _)) => {
                json!({ "userId": user, "status": e.status(), "error": e.code(), "message": e.to_string() })
            }
            Either::Right(_) => json!({
                "userId": user, "status": 504, "error": "timeout",
                "message": format!("the user's hub did not answer within {limit_ms} ms"),
            }),
        };
        outcome
    });
    join_all(hops).await
}
