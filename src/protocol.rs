//! The wire protocol: client frames in, control frames and envelopes out, and the `/publish` body and
//! response. Pure serde, host-tested. Payloads and ack results stay as raw JSON text
//! ([`RawValue`]) from the moment they are read until they are written, so a publish never re-encodes
//! its payload; an envelope is [`envelope_head`] plus the payload's own text, built once for all of its
//! recipients.

use crate::error::Error;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

/// Longest `id` a client may attach to a frame, as JSON text.
pub const MAX_ID_BYTES: usize = 256;
/// Longest envelope `type`, in bytes.
pub const MAX_TYPE_BYTES: usize = 256;

/// A frame a client sent, parsed and checked.
#[derive(Debug)]
pub enum ClientFrame<'a> {
    /// `ping` in any case, with surrounding whitespace (exactly `ping` never reaches the hub).
    Ping,
    Subscribe {
        filters: Value,
        since: Option<u64>,
        id: Option<&'a RawValue>,
    },
    Unsubscribe {
        filters: Value,
        id: Option<&'a RawValue>,
    },
    Ack {
        envelope_id: String,
        result: Option<&'a RawValue>,
        id: Option<&'a RawValue>,
    },
    Message {
        data: Option<&'a RawValue>,
        id: Option<&'a RawValue>,
    },
    /// Join a channel (the token's `channels` claim must allow it).
    Join {
        channel: String,
        id: Option<&'a RawValue>,
    },
    Leave {
        channel: String,
        id: Option<&'a RawValue>,
    },
    /// Publish to a channel's members (the token's `publishChannels` claim must allow it).
    Publish {
        channel: String,
        kind: String,
        payload: &'a RawValue,
        timeout_ms: Option<u64>,
        id: Option<&'a RawValue>,
    },
}

/// Why a client frame was refused; answered with an `error` control frame.
#[derive(Debug)]
pub struct FrameError<'a> {
    pub code: &'static str,
    pub message: String,
    pub id: Option<&'a RawValue>,
}

impl<'a> FrameError<'a> {
    fn new(code: &'static str, message: impl Into<String>, id: Option<&'a RawValue>) -> Self {
        FrameError { code, message: message.into(), id }
    }
}

#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(rename = "type", default)]
    kind: Option<Value>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(default)]
    filters: Option<Value>,
    #[serde(default)]
    since: Option<Value>,
    #[serde(rename = "envelopeId", default)]
    envelope_id: Option<Value>,
    #[serde(borrow, default)]
    result: Option<&'a RawValue>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    channel: Option<Value>,
    #[serde(default)]
    event: Option<Value>,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
    #[serde(rename = "timeoutMs", default)]
    timeout_ms: Option<Value>,
}

/// The common ack shape, borrowed straight from the frame: acks arrive once per delivery, so they
/// skip the general parser's owned values. Anything unusual (escapes, other types) falls back.
#[derive(Deserialize)]
struct FastAck<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(rename = "envelopeId")]
    envelope_id: &'a str,
    #[serde(borrow, default)]
    result: Option<&'a RawValue>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
}

