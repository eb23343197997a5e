//! Frames a client sends on its socket: parsed, checked, and refused with a code and the frame's `id`.
//! Acks, the hot path, are read by a borrowed fast path; payloads and results stay raw JSON text.

use super::{null, MAX_ID_BYTES, MAX_TYPE_BYTES};
use crate::core::filter::FilterList;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

/// A frame a client sent, parsed and checked.
#[derive(Debug)]
pub enum ClientFrame<'a> {
    /// `ping` in any case, with surrounding whitespace (exactly `ping` never reaches the hub).
    Ping,
    Subscribe {
        filters: FilterList,
        since: Option<u64>,
        id: Option<&'a RawValue>,
    },
    Unsubscribe {
        filters: FilterList,
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
    /// Join a channel (the token's `channels` claim must allow it); with `presence`, also watch who
    /// is in it (an `ok` with a snapshot, then `presence` frames).
    Join {
        channel: String,
        presence: bool,
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
    filters: Option<FilterList>,
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
    #[serde(default)]
    presence: Option<Value>,
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

/// How the common ack frame starts (`JSON.stringify({type: "ack", ...})`): frames that start so are
/// parsed before the flood check, because acks a publish is waiting for never count against it.
pub const ACK_PREFIX: &str = r#"{"type":"ack""#;

/// Parses one text frame from a client.
pub fn parse_client_frame(text: &str) -> Result<ClientFrame<'_>, FrameError<'_>> {
    if text.starts_with(ACK_PREFIX) {
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
                    crate::core::channel::check_name(&c).map_err(|m| FrameError::new("invalid_channel", m, id))?;
                    c
                }
                _ => return Err(FrameError::new("invalid_channel", format!("`{kind}` needs a string `channel`"), id)),
            };
            match kind {
                "join" => {
                    let presence = match raw.presence {
                        None | Some(Value::Null) => false,
                        Some(Value::Bool(b)) => b,
                        Some(_) => {
                            return Err(FrameError::new("invalid_frame", "`presence` must be true or false", id))
                        }
                    };
                    Ok(ClientFrame::Join { channel, presence, id })
                }
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
                assert_eq!((filters.head, filters.total), (vec![json!({"type": "a"})], 1));
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
    fn channel_frames_parse_and_bad_ones_say_why() {
        match parse_client_frame(r#"{"type":"join","channel":"room:1","id":3}"#).unwrap() {
            ClientFrame::Join { channel, presence, id } => {
                assert_eq!((channel.as_str(), presence, id.unwrap().get()), ("room:1", false, "3"))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_client_frame(r#"{"type":"join","channel":"c","presence":true}"#).unwrap(),
            ClientFrame::Join { presence: true, .. }
        ));
        let bad = parse_client_frame(r#"{"type":"join","channel":"c","presence":"yes","id":1}"#).unwrap_err();
        assert_eq!((bad.code, bad.id.unwrap().get()), ("invalid_frame", "1"));
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

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

            /// Any text as a client frame: a frame or a clean error code, never a panic.
            #[test]
            fn any_client_frame_is_handled(text in ".{0,300}") {
                if let Err(e) = parse_client_frame(&text) {
                    prop_assert!(!e.code.is_empty());
                }
            }

            /// JSON-shaped frames with hostile field values: a frame or a clean error code.
            #[test]
            fn json_frames_are_handled(kind in prop_oneof![Just("subscribe"), Just("ack"), Just("message"), Just("join"), Just("publish"), Just("x")],
                                       field in "[a-zA-Z]{1,10}", value in "(null|true|1|-1|\"s\"|\\[\\]|\\{\\}|1e400|\"\\\\u0000\")") {
                let text = format!(r#"{{"type":"{kind}","{field}":{value},"id":{value}}}"#);
                if let Err(e) = parse_client_frame(&text) {
                    prop_assert!(!e.code.is_empty());
                }
            }
        }
    }
}
