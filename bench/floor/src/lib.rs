//! The benchmark's Rust floor: `bench/reference/worker.js` written with workers-rs and nothing more.
//!
//! It speaks the same wire contract as the reference, as far as the benchmark uses it (HS256 tokens,
//! `welcome`, `subscribe` with exact-match filters, `POST /publish` with `seq` stored in SQLite, acks
//! collected until all are in or the timeout passes, one JSON log line per connect and per publish),
//! with the crates and release profile Switchboard uses and the plain `#[durable_object]` handlers.
//! No limits, no history, no webhooks, no channels, no recovery beyond worker-build's.
//!
//! What it is for: what any Rust Worker pays in workerd for the reference's work, so Switchboard's
//! figures can be split into the price of Rust and wasm and the price of Switchboard's features
//! (`bash bench/floor/build.sh`, then `BENCH_BUILD_DIR=bench/floor/build bash bench/run.sh`; see
//! BENCHMARKS.md). It is not a product and is never deployed.

use futures_channel::oneshot;
use futures_util::future::select;
use jwt_compact::{
    alg::{Hs256, Hs256Key},
    AlgorithmExt, UntrustedToken,
};
use serde::{Deserialize, Serialize};
use serde_json::{value::RawValue, Map, Value};
use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;
use worker::*;

#[derive(Deserialize)]
struct Claims {
    #[serde(rename = "userId", default)]
    user_id: Option<String>,
    #[serde(default)]
    scope: Option<String>,
}

/// The token's claims when it is an HS256 token signed with `secret`, not expired.
fn verify(token: Option<&str>, secret: &str) -> Option<Claims> {
    let untrusted = UntrustedToken::new(token?).ok()?;
    if untrusted.algorithm() != "HS256" {
        return None;
    }
    let key = Hs256Key::new(secret.as_bytes());
    let token = Hs256.validator::<Claims>(&key).validate(&untrusted).ok()?;
    let claims = token.claims();
    if claims.expiration.is_some_and(|exp| exp.timestamp_millis() as f64 <= Date::now().as_millis() as f64) {
        return None;
    }
    Some(Claims { user_id: claims.custom.user_id.clone(), scope: claims.custom.scope.clone() })
}

fn json(status: u16, body: String) -> Result<Response> {
    let headers = Headers::new();
    headers.set("content-type", "application/json; charset=utf-8")?;
    Ok(Response::ok(body)?.with_status(status).with_headers(headers))
}

fn err(status: u16, error: &str, message: &str) -> Result<Response> {
    json(status, serde_json::json!({ "error": error, "message": message }).to_string())
}