/// Parses one text frame from a client.
pub fn parse_client_frame(text: &str) -> Result<ClientFrame<'_>, FrameError<'_>> {
    if text.starts_with(r#"{"type":"ack""#) {
        if let Ok(ack) = serde_json::from_str::<FastAck<'_>>(text) {
            if ack.kind == "ack" && !ack.envelope_id.is_empty() && ack.id.is_none_or(|i| i.get().len() <= MAX_ID_BYTES)
            {
                return Ok(ClientFrame::Ack {
                    envelope_id: ack.envelope_id.to_string(),
                    result: ack.result,
                    id: ack.id,
                });
            }
        }
    }
    let trimmed = text.trim();
    if trimmed.eq_ignore_ascii_case("ping") {
        return Ok(ClientFrame::Ping);
    }
    // serde would also read a struct from a JSON array; a frame must be an object.
    if !trimmed.starts_with('{') {
        let code = if serde_json::from_str::<serde::de::IgnoredAny>(trimmed).is_ok() {
            "invalid_frame"
        } else {
            "invalid_json"
        };
        return Err(FrameError::new(code, "a frame must be `ping` or a JSON object with a string `type`", None));
    }
    let raw: RawFrame<'_> = serde_json::from_str(trimmed).map_err(|e| {
        if e.is_data() {
            FrameError::new(
                "invalid_frame",
                format!("a frame must be a JSON object with a string `type` (problem at column {})", e.column()),
                None,
            )
        } else {
            FrameError::new("invalid_json", "the frame is not valid JSON (send `ping` or a JSON object)", None)
        }
    })?;
    let id = raw.id;
    if let Some(id) = id {
        if id.get().len() > MAX_ID_BYTES {
            return Err(FrameError::new("invalid_frame", format!("`id` is longer than {MAX_ID_BYTES} bytes"), None));
        }
    }
    let kind = match &raw.kind {
        Some(Value::String(k)) => k.as_str(),
        _ => return Err(FrameError::new("invalid_frame", "a frame needs a string `type`", id)),
    };
    match kind {
        "subscribe" | "unsubscribe" => {
            let filters = raw
                .filters
                .ok_or_else(|| FrameError::new("invalid_frame", format!("`{kind}` needs a `filters` array"), id))?;
            if kind == "unsubscribe" {
                return Ok(ClientFrame::Unsubscribe { filters, id });
            }
            let since = match raw.since {
                None | Some(Value::Null) => None,
                Some(v) => Some(v.as_u64().ok_or_else(|| {
                    FrameError::new("invalid_frame", "`since` must be a non-negative whole number", id)
                })?),
            };
            Ok(ClientFrame::Subscribe { filters, since, id })
        }
        "ack" => match raw.envelope_id {
            Some(Value::String(envelope_id)) if !envelope_id.is_empty() => {
                Ok(ClientFrame::Ack { envelope_id, result: raw.result, id })
            }
            _ => Err(FrameError::new("invalid_frame", "`ack` needs a string `envelopeId`", id)),
        },
        "message" => Ok(ClientFrame::Message { data: raw.data, id }),
        "ping" => Ok(ClientFrame::Ping),
        "join" | "leave" | "publish" => {
            let channel = match raw.channel {
                Some(Value::String(c)) => {
                    crate::channel::check_name(&c).map_err(|m| FrameError::new("invalid_channel", m, id))?;
                    c
                }
                _ => return Err(FrameError::new("invalid_channel", format!("`{kind}` needs a string `channel`"), id)),
            };
            match kind {
                "join" => Ok(ClientFrame::Join { channel, id }),
                "leave" => Ok(ClientFrame::Leave { channel, id }),
                _ => {
                    let kind = match raw.event {
                        None | Some(Value::Null) => "message".to_string(),
                        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_TYPE_BYTES => s,
                        Some(_) => {
                            return Err(FrameError::new(
                                "invalid_frame",
                                format!("`event` must be a non-empty string of at most {MAX_TYPE_BYTES} bytes"),
                                id,
                            ))
                        }
                    };
                    let timeout_ms = match raw.timeout_ms {
                        None | Some(Value::Null) => None,
                        Some(v) => Some(v.as_u64().ok_or_else(|| {
                            FrameError::new("invalid_frame", "`timeoutMs` must be a non-negative whole number", id)
                        })?),
                    };
                    Ok(ClientFrame::Publish {
                        channel,
                        kind,
                        payload: raw.payload.unwrap_or_else(|| null()),
                        timeout_ms,
                        id,
                    })
                }
            }
        }
        other => {
            let mut shown: String = other.chars().take(40).collect();
            if shown.len() < other.len() {
                shown.push('…');
            }
            Err(FrameError::new(
                "unknown_type",
                format!("unknown frame type `{shown}` (expected subscribe, unsubscribe, ack, message, join, leave or publish)"),
                id,
            ))
        }
    }
}

/// `{"type":"welcome",...}`, sent when a connection opens.
pub fn welcome_frame(connection_id: &str, user_id: &str, seq: u64) -> String {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Welcome<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        connection_id: &'a str,
        user_id: &'a str,
        seq: u64,
    }
    to_json(&Welcome { kind: "welcome", connection_id, user_id, seq })
}

