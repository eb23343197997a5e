//! Multi-user publish, Worker side: `POST /publish` with `userIds` fans the same envelope out to each
//! user's hub concurrently (at most [`MAX_HOPS_IN_FLIGHT`] at once), and answers with every user's
//! result plus totals. Each hop is raced against the ack timeout plus [`HOP_GRACE_MS`], so a slow or
//! failing hub becomes an error entry for that user instead of holding the others.
//!
//! Each user is one Durable Object subrequest: `MAX_PUBLISH_USERS` must stay within the account's
//! subrequest limit (<https://developers.cloudflare.com/workers/platform/limits/#subrequests>).

use crate::config::Config;
use crate::error::Error;
use crate::protocol::{PublishMeta, PublishRequest};
use crate::{http, hub, log};
use futures_util::future::{select, Either};
use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};
use std::time::Duration;
use worker::{Date, Delay, Env, Response};

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
            let hop = Box::pin(hub::publish(env, &meta, payload, None, idempotency_key));
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

/// Publishes `p` to every user in `users` and aggregates their answers.
pub async fn publish(
    env: &Env,
    config: &Config,
    p: &PublishRequest<'_>,
    users: &[String],
    body: &[u8],
    cors: Option<&str>,
    idempotency_key: Option<&str>,
) -> Result<Response, Error> {
    if users.len() > config.max_publish_users {
        return Err(Error::bad_request(
            "invalid_user_ids",
            format!("`userIds` names {} users; at most {} (MAX_PUBLISH_USERS)", users.len(), config.max_publish_users),
        ));
    }
    let started = Date::now().as_millis();
    let timeout_ms = p.timeout_ms.unwrap_or(config.ack_timeout_ms).min(config.ack_timeout_max_ms);
    // Checked and fingerprinted once; each hop differs only in its user.
    let base = PublishMeta::from_request(p, "", body);
    let per_user = fan_out(env, &base, p.payload.get(), users, timeout_ms, idempotency_key, MAX_HOPS_IN_FLIGHT).await;
    let count = |v: &Value, key: &str| v.get(key).and_then(Value::as_array).map_or(0, Vec::len);
    let ok: Vec<&Value> = per_user.iter().filter(|u| u.get("error").is_none()).collect();
    let client_count: u64 = ok.iter().filter_map(|u| u["clientCount"].as_u64()).sum();
    let results: Vec<&Value> = ok.iter().flat_map(|u| u["results"].as_array().into_iter().flatten()).collect();
    let totals = json!({
        "users": users.len(),
        "succeeded": ok.len(),
        "failed": users.len() - ok.len(),
        "clientCount": client_count,
        "acked": ok.iter().map(|u| count(u, "acks")).sum::<usize>(),
        "pending": ok.iter().map(|u| count(u, "pending")).sum::<usize>(),
        "closed": ok.iter().map(|u| count(u, "closed")).sum::<usize>(),
    });
    log::info(
        "publish_many",
        json!({ "users": users.len(), "failed": users.len() - ok.len(), "clientCount": client_count,
            "ms": Date::now().as_millis().saturating_sub(started) }),
    );
    let body = json!({ "clientCount": client_count, "results": results, "totals": totals, "users": per_user });
    Ok(http::json(200, body.to_string(), cors)?)
}
