//! Calls to a user's hub (`UserHub`): from the Worker (connect, publish, ack, the connection API) and
//! from the fan-out of multi-user and channel publishes, and the hub's reading of them ([`read`]).

use super::wire::{self, user_path, Connect, PublishMeta};
use crate::core::error::Error;
use crate::core::query;
use worker::{Env, Headers, Method, Request, RequestInit, Response};

/// What a hop asks of a user's hub.
pub enum Call {
    /// A WebSocket upgrade (a browser's socket, or the Worker's bridge for an SSE client).
    Connect(Connect),
    /// A checked publish; the payload's JSON text is the request body.
    Publish {
        meta: PublishMeta,
        idempotency_key: Option<String>,
    },
    /// A `POST /ack` body, checked by the Worker.
    Ack,
    ListConnections,
    /// Close one connection, or all of them.
    Kick {
        connection_id: Option<String>,
    },
}

/// The hub's side: which call a hop is.
pub fn read(req: &Request) -> Result<Call, Error> {
    let path = req.path();
    let pairs = || query::pairs(&req.inner().url());
    match (path.as_str(), req.method()) {
        (user_path::CONNECT, _) => Connect::from_query(pairs())
            .map(Call::Connect)
            .ok_or_else(|| Error::Internal("the hop to the hub carried no user".into())),
        (user_path::PUBLISH, _) => {
            let meta = PublishMeta::from_query(pairs())
                .ok_or_else(|| Error::Internal("the hop to the hub carried no publish".into()))?;
            Ok(Call::Publish { meta, idempotency_key: super::idempotency_key(req) })
        }
        (user_path::ACK, _) => Ok(Call::Ack),
        (user_path::CONNECTIONS, Method::Get) => Ok(Call::ListConnections),
        (user_path::CONNECTIONS, Method::Delete) => {
            Ok(Call::Kick { connection_id: wire::param(&pairs(), "id").map(str::to_string) })
        }
        (other, _) => Err(Error::NotFound(format!("the hub has no route {other}"))),
    }
}

async fn send(env: &Env, user_id: &str, req: Request) -> Result<Response, Error> {
    super::send(env, wire::USER_HUB_BINDING, user_id, req, "the user's hub").await
}

/// Hands a WebSocket upgrade to the user's hub.
pub async fn connect(env: &Env, c: &Connect) -> Result<Response, Error> {
    let url = wire::url("hub", user_path::CONNECT, &wire::borrowed(&c.to_query()));
    let headers = Headers::new();
    headers.set("upgrade", "websocket")?;
    let mut init = RequestInit::new();
    init.with_method(Method::Get).with_headers(headers);
    send(env, &c.user_id, Request::new_with_init(&url, &init)?).await
}

/// `GET` or `DELETE` the user's connections (`connection_id` narrows a DELETE to one).
pub async fn connections(
    env: &Env,
    method: Method,
    user_id: &str,
    connection_id: Option<&str>,
    cors: Option<&str>,
) -> Result<Response, Error> {
    let pairs: Vec<(&str, &str)> = connection_id.map(|id| ("id", id)).into_iter().collect();
    let url = wire::url("hub", user_path::CONNECTIONS, &pairs);
    send(env, user_id, super::request(method, &url, cors, None, None)?).await
}

/// Hands a checked publish to the user's hub: its fields in the URL, the payload's JSON text as the
/// body, and returns the hub's answer as it is.
pub async fn publish(
    env: &Env,
    meta: &PublishMeta,
    payload: &js_sys::JsString,
    cors: Option<&str>,
    idempotency_key: Option<&str>,
) -> Result<Response, Error> {
    let url = wire::url("hub", user_path::PUBLISH, &wire::borrowed(&meta.to_query()));
    let req = super::request(Method::Post, &url, cors, idempotency_key, Some(payload.clone().into()))?;
    send(env, &meta.user_id, req).await
}

/// Hands a checked `POST /ack` body to the user's hub and returns its answer as it is.
pub async fn ack(env: &Env, user_id: &str, body: Vec<u8>, cors: Option<&str>) -> Result<Response, Error> {
    let headers = Headers::new();
    headers.set("content-type", "application/json")?;
    if let Some(origin) = cors {
        headers.set(wire::CORS_HEADER, origin)?;
    }
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_headers(headers)
        .with_body(Some(js_sys::Uint8Array::from(body.as_slice()).into()));
    let url = wire::url("hub", user_path::ACK, &[]);
    send(env, user_id, Request::new_with_init(&url, &init)?).await
}
