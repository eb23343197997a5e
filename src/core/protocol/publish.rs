//! The backend's side of the API: the `POST /publish` body (one user, `userIds`, or a channel), its
//! answer, the `POST /ack` body, and `Idempotency-Key` checks.

use super::{null, MAX_TYPE_BYTES};
use crate::core::error::Error;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

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
            crate::core::channel::check_name(&c).map_err(|m| Error::bad_request("invalid_channel", m))?;
            Recipients::Channel(c)
        }
        (_, _, Some(Value::String(_))) => {
            return Err(Error::bad_request("invalid_channel", "send one of `userId`, `userIds` or `channel`"))
        }
        (_, _, Some(_)) => return Err(Error::bad_request("invalid_channel", "`channel` must be a string")),
        (user_id, user_ids, None) => match (user_id, user_ids) {
            (Some(Value::String(s)), None) => {
                crate::core::auth::check_user_id(&s).map_err(|m| Error::bad_request("invalid_user_id", m))?;
                Recipients::One(s)
            }
            (None | Some(Value::Null), Some(Value::Array(list))) => {
                let mut ids: Vec<String> = Vec::with_capacity(list.len());
                for (i, v) in list.into_iter().enumerate() {
                    let Value::String(id) = v else {
                        return Err(Error::bad_request("invalid_user_ids", format!("`userIds[{i}]` must be a string")));
                    };
                    crate::core::auth::check_user_id(&id)
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

#[cfg(test)]
mod tests {
    use super::*;
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
    fn channel_publish_bodies() {
        let p = parse_publish(br#"{"channel":"room:1","type":"t","payload":[1]}"#).unwrap();
        assert_eq!(p.recipients, Recipients::Channel("room:1".into()));
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
}
