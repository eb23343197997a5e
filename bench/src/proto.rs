//! The client side of the wire contract: tokens, a keep-alive HTTP/1.1 client for `POST /publish`,
//! and WebSocket clients that ack every envelope at once.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

/// Per connect and per publish answer. Past the longest `--group-timeout-ms` a loaded machine needs.
pub const TIMEOUT: Duration = Duration::from_secs(60);

// ---- tokens ------------------------------------------------------------------------------------

pub fn mint(secret: &str, claims: &serde_json::Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    let data = format!("{header}.{body}");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("hmac takes any key");
    mac.update(data.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{data}.{sig}")
}

fn exp() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) + 3600
}

pub fn client_token(secret: &str, user_id: &str, channel: Option<&str>) -> String {
    match channel {
        Some(c) => mint(secret, &serde_json::json!({ "userId": user_id, "exp": exp(), "channels": [c] })),
        None => mint(secret, &serde_json::json!({ "userId": user_id, "exp": exp() })),
    }
}

pub fn publish_token(secret: &str) -> String {
    mint(secret, &serde_json::json!({ "sub": "bench", "scope": "publish", "exp": exp() }))
}

// ---- HTTP/1.1 keep-alive client ------------------------------------------------------------------

/// One keep-alive connection for `POST /publish`. Reconnects when the server closes it.
pub struct Http {
    host: String,
    auth: String,
    conn: Option<BufReader<TcpStream>>,
}

impl Http {
    pub fn new(host: &str, token: &str) -> Http {
        Http { host: host.to_string(), auth: format!("Bearer {token}"), conn: None }
    }

    /// POSTs `body` to `/publish`; returns the status and the body.
    pub async fn publish(&mut self, body: &[u8]) -> Result<(u16, Vec<u8>), String> {
        match tokio::time::timeout(TIMEOUT, self.post(body)).await {
            Ok(r) => r,
            Err(_) => {
                self.conn = None;
                Err(format!("publish timed out after {} s", TIMEOUT.as_secs()))
            }
        }
    }

    async fn post(&mut self, body: &[u8]) -> Result<(u16, Vec<u8>), String> {
        // One retry on a fresh connection if a kept-alive one turns out closed before any answer.
        for attempt in 0..2 {
            let fresh = self.conn.is_none();
            if fresh {
                let s = TcpStream::connect(&self.host).await.map_err(|e| format!("connect: {e}"))?;
                let _ = s.set_nodelay(true);
                self.conn = Some(BufReader::with_capacity(64 * 1024, s));
            }
            match self.exchange(body).await {
                Ok(r) => return Ok(r),
                Err((answered, e)) => {
                    self.conn = None;
                    if answered || fresh || attempt == 1 {
                        return Err(e);
                    }
                }
            }
        }
        Err("unreachable".into())
    }

