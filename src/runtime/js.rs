//! JS strings made once and handed to the runtime as they are: a payload or an envelope never needs
//! to be copied into wasm memory and back for each socket or hop.

use crate::core::error::Error;
use worker::{Request, WebSocket};

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
