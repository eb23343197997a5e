//! Test-only fault injection (`FAULT_INJECTION=on`, never in production): socket frames that make a hub
//! fail in ways the recovery tests need (tests/recovery.test.mjs).

use crate::runtime::log;
use worker::WebSocket;

/// The frame `__panic` panics and `__trap` executes a raw wasm `unreachable`, inside the hub's
/// synchronous socket handler, for the test that every hub still works afterwards.
/// `__old_attachment` gives the socket an attachment in the shape earlier builds stored (an object,
/// not JSON text), for the test that such a socket is closed with 1011 when its hub next loads.
pub(super) fn inject(ws: &WebSocket, text: &str) {
    match text {
        "__old_attachment" => {
            use worker::worker_sys::ext::WebSocketExt;
            let old = js_sys::Object::new();
            let _ = js_sys::Reflect::set(&old, &"v".into(), &1.into());
            let raw: &web_sys::WebSocket = ws.as_ref();
            let _ = raw.serialize_attachment(old.into());
            log::error!("fault_injected", "kind" => "old_attachment");
        }
        "__panic" => {
            log::error!("fault_injected", "kind" => "panic");
            panic!("fault injected (FAULT_INJECTION=on)");
        }
        "__trap" => {
            log::error!("fault_injected", "kind" => "trap");
            core::arch::wasm32::unreachable()
        }
        _ => {}
    }
}
