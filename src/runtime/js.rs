//! JS strings made once and handed to the runtime as they are: a payload or an envelope never needs
//! to be copied into wasm memory and back for each socket or hop.

use crate::core::error::Error;
use worker::{Request, WebSocket};

#[wasm_bindgen::prelude::wasm_bindgen(inline_js = r#"
export function installFastMicrotasks() {
  if (globalThis.__switchboardFastMicrotasks) return;
  globalThis.__switchboardFastMicrotasks = true;
  const native = globalThis.queueMicrotask;
  const resolved = Promise.resolve();
  globalThis.queueMicrotask = (task) => {
    resolved.then(() => {
      try {
        task();
      } catch (e) {
        native(() => { throw e; });
      }
    });
  };
}

const socketIds = new WeakMap();
export function cachedSocketId(ws) {
  return socketIds.get(ws);
}
export function cacheSocketId(ws, id) {
  socketIds.set(ws, id);
}

const UPGRADE_INIT = Object.freeze({ headers: Object.freeze({ upgrade: "websocket" }) });
export function upgradeInit() {
  return UPGRADE_INIT;
}

export function jsonResponse(status, body, cors, allow) {
  const headers = { "content-type": "application/json; charset=utf-8", "cache-control": "no-store" };
  if (cors !== undefined) {
    headers["access-control-allow-origin"] = cors;
    headers["access-control-expose-headers"] = "content-type";
    if (cors !== "*") headers.vary = "Origin";
  }
  if (allow !== undefined) headers.allow = allow;
  return new Response(body, { status, headers });
}
"#)]
extern "C" {
    /// Makes `queueMicrotask` a reaction on a resolved Promise, for the whole isolate (once). Every
    /// async export of the wasm schedules its future with `queueMicrotask`, which in workerd costs
    /// 3.2-3.7 µs a call against 0.27 µs for a Promise reaction (the native one also wraps the task
    /// in the current AsyncContextFrame, which Rust code never uses). An error a task throws is
    /// rethrown through the native `queueMicrotask`, so it is reported as before.
    #[wasm_bindgen(js_name = installFastMicrotasks)]
    fn install_fast_microtasks_js();

    /// `{headers: {upgrade: "websocket"}}`, one frozen object for every WebSocket hop.
    #[wasm_bindgen(js_name = upgradeInit)]
    pub fn upgrade_init() -> wasm_bindgen::JsValue;

    /// The connection id [`socket_id`] remembered for a socket object, if any.
    #[wasm_bindgen(js_name = cachedSocketId)]
    fn cached_socket_id(ws: &web_sys::WebSocket) -> Option<String>;
    #[wasm_bindgen(js_name = cacheSocketId)]
    fn cache_socket_id(ws: &web_sys::WebSocket, id: &str);

    /// A JSON `Response` made in one call, its headers a plain object: building it from Rust took a
    /// `Headers` object, a crossing per header, a `Uint8Array` copy of the body and the `Response`
    /// builtin's slower path for a `Headers` init (about 15% of the Worker's CPU per publish).
    #[wasm_bindgen(js_name = jsonResponse)]
    fn json_response_js(
        status: u16,
        body: &wasm_bindgen::JsValue,
        cors: &wasm_bindgen::JsValue,
        allow: &wasm_bindgen::JsValue,
    ) -> web_sys::Response;
}

/// A JSON response with `status`, `body` (JSON text, already a JS string or converted once here),
/// the CORS headers for `cors` and an `Allow` header, as `runtime::http::json` sets them.
pub fn json_response(
    status: u16,
    body: &wasm_bindgen::JsValue,
    cors: Option<&str>,
    allow: Option<&str>,
) -> web_sys::Response {
    let opt = |v: Option<&str>| v.map_or(wasm_bindgen::JsValue::UNDEFINED, wasm_bindgen::JsValue::from_str);
    json_response_js(status, body, &opt(cors), &opt(allow))
}

/// A hibernatable socket's connection id (its first tag), remembered per JS socket object in a
/// `WeakMap`: `getTags` builds a JS array of new strings on every call, and every ack asks. A socket
/// object the runtime made anew after a wake is not in the map, and is looked up once.
pub fn socket_id(ws: &WebSocket, tags: impl FnOnce() -> Option<String>) -> Option<String> {
    let raw: &web_sys::WebSocket = ws.as_ref();
    if let Some(id) = cached_socket_id(raw) {
        return Some(id);
    }
    let id = tags()?;
    cache_socket_id(raw, &id);
    Some(id)
}