#[event(fetch)]
async fn fetch(mut req: Request, env: Env, _ctx: Context) -> Result<Response> {
    let url = req.url()?;
    let secret =
        env.secret("JWT_SECRET").map(|s| s.to_string()).or_else(|_| env.var("JWT_SECRET").map(|v| v.to_string()))?;
    let upgrade = req.headers().get("upgrade")?.unwrap_or_default();
    if upgrade.eq_ignore_ascii_case("websocket") {
        let token = url.query_pairs().find(|(k, _)| k == "token").map(|(_, v)| v.into_owned());
        let Some(claims) = verify(token.as_deref(), &secret) else { return err(401, "invalid_token", "bad token") };
        let Some(user_id) = claims.user_id.filter(|u| !u.is_empty()) else {
            return err(401, "invalid_token", "no userId");
        };
        let mut hop = Url::parse("https://hub/connect")?;
        hop.query_pairs_mut().append_pair("user", &user_id);
        let headers = Headers::new();
        headers.set("upgrade", "websocket")?;
        let hop = Request::new_with_init(hop.as_str(), RequestInit::new().with_headers(headers))?;
        let stub = env.durable_object("USER_HUB")?.id_from_name(&user_id)?.get_stub()?;
        return stub.fetch_with_request(hop).await;
    }
    if url.path() == "/publish" && req.method() == Method::Post {
        let auth = req.headers().get("authorization")?.unwrap_or_default();
        let Some(claims) = verify(auth.strip_prefix("Bearer "), &secret) else {
            return err(401, "invalid_token", "bad token");
        };
        if !claims.scope.unwrap_or_default().split(' ').any(|s| s == "publish") {
            return err(403, "forbidden", "no publish scope");
        }
        let body = req.text().await?;
        #[derive(Deserialize)]
        struct Target {
            #[serde(rename = "userId")]
            user_id: Option<String>,
        }
        let target: Target = match serde_json::from_str(&body) {
            Ok(t) => t,
            Err(_) => return err(400, "invalid_json", "bad json"),
        };
        let Some(user_id) = target.user_id.filter(|u| !u.is_empty()) else {
            return err(400, "invalid_user_id", "userId");
        };
        let headers = Headers::new();
        headers.set("content-type", "application/json")?;
        let mut init = RequestInit::new();
        init.with_method(Method::Post).with_headers(headers).with_body(Some(body.into()));
        let hop = Request::new_with_init("https://hub/publish", &init)?;
        let stub = env.durable_object("USER_HUB")?.id_from_name(&user_id)?.get_stub()?;
        return stub.fetch_with_request(hop).await;
    }
    if url.path() == "/healthz" {
        return json(200, r#"{"status":"ok"}"#.into());
    }
    err(404, "not_found", "no route")
}

/// A connection, as its socket's attachment.
#[derive(Serialize, Deserialize, Clone)]
struct Conn {
    id: String,
    #[serde(rename = "userId")]
    user_id: String,
    filters: Vec<Map<String, Value>>,
}

#[derive(Clone, Copy, PartialEq)]
enum Wait {
    Waiting,
    Acked,
    Closed,
}

/// A publish waiting for its acks.
struct Waiting {
    /// Each socket sent to, scanned per ack (the scenarios measured with it have at most 100).
    expected: Vec<(String, Wait)>,
    left: usize,
    acks: Vec<Value>,
    done: Option<oneshot::Sender<()>>,
}

impl Waiting {
    fn settle(&mut self, conn_id: &str, to: Wait, result: Option<Value>) {
        let Some(slot) = self.expected.iter_mut().find(|(id, s)| id == conn_id && *s == Wait::Waiting) else {
            return;
        };
        slot.1 = to;
        if let Some(result) = result {
            self.acks.push(serde_json::json!({ "connectionId": conn_id, "result": result }));
        }
        self.left -= 1;
        if self.left == 0 {
            if let Some(done) = self.done.take() {
                let _ = done.send(());
            }
        }
    }
}

#[durable_object]
pub struct UserHub {
    state: State,
    seq: RefCell<i64>,
    /// Connections by id, with their sockets (the reference's `Map` from socket to connection).
    conns: RefCell<HashMap<String, (WebSocket, Conn)>>,
    /// Socket -> connection id: a JS `Map`, keyed by the socket object as the reference's is.
    ids: js_sys::Map,
    waiting: RefCell<HashMap<String, Waiting>>,
}

fn random_id() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("getrandom");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl UserHub {
    /// The socket's connection id: from memory, else from its attachment (after a wake).
    fn conn_id(&self, ws: &WebSocket) -> Option<String> {
        if let Some(id) = self.ids.get(ws.as_ref()).as_string() {
            return Some(id);
        }
        let conn: Conn = ws.deserialize_attachment().ok()??;
        let id = conn.id.clone();
        self.remember(ws.clone(), conn);
        Some(id)
    }

    fn remember(&self, ws: WebSocket, conn: Conn) {
        self.ids.set(ws.as_ref(), &conn.id.as_str().into());
        self.conns.borrow_mut().insert(conn.id.clone(), (ws, conn));
    }

    async fn publish(&self, body: String) -> Result<Response> {
        #[derive(Deserialize)]
        struct Publish<'a> {
            #[serde(rename = "userId")]
            user_id: String,
            #[serde(rename = "type")]
            kind: Option<String>,
            #[serde(borrow)]
            payload: Option<&'a RawValue>,
            #[serde(rename = "timeoutMs")]
            timeout_ms: Option<f64>,
        }
        let p: Publish = serde_json::from_str(&body)?;
        let kind = p.kind.unwrap_or_else(|| "message".into());
        let payload = p.payload.map_or("null", RawValue::get);
        let started = Date::now().as_millis();
        let seq = {
            let mut seq = self.seq.borrow_mut();
            *seq += 1;
            *seq
        };
        self.state.storage().sql().exec(
            "INSERT INTO meta (key, value) VALUES ('seq', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            vec![seq.into()],
        )?;
        let envelope_id = random_id();
        let text = format!(
            r#"{{"envelopeId":"{envelope_id}","seq":{seq},"type":{},"userId":{},"timestamp":"{}","payload":{payload}}}"#,
            serde_json::to_string(&kind)?,
            serde_json::to_string(&p.user_id)?,
            js_sys::Date::new(&(started as f64).into()).to_iso_string()
        );
        let mut fields: Option<Value> = None;
        let mut expected = Vec::new();
        for (ws, conn) in self.conns.borrow().values() {
            let matches = conn.filters.iter().any(|f| {
                f.get("type").and_then(Value::as_str) == Some(kind.as_str())
                    && f.iter().filter(|(k, _)| *k != "type").all(|(k, v)| {
                        let payload =
                            fields.get_or_insert_with(|| serde_json::from_str(payload).unwrap_or(Value::Null));
                        payload.get(k) == Some(v)
                    })
            });
            if matches && ws.send_with_str(&text).is_ok() {
                expected.push((conn.id.clone(), Wait::Waiting));
            }
        }
        let client_count = expected.len();
        let timeout_ms = p.timeout_ms.unwrap_or(5000.0).min(30000.0);
        let (done, wait) = oneshot::channel();
        self.waiting
            .borrow_mut()
            .insert(envelope_id.clone(), Waiting { left: client_count, expected, acks: Vec::new(), done: Some(done) });
        if client_count > 0 && timeout_ms > 0.0 {
            let delay = Delay::from(Duration::from_millis(timeout_ms as u64));
            let _ = select(wait, delay).await;
        }
        let entry = self.waiting.borrow_mut().remove(&envelope_id).expect("the publish's entry");
        let ids =
            |s: Wait| entry.expected.iter().filter(|(_, w)| *w == s).map(|(id, _)| id.clone()).collect::<Vec<_>>();
        let (pending, closed) = (ids(Wait::Waiting), ids(Wait::Closed));
        console_log!(
            "{}",
            serde_json::json!({
                "event": "publish", "userId": p.user_id, "envelopeId": envelope_id, "seq": seq, "type": kind,
                "clientCount": client_count, "acked": entry.acks.len(), "pending": pending.len(),
                "closed": closed.len(), "ms": Date::now().as_millis() - started,
            })
        );
        let results: Vec<&Value> = entry.acks.iter().map(|a| &a["result"]).collect();
        json(
            200,
            serde_json::json!({
                "envelopeId": envelope_id, "seq": seq, "clientCount": client_count, "results": results,
                "acks": entry.acks, "pending": pending, "closed": closed,
            })
            .to_string(),
        )
    }

    fn forget(&self, ws: &WebSocket) {
        let Some(id) = self.conn_id(ws) else { return };
        self.ids.delete(ws.as_ref());
        self.conns.borrow_mut().remove(&id);
        for entry in self.waiting.borrow_mut().values_mut() {
            entry.settle(&id, Wait::Closed, None);
        }
    }
}

