//! Calls to a user's hub (`UserHub`): from the Worker (connect, publish, ack, the connection API) and
//! from the fan-out of multi-user and channel publishes, and the hub's reading of them ([`read`]).

use super::wire::{self, user_path, Connect, NewTicket, PublishMeta};
use crate::core::error::Error;
use crate::core::query;
use wasm_bindgen::{JsCast, JsValue};
use web_sys::Response;
use worker::{Env, Method, Request};

/// What a hop asks of a user's hub.
pub enum Call {
    /// A WebSocket upgrade (a browser's socket, or the Worker's bridge for an SSE client).
    Connect(Connect),
    /// A `POST /ack` body, checked by the Worker.
    Ack,
    ListConnections,
    /// Close one connection, or all of them.
    Kick {
        connection_id: Option<String>,
    },
    /// Store a connect ticket (`POST /tickets` at the Worker).
    IssueTicket(NewTicket),
}

/// The hub's side: which call a hop is.
pub fn read(req: &Request) -> Result<Call, Error> {
    let path = req.path();
    let pairs = || query::pairs(&req.inner().url());
    match (path.as_str(), req.method()) {
        (user_path::CONNECT, _) => Connect::from_query(pairs())
            .map(Call::Connect)
            .ok_or_else(|| Error::Internal("the hop to the hub carried no user".into())),
        (user_path::ACK, _) => Ok(Call::Ack),
        (user_path::CONNECTIONS, Method::Get) => Ok(Call::ListConnections),
        (user_path::CONNECTIONS, Method::Delete) => {
            Ok(Call::Kick { connection_id: wire::param(&pairs(), "id").map(str::to_string) })
        }
        (user_path::TICKETS, Method::Post) => NewTicket::from_query(pairs())
            .map(Call::IssueTicket)
            .ok_or_else(|| Error::Internal("a ticket hop without a ticket".into())),
        (other, _) => Err(Error::NotFound(format!("the hub has no route {other}"))),
    }
}

async fn send(env: &Env, user_id: &str, req: Request) -> Result<Response, Error> {
    super::send(env, wire::USER_HUB_BINDING, user_id, req, "the user's hub").await
}

/// Hands a WebSocket upgrade to the user's hub.
///
/// The hop is `fetch(url, {headers: {upgrade: "websocket"}})` with one init object made once per
/// isolate: a `Request` and a `Headers` built from wasm cost the connect more than the rest of the
/// hop (see BENCHMARKS.md, "Connects").
pub async fn connect(env: &Env, c: &Connect) -> Result<Response, Error> {
    let url = wire::url("hub", user_path::CONNECT, &wire::borrowed(&c.to_query()));
    let init = crate::runtime::js::upgrade_init();
    super::send_url(env, wire::USER_HUB_BINDING, &c.user_id, &url, &init, "the user's hub").await
}

/// Stores a connect ticket in the user's hub. A refusal (429: too many unused tickets) comes back
/// as the error it is.
pub async fn issue_ticket(env: &Env, user_id: &str, ticket: &NewTicket) -> Result<(), Error> {
    let url = wire::url("hub", user_path::TICKETS, &wire::borrowed(&ticket.to_query()));
    let mut res =
        worker::Response::from(send(env, user_id, super::request(Method::Post, &url, None, None, None)?).await?);
    if res.status_code() == 200 {
        return Ok(());
    }
    let body: serde_json::Value = res.json().await.unwrap_or_default();
    let message = body["message"].as_str().unwrap_or("the user's hub refused the ticket").to_string();
    Err(match res.status_code() {
        429 => Error::TooManyRequests(message),
        _ => Error::Unavailable(message),
    })
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

/// Hands a checked publish to the user's hub over RPC (its `publish` method: no Request, no
/// Response, no Headers for the hop) and returns the hub's answer as `(status, JSON body)`.
/// `payload` is the payload's JSON text as a JS string, made once however many hubs get it.
pub async fn publish(
    env: &Env,
    meta: &PublishMeta,
    payload: &JsValue,
    idempotency_key: Option<&str>,
) -> Result<(u16, String), Error> {
    let (status, body) = publish_js(env, meta, payload, idempotency_key).await?;
    Ok((status, body.as_string().unwrap_or_default()))
}

/// [`publish`], with the answer's body left the JS string the hub made: the Worker hands it on in
/// its own Response without copying it into wasm and back.
pub async fn publish_js(
    env: &Env,
    meta: &PublishMeta,
    payload: &JsValue,
    idempotency_key: Option<&str>,
) -> Result<(u16, JsValue), Error> {
    let unavailable =
        |e: JsValue| Error::Unavailable(format!("the user's hub did not answer: {}", worker::Error::from(e)));
    let stub: super::RawStub = super::stub(env, wire::USER_HUB_BINDING, &meta.user_id)?;
    let promise = stub.publish(&meta.to_query_string(), payload, idempotency_key).map_err(unavailable)?;
    let answer: js_sys::Array =
        wasm_bindgen_futures::JsFuture::from(promise).await.map_err(unavailable)?.unchecked_into();
    let (status, body) = (answer.get(0).as_f64(), answer.get(1));
    match status {
        Some(status) if body.is_string() => Ok((status as u16, body)),
        _ => Err(Error::Unavailable("the user's hub answered with something unreadable".into())),
    }
}

/// Hands a checked `POST /ack` body to the user's hub and returns its answer as it is.
pub async fn ack(env: &Env, user_id: &str, body: Vec<u8>, cors: Option<&str>) -> Result<Response, Error> {
    let body: JsValue = js_sys::Uint8Array::from(body.as_slice()).into();
    let url = wire::url("hub", user_path::ACK, &[]);
    send(env, user_id, super::request(Method::Post, &url, cors, None, Some(body))?).await
}

/// Hands a channel's presence batch (`frame`, the frame's JSON text as a JS string, shared by every
/// hop) to the user's hub over RPC. `Ok(Some(version))`: none of the user's connections watches the
/// channel any more (the root stops sending to it unless a newer update says otherwise).
pub async fn presence(env: &Env, user_id: &str, channel: &str, frame: &JsValue) -> Result<Option<u64>, Error> {
    let unavailable =
        |e: JsValue| Error::Unavailable(format!("the user's hub did not answer: {}", worker::Error::from(e)));
    let stub: super::RawStub = super::stub(env, wire::USER_HUB_BINDING, user_id)?;
    let promise = stub.presence(channel, frame).map_err(unavailable)?;
    let answer = wasm_bindgen_futures::JsFuture::from(promise).await.map_err(unavailable)?;
    // A number is the version of "not watching"; anything else is "delivered".
    Ok(answer.as_f64().map(|v| v as u64))
}

/// How many of the user's connections have joined `channel` right now (0 while the user lingers).
pub async fn channel_connections(env: &Env, user_id: &str, channel: &str) -> Result<u64, Error> {
    let unavailable =
        |e: JsValue| Error::Unavailable(format!("the user's hub did not answer: {}", worker::Error::from(e)));
    let stub: super::RawStub = super::stub(env, wire::USER_HUB_BINDING, user_id)?;
    let promise = stub.channel_connections(channel).map_err(unavailable)?;
    let answer = wasm_bindgen_futures::JsFuture::from(promise).await.map_err(unavailable)?;
    answer.as_f64().map(|n| n as u64).ok_or_else(|| Error::Unavailable("the user's hub answered unreadably".into()))
}
