//! The Worker entry point. It authenticates, routes and hops to the user's hub; it keeps no state.
//!
//! | route | method | what |
//! |---|---|---|
//! | any path with `Upgrade: websocket` | GET | connect (token needs `userId`) |
//! | `/publish` | POST | publish to a user (token needs the `publish` scope) |
//! | `/sse` | GET | Server-Sent Events stream (token needs `userId`) |
//! | `/ack` | POST | acknowledge a delivery over HTTP (SSE clients; token needs `userId`) |
//! | `/users/{userId}/connections` | GET, DELETE | list or close a user's connections (`publish` scope) |
//! | `/users/{userId}/connections/{connectionId}` | DELETE | close one connection (`publish` scope) |
//! | `/channels/{channel}/members` | GET | a page of a channel's members (`publish` scope) |
//! | `/healthz` | GET, HEAD | liveness, no token |
//! | any | OPTIONS | CORS preflight |

use crate::auth::{self, Identity};
use crate::config::{Config, PublishAuth};
use crate::error::Error;
use crate::hub::{ConnectOptions, Transport};
use crate::protocol::Recipients;
use crate::{channel_hub, http, hub, log, multi, protocol, sse, ws};
use serde_json::json;
use std::cell::OnceCell;
use std::rc::Rc;
use worker::{event, Context, Date, Env, Method, Request, Response};

thread_local! {
    /// Tokens verified in this isolate (see [`auth::TokenCache`]).
    static TOKENS: std::cell::RefCell<auth::TokenCache> = std::cell::RefCell::default();
    /// Settings are fixed for the life of an isolate (a deploy or a `.dev.vars` edit starts a new
    /// one), so they are parsed once instead of on every request.
    static SETTINGS: OnceCell<Result<Rc<Config>, String>> = const { OnceCell::new() };
}

/// The parsed settings, or 500 `server_misconfigured` naming the bad setting.
pub fn settings(env: &Env) -> Result<Rc<Config>, Error> {
    SETTINGS.with(|cell| {
        cell.get_or_init(|| Config::from_lookup(|name| env.var(name).ok().map(|v| v.to_string())).map(Rc::new))
            .clone()
            .map_err(Error::Misconfigured)
    })
}

#[event(fetch)]
pub async fn fetch(req: Request, env: Env, _ctx: Context) -> worker::Result<Response> {
    let config = match settings(&env) {
        Ok(c) => c,
        Err(e) => {
            log::error("misconfigured", json!({ "message": e.to_string() }));
            return http::error(&e, Some("*"));
        }
    };
    let origin = req.headers().get("origin").ok().flatten();
    let cors = config.cors_origins.allow(origin.as_deref());
    let method = req.method();
    let path = req.path();
    match route(req, &env, &config, cors.as_deref()).await {
        Ok(response) => Ok(response),
        Err(e) => {
            let fields = json!({
                "method": method.as_ref(), "path": path, "status": e.status(), "code": e.code(),
                "message": e.to_string(),
            });
            if e.status() >= 500 {
                log::error("request_failed", fields);
            } else {
                log::info("request_refused", fields);
            }
            http::error(&e, cors.as_deref())
        }
    }
}