/// `{"type":"ok","id":...}`, the reply to a valid frame that carried an `id`.
pub fn ok_frame(id: &RawValue) -> String {
    format!(r#"{{"type":"ok","id":{}}}"#, id.get())
}

/// `{"type":"gap","from":F,"to":T}`: envelopes `from..=to` can no longer be replayed (dropped from
/// history, or history is off); fetch them from your own backend if they matter.
pub fn gap_frame(from: u64, to: u64) -> String {
    format!(r#"{{"type":"gap","from":{from},"to":{to}}}"#)
}

/// An envelope as stored in history, marked for replay: `"replayed": true` is added.
pub fn replayed(envelope: &str) -> String {
    match envelope.strip_suffix('}') {
        Some(head) => format!(r#"{head},"replayed":true}}"#),
        None => envelope.to_string(),
    }
}

/// The parts of a stored envelope that filters look at.
#[derive(Deserialize)]
pub struct StoredEnvelope<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub payload: &'a RawValue,
    #[serde(borrow, default)]
    pub channel: Option<std::borrow::Cow<'a, str>>,
}

/// One Server-Sent Events event: `id:` (when given) and the text as `data:` lines. Every line break
/// the text may hold (`\r\n`, `\r`, `\n`, which JSON allows between tokens) starts a new `data:` line,
/// which the client joins back with `\n`, so any payload is framed correctly.
pub fn sse_event(id: Option<u64>, data: &str) -> String {
    let mut out = String::with_capacity(data.len() + 32);
    if let Some(id) = id {
        out.push_str("id: ");
        out.push_str(&id.to_string());
        out.push('\n');
    }
    let mut rest = data;
    loop {
        let cut = rest.find(['\r', '\n']);
        out.push_str("data: ");
        out.push_str(&rest[..cut.unwrap_or(rest.len())]);
        out.push('\n');
        match cut {
            None => break,
            Some(i) => {
                let skip = if rest[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = &rest[i + skip..];
            }
        }
    }
    out.push('\n');
    out
}

/// A checked `POST /ack` body (acknowledgements from SSE clients).
#[derive(Debug)]
pub struct AckRequest<'a> {
    pub connection_id: String,
    pub envelope_id: String,
    pub result: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawAck<'a> {
    #[serde(rename = "connectionId", default)]
    connection_id: Option<Value>,
    #[serde(rename = "envelopeId", default)]
    envelope_id: Option<Value>,
    #[serde(borrow, default)]
    result: Option<&'a RawValue>,
}

/// Parses and checks a `POST /ack` body.
pub fn parse_ack(body: &[u8]) -> Result<AckRequest<'_>, Error> {
    require_object(body)?;
    let raw: RawAck<'_> = serde_json::from_slice(body).map_err(body_error)?;
    let string = |v: Option<Value>, name: &str| match v {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        _ => Err(Error::bad_request("invalid_ack", format!("`{name}` must be a non-empty string"))),
    };
    Ok(AckRequest {
        connection_id: string(raw.connection_id, "connectionId")?,
        envelope_id: string(raw.envelope_id, "envelopeId")?,
        result: raw.result,
    })
}

fn require_object(body: &[u8]) -> Result<(), Error> {
    // serde would also read a struct from a JSON array; the body must be an object.
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        return Ok(());
    }
    Err(if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() {
        Error::bad_request("invalid_body", "the body must be a JSON object")
    } else {
        Error::bad_request("invalid_json", "the body is not valid JSON")
    })
}

fn body_error(e: serde_json::Error) -> Error {
    if e.is_data() {
        Error::bad_request(
            "invalid_body",
            format!(
                "the body must be a JSON object with fields of the documented types (problem at line {}, column {})",
                e.line(),
                e.column()
            ),
        )
    } else {
        Error::bad_request("invalid_json", "the body is not valid JSON")
    }
}

/// Checks an `Idempotency-Key` header value: 1 to 255 visible ASCII characters.
pub fn check_idempotency_key(key: &str) -> Result<(), Error> {
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::bad_request(
            "invalid_idempotency_key",
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        ));
    }
    Ok(())
}

/// A skipped entry of a frame's `filters`, reported in the error frame.
#[derive(Serialize, Debug, PartialEq)]
pub struct Skipped {
    pub index: usize,
    pub reason: String,
}

/// `{"type":"error","code":...,"message":...,"id"?:...,"skipped"?:[...]}`.
pub fn error_frame(code: &str, message: &str, id: Option<&RawValue>, skipped: &[Skipped]) -> String {
    #[derive(Serialize)]
    struct ErrorFrame<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        code: &'a str,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
        #[serde(skip_serializing_if = "<[Skipped]>::is_empty")]
        skipped: &'a [Skipped],
    }
    to_json(&ErrorFrame { kind: "error", code, message, id, skipped })
}

/// An envelope's JSON up to its payload: `{"envelopeId":…,"timestamp":…,"payload":`. The payload's
/// own JSON text and `}` complete it, so the hub can build the envelope around a payload it never
/// copies into wasm (see [`crate::hub`]).
pub fn envelope_head(envelope_id: &str, seq: u64, kind: &str, user_id: &str, timestamp: &str) -> String {
    channel_envelope_head(envelope_id, seq, kind, user_id, timestamp, None, None)
}

