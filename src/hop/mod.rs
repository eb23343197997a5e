//! The internal hop: every call from the Worker to a Durable Object, and between objects (a user's hub
//! to a channel's root, the root to its relays, a relay to users' hubs). Both sides live here, so the
//! Worker and the object kinds never import each other to talk:
//! - [`wire`]: paths, headers and the encodings of each call's fields (pure, host-tested);
//! - [`user`]: calls to a user's hub, and the hub's reading of them;
//! - [`channel`]: calls to a channel's root and relays, and their reading of them;
//! - [`fanout`]: one publish (or one presence batch) to many users' hubs at once, each raced against
//!   its deadline (multi-user publish at the edge, and each leaf step of a channel's tree);
//! - [`events`]: handing webhook events to an event shard (`EventHub`), which sends many users'
//!   events in batches: the entry point for any role that emits presence webhooks.
//!
//! A hop is a `fetch` on the object's stub; objects are reachable only through this Worker, so a hop's
//! fields are trusted once the Worker has checked them.

pub mod wire;

#[cfg(target_arch = "wasm32")]
pub mod channel;
#[cfg(target_arch = "wasm32")]
pub mod events;
#[cfg(target_arch = "wasm32")]
pub mod fanout;
#[cfg(target_arch = "wasm32")]
pub mod user;

#[cfg(target_arch = "wasm32")]
use crate::core::error::Error;
#[cfg(target_arch = "wasm32")]
use worker::{Env, Headers, Method, Request};

#[cfg(target_arch = "wasm32")]
#[wasm_bindgen::prelude::wasm_bindgen]
extern "C" {
    /// A Durable Object stub as the runtime sees it: its `fetch` answers with the object's own
    /// `Response`, which the Worker can return as it is. (`worker::Stub::fetch_with_request` wraps it
    /// in a `worker::Response`, and handing that back builds a new `Response` around its body: a
    /// runtime object per request for nothing.)
    type RawStub;
    #[wasm_bindgen(method, catch, js_name = fetch)]
    fn fetch_raw(this: &RawStub, req: &web_sys::Request) -> Result<js_sys::Promise, wasm_bindgen::JsValue>;
    /// `fetch(url, init)`, the runtime making the request itself from a URL and a plain init object.
    #[wasm_bindgen(method, catch, js_name = fetch)]
    fn fetch_url(
        this: &RawStub,
        url: &str,
        init: &wasm_bindgen::JsValue,
    ) -> Result<js_sys::Promise, wasm_bindgen::JsValue>;
    /// `UserHub::publish_rpc`, over workerd's RPC.
    #[wasm_bindgen(method, catch)]
    fn publish(
        this: &RawStub,
        meta: &str,
        payload: &wasm_bindgen::JsValue,
        idempotency_key: Option<&str>,
    ) -> Result<js_sys::Promise, wasm_bindgen::JsValue>;
    /// `UserHub::presence_rpc`: a channel's presence batch for the user's watching connections.
    #[wasm_bindgen(method, catch)]
    fn presence(
        this: &RawStub,
        channel: &str,
        frame: &wasm_bindgen::JsValue,
    ) -> Result<js_sys::Promise, wasm_bindgen::JsValue>;
    /// `UserHub::channel_connections_rpc`: how many of the user's connections joined a channel.
    #[wasm_bindgen(method, catch, js_name = channelConnections)]
    fn channel_connections(this: &RawStub, channel: &str) -> Result<js_sys::Promise, wasm_bindgen::JsValue>;
}

/// The stub of the object named `name` in namespace `binding`.
#[cfg(target_arch = "wasm32")]
fn stub(env: &Env, binding: &str, name: &str) -> Result<RawStub, Error> {
    Ok(env.durable_object(binding)?.id_from_name(name)?.get_stub()?.into_rpc())
}

/// Fetches `req` from the object named `name` in namespace `binding`, and returns the object's
/// `Response` as it is; a failure to reach it is 503.
#[cfg(target_arch = "wasm32")]
async fn send(env: &Env, binding: &str, name: &str, req: Request, what: &str) -> Result<web_sys::Response, Error> {
    answer(stub(env, binding, name)?.fetch_raw(req.inner()), what).await
}

/// GETs `url` from the object named `name` with the init `init` (a plain JS object the runtime reads),
/// and returns the object's `Response` as it is; a failure to reach it is 503. No `Request` or
/// `Headers` object is made in wasm (see [`user::connect`]).
#[cfg(target_arch = "wasm32")]
async fn send_url(
    env: &Env,
    binding: &str,
    name: &str,
    url: &str,
    init: &wasm_bindgen::JsValue,
    what: &str,
) -> Result<web_sys::Response, Error> {
    answer(stub(env, binding, name)?.fetch_url(url, init), what).await
}

/// The object's `Response` to a stub's `fetch`, or 503 when it could not be reached.
#[cfg(target_arch = "wasm32")]
async fn answer(
    fetched: Result<js_sys::Promise, wasm_bindgen::JsValue>,
    what: &str,
) -> Result<web_sys::Response, Error> {
    use wasm_bindgen::JsCast;
    let unavailable =
        |e: wasm_bindgen::JsValue| Error::Unavailable(format!("{what} did not answer: {}", worker::Error::from(e)));
    let res = wasm_bindgen_futures::JsFuture::from(fetched.map_err(unavailable)?).await.map_err(unavailable)?;
    Ok(res.unchecked_into())
}

/// A hop request; `cors` and `idempotency_key` ride in their headers (see [`wire`]).
#[cfg(target_arch = "wasm32")]
fn request(
    method: Method,
    url: &str,
    cors: Option<&str>,
    idempotency_key: Option<&str>,
    body: Option<wasm_bindgen::JsValue>,
) -> Result<Request, Error> {
    let headers = Headers::new();
    if let Some(origin) = cors {
        headers.set(wire::CORS_HEADER, origin)?;
    }
    if let Some(key) = idempotency_key {
        headers.set(wire::IDEMPOTENCY_HEADER, key)?;
    }
    Ok(crate::runtime::http::new_request(method, url, &headers, body.as_ref())?)
}

/// The receiving side: the Worker's CORS decision carried by a hop, to answer with.
#[cfg(target_arch = "wasm32")]
pub fn cors(req: &Request) -> Option<String> {
    req.headers().get(wire::CORS_HEADER).ok().flatten()
}

/// The receiving side: the backend's `Idempotency-Key` carried by a hop.
#[cfg(target_arch = "wasm32")]
fn idempotency_key(req: &Request) -> Option<String> {
    req.headers().get(wire::IDEMPOTENCY_HEADER).ok().flatten()
}