    /// Err((whether any response byte arrived, message)).
    async fn exchange(&mut self, body: &[u8]) -> Result<(u16, Vec<u8>), (bool, String)> {
        let conn = self.conn.as_mut().ok_or((false, "no connection".to_string()))?;
        let head = format!(
            "POST /publish HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.host,
            self.auth,
            body.len()
        );
        let mut req = Vec::with_capacity(head.len() + body.len());
        req.extend_from_slice(head.as_bytes());
        req.extend_from_slice(body);
        conn.get_mut().write_all(&req).await.map_err(|e| (false, format!("write: {e}")))?;
        let mut line = String::new();
        let n = conn.read_line(&mut line).await.map_err(|e| (false, format!("read: {e}")))?;
        if n == 0 {
            return Err((false, "connection closed before the response".into()));
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or((true, format!("bad status line {line:?}")))?;
        let mut length: Option<usize> = None;
        let mut chunked = false;
        let mut close = false;
        loop {
            line.clear();
            let n = conn.read_line(&mut line).await.map_err(|e| (true, format!("read: {e}")))?;
            if n == 0 {
                return Err((true, "connection closed in the headers".into()));
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                match k.as_str() {
                    "content-length" => length = v.parse().ok(),
                    "transfer-encoding" => chunked = v.to_ascii_lowercase().contains("chunked"),
                    "connection" => close = v.eq_ignore_ascii_case("close"),
                    _ => {}
                }
            }
        }
        let mut out = Vec::new();
        if chunked {
            loop {
                line.clear();
                conn.read_line(&mut line).await.map_err(|e| (true, format!("read: {e}")))?;
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                    .map_err(|_| (true, format!("bad chunk size {line:?}")))?;
                let start = out.len();
                out.resize(start + size + 2, 0);
                conn.read_exact(&mut out[start..]).await.map_err(|e| (true, format!("read: {e}")))?;
                out.truncate(start + size);
                if size == 0 {
                    break;
                }
            }
        } else if let Some(len) = length {
            out.resize(len, 0);
            conn.read_exact(&mut out).await.map_err(|e| (true, format!("read: {e}")))?;
        } else {
            conn.read_to_end(&mut out).await.map_err(|e| (true, format!("read: {e}")))?;
            close = true;
        }
        if close {
            self.conn = None;
        }
        Ok((status, out))
    }
}

// ---- the publish response ------------------------------------------------------------------------

#[derive(Deserialize)]
pub struct PublishResponse {
    #[serde(rename = "envelopeId")]
    pub envelope_id: String,
    #[serde(rename = "clientCount")]
    pub client_count: usize,
    pub results: Vec<serde_json::Value>,
    pub acks: Vec<AckOut>,
    pub pending: Vec<String>,
    pub closed: Vec<String>,
}

#[derive(Deserialize)]
pub struct AckOut {
    #[serde(rename = "connectionId")]
    pub connection_id: String,
    pub result: serde_json::Value,
}

/// Checks a publish answer against the sockets that must have acked: `expected` maps connection
/// id -> socket number, and each socket acks with `{"s": number}`.
pub fn check_response(
    status: u16,
    body: &[u8],
    expected: &std::collections::HashMap<String, u64>,
) -> Result<PublishResponse, String> {
    if status != 200 {
        return Err(format!("status {status}: {}", String::from_utf8_lossy(&body[..body.len().min(300)])));
    }
    let r: PublishResponse = serde_json::from_slice(body).map_err(|e| format!("bad response json: {e}"))?;
    if r.client_count != expected.len() {
        return Err(format!("clientCount {} (expected {})", r.client_count, expected.len()));
    }
    if r.results.len() != expected.len() || r.acks.len() != expected.len() {
        return Err(format!(
            "{} results / {} acks (expected {}); pending {} closed {}",
            r.results.len(),
            r.acks.len(),
            expected.len(),
            r.pending.len(),
            r.closed.len()
        ));
    }
    if !r.pending.is_empty() || !r.closed.is_empty() {
        return Err(format!("pending {} closed {}", r.pending.len(), r.closed.len()));
    }
    let mut seen = std::collections::HashSet::with_capacity(r.acks.len());
    for (a, res) in r.acks.iter().zip(&r.results) {
        let Some(&n) = expected.get(&a.connection_id) else {
            return Err(format!("ack from unexpected connection {}", a.connection_id));
        };
        if !seen.insert(a.connection_id.as_str()) {
            return Err(format!("duplicate ack from {}", a.connection_id));
        }
        if a.result.get("s").and_then(|v| v.as_u64()) != Some(n) || res != &a.result {
            return Err(format!("wrong result {} for socket {n}", a.result));
        }
    }
    Ok(r)
}

// ---- WebSocket clients ---------------------------------------------------------------------------

/// An envelope as a socket saw it.
pub struct Delivery {
    pub envelope_id: String,
    pub at: Instant,
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "envelopeId", borrow, default)]
    envelope_id: Option<&'a str>,
    #[serde(rename = "type", borrow, default)]
    kind: Option<&'a str>,
    #[serde(rename = "connectionId", borrow, default)]
    connection_id: Option<&'a str>,
}

/// A connected, subscribed socket whose task acks every envelope as soon as it arrives.
pub struct Socket {
    pub connection_id: String,
    pub number: u64,
    pub received: Arc<AtomicU64>,
    pub unexpected: Arc<AtomicU64>,
    pub task: tokio::task::JoinHandle<()>,
}

