//! Calls to a channel's objects (`ChannelHub`, see `docs/channels.md`): a user's hub telling the root of
//! a join or a leave, a publish to the root (from the Worker, or a client's `publish` frame through its
//! hub), the members API, and the root's and relays' hops to the relays below them; and the objects'
//! reading of them ([`read`]).

use super::wire::{self, channel_path, MemberUpdate, PublishMeta};
use crate::core::channel::{relay_name, root_name, Aggregate};
use crate::core::error::Error;
use crate::core::query;
use serde_json::Value;
use worker::{Env, Method, Request, Response};

/// The object's own answer, returned to the client as it is.
type RawResponse = web_sys::Response;

/// Reads a relay hop's body (see [`wire::relay_body`]): the users line comes into wasm, the payload
/// after it stays a JS string.
pub fn read_relay_body(body: &js_sys::JsString) -> Option<(Vec<String>, js_sys::JsString)> {
    let newline = body.index_of("\n", 0);
    if newline < 0 {
        return None;
    }
    let users = String::from(body.slice(0, newline as u32));
    Some((wire::read_relay_users(&users)?, body.slice(newline as u32 + 1, body.length())))
}

/// What a hop asks of a channel object.
pub enum Call {
    /// Root: a user joined or left.
    Member(MemberUpdate),
    /// Root: one page of members.
    Members { channel: String, limit: Option<String>, cursor: Option<String> },
    /// Root: publish to every member; the payload's JSON text is the body.
    Publish { channel: String, meta: PublishMeta, idempotency_key: Option<String> },
    /// Relay: publish to a slice of the members, named in the body (see [`wire::relay_body`]).
    Relay { channel: String, path: String, meta: PublishMeta, idempotency_key: Option<String> },
    /// Root: the presence snapshot for a presence join of a user already listed as watching.
    Snapshot { channel: String },
    /// Root: one page of `GET /channels/{channel}/presence`.
    Presence { channel: String, limit: Option<String>, cursor: Option<String> },
    /// Relay: a presence batch for a slice of the watching members (the body: users line, frame).
    PresenceRelay { channel: String, path: String },
}

/// The channel object's side: which call a hop is.
pub fn read(req: &Request) -> Result<Call, Error> {
    let pairs = query::pairs(&req.inner().url());
    let channel = wire::param(&pairs, "channel")
        .ok_or_else(|| Error::Internal("the hop to the channel carried no channel".into()))?
        .to_string();
    let param = |name: &str| wire::param(&pairs, name).map(str::to_string);
    let path = req.path();
    match path.as_str() {
        channel_path::MEMBER => MemberUpdate::from_query(&pairs)
            .map(Call::Member)
            .ok_or_else(|| Error::Internal("a membership update without user, joined and version".into())),
        channel_path::MEMBERS => Ok(Call::Members { limit: param("limit"), cursor: param("cursor"), channel }),
        channel_path::SNAPSHOT => Ok(Call::Snapshot { channel }),
        channel_path::PRESENCE => Ok(Call::Presence { limit: param("limit"), cursor: param("cursor"), channel }),
        channel_path::PRESENCE_RELAY => Ok(Call::PresenceRelay { path: param("path").unwrap_or_default(), channel }),
        channel_path::PUBLISH | channel_path::RELAY => {
            let relay_path = param("path").unwrap_or_default();
            let meta = PublishMeta::from_query(pairs)
                .ok_or_else(|| Error::Internal("a channel hop without a publish".into()))?;
            let idempotency_key = super::idempotency_key(req);
            Ok(if path == channel_path::RELAY {
                Call::Relay { channel, path: relay_path, meta, idempotency_key }
            } else {
                Call::Publish { channel, meta, idempotency_key }
            })
        }
        other => Err(Error::NotFound(format!("the channel has no route {other}"))),
    }
}

async fn send(env: &Env, name: &str, req: Request) -> Result<RawResponse, Error> {
    super::send(env, wire::CHANNEL_HUB_BINDING, name, req, "the channel").await
}

/// A non-200 answer from a channel object becomes the error it describes (429 stays 429: a full
/// channel; anything else is the channel being unavailable).
async fn check(res: RawResponse) -> Result<Response, Error> {
    let mut res = Response::from(res);
    let status = res.status_code();
    if status == 200 {
        return Ok(res);
    }
    let body: Value = res.json().await.unwrap_or_default();
    let message = body["message"].as_str().unwrap_or("the channel failed").to_string();
    Err(if status == 429 { Error::TooManyRequests(message) } else { Error::Unavailable(message) })
}

