//! The relays' role: stateless steps of a channel's fan-out tree. Each step reaches its users' hubs
//! itself when they fit in `CHANNEL_FANOUT` hops, else hands even slices to relays below it, and
//! answers with the aggregate of everything below.

use super::ChannelHub;
use crate::core::channel::{self, Aggregate};
use crate::core::config::Config;
use crate::core::error::Error;
use crate::hop::fanout::fan_out;
use crate::hop::wire::PublishMeta;
use crate::runtime::{http, js, log, settings};
use futures_util::future::{select, Either};
use futures_util::stream::{self, StreamExt};
use std::time::Duration;
use worker::{Delay, Env, Request, Response};

impl ChannelHub {
    /// `POST /relay` (relay): the body is the users (a JSON array), a line break, then the payload.
    pub(super) async fn relay(
        &self,
        req: &mut Request,
        channel: &str,
        path: &str,
        meta: &PublishMeta,
        key: Option<&str>,
    ) -> Result<Response, Error> {
        let config = settings::get(&self.env)?;
        let body = js::body_text(req).await?;
        let (users, payload) = crate::hop::channel::read_relay_body(&body)
            .ok_or_else(|| Error::Internal("a relay hop without readable users".into()))?;
        let aggregate = step(&self.env, &config, channel, path, &users, meta, &payload, key).await;
        let body = serde_json::to_string(&aggregate).map_err(|e| Error::Internal(e.to_string()))?;
        Ok(http::json(200, body, None)?)
    }
}

/// One step of the fan-out tree at position `path`: straight to the users' hubs when they fit in
/// `CHANNEL_FANOUT` hops, else to relays that each take an even slice.
#[allow(clippy::too_many_arguments)]
pub(super) async fn step(
    env: &Env,
    config: &Config,
    channel: &str,
    path: &str,
    users: &[String],
    meta: &PublishMeta,
    payload: &js_sys::JsString,
    key: Option<&str>,
) -> Aggregate {
    let timeout_ms = meta.timeout_ms.unwrap_or(config.ack_timeout_ms).min(config.ack_timeout_max_ms);
    let fanout = config.channel_fanout;
    let budget = config.publish_results_max_bytes;
    let mut aggregate = Aggregate::with_budget(budget);
    let Some(chunk) = channel::chunk_size(users.len(), fanout) else {
        // A leaf: every hop at once, one deadline for the step (see `fan_out`).
        for outcome in fan_out(env, meta, payload, users, timeout_ms + config.hop_grace_ms, key, budget).await {
            aggregate.add_user(outcome);
        }
        return aggregate;
    };
    let outcomes: Vec<Result<Aggregate, (String, usize, Error)>> = stream::iter(users.chunks(chunk).enumerate())
        .map(|(i, part)| async move {
            let relay = format!("{path}.{i}");
            // Each level below gets the grace a user's hop gets, plus one for this hop.
            let levels = u64::from(channel::depth(part.len(), fanout));
            let limit_ms = timeout_ms + config.hop_grace_ms * (levels + 1);
            let hop = Box::pin(crate::hop::channel::relay(env, channel, &relay, part, meta, payload, key));
            let answered = match select(hop, Delay::from(Duration::from_millis(limit_ms))).await {
                Either::Left((result, _)) => Some(result),
                Either::Right(_) => None,
            };
            match answered {
                Some(Ok(a)) => Ok(a),
                Some(Err(e)) => Err((relay, part.len(), e)),
                None => Err((
                    relay,
                    part.len(),
                    Error::Unavailable(format!("the relay did not answer within {limit_ms} ms")),
                )),
            }
        })
        .buffer_unordered(fanout)
        .collect()
        .await;
    for outcome in outcomes {
        match outcome {
            Ok(a) => aggregate.merge(a),
            Err((relay, n, e)) => {
                log::error!(
                    "relay_failed",
                    "channel" => channel, "relay" => relay, "users" => n, "message" => e.to_string(),
                );
                aggregate.relay_failed(&relay, n, e.status(), e.code(), &e.to_string());
            }
        }
    }
    aggregate
}