/// [`envelope_head`] for a channel publish: `channel`, and `from` (the publishing user) when a
/// client published it, come before `payload`.
pub fn channel_envelope_head(
    envelope_id: &str,
    seq: u64,
    kind: &str,
    user_id: &str,
    timestamp: &str,
    channel: Option<&str>,
    from: Option<&str>,
) -> String {
    let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let mut head = format!(
        r#"{{"envelopeId":{},"seq":{seq},"type":{},"userId":{},"timestamp":{},"#,
        q(envelope_id),
        q(kind),
        q(user_id),
        q(timestamp)
    );
    if let Some(channel) = channel {
        head.push_str(&format!(r#""channel":{},"#, q(channel)));
    }
    if let Some(from) = from {
        head.push_str(&format!(r#""from":{},"#, q(from)));
    }
    head.push_str(r#""payload":"#);
    head
}

/// What the Worker has checked about a publish, handed to the hub in the hop's URL (the payload's
/// JSON text is the hop's body).
#[derive(Debug, Clone, PartialEq)]
pub struct PublishMeta {
    pub user_id: String,
    pub kind: String,
    pub connection_id: Option<String>,
    pub timeout_ms: Option<u64>,
    /// A fingerprint of the whole request body, for `Idempotency-Key` conflicts.
    pub body_hash: String,
    /// A channel publish: only connections that joined it receive the envelope.
    pub channel: Option<String>,
    /// A client's channel publish: its user (the envelope's `from`) and its connection (skipped).
    pub from: Option<String>,
    pub except: Option<String>,
}

impl PublishMeta {
    pub fn from_request(p: &PublishRequest<'_>, user_id: &str, body: &[u8]) -> PublishMeta {
        PublishMeta {
            user_id: user_id.to_string(),
            kind: p.kind.clone(),
            connection_id: p.connection_id.clone(),
            timeout_ms: p.timeout_ms,
            body_hash: fingerprint(body),
            channel: match &p.recipients {
                Recipients::Channel(c) => Some(c.clone()),
                _ => None,
            },
            from: None,
            except: None,
        }
    }

    /// `(name, value)` query pairs for the hop.
    pub fn to_query(&self) -> Vec<(&'static str, String)> {
        let mut q = vec![("user", self.user_id.clone()), ("type", self.kind.clone()), ("hash", self.body_hash.clone())];
        if let Some(c) = &self.connection_id {
            q.push(("conn", c.clone()));
        }
        if let Some(t) = self.timeout_ms {
            q.push(("timeout", t.to_string()));
        }
        for (name, value) in [("channel", &self.channel), ("from", &self.from), ("except", &self.except)] {
            if let Some(v) = value {
                q.push((name, v.clone()));
            }
        }
        q
    }

    /// Reads the hop's query pairs back.
    pub fn from_query(pairs: Vec<(String, String)>) -> Option<PublishMeta> {
        let (mut user_id, mut kind, mut body_hash, mut connection_id, mut timeout_ms) = (None, None, None, None, None);
        let (mut channel, mut from, mut except) = (None, None, None);
        for (k, v) in pairs {
            match k.as_str() {
                "user" => user_id = Some(v),
                "type" => kind = Some(v),
                "hash" => body_hash = Some(v),
                "conn" => connection_id = Some(v),
                "timeout" => timeout_ms = Some(v.parse().ok()?),
                "channel" => channel = Some(v),
                "from" => from = Some(v),
                "except" => except = Some(v),
                _ => {}
            }
        }
        Some(PublishMeta {
            user_id: user_id?,
            kind: kind?,
            connection_id,
            timeout_ms,
            body_hash: body_hash?,
            channel,
            from,
            except,
        })
    }
}

/// A short, stable fingerprint of a publish body, to tell a retry from a different publish that
/// reuses its `Idempotency-Key`. Not security-relevant (the key's owner is already authenticated).
pub fn fingerprint(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}:{}", bytes.len())
}

/// A checked `POST /publish` body. Borrowed from the request bytes.
#[derive(Debug)]
pub struct PublishRequest<'a> {
    pub recipients: Recipients,
    pub kind: String,
    pub payload: &'a RawValue,
    pub connection_id: Option<String>,
    pub timeout_ms: Option<u64>,
}

/// Whom a publish is for: one user (`userId`), or several (`userIds`, deduplicated, in order).
#[derive(Debug, Clone, PartialEq)]
pub enum Recipients {
    One(String),
    Many(Vec<String>),
    /// Every member of a channel (`channel`).
    Channel(String),
}

/// Upper bound of `MAX_PUBLISH_USERS` (each user is one subrequest from the Worker).
pub const MAX_PUBLISH_USERS_LIMIT: usize = 10_000;

#[derive(Deserialize)]
struct RawPublish<'a> {
    #[serde(rename = "userId", default)]
    user_id: Option<Value>,
    #[serde(rename = "userIds", default)]
    user_ids: Option<Value>,
    #[serde(default)]
    channel: Option<Value>,
    #[serde(rename = "type", default)]
    kind: Option<Value>,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
    #[serde(rename = "connectionId", default)]
    connection_id: Option<Value>,
    #[serde(rename = "timeoutMs", default)]
    timeout_ms: Option<Value>,
}

/// Parses and checks a publish body. Unknown fields are ignored (HopeFlow clients send extras).
pub fn parse_publish(body: &[u8]) -> Result<PublishRequest<'_>, Error> {
    require_object(body)?;
    let raw: RawPublish<'_> = serde_json::from_slice(body).map_err(body_error)?;
    let user_ids = raw.user_ids.filter(|v| !v.is_null());
    let channel = raw.channel.filter(|v| !v.is_null());
    let recipients = match (raw.user_id, user_ids, channel) {
        (None | Some(Value::Null), None, Some(Value::String(c))) => {
            crate::channel::check_name(&c).map_err(|m| Error::bad_request("invalid_channel", m))?;
            Recipients::Channel(c)
        }
        (_, _, Some(Value::String(_))) => {
            return Err(Error::bad_request("invalid_channel", "send one of `userId`, `userIds` or `channel`"))
        }
        (_, _, Some(_)) => return Err(Error::bad_request("invalid_channel", "`channel` must be a string")),
        (user_id, user_ids, None) => match (user_id, user_ids) {
            (Some(Value::String(s)), None) => {
                crate::auth::check_user_id(&s).map_err(|m| Error::bad_request("invalid_user_id", m))?;
                Recipients::One(s)
            }
            (None | Some(Value::Null), Some(Value::Array(list))) => {
                let mut ids: Vec<String> = Vec::with_capacity(list.len());
                for (i, v) in list.into_iter().enumerate() {
                    let Value::String(id) = v else {
                        return Err(Error::bad_request("invalid_user_ids", format!("`userIds[{i}]` must be a string")));
                    };
                    crate::auth::check_user_id(&id)
                        .map_err(|m| Error::bad_request("invalid_user_ids", format!("`userIds[{i}]`: {m}")))?;
                    if !ids.contains(&id) {
                        ids.push(id);
                    }
                }
                if ids.is_empty() {
                    return Err(Error::bad_request("invalid_user_ids", "`userIds` must name at least one user"));
                }
                Recipients::Many(ids)
            }
            (None | Some(Value::Null), Some(_)) => {
                return Err(Error::bad_request("invalid_user_ids", "`userIds` must be an array of user id strings"))
            }
            (None | Some(Value::Null), None) => {
                return Err(Error::bad_request("invalid_user_id", "`userId` (or `userIds`, or `channel`) is required"))
            }
            (Some(Value::String(_)), Some(_)) => {
                return Err(Error::bad_request("invalid_user_id", "send either `userId` or `userIds`, not both"))
            }
            (Some(_), _) => return Err(Error::bad_request("invalid_user_id", "`userId` must be a string")),
        },
    };
    let kind = match raw.kind {
        None | Some(Value::Null) => "message".to_string(),
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_TYPE_BYTES => s,
        Some(_) => {
            return Err(Error::bad_request(
                "invalid_type",
                format!("`type` must be a non-empty string of at most {MAX_TYPE_BYTES} bytes"),
            ))
        }
    };
    let connection_id = match raw.connection_id {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.is_empty() => Some(s),
        Some(_) => {
            return Err(Error::bad_request("invalid_connection_id", "`connectionId` must be a non-empty string"))
        }
    };
    let timeout_ms = match raw.timeout_ms {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| {
            Error::bad_request("invalid_timeout", "`timeoutMs` must be a non-negative whole number of milliseconds")
        })?),
    };
    let payload = raw.payload.unwrap_or_else(|| null());
    if connection_id.is_some() && !matches!(recipients, Recipients::One(_)) {
        return Err(Error::bad_request("invalid_connection_id", "`connectionId` applies to a single `userId` only"));
    }
    Ok(PublishRequest { recipients, kind, payload, connection_id, timeout_ms })
}

