//! The Worker's routes: each checks its caller and its input, then hops to the object that serves it.

use super::auth::{
    authenticate, authorize_backend, connect_credential, connect_token, connecting_user, scope_needed, Credential,
};
use super::{multi, sse};
use crate::core::config::Config;
use crate::core::error::Error;
use crate::core::protocol::{self, Recipients, Transport};
use crate::hop::wire::{Connect, NewTicket, PublishMeta};
use crate::hop::{channel, user};
use crate::runtime::{http, metrics};
use web_sys::Response;
use worker::{Env, Method, Request};

/// A connect's fields for the hop: from the token, or (a ticket) from what the hub stored with it.
fn connect_for(user_id: String, credential: Credential, transport: Transport) -> Connect {
    let mut connect = Connect {
        user_id,
        expires_at_ms: None,
        transport,
        filters: None,
        since: None,
        channels: Default::default(),
        publish_channels: Default::default(),
        presence: None,
        ticket: None,
    };
    match credential {
        Credential::Token(identity) => {
            connect.expires_at_ms = identity.expires_at_ms;
            // SSE clients cannot join channels (no upstream frames).
            if transport == Transport::WebSocket {
                connect.channels = identity.channels;
                connect.publish_channels = identity.publish_channels;
                connect.presence = identity.presence;
            }
        }
        Credential::Ticket(hash) => connect.ticket = Some(hash),
    }
    connect
}

pub(super) async fn connect(req: Request, env: &Env, config: &Config) -> Result<Response, Error> {
    let (credential, user_id) = connect_credential(&req, config)?;
    user::connect(env, &connect_for(user_id, credential, Transport::WebSocket)).await
}

/// `GET /metrics`: this isolate's counters in the Prometheus text format (`publish` scope). Per
/// isolate since it started: see `runtime::metrics` and the README's "Metrics".
pub(super) fn metrics(req: &Request, config: &Config, cors: Option<&str>) -> Result<Response, Error> {
    authorize_backend(req, config, false)?;
    let headers = http::json_headers(cors);
    headers.set("content-type", "text/plain; version=0.0.4; charset=utf-8")?;
    let body = worker::ResponseBody::Body(metrics::prometheus().into_bytes());
    Ok(worker::Response::from_body(body)?.with_headers(headers).into())
}

/// `POST /tickets`: trades a connect token (in the `Authorization` header) for a one-time ticket valid
/// for `TICKET_SECONDS`, so the token itself never goes in a URL. The ticket's secret is random; the
/// user's hub stores only its hash, with the token's checked claims.
pub(super) async fn issue_ticket(
    req: Request,
    env: &Env,
    config: &Config,
    cors: Option<&str>,
) -> Result<Response, Error> {
    let (identity, user_id) = connect_token(&req, config)?;
    let mut secret = [0u8; crate::core::ticket::SECRET_BYTES];
    getrandom::fill(&mut secret).map_err(|e| Error::Internal(format!("no randomness: {e}")))?;
    let ticket = NewTicket {
        hash: crate::core::ticket::hash(&secret),
        expires_at_ms: identity.expires_at_ms,
        channels: identity.channels,
        publish_channels: identity.publish_channels,
        presence: identity.presence,
    };
    user::issue_ticket(env, &user_id, &ticket).await?;
    let body = serde_json::json!({
        "ticket": crate::core::ticket::make(&user_id, &secret), "expiresIn": config.ticket_seconds,
    });
    Ok(http::respond(200, &body.to_string().into(), cors))
}

pub(super) async fn open_sse(req: Request, env: &Env, config: &Config, cors: Option<&str>) -> Result<Response, Error> {
    let (credential, user_id) = connect_credential(&req, config)?;
    let url = req.inner().url();
    let param = |name: &str| crate::core::query::param(&url, name);
    let filters = param("filters").unwrap_or_else(|| "[]".into());
    if filters.len() > sse::MAX_FILTERS_PARAM_BYTES {
        return Err(Error::bad_request(
            "invalid_filters",
            format!("`filters` is longer than {} bytes", sse::MAX_FILTERS_PARAM_BYTES),
        ));
    }
    match serde_json::from_str::<serde_json::Value>(&filters) {
        Ok(serde_json::Value::Array(_)) => {}
        _ => {
            return Err(Error::bad_request(
                "invalid_filters",
                "`filters` must be a URL-encoded JSON array of filter objects",
            ))
        }
    }
    let last_event_id = req.headers().get("last-event-id").ok().flatten();
    let query_since = param("lastEventId").or_else(|| param("since"));
    let since = sse::since(last_event_id.as_deref(), query_since.as_deref())?;
    let mut connect = connect_for(user_id, credential, Transport::Sse);
    connect.filters = Some(filters);
    connect.since = since;
    let (keepalive, max_queued) = (config.sse_keepalive_seconds, config.sse_queue_max_bytes);
    sse::open(env, &connect, keepalive, max_queued, cors, Some(req.inner().signal())).await
}

/// Reads a JSON body under the size limit, after the content-type check.
async fn json_body(req: &mut Request, config: &Config) -> Result<Vec<u8>, Error> {
    if !http::is_json(req) {
        return Err(Error::UnsupportedMediaType);
    }
    http::read_body(req, config.max_publish_bytes).await
}