async fn route(req: Request, env: &Env, config: &Config, cors: Option<&str>) -> Result<Response, Error> {
    let method = req.method();
    if method == Method::Options {
        return Ok(http::preflight(cors)?);
    }
    if ws::is_upgrade(&req) {
        if method != Method::Get {
            return Err(Error::MethodNotAllowed { method: method.to_string(), allow: "GET" });
        }
        return connect(req, env, config).await;
    }
    let path = req.path();
    match (path.as_str(), method) {
        ("/publish", Method::Post) => publish(req, env, config, cors).await,
        ("/publish", m) => Err(Error::MethodNotAllowed { method: m.to_string(), allow: "POST, OPTIONS" }),
        ("/sse", Method::Get) => open_sse(req, env, config, cors).await,
        ("/sse", m) => Err(Error::MethodNotAllowed { method: m.to_string(), allow: "GET, OPTIONS" }),
        ("/ack", Method::Post) => ack(req, env, config, cors).await,
        ("/ack", m) => Err(Error::MethodNotAllowed { method: m.to_string(), allow: "POST, OPTIONS" }),
        ("/healthz", Method::Get | Method::Head) => Ok(http::json(200, r#"{"status":"ok"}"#.into(), cors)?),
        ("/healthz", m) => Err(Error::MethodNotAllowed { method: m.to_string(), allow: "GET, HEAD" }),
        (p, m) if p.starts_with("/users/") => connection_api(req, env, config, cors, m).await,
        (p, m) if p.starts_with("/channels/") => channel_api(req, env, config, cors, m).await,
        ("/", Method::Get) => Err(Error::UpgradeRequired),
        ("/", m) => Err(Error::MethodNotAllowed { method: m.to_string(), allow: "GET, OPTIONS" }),
        _ => Err(Error::NotFound(format!("there is no route {path}"))),
    }
}

/// Verifies the request's token (Bearer header first, then `?token=`).
fn authenticate(req: &Request, config: &Config) -> Result<Identity, Error> {
    let header = req.headers().get("authorization").ok().flatten();
    let query = crate::query::param(&req.inner().url(), "token");
    let token = auth::token_from(header.as_deref(), query.as_deref()).ok_or(Error::MissingToken)?;
    let now = Date::now().as_millis() as i64;
    TOKENS.with(|cache| cache.borrow_mut().verify(token, &config.jwt_secrets, now))
}

/// The connecting user: the token's `userId` claim.
fn connecting_user(identity: &Identity) -> Result<String, Error> {
    let user_id = identity
        .user_id
        .clone()
        .ok_or_else(|| Error::InvalidToken("the token has no `userId` claim (a non-empty string)".into()))?;
    auth::check_user_id(&user_id).map_err(Error::InvalidToken)?;
    Ok(user_id)
}

async fn connect(req: Request, env: &Env, config: &Config) -> Result<Response, Error> {
    let identity = authenticate(&req, config)?;
    let user_id = connecting_user(&identity)?;
    let options = ConnectOptions {
        expires_at_ms: identity.expires_at_ms,
        transport: Transport::WebSocket,
        filters: None,
        since: None,
        channels: identity.channels.to_text(),
        publish_channels: identity.publish_channels.to_text(),
    };
    hub::connect(env, &user_id, options).await
}

async fn open_sse(req: Request, env: &Env, config: &Config, cors: Option<&str>) -> Result<Response, Error> {
    let identity = authenticate(&req, config)?;
    let user_id = connecting_user(&identity)?;
    let url = req.inner().url();
    let param = |name: &str| crate::query::param(&url, name);
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
    let options = ConnectOptions {
        expires_at_ms: identity.expires_at_ms,
        transport: Transport::Sse,
        filters: Some(&filters),
        since,
        channels: String::new(),
        publish_channels: String::new(),
    };
    sse::open(env, &user_id, options, config.sse_keepalive_seconds, cors, Some(req.inner().signal())).await
}

/// Reads a JSON body under the size limit, after the content-type check.
async fn json_body(req: &mut Request, config: &Config) -> Result<Vec<u8>, Error> {
    if !http::is_json(req) {
        return Err(Error::UnsupportedMediaType);
    }
    http::read_body(req, config.max_publish_bytes).await
}

async fn ack(mut req: Request, env: &Env, config: &Config, cors: Option<&str>) -> Result<Response, Error> {
    let identity = authenticate(&req, config)?;
    let user_id = connecting_user(&identity)?;
    let body = json_body(&mut req, config).await?;
    protocol::parse_ack(&body)?;
    hub::ack(env, &user_id, body, cors).await
}

/// Backend endpoints need the `publish` scope (or any valid token with `PUBLISH_AUTH=any-token`).
fn authorize_backend(req: &Request, config: &Config) -> Result<Identity, Error> {
    let identity = authenticate(req, config)?;
    if config.publish_auth == PublishAuth::Scope && !identity.can_publish {
        return Err(Error::Forbidden(
            "this needs a token whose `scope` claim contains `publish` (PUBLISH_AUTH=any-token restores HopeFlow's any-token behaviour)".into(),
        ));
    }
    Ok(identity)
}

/// A path's segments, percent-decoded.
fn path_segments(path: &str) -> Vec<String> {
    path.trim_start_matches('/')
        .split('/')
        .map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect()
}

/// `/users/{userId}/connections[/{connectionId}]`: `GET` lists, `DELETE` closes with 4002.
async fn connection_api(
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
    authorize_backend(&req, config)?;
    auth::check_user_id(&user_id).map_err(|m| Error::bad_request("invalid_user_id", m))?;
    hub::connections(env, method, &user_id, connection_id.as_deref(), cors).await
}

async fn publish(mut req: Request, env: &Env, config: &Config, cors: Option<&str>) -> Result<Response, Error> {
    authorize_backend(&req, config)?;
    let idempotency_key = req.headers().get("idempotency-key").ok().flatten();
    if let Some(key) = &idempotency_key {
        protocol::check_idempotency_key(key)?;
    }
    let body = json_body(&mut req, config).await?;
    // Checked here, once: the hub trusts this hop (Durable Objects are reachable only through
    // this Worker) and never parses the payload itself.
    let p = protocol::parse_publish(&body)?;
    match &p.recipients {
        Recipients::One(user_id) => {
            let meta = protocol::PublishMeta::from_request(&p, user_id, &body);
            hub::publish(env, &meta, p.payload.get(), cors, idempotency_key.as_deref()).await
        }
        Recipients::Many(users) => {
            multi::publish(env, config, &p, users, &body, cors, idempotency_key.as_deref()).await
        }
        Recipients::Channel(_) => {
            let meta = protocol::PublishMeta::from_request(&p, "", &body);
            channel_hub::publish(env, &meta, p.payload.get(), cors, idempotency_key.as_deref()).await
        }
    }
}

/// `/channels/{channel}/members`: `GET` lists a page (`?limit=`, `?cursor=`).
async fn channel_api(
    req: Request,
    env: &Env,
    config: &Config,
    cors: Option<&str>,
    method: Method,
) -> Result<Response, Error> {
    let path = req.path();
    let segments = path_segments(&path);
    let channel = match segments.as_slice() {
        [channels, channel, members] if channels == "channels" && members == "members" => channel.clone(),
        _ => return Err(Error::NotFound(format!("there is no route {path}"))),
    };
    if method != Method::Get {
        return Err(Error::MethodNotAllowed { method: method.to_string(), allow: "GET, OPTIONS" });
    }
    authorize_backend(&req, config)?;
    crate::channel::check_name(&channel).map_err(|m| Error::bad_request("invalid_channel", m))?;
    let url = req.inner().url();
    let (limit, cursor) = (crate::query::param(&url, "limit"), crate::query::param(&url, "cursor"));
    channel_hub::members(env, &channel, limit.as_deref(), cursor.as_deref(), cors).await
}
