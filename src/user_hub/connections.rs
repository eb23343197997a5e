//! The connection API (list, kick) and connection lifetimes (token `exp`, `MAX_CONNECTION_SECONDS`).

use super::UserHub;
use crate::core::error::Error;
use crate::core::protocol::{rfc3339, CLOSE_BY_BACKEND, CLOSE_LIFETIME, CLOSE_TOKEN_EXPIRED};
use crate::runtime::http;
use serde_json::json;
use worker::{Date, Response, WebSocket};

impl UserHub {
    /// The earliest connection deadline, in ms since the epoch.
    pub(crate) fn next_deadline(&self) -> Option<i64> {
        let conns = self.conns.borrow();
        conns.as_ref()?.values().filter_map(|c| c.deadline).reduce(f64::min).map(|d| d.ceil() as i64)
    }

    /// Closes every connection past its deadline: 4001 when its token expired (reconnect with a fresh
    /// token), 4003 at the end of `MAX_CONNECTION_SECONDS`.
    pub(crate) async fn enforce_lifetimes(&self) {
        // Alarms are not exact to the millisecond; a deadline this close counts as reached.
        const SLACK_MS: f64 = 250.0;
        let now = Date::now().as_millis() as f64 + SLACK_MS;
        let due: Vec<(String, u16, &'static str)> = self
            .conns
            .borrow()
            .iter()
            .flat_map(|c| c.iter())
            .filter(|(_, c)| c.deadline.is_some_and(|d| d <= now))
            .map(|(id, c)| match c.expires_at {
                Some(exp) if exp <= now => (id.clone(), CLOSE_TOKEN_EXPIRED, "token expired"),
                _ => (id.clone(), CLOSE_LIFETIME, "connection lifetime reached"),
            })
            .collect();
        for (id, code, reason) in due {
            self.close_by_server(&id, code, reason, "lifetime").await;
        }
    }

    /// `GET /connections`: the user's open connections.
    pub(super) fn list_connections(&self, cors: Option<&str>) -> Result<Response, Error> {
        self.ensure_loaded()?;
        let conns = self.conns.borrow();
        // Oldest first: keyed by the connect time (RFC 3339 of one width sorts as time does) and the
        // id, in the map JSON objects use. Inserted one by one: a sort, or `collect` into a map
        // (which sorts first), would be its own copy of std's sort in the wasm.
        let mut by_age = serde_json::Map::new();
        for (id, c) in conns.iter().flat_map(|c| c.iter()) {
            let connected_at = rfc3339(c.connected_at as u64);
            let item = json!({
                "connectionId": id,
                "transport": c.transport.name(),
                "connectedAt": connected_at,
                "expiresAt": c.expires_at.map(|e| rfc3339(e as u64)),
                "closesAt": c.deadline.map(|d| rfc3339(d as u64)),
                "filters": c.filters.as_slice(),
                "lastPingAt": self.last_auto_ping(&c.ws).map(rfc3339),
            });
            by_age.insert(format!("{connected_at}{id}"), item);
        }
        let list: Vec<serde_json::Value> = by_age.into_values().collect();
        // The user's webhook queue: events waiting, and events dropped for good.
        let webhooks = json!({ "backlog": self.outbox_len()?, "dropped": self.webhooks_dropped()? });
        Ok(http::json(200, json!({ "connections": list, "webhooks": webhooks }).to_string(), cors)?)
    }

    /// When the runtime last answered this socket's `ping` by itself, if ever
    /// (`getWebSocketAutoResponseTimestamp`, not bound by workers-rs).
    fn last_auto_ping(&self, ws: &WebSocket) -> Option<u64> {
        use wasm_bindgen::JsCast;
        let state: &wasm_bindgen::JsValue = self.state.as_raw().as_ref();
        let f = js_sys::Reflect::get(state, &"getWebSocketAutoResponseTimestamp".into()).ok()?;
        let raw: &web_sys::WebSocket = ws.as_ref();
        let date = f.dyn_into::<js_sys::Function>().ok()?.call1(state, raw).ok()?;
        date.dyn_into::<js_sys::Date>().ok().map(|d| d.get_time() as u64)
    }

    /// `DELETE /connections[?id=…]`: closes one connection (or all) with 4002.
    pub(super) async fn kick(&self, target: Option<String>, cors: Option<&str>) -> Result<Response, Error> {
        self.ensure_loaded()?;
        let ids: Vec<String> = match &target {
            Some(id) => {
                if !self.conns.borrow().as_ref().is_some_and(|c| c.contains_key(id)) {
                    return Err(Error::ConnectionNotFound(id.clone()));
                }
                vec![id.clone()]
            }
            None => self.conns.borrow().iter().flat_map(|c| c.keys().cloned()).collect(),
        };
        for id in &ids {
            self.close_by_server(id, CLOSE_BY_BACKEND, "closed by the backend", "backend").await;
        }
        Ok(http::json(200, json!({ "closed": ids }).to_string(), cors)?)
    }
}