pub(super) async fn ack(mut req: Request, env: &Env, config: &Config, cors: Option<&str>) -> Result<Response, Error> {
    let identity = authenticate(&req, config)?;
    let user_id = connecting_user(&identity)?;
    let body = json_body(&mut req, config).await?;
    let ack = protocol::parse_ack(&body)?;
    if ack.result.is_some_and(|r| r.get().len() > config.ack_result_max_bytes) {
        return Err(Error::ResultTooLarge { limit: config.ack_result_max_bytes });
    }
    user::ack(env, &user_id, body, cors).await
}

/// A path's segments, percent-decoded.
fn path_segments(path: &str) -> Vec<String> {
    path.trim_start_matches('/')
        .split('/')
        .map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect()
}

/// `/users/{userId}/connections[/{connectionId}]`: `GET` lists, `DELETE` closes with 4002.
pub(super) async fn connection_api(
    req: Request,
    env: &Env,
    config: &Config,
    cors: Option<&str>,
    method: Method,
) -> Result<Response, Error> {
    let path = req.path();
    let segments = path_segments(&path);
    let (user_id, connection_id) = match segments.as_slice() {
        [users, user, conns] if users == "users" && conns == "connections" => (user.clone(), None),
        [users, user, conns, id] if users == "users" && conns == "connections" && !id.is_empty() => {
            (user.clone(), Some(id.clone()))
        }
        _ => return Err(Error::NotFound(format!("there is no route {path}"))),
    };
    let allow = if connection_id.is_some() { "DELETE, OPTIONS" } else { "GET, DELETE, OPTIONS" };
    match (&method, &connection_id) {
        (Method::Get, None) | (Method::Delete, _) => {}
        _ => return Err(Error::MethodNotAllowed { method: method.to_string(), allow }),
    }
    authorize_backend(&req, config, false)?;
    crate::core::auth::check_user_id(&user_id).map_err(|m| Error::bad_request("invalid_user_id", m))?;
    user::connections(env, method, &user_id, connection_id.as_deref(), cors).await
}

pub(super) async fn publish(
    mut req: Request,
    env: &Env,
    config: &Config,
    cors: Option<&str>,
) -> Result<Response, Error> {
    let identity = authorize_backend(&req, config, true)?;
    let idempotency_key = req.headers().get("idempotency-key").ok().flatten();
    if let Some(key) = &idempotency_key {
        protocol::check_idempotency_key(key)?;
    }
    let body = json_body(&mut req, config).await?;
    // Checked here, once: the hub trusts this hop (Durable Objects are reachable only through
    // this Worker) and never parses the payload itself.
    let p = protocol::parse_publish(&body)?;
    if !identity.can_publish && !matches!(p.recipients, Recipients::One(_)) {
        return Err(scope_needed()); // PUBLISH_AUTH=any-token: one `userId` only
    }
    metrics::publish(&p.recipients);
    match &p.recipients {
        Recipients::One(user_id) => {
            let meta = PublishMeta::from_request(&p, user_id, &body, idempotency_key.is_some());
            let payload = wasm_bindgen::JsValue::from_str(p.payload.get());
            let (status, answer) = user::publish_js(env, &meta, &payload, idempotency_key.as_deref()).await?;
            Ok(http::respond(status, &answer, cors))
        }
        Recipients::Many(users) => {
            multi::publish(env, config, &p, users, &body, cors, idempotency_key.as_deref()).await
        }
        Recipients::Channel(_) => {
            let meta = PublishMeta::from_request(&p, "", &body, idempotency_key.is_some());
            let payload = js_sys::JsString::from(p.payload.get());
            Ok(channel::publish(env, &meta, &payload, cors, idempotency_key.as_deref()).await?)
        }
    }
}

/// `/channels/{channel}/members` and `/channels/{channel}/presence`: `GET` lists a page (`?limit=`,
/// `?cursor=`).
pub(super) async fn channel_api(
    req: Request,
    env: &Env,
    config: &Config,
    cors: Option<&str>,
    method: Method,
) -> Result<Response, Error> {
    let path = req.path();
    let segments = path_segments(&path);
    let (channel, presence) = match segments.as_slice() {
        [channels, channel, what] if channels == "channels" && (what == "members" || what == "presence") => {
            (channel.clone(), what == "presence")
        }
        _ => return Err(Error::NotFound(format!("there is no route {path}"))),
    };
    if method != Method::Get {
        return Err(Error::MethodNotAllowed { method: method.to_string(), allow: "GET, OPTIONS" });
    }
    authorize_backend(&req, config, false)?;
    crate::core::channel::check_name(&channel).map_err(|m| Error::bad_request("invalid_channel", m))?;
    let url = req.inner().url();
    let (limit, cursor) = (crate::core::query::param(&url, "limit"), crate::core::query::param(&url, "cursor"));
    if presence {
        return channel::presence(env, &channel, limit.as_deref(), cursor.as_deref(), cors).await;
    }
    channel::members(env, &channel, limit.as_deref(), cursor.as_deref(), cors).await
}
