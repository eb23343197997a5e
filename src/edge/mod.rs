//! The edge: the Worker's entry point. It authenticates ([`auth`]), routes, checks what it is sent
//! ([`handlers`]) and hops to the objects through [`crate::hop`]; it keeps no state. Server-Sent Events
//! are bridged here ([`sse`]), and multi-user publishes fanned out here ([`multi`]).
//!
//! | route | method | what |
//! |---|---|---|
//! | any path with `Upgrade: websocket` | GET | connect (token needs `userId`, or `?ticket=`) |
//! | `/publish` | POST | publish to a user (token needs the `publish` scope) |
//! | `/sse` | GET | Server-Sent Events stream (token needs `userId`) |
//! | `/ack` | POST | acknowledge a delivery over HTTP (SSE clients; token needs `userId`) |
//! | `/tickets` | POST | a one-time connect ticket for `?ticket=` (token needs `userId`) |
//! | `/users/{userId}/connections` | GET, DELETE | list or close a user's connections (`publish` scope) |
//! | `/users/{userId}/connections/{connectionId}` | DELETE | close one connection (`publish` scope) |
//! | `/channels/{channel}/members` | GET | a page of a channel's members (`publish` scope) |
//! | `/channels/{channel}/presence` | GET | a page of a channel's present users, with data and connection counts (`publish` scope) |
//! | `/metrics` | GET | this isolate's counters in Prometheus text (`publish` scope) |
//! | `/healthz` | GET, HEAD | liveness, no token |
//! | any | OPTIONS | CORS preflight |

mod auth;
mod handlers;
mod multi;
mod sse;

use crate::core::config::Config;
use crate::core::error::Error;
use crate::runtime::{http, log, metrics, settings};
use futures_util::future::{self, FutureExt, LocalBoxFuture};
use worker::{event, Context, Env, Method, Request};

#[event(fetch)]
pub async fn fetch(req: Request, env: Env, _ctx: Context) -> worker::Result<web_sys::Response> {
    crate::runtime::js::install_fast_microtasks();
    let config = match settings::get(&env) {
        Ok(c) => c,
        Err(e) => {
            log::error!("misconfigured", "message" => e.to_string());
            return Ok(http::error_response(&e, Some("*")));
        }
    };
    let origin = req.headers().get("origin").ok().flatten();
    let cors = config.cors_origins.allow(origin.as_deref());
    let method = req.method();
    let path = req.path();
    // The Analytics Engine data point of a publish or a connect (only when `METRICS` is bound).
    let point = metrics::clock(&env).and_then(|t| metrics::edge_event(&path, is_upgrade(&req)).map(|e| (t, e)));
    let answer = route(req, &env, &config, cors.as_deref()).await;
    if let Some((started, (event, label))) = point {
        metrics::record(&env, Some(started), event, label, answer.as_ref().map_or_else(Error::status, |r| r.status()));
    }
    match answer {
        Ok(response) => Ok(response),
        Err(e) => {
            let failed = e.status() >= 500;
            let line = log::Line::new(if failed { "request_failed" } else { "request_refused" })
                .field("method", method.as_ref())
                .field("path", &path)
                .field("status", &e.status())
                .field("code", e.code())
                .field("message", &e.to_string());
            if failed {
                log::write_error(line);
            } else {
                log::write_info(line);
            }
            Ok(http::error_response(&e, cors.as_deref()))
        }
    }
}

/// A handler's answer, as a boxed future of its own. Each route's state machine is then a function of
/// its own in the wasm, which V8 compiles (lazily, on first call) only when that route is first used,
/// instead of one state machine holding every route's that the first request of a cold isolate
/// compiles whole.
type Answer<'a> = LocalBoxFuture<'a, Result<web_sys::Response, Error>>;

fn route<'a>(req: Request, env: &'a Env, config: &'a Config, cors: Option<&'a str>) -> Answer<'a> {
    let method = req.method();
    if method == Method::Options {
        return ready(http::preflight(cors).map(Into::into).map_err(Error::from));
    }
    if is_upgrade(&req) {
        if method != Method::Get {
            return ready(Err(Error::MethodNotAllowed { method: method.to_string(), allow: "GET" }));
        }
        return handlers::connect(req, env, config).boxed_local();
    }
    let path = req.path();
    match (path.as_str(), method) {
        ("/publish", Method::Post) => handlers::publish(req, env, config, cors).boxed_local(),
        ("/publish", m) => ready(Err(Error::MethodNotAllowed { method: m.to_string(), allow: "POST, OPTIONS" })),
        ("/sse", Method::Get) => handlers::open_sse(req, env, config, cors).boxed_local(),
        ("/sse", m) => ready(Err(Error::MethodNotAllowed { method: m.to_string(), allow: "GET, OPTIONS" })),
        ("/ack", Method::Post) => handlers::ack(req, env, config, cors).boxed_local(),
        ("/ack", m) => ready(Err(Error::MethodNotAllowed { method: m.to_string(), allow: "POST, OPTIONS" })),
        ("/tickets", Method::Post) => handlers::issue_ticket(req, env, config, cors).boxed_local(),
        ("/tickets", m) => ready(Err(Error::MethodNotAllowed { method: m.to_string(), allow: "POST, OPTIONS" })),
        ("/metrics", Method::Get) => ready(handlers::metrics(&req, config, cors)),
        ("/metrics", m) => ready(Err(Error::MethodNotAllowed { method: m.to_string(), allow: "GET, OPTIONS" })),
        ("/healthz", Method::Get | Method::Head) => ready(Ok(http::respond(200, &r#"{"status":"ok"}"#.into(), cors))),
        ("/healthz", m) => ready(Err(Error::MethodNotAllowed { method: m.to_string(), allow: "GET, HEAD" })),
        (p, m) if p.starts_with("/users/") => handlers::connection_api(req, env, config, cors, m).boxed_local(),
        (p, m) if p.starts_with("/channels/") => handlers::channel_api(req, env, config, cors, m).boxed_local(),
        ("/", Method::Get) => ready(Err(Error::UpgradeRequired)),
        ("/", m) => ready(Err(Error::MethodNotAllowed { method: m.to_string(), allow: "GET, OPTIONS" })),
        _ => ready(Err(Error::NotFound(format!("there is no route {path}")))),
    }
}

/// An answer known without waiting.
fn ready<'a>(answer: Result<web_sys::Response, Error>) -> Answer<'a> {
    future::ready(answer).boxed_local()
}

/// Whether the request asks for a WebSocket upgrade.
fn is_upgrade(req: &Request) -> bool {
    matches!(req.headers().get("upgrade"), Ok(Some(v)) if v.eq_ignore_ascii_case("websocket"))
}