thread_local! {
    static FAST_MICROTASKS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// See `installFastMicrotasks` above; cheap after the first call.
pub fn install_fast_microtasks() {
    if !FAST_MICROTASKS.with(|f| f.replace(true)) {
        install_fast_microtasks_js();
    }
}

#[wasm_bindgen::prelude::wasm_bindgen]
extern "C" {
    /// A WebSocket as the runtime sees it, to call `send` with a JS string made once: workers-rs's
    /// `send_with_str` decodes the text from wasm memory into a new JS string on every call, which
    /// for a fan-out means once per recipient.
    type RawSocket;
    #[wasm_bindgen(method, catch, js_name = send)]
    fn send_js(this: &RawSocket, data: &js_sys::JsString) -> Result<(), wasm_bindgen::JsValue>;
}

/// Sends an already-made JS string on a socket; false when the socket refuses it (closing).
pub fn send_shared(ws: &WebSocket, text: &js_sys::JsString) -> bool {
    use wasm_bindgen::JsCast;
    let raw: &web_sys::WebSocket = ws.as_ref();
    raw.unchecked_ref::<RawSocket>().send_js(text).is_ok()
}

/// A request body as a JS string, decoded by the runtime, without copying it into wasm.
pub async fn body_text(req: &Request) -> Result<js_sys::JsString, Error> {
    use wasm_bindgen::JsCast;
    let promise = req.inner().text().map_err(|_| Error::Internal("the hop's body could not be read".into()))?;
    let value = wasm_bindgen_futures::JsFuture::from(promise)
        .await
        .map_err(|_| Error::Internal("the hop's body could not be read".into()))?;
    value.dyn_into::<js_sys::JsString>().map_err(|_| Error::Internal("the hop's body is not text".into()))
}

#[wasm_bindgen::prelude::wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_name = setTimeout)]
    fn set_timeout(callback: &js_sys::Function, ms: f64) -> wasm_bindgen::JsValue;
    #[wasm_bindgen(js_name = clearTimeout)]
    fn clear_timeout(id: &wasm_bindgen::JsValue);
}

/// One re-armable timer with one callback for an object's lifetime: arming it is one `setTimeout`,
/// with no new wasm closure (`worker::Delay` makes a closure, registers it for finalization and
/// clears its timeout on drop, every time). It keeps at most one timeout pending, for the earliest
/// time asked.
pub struct Timer {
    callback: wasm_bindgen::closure::Closure<dyn FnMut()>,
    /// The pending timeout: when it fires (ms since the epoch) and its id.
    armed: std::rc::Rc<std::cell::RefCell<Option<(f64, wasm_bindgen::JsValue)>>>,
}

impl Timer {
    /// A timer that calls `on_fire` when it fires (after forgetting the fired timeout, so `on_fire`
    /// may arm it again).
    pub fn new(mut on_fire: impl FnMut() + 'static) -> Self {
        let armed: std::rc::Rc<std::cell::RefCell<Option<(f64, wasm_bindgen::JsValue)>>> = Default::default();
        let fired = armed.clone();
        let callback = wasm_bindgen::closure::Closure::new(move || {
            fired.borrow_mut().take();
            on_fire();
        });
        Timer { callback, armed }
    }

    /// Makes sure the timer fires by `at` (ms since the epoch; `now` is the current time): a pending
    /// timeout that fires no later is kept, a later one is replaced.
    pub fn arm_by(&self, at: f64, now: f64) {
        use wasm_bindgen::JsCast;
        let mut armed = self.armed.borrow_mut();
        if armed.as_ref().is_some_and(|(when, _)| *when <= at) {
            return;
        }
        if let Some((_, id)) = armed.take() {
            clear_timeout(&id);
        }
        let id = set_timeout(self.callback.as_ref().unchecked_ref(), (at - now).max(0.0));
        *armed = Some((at, id));
    }

    /// Cancels the pending timeout, if any: a pending timeout keeps a Durable Object from hibernating.
    pub fn disarm(&self) {
        if let Some((_, id)) = self.armed.borrow_mut().take() {
            clear_timeout(&id);
        }
    }
}

/// The time in ms since the epoch, without a JS `Date` object (`worker::Date::now()` makes one per
/// call).
pub fn now_ms() -> u64 {
    js_sys::Date::now() as u64
}
