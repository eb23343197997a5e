//! HTTP plumbing shared by the Worker and the hub: JSON responses with CORS headers, the preflight
//! answer, and reading a request body without ever holding more than the limit.

use crate::core::error::Error;
use futures_util::StreamExt;
use worker::{Headers, Request, Response};

/// A runtime call that failed (storage, a stub, a header) is an internal error: 500 with its message.
impl From<worker::Error> for Error {
    fn from(e: worker::Error) -> Self {
        Error::Internal(e.to_string())
    }
}

/// A `Request` for `fetch` (a hop to an object, a webhook): one JS init object with the method, the
/// headers and the body. `worker::Request::new_with_init` also converts its `RequestInit` through
/// serde (with Cloudflare's `cf` options: image resizing and the rest), about 12 KB of wasm for
/// fields Switchboard never sets.
pub fn new_request(
    method: worker::Method,
    url: &str,
    headers: &Headers,
    body: Option<&wasm_bindgen::JsValue>,
) -> worker::Result<Request> {
    let init = web_sys::RequestInit::new();
    init.set_method(method.as_ref());
    init.set_headers(&headers.0);
    if let Some(body) = body {
        init.set_body(body);
    }
    Ok(Request::from(web_sys::Request::new_with_str_and_init(url, &init)?))
}

/// Methods and headers a browser may use cross-origin.
const ALLOW_METHODS: &str = "GET, POST, DELETE, OPTIONS";
const ALLOW_HEADERS: &str = "Authorization, Content-Type, Idempotency-Key";

/// Headers for a JSON response; `cors` is the `access-control-allow-origin` value, if any.
pub fn json_headers(cors: Option<&str>) -> Headers {
    let h = Headers::new();
    let _ = h.set("content-type", "application/json; charset=utf-8");
    let _ = h.set("cache-control", "no-store");
    add_cors(&h, cors);
    h
}

fn add_cors(h: &Headers, cors: Option<&str>) {
    if let Some(origin) = cors {
        let _ = h.set("access-control-allow-origin", origin);
        let _ = h.set("access-control-expose-headers", "content-type");
        if origin != "*" {
            let _ = h.set("vary", "Origin");
        }
    }
}

/// A JSON response with `status` and an already-serialized body.
pub fn json(status: u16, body: String, cors: Option<&str>) -> worker::Result<Response> {
    Ok(Response::from_body(worker::ResponseBody::Body(body.into_bytes()))?
        .with_status(status)
        .with_headers(json_headers(cors)))
}

/// The error as `{"error", "message"}` with its status.
pub fn error(e: &Error, cors: Option<&str>) -> worker::Result<Response> {
    let mut r = json(e.status(), e.body(), cors)?;
    if let Error::MethodNotAllowed { allow, .. } = e {
        r.headers_mut().set("allow", allow)?;
    }
    Ok(r)
}

/// A JSON response made by the runtime in one call, for the Worker's own answers (see
/// [`crate::runtime::js::json_response`]); `body` is JSON text, as a JS string when it came from a hop.
pub fn respond(status: u16, body: &wasm_bindgen::JsValue, cors: Option<&str>) -> web_sys::Response {
    crate::runtime::js::json_response(status, body, cors, None)
}

/// [`error`] for the Worker, made as [`respond`] makes its answers.
pub fn error_response(e: &Error, cors: Option<&str>) -> web_sys::Response {
    let allow = match e {
        Error::MethodNotAllowed { allow, .. } => Some(*allow),
        _ => None,
    };
    crate::runtime::js::json_response(e.status(), &wasm_bindgen::JsValue::from_str(&e.body()), cors, allow)
}

/// The CORS preflight answer (204).
pub fn preflight(cors: Option<&str>) -> worker::Result<Response> {
    let h = Headers::new();
    add_cors(&h, cors);
    h.set("access-control-allow-methods", ALLOW_METHODS)?;
    h.set("access-control-allow-headers", ALLOW_HEADERS)?;
    h.set("access-control-max-age", "86400")?;
    Ok(Response::empty()?.with_status(204).with_headers(h))
}

/// Reads the whole body, refusing it with 413 as soon as it is known to exceed `limit` bytes:
/// from `Content-Length` when sent, else while streaming, so a huge chunked body is never buffered.
pub async fn read_body(req: &mut Request, limit: usize) -> Result<Vec<u8>, Error> {
    let too_large = Error::PayloadTooLarge { limit };
    if let Ok(Some(len)) = req.headers().get("content-length") {
        if len.trim().parse::<u64>().map_or(true, |n| n > limit as u64) {
            return Err(too_large);
        }
        // The runtime holds the body to its declared length, so one read is safe (and far cheaper
        // than streaming chunk by chunk across the wasm boundary).
        return req
            .bytes()
            .await
            .map_err(|e| Error::bad_request("invalid_body", format!("the body could not be read: {e}")));
    }
    let mut body = Vec::new();
    let Ok(mut stream) = req.stream() else {
        return Ok(body); // no body at all
    };
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| Error::bad_request("invalid_body", format!("the body could not be read: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(too_large);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Whether the request's `Content-Type` is JSON (`application/json` or `application/*+json`).
pub fn is_json(req: &Request) -> bool {
    let Ok(Some(ct)) = req.headers().get("content-type") else {
        return false;
    };
    let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}
