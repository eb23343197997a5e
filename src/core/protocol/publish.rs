//! The backend's side of the API: the `POST /publish` body (one user, `userIds`, or a channel), its
//! answer, the `POST /ack` body, and `Idempotency-Key` checks.
//!
//! Why one file: the body, its answer (and the trimmed form stored for retries) are one contract
//! with the backend; more than half of the file is its unit and property tests.

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
    let body = json_object_text(body)?;
    let raw: RawAck<'_> = serde_json::from_str(body).map_err(body_error)?;
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

/// The body as text, if it is a JSON object's (serde would also read a struct from a JSON array).
/// Every JSON in the crate is read from `&str`, so serde_json's parser and each struct's `Deserialize`
/// are in the wasm once, not also for `&[u8]` (2.4 KB of gzip: BENCHMARKS.md, "Two size cuts").
fn json_object_text(body: &[u8]) -> Result<&str, Error> {
    let invalid = || Error::bad_request("invalid_json", "the body is not valid JSON");
    let body = std::str::from_utf8(body).map_err(|_| invalid())?;
    if body.trim_ascii_start().starts_with('{') {
        return Ok(body);
    }
    Err(if serde_json::from_str::<serde::de::IgnoredAny>(body).is_ok() {
        Error::bad_request("invalid_body", "the body must be a JSON object")
    } else {
        invalid()
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
    let body = json_object_text(body)?;
    let raw: RawPublish<'_> = serde_json::from_str(body).map_err(body_error)?;
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
                // Refused by length before any per-entry work: de-duplicating a 1 MiB list is not free.
                if list.len() > MAX_PUBLISH_USERS_LIMIT {
                    return Err(Error::bad_request(
                        "invalid_user_ids",
                        format!(
                            "`userIds` names {} users; at most {MAX_PUBLISH_USERS_LIMIT} (MAX_PUBLISH_USERS is at most that)",
                            list.len()
                        ),
                    ));
                }
                let mut ids: Vec<String> = Vec::with_capacity(list.len());
                let mut seen = std::collections::HashSet::with_capacity(list.len());
                for (i, v) in list.into_iter().enumerate() {
                    let Value::String(id) = v else {
                        return Err(Error::bad_request("invalid_user_ids", format!("`userIds[{i}]` must be a string")));
                    };
                    crate::core::auth::check_user_id(&id)
                        .map_err(|m| Error::bad_request("invalid_user_ids", format!("`userIds[{i}]`: {m}")))?;
                    if seen.insert(id.clone()) {
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

/// A publish answer cut down to be stored for `Idempotency-Key` retries under `max` bytes: the ack
/// results (client-controlled and unbounded in number) are left out, the rest kept, and
/// `"trimmed": true` says so. If even that is too large (thousands of connection ids), only the
/// envelope's identity and the counts remain.
pub fn trimmed_answer<T: Serialize>(response: &T, max: usize) -> String {
    let mut v = serde_json::to_value(response).unwrap_or_default();
    let Some(map) = v.as_object_mut() else { return r#"{"trimmed":true}"#.to_string() };
    if let Some(results) = map.get_mut("results") {
        *results = Value::Array(Vec::new());
    }
    if let Some(Value::Array(acks)) = map.get_mut("acks") {
        for ack in acks.iter_mut() {
            if let Some(a) = ack.as_object_mut() {
                a.remove("result");
            }
        }
    }
    map.insert("trimmed".into(), Value::Bool(true));
    let text = v.to_string();
    if text.len() <= max {
        return text;
    }
    let count = |key: &str| v.get(key).and_then(Value::as_array).map_or(0, Vec::len);
    serde_json::json!({
        "envelopeId": v["envelopeId"], "seq": v["seq"], "clientCount": v["clientCount"],
        "acked": count("acks"), "pendingCount": count("pending"), "closedCount": count("closed"),
        "results": [], "acks": [], "pending": [], "closed": [], "trimmed": true,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
        let cases: [(&[u8], &str); 13] = [
            (b"", "invalid_json"),
            (b"{", "invalid_json"),
            (b"\xff\xfe", "invalid_json"),
            (b"{\"userId\":\"u\xff\"}", "invalid_json"),
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

    #[test]
    fn a_huge_user_ids_list_is_refused_by_length_first() {
        let ids: Vec<String> = (0..MAX_PUBLISH_USERS_LIMIT + 1).map(|i| format!("u{i}")).collect();
        let body = json!({ "userIds": ids }).to_string();
        let err = parse_publish(body.as_bytes()).unwrap_err();
        assert_eq!(err.code(), "invalid_user_ids");
        assert!(err.to_string().contains("MAX_PUBLISH_USERS"));
        // Duplicates anywhere in a long list collapse, first occurrence first.
        let mut ids: Vec<String> = (0..5000).map(|i| format!("u{}", i % 2500)).collect();
        ids.reverse();
        let body = json!({ "userIds": ids }).to_string();
        match parse_publish(body.as_bytes()).unwrap().recipients {
            Recipients::Many(list) => {
                assert_eq!(list.len(), 2500);
                assert_eq!(list[0], "u2499");
            }
            other => panic!("{other:?}"),
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// JSON values of some depth, for payloads and hostile fields.
        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(|n| json!(n)),
                "[a-zA-Z0-9 é🙂\\\"\n]{0,12}".prop_map(Value::String),
            ];
            leaf.prop_recursive(3, 24, 4, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    proptest::collection::btree_map("[a-zA-Z]{1,8}", inner, 0..4)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

            /// Any bytes as a publish body: accepted or refused with a 4xx and a stable code, never a panic.
            #[test]
            fn any_bytes_are_refused_cleanly(body in proptest::collection::vec(any::<u8>(), 0..400)) {
                if let Err(e) = parse_publish(&body) {
                    prop_assert!((400..500).contains(&e.status()), "{e:?}");
                    prop_assert!(!e.code().is_empty());
                }
            }

            /// Any JSON object with the publish fields set to arbitrary values: the same.
            #[test]
            fn any_json_fields_are_refused_cleanly(user_id in proptest::option::of(json_value()),
                                                   user_ids in proptest::option::of(json_value()),
                                                   kind in proptest::option::of(json_value()),
                                                   payload in proptest::option::of(json_value()),
                                                   timeout in proptest::option::of(json_value()),
                                                   conn in proptest::option::of(json_value())) {
                let mut body = serde_json::Map::new();
                for (k, v) in [("userId", user_id), ("userIds", user_ids), ("type", kind), ("payload", payload),
                               ("timeoutMs", timeout), ("connectionId", conn)] {
                    if let Some(v) = v {
                        body.insert(k.to_string(), v);
                    }
                }
                let text = Value::Object(body).to_string();
                if let Err(e) = parse_publish(text.as_bytes()) {
                    prop_assert!((400..500).contains(&e.status()), "{e:?}");
                }
            }

            /// A well-formed publish round-trips: recipients (de-duplicated in order), type, payload.
            #[test]
            fn valid_publishes_round_trip(users in proptest::collection::vec("[a-z0-9é]{1,6}", 1..20),
                                          kind in "[a-z.]{1,20}", payload in json_value(), many in any::<bool>()) {
                let body = if many {
                    json!({ "userIds": users, "type": kind, "payload": payload })
                } else {
                    json!({ "userId": users[0], "type": kind, "payload": payload })
                };
                let text = body.to_string();
                let p = parse_publish(text.as_bytes()).unwrap();
                prop_assert_eq!(&p.kind, &kind);
                let back: Value = serde_json::from_str(p.payload.get()).unwrap();
                prop_assert_eq!(back, payload);
                match p.recipients {
                    Recipients::Many(list) => {
                        let mut want: Vec<String> = Vec::new();
                        for u in &users {
                            if !want.contains(u) {
                                want.push(u.clone());
                            }
                        }
                        prop_assert!(many);
                        prop_assert_eq!(list, want);
                    }
                    Recipients::One(u) => {
                        prop_assert!(!many);
                        prop_assert_eq!(u, users[0].clone());
                    }
                    Recipients::Channel(_) => prop_assert!(false, "not a channel publish"),
                }
            }
        }
    }

    #[test]
    fn a_trimmed_answer_keeps_identity_and_drops_results() {
        let big = RawValue::from_string(format!("\"{}\"", "r".repeat(5000))).unwrap();
        let response = PublishResponse {
            envelope_id: "e1",
            seq: 7,
            client_count: 2,
            results: vec![&big, &big],
            acks: vec![AckOut { connection_id: "c1", result: &big }, AckOut { connection_id: "c2", result: &big }],
            pending: vec![],
            closed: vec![],
            duplicate: false,
            joined: None,
            lingering: false,
        };
        let t: Value = serde_json::from_str(&trimmed_answer(&response, 2000)).unwrap();
        assert_eq!(t["envelopeId"], "e1");
        assert_eq!(t["seq"], 7);
        assert_eq!(t["trimmed"], true);
        assert_eq!(t["results"], json!([]));
        assert_eq!(t["acks"], json!([{"connectionId": "c1"}, {"connectionId": "c2"}]));
        let tiny: Value = serde_json::from_str(&trimmed_answer(&response, 50)).unwrap();
        assert_eq!(
            (tiny["seq"].as_u64(), tiny["acked"].as_u64(), tiny["trimmed"].as_bool()),
            (Some(7), Some(2), Some(true))
        );
    }
}