/// Tells a channel's root that a user has joined (its first connection) or left (its last), or now
/// watches its presence or not; returns the root's answer (`presence`: the snapshot, when asked).
pub async fn update_membership(env: &Env, update: &MemberUpdate) -> Result<Value, Error> {
    let url = wire::url("channel", channel_path::MEMBER, &wire::borrowed(&update.to_query()));
    let req = super::request(Method::Post, &url, None, None, None)?;
    let mut res = check(send(env, &root_name(&update.channel), req).await?).await?;
    Ok(res.json().await.unwrap_or_default())
}

/// The presence snapshot of a channel (for a presence join the root need not be told about).
pub async fn snapshot(env: &Env, channel: &str) -> Result<Value, Error> {
    let url = wire::url("channel", channel_path::SNAPSHOT, &[("channel", channel)]);
    let req = super::request(Method::Get, &url, None, None, None)?;
    let mut res = check(send(env, &root_name(channel), req).await?).await?;
    res.json().await.map_err(|e| Error::Unavailable(format!("the channel answered unreadably: {e}")))
}

/// `GET /channels/{channel}/presence`: one page of the channel's present users with their connection
/// counts, answered as it is.
pub async fn presence(
    env: &Env,
    channel: &str,
    limit: Option<&str>,
    cursor: Option<&str>,
    cors: Option<&str>,
) -> Result<RawResponse, Error> {
    page(env, channel_path::PRESENCE, channel, limit, cursor, cors).await
}

/// Hands a presence batch for `users` to the relay at `relay`; returns the users that no longer
/// watch, with the versions their hubs gave.
pub async fn presence_relay(
    env: &Env,
    channel: &str,
    relay: &str,
    users: &[String],
    frame: &js_sys::JsString,
) -> Result<Vec<(String, u64)>, Error> {
    let url = wire::url("channel", channel_path::PRESENCE_RELAY, &[("channel", channel), ("path", relay)]);
    let body = js_sys::JsString::from(wire::relay_head(users).as_str()).concat(frame);
    let req = super::request(Method::Post, &url, None, None, Some(body.into()))?;
    let mut res = check(send(env, &relay_name(channel, relay), req).await?).await?;
    res.json().await.map_err(|e| Error::Internal(format!("a relay answered unreadably: {e}")))
}

/// Publishes to every member of `meta.channel` and returns the root's answer as it is.
pub async fn publish(
    env: &Env,
    meta: &PublishMeta,
    payload: &js_sys::JsString,
    cors: Option<&str>,
    idempotency_key: Option<&str>,
) -> Result<RawResponse, Error> {
    let channel =
        meta.channel.as_deref().ok_or_else(|| Error::Internal("a channel publish without a channel".into()))?;
    let url = wire::url("channel", channel_path::PUBLISH, &wire::borrowed(&meta.to_query()));
    let req = super::request(Method::Post, &url, cors, idempotency_key, Some(payload.clone().into()))?;
    send(env, &root_name(channel), req).await
}

/// `GET /channels/{channel}/members`: one page of the channel's members, answered as it is.
pub async fn members(
    env: &Env,
    channel: &str,
    limit: Option<&str>,
    cursor: Option<&str>,
    cors: Option<&str>,
) -> Result<RawResponse, Error> {
    page(env, channel_path::MEMBERS, channel, limit, cursor, cors).await
}

/// One page of a list the root answers at `path` (`?channel`, `?limit`, `?cursor`), as it is.
async fn page(
    env: &Env,
    path: &str,
    channel: &str,
    limit: Option<&str>,
    cursor: Option<&str>,
    cors: Option<&str>,
) -> Result<RawResponse, Error> {
    let mut pairs = vec![("channel", channel)];
    pairs.extend(limit.map(|l| ("limit", l)));
    pairs.extend(cursor.map(|c| ("cursor", c)));
    let url = wire::url("channel", path, &pairs);
    send(env, &root_name(channel), super::request(Method::Get, &url, cors, None, None)?).await
}

/// Hands a slice of the members to the relay at `relay` (its position in the tree) and returns its
/// aggregate. `meta` carries the channel.
pub async fn relay(
    env: &Env,
    channel: &str,
    relay: &str,
    users: &[String],
    meta: &PublishMeta,
    payload: &js_sys::JsString,
    idempotency_key: Option<&str>,
) -> Result<Aggregate, Error> {
    let mut pairs = meta.to_query();
    pairs.push(("path", relay.to_string()));
    let url = wire::url("channel", channel_path::RELAY, &wire::borrowed(&pairs));
    // Concatenated in JS: the payload is not copied into wasm for a relay hop (review F2).
    let body = js_sys::JsString::from(wire::relay_head(users).as_str()).concat(payload);
    let req = super::request(Method::Post, &url, None, idempotency_key, Some(body.into()))?;
    let mut res = check(send(env, &relay_name(channel, relay), req).await?).await?;
    res.json::<Aggregate>().await.map_err(|e| Error::Internal(format!("a relay answered unreadably: {e}")))
}
