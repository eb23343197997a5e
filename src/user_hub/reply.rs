//! Replies to a client's frame on its socket: `ok`, `error`, `pong`. A socket that is closing refuses
//! sends; its close handler cleans up, so a refused reply is not an error here.

use crate::core::protocol::{self, Skipped};
use serde_json::value::RawValue;
use worker::WebSocket;

pub(super) fn send(ws: &WebSocket, text: &str) {
    // A socket that is closing refuses sends; its close handler cleans up.
    let _ = ws.send_with_str(text);
}

pub(super) fn send_error(ws: &WebSocket, code: &str, message: &str, id: Option<&RawValue>, skipped: &[Skipped]) {
    crate::runtime::metrics::rejected(code);
    send(ws, &protocol::error_frame(code, message, id, skipped));
}

pub(super) fn reply_ok(ws: &WebSocket, id: Option<&RawValue>) {
    if let Some(id) = id {
        send(ws, &protocol::ok_frame(id));
    }
}
