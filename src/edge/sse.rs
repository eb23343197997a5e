//! Server-Sent Events, Worker side. The Worker answers `GET /sse` with an event stream and bridges
//! it to a hibernatable WebSocket into the user's hub: the hub sends frames already framed as SSE
//! events, this stream forwards them and adds keep-alive comments. Holding the stream here rather
//! than in the Durable Object lets the hub hibernate while SSE clients are idle, exactly as it does
//! for WebSocket clients. When the client goes away the stream is dropped, which closes the
//! WebSocket, which the hub sees as a close.

use crate::core::error::Error;
use crate::hop::user;
use crate::hop::wire::Connect;
use futures_channel::mpsc::{unbounded, UnboundedReceiver};
use futures_util::Stream;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use wasm_bindgen::closure::Closure;
use wasm_bindgen::JsCast;
use worker::{Env, Headers, Response, WebSocket};

/// Longest `filters` query parameter read, in bytes.
pub const MAX_FILTERS_PARAM_BYTES: usize = 16 * 1024;

enum Event {
    Data(String),
    Closed,
    /// The keep-alive interval fired.
    Keepalive,
}

/// The event stream handed to the runtime as the response body.
struct SseStream {
    ws: WebSocket,
    rx: UnboundedReceiver<Event>,
    /// The `setInterval` that sends [`Event::Keepalive`] into the channel, and its id. A timer
    /// future (`worker::Delay`) would not do: it keeps the waker of the poll that started it, and
    /// the runtime polls each pull of the body as a new task, so after the first pull its wake-ups
    /// went nowhere and the keep-alives stopped (and with them the detection of vanished clients).
    /// The channel's receiver takes the current waker on every poll.
    keepalive: (Closure<dyn FnMut()>, i32),
    preamble: bool,
    done: bool,
    on_message: Closure<dyn FnMut(web_sys::MessageEvent)>,
    on_close: Closure<dyn FnMut(web_sys::CloseEvent)>,
    /// The client's request signal and its listener: it fires when the client disconnects.
    gone: Option<(web_sys::AbortSignal, Closure<dyn FnMut()>)>,
}

impl SseStream {
    fn new(ws: WebSocket, every: Duration, signal: Option<web_sys::AbortSignal>) -> Result<Self, Error> {
        let (tx, rx) = unbounded();
        let tx_close = tx.clone();
        let tx_tick = tx.clone();
        let on_message = Closure::<dyn FnMut(web_sys::MessageEvent)>::new(move |e: web_sys::MessageEvent| {
            if let Some(text) = e.data().as_string() {
                let _ = tx.unbounded_send(Event::Data(text));
            }
        });
        let on_close = Closure::<dyn FnMut(web_sys::CloseEvent)>::new(move |_e: web_sys::CloseEvent| {
            let _ = tx_close.unbounded_send(Event::Closed);
        });
        let raw: &web_sys::WebSocket = ws.as_ref();
        let target: &web_sys::EventTarget = raw.unchecked_ref();
        let listen = |name: &str, f: &js_sys::Function| {
            target
                .add_event_listener_with_callback(name, f)
                .map_err(|_| Error::Internal("could not listen on the hub socket".into()))
        };
        listen("message", on_message.as_ref().unchecked_ref())?;
        listen("close", on_close.as_ref().unchecked_ref())?;
        listen("error", on_close.as_ref().unchecked_ref())?;
        let tick = Closure::<dyn FnMut()>::new(move || {
            let _ = tx_tick.unbounded_send(Event::Keepalive);
        });
        let global: web_sys::WorkerGlobalScope = js_sys::global().unchecked_into();
        let interval = global
            .set_interval_with_callback_and_timeout_and_arguments_0(
                tick.as_ref().unchecked_ref(),
                every.as_millis().min(i32::MAX as u128) as i32,
            )
            .map_err(|_| Error::Internal("could not start the keep-alive timer".into()))?;
        ws.accept()?;
        // Without this the runtime notices a vanished client only at the next write (a keep-alive
        // or an envelope), and publishes in between would wait for a dead connection's ack.
        let gone = signal.map(|signal| {
            let hub_socket = ws.clone();
            let closure = Closure::<dyn FnMut()>::new(move || {
                let _ = hub_socket.close(Some(1000), Some("sse client gone"));
            });
            let _ = signal.add_event_listener_with_callback("abort", closure.as_ref().unchecked_ref());
            (signal, closure)
        });
        Ok(SseStream { ws, rx, keepalive: (tick, interval), preamble: true, done: false, on_message, on_close, gone })
    }
}