/// Connects as `user_id`, waits for `welcome`, subscribes to `{"type":"bench"}` and waits for `ok`
/// (and joins `channel`, if given, and waits for its `ok`), then hands the socket to a task that acks envelopes (sending each delivery to `deliveries` if
/// given) until `shutdown` turns true.
#[allow(clippy::too_many_arguments)] // each is one independent knob of a benchmark socket
pub async fn connect(
    host: &str,
    secret: &str,
    user_id: &str,
    number: u64,
    channel: Option<&str>,
    presence: bool,
    deliveries: Option<mpsc::UnboundedSender<Delivery>>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Socket, String> {
    let token = client_token(secret, user_id, channel);
    let url = format!("ws://{host}/?token={token}");
    let fut = async {
        let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url.as_str(), None, true)
            .await
            .map_err(|e| format!("connect {user_id}: {e}"))?;
        let welcome = next_text(&mut ws).await?;
        let f: Frame = serde_json::from_str(&welcome).map_err(|e| format!("welcome: {e}"))?;
        if f.kind != Some("welcome") {
            return Err(format!("first frame was not welcome: {welcome}"));
        }
        let connection_id = f.connection_id.ok_or("welcome without connectionId")?.to_string();
        ws.send(Message::text(r#"{"type":"subscribe","filters":[{"type":"bench"}],"id":1}"#))
            .await
            .map_err(|e| format!("subscribe: {e}"))?;
        let ok = next_text(&mut ws).await?;
        if ok != r#"{"type":"ok","id":1}"# {
            return Err(format!("subscribe answered {ok}"));
        }
        if let Some(channel) = channel {
            let join = if presence {
                serde_json::json!({ "type": "join", "channel": channel, "id": 2, "presence": true })
            } else {
                serde_json::json!({ "type": "join", "channel": channel, "id": 2 })
            };
            ws.send(Message::text(join.to_string())).await.map_err(|e| format!("join: {e}"))?;
            let ok = next_text(&mut ws).await?;
            // A presence join's `ok` carries the snapshot (and a batch may follow at any time: the
            // acking task skips frames without an envelope id).
            let fine = if presence {
                let v: serde_json::Value = serde_json::from_str(&ok).unwrap_or_default();
                v["type"] == "ok" && v["id"] == 2 && v["presence"]["count"].is_u64()
            } else {
                ok == r#"{"type":"ok","id":2}"#
            };
            if !fine {
                return Err(format!("join answered {ok}"));
            }
        }
        Ok::<_, String>((ws, connection_id))
    };
    let (mut ws, connection_id) = tokio::time::timeout(TIMEOUT, fut).await.map_err(|_| "connect timed out")??;
    let received = Arc::new(AtomicU64::new(0));
    let unexpected = Arc::new(AtomicU64::new(0));
    let (rc, uc) = (received.clone(), unexpected.clone());
    let ack_result = format!(r#"{{"s":{number}}}"#);
    let task = tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                m = ws.next() => m,
                _ = shutdown.wait_for(|v| *v) => break,
            };
            let text = match msg {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Binary(_))) => {
                    uc.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    if !*shutdown.borrow() {
                        uc.fetch_add(1, Ordering::Relaxed);
                    }
                    return;
                }
            };
            let at = Instant::now();
            let frame = serde_json::from_str::<Frame>(text.as_str()).ok();
            if frame.as_ref().is_some_and(|f| f.kind == Some("presence")) {
                continue; // a watching member's presence batch (channel100_presence): expected, not acked
            }
            let id = frame.and_then(|f| f.envelope_id.map(str::to_string));
            let Some(envelope_id) = id else {
                uc.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            rc.fetch_add(1, Ordering::Relaxed);
            let ack = format!(r#"{{"type":"ack","envelopeId":"{envelope_id}","result":{ack_result}}}"#);
            if let Some(d) = &deliveries {
                let _ = d.send(Delivery { envelope_id, at });
            }
            if ws.send(Message::text(ack)).await.is_err() {
                uc.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let _ = tokio::time::timeout(Duration::from_millis(500), ws.close(None)).await;
    });
    Ok(Socket { connection_id, number, received, unexpected, task })
}

async fn next_text<S>(ws: &mut S) -> Result<String, String>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_string()),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(other)) => return Err(format!("unexpected frame {other:?}")),
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("socket closed".into()),
        }
    }
}
