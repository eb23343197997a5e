//! Multi-user publish, Worker side: `POST /publish` with `userIds` fans the same envelope out to each
//! user's hub concurrently ([`fanout::fan_out`]), and answers with every user's result plus totals. A
//! slow or failing hub becomes an error entry for that user instead of holding the others.
//!
//! Each user is one Durable Object subrequest: `MAX_PUBLISH_USERS` must stay within the account's
//! subrequest limit (<https://developers.cloudflare.com/workers/platform/limits/#subrequests>).

use crate::core::aggregate;
use crate::core::config::Config;
use crate::core::error::Error;
use crate::core::protocol::PublishRequest;
use crate::hop::fanout;
use crate::hop::wire::PublishMeta;
use crate::runtime::{http, log};
use serde_json::{json, Value};
use web_sys::Response;
use worker::{Date, Env};

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
    let base = PublishMeta::from_request(p, "", body, idempotency_key.is_some());
    let payload = js_sys::JsString::from(p.payload.get());
    let budget = config.publish_results_max_bytes;
    let mut per_user =
        fanout::fan_out(env, &base, &payload, users, timeout_ms + config.hop_grace_ms, idempotency_key, budget).await;
    let count = |v: &Value, key: &str| v.get(key).and_then(Value::as_array).map_or(0, Vec::len);
    let ok: Vec<&Value> = per_user.iter().filter(|u| u.get("error").is_none()).collect();
    let client_count: u64 = ok.iter().filter_map(|u| u["clientCount"].as_u64()).sum();
    let totals = json!({
        "users": users.len(),
        "succeeded": ok.len(),
        "failed": users.len() - ok.len(),
        "clientCount": client_count,
        "acked": ok.iter().map(|u| count(u, "acks")).sum::<usize>(),
        "pending": ok.iter().map(|u| count(u, "pending")).sum::<usize>(),
        "closed": ok.iter().map(|u| count(u, "closed")).sum::<usize>(),
    });
    log::info!(
        "publish_many",
        "users" => users.len(), "failed" => users.len() - ok.len(), "clientCount" => client_count,
        "ms" => Date::now().as_millis().saturating_sub(started),
    );
    // Each user's results once (in its `acks`), the flat HopeFlow-shaped list, and at most
    // PUBLISH_RESULTS_MAX_BYTES of both (review F3).
    let (results, truncated) = aggregate::bound_detail(&mut per_user, budget);
    let body = json!({ "clientCount": client_count, "results": results, "totals": totals, "users": per_user,
        "truncated": truncated });
    Ok(http::respond(200, &body.to_string().into(), cors))
}