impl DurableObject for UserHub {
    fn new(state: State, _env: Env) -> Self {
        if let Ok(pair) = worker::worker_sys::WebSocketRequestResponsePair::new("ping", "pong") {
            state.set_websocket_auto_response(&pair);
        }
        let sql = state.storage().sql();
        let _ = sql.exec("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)", None);
        #[derive(Deserialize)]
        struct Row {
            value: i64,
        }
        let seq = sql
            .exec("SELECT value FROM meta WHERE key = 'seq'", None)
            .and_then(|c| c.to_array::<Row>())
            .ok()
            .and_then(|rows| rows.first().map(|r| r.value))
            .unwrap_or(0);
        let hub = UserHub {
            state,
            seq: RefCell::new(seq),
            conns: Default::default(),
            ids: js_sys::Map::new(),
            waiting: Default::default(),
        };
        for ws in hub.state.get_websockets() {
            if let Ok(Some(conn)) = ws.deserialize_attachment::<Conn>() {
                hub.remember(ws, conn);
            }
        }
        hub
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let url = req.url()?;
        match url.path() {
            "/connect" => {
                let user_id =
                    url.query_pairs().find(|(k, _)| k == "user").map(|(_, v)| v.into_owned()).unwrap_or_default();
                let pair = WebSocketPair::new()?;
                let conn = Conn { id: random_id(), user_id: user_id.clone(), filters: Vec::new() };
                self.state.accept_web_socket(&pair.server);
                pair.server.serialize_attachment(&conn)?;
                let seq = *self.seq.borrow();
                pair.server.send_with_str(
                    serde_json::json!({ "type": "welcome", "connectionId": conn.id, "userId": user_id, "seq": seq })
                        .to_string(),
                )?;
                let id = conn.id.clone();
                self.remember(pair.server, conn);
                console_log!(
                    "{}",
                    serde_json::json!({ "event": "connect", "userId": user_id, "connectionId": id,
                        "open": self.conns.borrow().len() })
                );
                Response::from_websocket(pair.client)
            }
            "/publish" => {
                let body = req.text().await?;
                self.publish(body).await
            }
            _ => err(404, "not_found", "no route"),
        }
    }