impl Stream for SseStream {
    type Item = Result<Vec<u8>, worker::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if this.preamble {
            // A comment first, so proxies flush headers at once, and the reconnect delay.
            this.preamble = false;
            return Poll::Ready(Some(Ok(b": switchboard\nretry: 2000\n\n".to_vec())));
        }
        match Pin::new(&mut this.rx).poll_next(cx) {
            Poll::Ready(Some(Event::Data(text))) => Poll::Ready(Some(Ok(text.into_bytes()))),
            Poll::Ready(Some(Event::Keepalive)) => Poll::Ready(Some(Ok(b": keepalive\n\n".to_vec()))),
            Poll::Ready(Some(Event::Closed)) | Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for SseStream {
    fn drop(&mut self) {
        // Unhook the closures before they are freed, then tell the hub this client is gone.
        let raw: &web_sys::WebSocket = self.ws.as_ref();
        let target: &web_sys::EventTarget = raw.unchecked_ref();
        let _ = target.remove_event_listener_with_callback("message", self.on_message.as_ref().unchecked_ref());
        let _ = target.remove_event_listener_with_callback("close", self.on_close.as_ref().unchecked_ref());
        let _ = target.remove_event_listener_with_callback("error", self.on_close.as_ref().unchecked_ref());
        let global: web_sys::WorkerGlobalScope = js_sys::global().unchecked_into();
        global.clear_interval_with_handle(self.keepalive.1);
        if let Some((signal, closure)) = &self.gone {
            let _ = signal.remove_event_listener_with_callback("abort", closure.as_ref().unchecked_ref());
        }
        let _ = self.ws.close(Some(1000), Some("sse client gone"));
    }
}

/// Opens an SSE stream for `connect.user_id`: the hub applies `connect.filters` (a JSON array) and
/// replays after `connect.since` before anything live is sent.
pub async fn open(
    env: &Env,
    connect: &Connect,
    keepalive_seconds: u64,
    cors: Option<&str>,
    signal: Option<web_sys::AbortSignal>,
) -> Result<web_sys::Response, Error> {
    let hop = user::connect(env, connect).await?;
    if hop.status() != 101 {
        return Ok(hop); // the hub refused (its JSON error passes through)
    }
    let ws = Response::from(hop)
        .websocket()
        .ok_or_else(|| Error::Unavailable("the user's hub returned no socket".into()))?;
    let stream = SseStream::new(ws, Duration::from_secs(keepalive_seconds), signal)?;
    let headers = Headers::new();
    headers.set("content-type", "text/event-stream; charset=utf-8")?;
    // No caching, and no buffering by proxies (nginx honours x-accel-buffering).
    headers.set("cache-control", "no-cache, no-store, no-transform")?;
    headers.set("x-accel-buffering", "no")?;
    if let Some(origin) = cors {
        headers.set("access-control-allow-origin", origin)?;
        if origin != "*" {
            headers.set("vary", "Origin")?;
        }
    }
    Ok(Response::from_stream(stream)?.with_headers(headers).into())
}

/// Reads `since` for an SSE connect: `Last-Event-ID` (sent by EventSource when it reconnects), else
/// the `lastEventId` or `since` query parameter (for clients that cannot set headers).
pub fn since(last_event_id: Option<&str>, query: Option<&str>) -> Result<Option<u64>, Error> {
    match last_event_id.filter(|s| !s.trim().is_empty()).or(query) {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse::<u64>()
            .map(Some)
            .map_err(|_| Error::bad_request("invalid_since", "Last-Event-ID (or since) must be a sequence number")),
    }
}