/// JSON `null` as raw JSON (the payload of a publish without one, the result of an ack without one).
pub fn null() -> &'static RawValue {
    // Borrowed from a static string; `null` always parses.
    serde_json::from_str("null").unwrap_or_else(|_| unreachable!())
}

/// One connection's acknowledgement in a publish response.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct AckOut<'a> {
    pub connection_id: &'a str,
    pub result: &'a RawValue,
}

/// The `POST /publish` response body.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct PublishResponse<'a> {
    pub envelope_id: &'a str,
    pub seq: u64,
    pub client_count: usize,
    pub results: Vec<&'a RawValue>,
    pub acks: Vec<AckOut<'a>>,
    pub pending: Vec<&'a str>,
    pub closed: Vec<&'a str>,
    /// Set on the answer to a retried publish (same `Idempotency-Key`): nothing was delivered again.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
    /// On a channel publish: how many of the user's connections have joined the channel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub joined: Option<usize>,
    /// On a channel publish with no joined connection: the user's last one closed within
    /// `CHANNEL_LINGER_SECONDS`, so the envelope was kept for its resume.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub lingering: bool,
}

/// `ms` since the Unix epoch as RFC 3339 UTC with milliseconds, e.g. `2026-11-23T10:00:00.000Z`.
/// (Days to civil date after Howard Hinnant's `civil_from_days`; no date library on the hot path.)
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem % 3600 / 60, rem % 60, ms % 1000)
}