    async fn websocket_message(&self, ws: WebSocket, message: WebSocketIncomingMessage) -> Result<()> {
        let Some(id) = self.conn_id(&ws) else { return Ok(()) };
        let WebSocketIncomingMessage::String(text) = message else { return Ok(()) };
        let Ok(Value::Object(f)) = serde_json::from_str::<Value>(&text) else {
            ws.send_with_str(r#"{"type":"error","code":"invalid_json","message":"bad json"}"#)?;
            return Ok(());
        };
        match f.get("type").and_then(Value::as_str) {
            Some("ack") => {
                let Some(envelope_id) = f.get("envelopeId").and_then(Value::as_str) else { return Ok(()) };
                if let Some(entry) = self.waiting.borrow_mut().get_mut(envelope_id) {
                    entry.settle(&id, Wait::Acked, Some(f.get("result").cloned().unwrap_or(Value::Null)));
                }
            }
            Some("subscribe") if f.get("filters").is_some_and(Value::is_array) => {
                let mut conns = self.conns.borrow_mut();
                let Some((_, conn)) = conns.get_mut(&id) else { return Ok(()) };
                for filter in f["filters"].as_array().into_iter().flatten() {
                    let Some(filter) = filter.as_object() else { continue };
                    if filter.get("type").and_then(Value::as_str).is_none_or(str::is_empty) {
                        continue;
                    }
                    if filter.values().all(Value::is_string) {
                        conn.filters.push(filter.clone());
                    }
                }
                ws.serialize_attachment(&*conn)?;
                if let Some(id) = f.get("id") {
                    ws.send_with_str(format!(r#"{{"type":"ok","id":{id}}}"#))?;
                }
            }
            _ => {
                ws.send_with_str(
                    serde_json::json!({ "type": "error", "code": "unknown_type", "message": "unsupported frame",
                        "id": f.get("id") })
                    .to_string(),
                )?;
            }
        }
        Ok(())
    }

    async fn websocket_close(&self, ws: WebSocket, code: usize, reason: String, _was_clean: bool) -> Result<()> {
        self.forget(&ws);
        let code = if code == 1005 || code == 1006 { 1000 } else { code as u16 };
        let _ = ws.close(Some(code), Some(reason));
        Ok(())
    }

    async fn websocket_error(&self, ws: WebSocket, _error: Error) -> Result<()> {
        self.forget(&ws);
        Ok(())
    }
}