fn to_json<T: Serialize>(value: &T) -> String {
    // Serializing these plain structs into a String cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ping_any_case_and_whitespace() {
        for t in ["ping", "PING", " Ping\n", "\tpInG "] {
            assert!(matches!(parse_client_frame(t), Ok(ClientFrame::Ping)), "{t:?}");
        }
        assert!(parse_client_frame("pingg").is_err());
    }

    #[test]
    fn subscribe_with_id_and_since() {
        let f = parse_client_frame(r#"{"type":"subscribe","filters":[{"type":"a"}],"since":7,"id":"x1"}"#).unwrap();
        match f {
            ClientFrame::Subscribe { filters, since, id } => {
                assert_eq!(filters, json!([{"type": "a"}]));
                assert_eq!(since, Some(7));
                assert_eq!(id.unwrap().get(), r#""x1""#);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ack_keeps_result_raw() {
        let f = parse_client_frame(r#"{"type":"ack","envelopeId":"e1","result":{"ok": true}}"#).unwrap();
        match f {
            ClientFrame::Ack { envelope_id, result, id } => {
                assert_eq!(envelope_id, "e1");
                assert_eq!(result.unwrap().get(), r#"{"ok": true}"#);
                assert!(id.is_none());
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_client_frame(r#"{"type":"ack","envelopeId":"e1"}"#),
            Ok(ClientFrame::Ack { result: None, .. })
        ));
        // The fast path and the general parser agree, including on the unusual shapes.
        for text in [
            r#"{"type":"ack","envelopeId":"e\u0031","result":1}"#,
            r#"{"type":"ack","envelopeId":"e1","result":[1],"id":"x","extra":true}"#,
            r#" {"envelopeId":"e1","type":"ack"}"#,
        ] {
            match parse_client_frame(text) {
                Ok(ClientFrame::Ack { envelope_id, .. }) => assert_eq!(envelope_id, "e1", "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        assert_eq!(parse_client_frame(r#"{"type":"ack","envelopeId":""}"#).unwrap_err().code, "invalid_frame");
        assert_eq!(parse_client_frame(r#"{"type":"ack","envelopeId":5}"#).unwrap_err().code, "invalid_frame");
        assert_eq!(
            parse_client_frame(r#"{"type":"ack","envelopeId":"e","type":"ack"}"#).unwrap_err().code,
            "invalid_frame"
        );
    }

    #[test]
    fn refused_frames_carry_codes_and_ids() {
        let cases = [
            ("{", "invalid_json"),
            ("hello", "invalid_json"),
            ("", "invalid_json"),
            ("[1,2]", "invalid_frame"),
            ("42", "invalid_frame"),
            (r#"{"filters":[]}"#, "invalid_frame"),
            (r#"{"type":5}"#, "invalid_frame"),
            (r#"{"type":"subscribe"}"#, "invalid_frame"),
            (r#"{"type":"subscribe","filters":[],"since":-1}"#, "invalid_frame"),
            (r#"{"type":"ack"}"#, "invalid_frame"),
            (r#"{"type":"ack","envelopeId":7}"#, "invalid_frame"),
            (r#"{"type":"dance","id":3}"#, "unknown_type"),
            (r#"{"type":"a","type":"b"}"#, "invalid_frame"),
        ];
        for (text, code) in cases {
            let err = parse_client_frame(text).unwrap_err();
            assert_eq!(err.code, code, "{text}");
        }
        let err = parse_client_frame(r#"{"type":"dance","id":3}"#).unwrap_err();
        assert_eq!(err.id.unwrap().get(), "3");
        let big_id = format!(r#"{{"type":"subscribe","filters":[],"id":"{}"}}"#, "x".repeat(MAX_ID_BYTES));
        assert_eq!(parse_client_frame(&big_id).unwrap_err().code, "invalid_frame");
    }

    #[test]
    fn control_frames_are_json() {
        let w: Value = serde_json::from_str(&welcome_frame("c1", "u\"1", 3)).unwrap();
        assert_eq!(w, json!({"type": "welcome", "connectionId": "c1", "userId": "u\"1", "seq": 3}));
        let id: Box<RawValue> = serde_json::from_str(r#"{"n":1}"#).unwrap();
        let ok: Value = serde_json::from_str(&ok_frame(&id)).unwrap();
        assert_eq!(ok, json!({"type": "ok", "id": {"n": 1}}));
        let skipped = [Skipped { index: 2, reason: "bad".into() }];
        let e: Value = serde_json::from_str(&error_frame("invalid_filter", "m", Some(&id), &skipped)).unwrap();
        assert_eq!(
            e,
            json!({"type": "error", "code": "invalid_filter", "message": "m", "id": {"n": 1}, "skipped": [{"index": 2, "reason": "bad"}]})
        );
        let e: Value = serde_json::from_str(&error_frame("x", "m", None, &[])).unwrap();
        assert_eq!(e, json!({"type": "error", "code": "x", "message": "m"}));
    }

    #[test]
    fn envelope_embeds_payload_verbatim() {
        let payload = r#"{"a": [1, 2]}"#;
        assert_eq!(
            format!("{}{payload}}}", envelope_head("e", 1, "t", "u", "2026-01-01T00:00:00.000Z")),
            r#"{"envelopeId":"e","seq":1,"type":"t","userId":"u","timestamp":"2026-01-01T00:00:00.000Z","payload":{"a": [1, 2]}}"#
        );
    }

    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_430_153_001), "2026-11-23T10:35:53.001Z");
        assert_eq!(rfc3339(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
        // Every day boundary for a few years agrees with chrono.
        for day in (0..20_000u64).step_by(7) {
            let ms = day * 86_400_000 + 45_296_789;
            let expected = chrono::DateTime::from_timestamp_millis(ms as i64)
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            assert_eq!(rfc3339(ms), expected);
        }
    }

    #[test]
    fn sse_events_split_every_line_break() {
        assert_eq!(sse_event(Some(3), r#"{"a":1}"#), "id: 3\ndata: {\"a\":1}\n\n");
        assert_eq!(sse_event(None, "{\r\n\"a\":\r1\n}"), "data: {\ndata: \"a\":\ndata: 1\ndata: }\n\n");
        assert_eq!(sse_event(None, ""), "data: \n\n");
        let unicode = r#"{"t":"é 🙂 \u2028"}"#;
        assert_eq!(sse_event(None, unicode), format!("data: {unicode}\n\n"));
    }

    #[test]
    fn replayed_marks_an_envelope() {
        let v: Value = serde_json::from_str(&replayed(r#"{"envelopeId":"e","seq":1,"payload":{}}"#)).unwrap();
        assert_eq!(v["replayed"], true);
        assert_eq!(v["seq"], 1);
        let stored: StoredEnvelope<'_> = serde_json::from_str(r#"{"seq":1,"type":"t","payload":[1]}"#).unwrap();
        assert_eq!((stored.kind.as_ref(), stored.payload.get()), ("t", "[1]"));
        assert_eq!(gap_frame(3, 9), r#"{"type":"gap","from":3,"to":9}"#);
    }

    #[test]
    fn ack_body_checks() {
        let a = parse_ack(br#"{"connectionId":"c","envelopeId":"e","result":[1]}"#).unwrap();
        assert_eq!((a.connection_id.as_str(), a.envelope_id.as_str(), a.result.unwrap().get()), ("c", "e", "[1]"));
        for (body, code) in [
            (&b"x"[..], "invalid_json"),
            (b"[]", "invalid_body"),
            (br#"{"envelopeId":"e"}"#, "invalid_ack"),
            (br#"{"connectionId":"c","envelopeId":5}"#, "invalid_ack"),
        ] {
            assert_eq!(parse_ack(body).unwrap_err().code(), code);
        }
    }

    #[test]
    fn idempotency_keys() {
        assert!(check_idempotency_key("order-123:retry").is_ok());
        for bad in ["", " ", "has space", "é", &"k".repeat(256)] {
            assert!(check_idempotency_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn envelope_head_escapes_every_field_and_keeps_the_payload_raw() {
        let payload = "{\"a\":\n [1, \"é\\\"\"]}";
        let built =
            format!("{}{payload}}}", envelope_head("e\"1", 42, "t\u{2028}", "ユーザー", "2026-01-01T00:00:00.000Z"));
        let v: Value = serde_json::from_str(&built).unwrap();
        assert_eq!(
            v,
            json!({"envelopeId": "e\"1", "seq": 42, "type": "t\u{2028}", "userId": "ユーザー",
                   "timestamp": "2026-01-01T00:00:00.000Z", "payload": {"a": [1, "é\""]}})
        );
        assert!(built.ends_with(&format!("\"payload\":{payload}}}")), "payload embedded verbatim");
    }

    #[test]
    fn publish_meta_round_trips_through_the_query() {
        let body = r#"{"userId":"u é","type":"t&x=1","connectionId":"c","timeoutMs":0}"#.as_bytes();
        let p = parse_publish(body).unwrap();
        let meta = PublishMeta::from_request(&p, "u é", body);
        let query = meta.to_query();
        let pairs: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let url = crate::query::build("https://hub/publish", &pairs);
        assert_eq!(PublishMeta::from_query(crate::query::pairs(&url)), Some(meta));
        assert_eq!(PublishMeta::from_query(crate::query::pairs("https://hub/p?user=u")), None);
        assert_ne!(fingerprint(b"{}"), fingerprint(b"{ }"));
    }

    #[test]
    fn publish_body_defaults_and_checks() {
        let p = parse_publish(br#"{"userId":"u1","extra":1}"#).unwrap();
        assert_eq!(p.recipients, Recipients::One("u1".into()));
        assert_eq!((p.kind.as_str(), p.payload.get()), ("message", "null"));
        assert_eq!(p.timeout_ms, None);
        let p = parse_publish(br#"{"userId":"u1","type":"t","payload":[1],"connectionId":"c","timeoutMs":0}"#).unwrap();
        assert_eq!(
            (p.kind.as_str(), p.payload.get(), p.connection_id.as_deref(), p.timeout_ms),
            ("t", "[1]", Some("c"), Some(0))
        );

        let many = parse_publish(br#"{"userIds":["a","b","a"],"userId":null}"#).unwrap();
        assert_eq!(many.recipients, Recipients::Many(vec!["a".into(), "b".into()]), "deduplicated, in order");
        for (body, code) in [
            (&br#"{"userIds":[]}"#[..], "invalid_user_ids"),
            (br#"{"userIds":"a"}"#, "invalid_user_ids"),
            (br#"{"userIds":["a",1]}"#, "invalid_user_ids"),
            (br#"{"userIds":["a",""]}"#, "invalid_user_ids"),
            (br#"{"userId":"a","userIds":["b"]}"#, "invalid_user_id"),
            (br#"{"userIds":["a"],"connectionId":"c"}"#, "invalid_connection_id"),
        ] {
            assert_eq!(parse_publish(body).unwrap_err().code(), code, "{}", String::from_utf8_lossy(body));
        }
        let cases: [(&[u8], &str); 12] = [
            (b"", "invalid_json"),
            (b"{", "invalid_json"),
            (b"\xff\xfe", "invalid_json"),
            (b"[]", "invalid_body"),
            (b"\"u1\"", "invalid_body"),
            (b"{}", "invalid_user_id"),
            (br#"{"userId":"  "}"#, "invalid_user_id"),
            (br#"{"userId":7}"#, "invalid_user_id"),
            (br#"{"userId":"u","type":""}"#, "invalid_type"),
            (br#"{"userId":"u","type":{}}"#, "invalid_type"),
            (br#"{"userId":"u","connectionId":1}"#, "invalid_connection_id"),
            (br#"{"userId":"u","timeoutMs":-5}"#, "invalid_timeout"),
        ];
        for (body, code) in cases {
            let err = parse_publish(body).unwrap_err();
            assert_eq!(err.code(), code, "{}", String::from_utf8_lossy(body));
            assert_eq!(err.status(), 400);
        }
        assert_eq!(parse_publish(br#"{"userId":"u","timeoutMs":1.5}"#).unwrap_err().code(), "invalid_timeout");
    }

    #[test]
    fn channel_frames_parse_and_bad_ones_say_why() {
        match parse_client_frame(r#"{"type":"join","channel":"room:1","id":3}"#).unwrap() {
            ClientFrame::Join { channel, id } => assert_eq!((channel.as_str(), id.unwrap().get()), ("room:1", "3")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_client_frame(r#"{"type":"leave","channel":"lobby"}"#).unwrap(),
            ClientFrame::Leave { channel, id: None } if channel == "lobby"
        ));
        match parse_client_frame(
            r#"{"type":"publish","channel":"c","event":"typing","payload":{"on":true},"timeoutMs":50}"#,
        )
        .unwrap()
        {
            ClientFrame::Publish { channel, kind, payload, timeout_ms, .. } => {
                assert_eq!(
                    (channel.as_str(), kind.as_str(), payload.get(), timeout_ms),
                    ("c", "typing", r#"{"on":true}"#, Some(50))
                )
            }
            other => panic!("{other:?}"),
        }
        match parse_client_frame(r#"{"type":"publish","channel":"c"}"#).unwrap() {
            ClientFrame::Publish { kind, payload, .. } => {
                assert_eq!((kind.as_str(), payload.get()), ("message", "null"))
            }
            other => panic!("{other:?}"),
        }
        for (frame, code) in [
            (r#"{"type":"join"}"#, "invalid_channel"),
            (r#"{"type":"join","channel":5}"#, "invalid_channel"),
            (r#"{"type":"join","channel":"a b"}"#, "invalid_channel"),
            (r#"{"type":"leave","channel":""}"#, "invalid_channel"),
            (r#"{"type":"publish","channel":"c","event":""}"#, "invalid_frame"),
            (r#"{"type":"publish","channel":"c","timeoutMs":-1}"#, "invalid_frame"),
        ] {
            assert_eq!(parse_client_frame(frame).unwrap_err().code, code, "{frame}");
        }
    }

    #[test]
    fn channel_publish_bodies() {
        let p = parse_publish(br#"{"channel":"room:1","type":"t","payload":[1]}"#).unwrap();
        assert_eq!(p.recipients, Recipients::Channel("room:1".into()));
        let meta = PublishMeta::from_request(&p, "", b"x");
        assert_eq!(meta.channel.as_deref(), Some("room:1"));
        let mut meta = meta;
        meta.from = Some("alice".into());
        meta.except = Some("conn-1".into());
        let pairs = meta.to_query().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        assert_eq!(PublishMeta::from_query(pairs).unwrap(), meta);
        for body in [
            &br#"{"channel":"r","userId":"u"}"#[..],
            br#"{"channel":"r","userIds":["u"]}"#,
            br#"{"channel":7}"#,
            br#"{"channel":"no spaces"}"#,
        ] {
            assert_eq!(parse_publish(body).unwrap_err().code(), "invalid_channel");
        }
        assert_eq!(
            parse_publish(br#"{"channel":"r","connectionId":"c"}"#).unwrap_err().code(),
            "invalid_connection_id"
        );
    }

    #[test]
    fn channel_envelopes_name_the_channel_and_the_sender() {
        let head = channel_envelope_head("e", 1, "t", "u", "ts", Some("room:1"), Some("al\"ice"));
        let v: Value = serde_json::from_str(&format!("{head}null}}")).unwrap();
        assert_eq!(v["channel"], "room:1");
        assert_eq!(v["from"], "al\"ice");
        let text = format!("{head}null}}");
        let stored: StoredEnvelope<'_> = serde_json::from_str(&text).unwrap();
        assert_eq!(stored.channel.as_deref(), Some("room:1"));
        let plain = envelope_head("e", 1, "t", "u", "ts");
        assert!(!plain.contains("channel"));
    }
}
