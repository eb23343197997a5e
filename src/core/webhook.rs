//! Backend webhooks, the pure part: CloudEvents 1.0 structured-mode events
//! (<https://github.com/cloudevents/spec/blob/v1.0.2/cloudevents/formats/json-format.md>), signed per
//! the Standard Webhooks scheme (<https://www.standardwebhooks.com/>), and the retry backoff.
//! The queues that send them are the user hub's outbox (`user_hub/outbox.rs`) and the event shards
//! (`event_hub/`), both through `runtime::webhook`.

use base64ct::{Base64, Encoding};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

pub const CONNECTION_OPENED: &str = "switchboard.connection.opened.v1";
pub const CONNECTION_CLOSED: &str = "switchboard.connection.closed.v1";
pub const CLIENT_MESSAGE: &str = "switchboard.client.message.v1";
/// Connection events that arrived while the user's outbox was full (`WEBHOOK_MAX_BACKLOG`), merged
/// into one event: counts, and the connections open after the last of them.
pub const CONNECTION_COALESCED: &str = "switchboard.connection.coalesced.v1";

/// The user's first connection opened and the user was not online already (`PRESENCE_WEBHOOKS=on`).
pub const USER_ONLINE: &str = "switchboard.user.online.v1";
/// The user's last connection closed and none opened within `USER_OFFLINE_DEBOUNCE_SECONDS`.
pub const USER_OFFLINE: &str = "switchboard.user.offline.v1";
/// A user became a member of a channel (sent by the channel's root through `hop::events`).
pub const CHANNEL_MEMBER_JOINED: &str = "switchboard.channel.member.joined.v1";
/// A user stopped being a member of a channel.
pub const CHANNEL_MEMBER_LEFT: &str = "switchboard.channel.member.left.v1";

/// The event shard (`events/{shard}`) a key's events go to: FNV-1a of the key's bytes, so the same
/// key always lands on the same shard (its events keep their order) on every isolate and deploy.
pub fn shard_of(key: &str, shards: u32) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for b in key.as_bytes() {
        hash ^= u32::from(*b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % shards.max(1)
}

/// `content-type` of one event per request (structured mode).
pub const CONTENT_TYPE: &str = "application/cloudevents+json; charset=utf-8";
/// `content-type` of a batch (`WEBHOOK_BATCH_MAX` > 1): a JSON array of structured events
/// (<https://github.com/cloudevents/spec/blob/v1.0.2/cloudevents/formats/json-format.md#4-json-batch-format>).
pub const BATCH_CONTENT_TYPE: &str = "application/cloudevents-batch+json; charset=utf-8";

/// What an attempt's answer means for the events it carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// 2xx: delivered; forget them.
    Delivered,
    /// 408, 429, 5xx, other statuses, network errors and timeouts: try again later, in order.
    Retry,
    /// Any other 4xx: the backend will never take it; retrying would block the user's queue.
    Permanent,
}

/// Classifies an HTTP status.
pub fn classify(status: u16) -> Delivery {
    match status {
        200..=299 => Delivery::Delivered,
        408 | 429 => Delivery::Retry,
        400..=499 => Delivery::Permanent,
        _ => Delivery::Retry,
    }
}

/// A batch's body: the stored events (each already a JSON object) as one JSON array.
pub fn batch_body<'a>(events: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::from("[");
    for (i, e) in events.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(e);
    }
    out.push(']');
    out
}

/// A batch's `webhook-id`: stable across retries of the same batch (same first event, same size).
pub fn batch_id(first_event_id: &str, count: usize) -> String {
    format!("{first_event_id}.{count}")
}

/// The `data` of a coalesced connection event after one more `opened` (or closed) event:
/// `previous` is the data so far (none for a new one). `connections` are the user's open
/// connections now; `at` is the RFC 3339 time of this event.
pub fn coalesce(previous: Option<&Value>, opened: bool, connections: &[String], at: &str) -> Value {
    let count = |key: &str| previous.and_then(|p| p.get(key)).and_then(Value::as_u64).unwrap_or(0);
    let first_at = previous.and_then(|p| p.get("firstAt")).and_then(Value::as_str).unwrap_or(at);
    json!({
        "opened": count("opened") + u64::from(opened),
        "closed": count("closed") + u64::from(!opened),
        "connections": connections,
        "firstAt": first_at,
        "lastAt": at,
    })
}

/// The CloudEvents `source` of every event.
pub const SOURCE: &str = "/switchboard";

/// Reads `WEBHOOK_SECRET`: `whsec_<base64>` (the Standard Webhooks form) is decoded; any other value
/// is used as raw bytes.
pub fn parse_secret(value: &str) -> Result<Vec<u8>, String> {
    match value.strip_prefix("whsec_") {
        Some(b64) => Base64::decode_vec(b64)
            .ok()
            .filter(|k| !k.is_empty())
            .ok_or_else(|| "WEBHOOK_SECRET starts with whsec_ but the rest is not base64".to_string()),
        None if value.is_empty() => Err("WEBHOOK_SECRET is empty".to_string()),
        None => Ok(value.as_bytes().to_vec()),
    }
}

/// A CloudEvent in structured JSON mode. `id` is also the `webhook-id` of every attempt.
pub fn event(id: &str, kind: &str, user_id: &str, time: &str, data: Value) -> String {
    event_value(id, kind, user_id, time, data).to_string()
}

/// [`event`] as a JSON value (`subject` is the user id).
pub fn event_value(id: &str, kind: &str, user_id: &str, time: &str, data: Value) -> Value {
    json!({
        "specversion": "1.0",
        "id": id,
        "source": SOURCE,
        "type": kind,
        "subject": user_id,
        "time": time,
        "datacontenttype": "application/json",
        "data": data,
    })
}

/// `webhook-signature`: `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
pub fn sign(secret: &[u8], id: &str, timestamp: i64, body: &str) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!("v1,{}", Base64::encode_string(&mac.finalize().into_bytes()))
}

/// Delay before retry number `attempt` (1 for the first retry): exponential from `base_ms`, capped at
/// `max_ms`, with "equal jitter" (`jitter` in 0..1 picks a point in the upper half) so a backend that
/// comes back is not hit by every hub at once.
pub fn backoff_ms(attempt: u32, base_ms: u64, max_ms: u64, jitter: f64) -> u64 {
    let exp = base_ms.saturating_mul(1u64 << attempt.saturating_sub(1).min(30)).min(max_ms);
    let half = exp / 2;
    half + (half as f64 * jitter.clamp(0.0, 1.0)) as u64
}

/// How long an object waits before retrying an alarm run that failed `failures` times in a row:
/// 1 s doubling up to 60 s (shared by the user hubs and the event shards).
pub fn alarm_retry_ms(failures: u32) -> i64 {
    (1_000i64 << failures.saturating_sub(1).min(6)).min(60_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_forms() {
        assert_eq!(parse_secret("whsec_aGVsbG8=").unwrap(), b"hello");
        assert_eq!(parse_secret("plain").unwrap(), b"plain");
        assert!(parse_secret("whsec_!!!").is_err());
        assert!(parse_secret("").is_err());
    }

    #[test]
    fn signature_matches_the_standard_webhooks_test_vector() {
        // From the Standard Webhooks reference libraries' test suite.
        let secret = parse_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = sign(&secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, r#"{"test": 2432232314}"#);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn event_is_a_structured_cloudevent() {
        let e: Value = serde_json::from_str(&event(
            "ev1",
            CONNECTION_OPENED,
            "u1",
            "2026-01-01T00:00:00.000Z",
            json!({"connectionId": "c"}),
        ))
        .unwrap();
        assert_eq!(e["specversion"], "1.0");
        assert_eq!(e["id"], "ev1");
        assert_eq!(e["type"], CONNECTION_OPENED);
        assert_eq!(e["subject"], "u1");
        assert_eq!(e["source"], SOURCE);
        assert_eq!(e["data"]["connectionId"], "c");
    }

    #[test]
    fn backoff_grows_caps_and_jitters() {
        assert_eq!(backoff_ms(1, 1000, 60_000, 1.0), 1000);
        assert_eq!(backoff_ms(1, 1000, 60_000, 0.0), 500);
        assert_eq!(backoff_ms(3, 1000, 60_000, 1.0), 4000);
        assert_eq!(backoff_ms(20, 1000, 60_000, 1.0), 60_000);
        assert_eq!(backoff_ms(u32::MAX, 1000, 60_000, 0.5), 45_000);
    }

    #[test]
    fn statuses_are_delivered_retried_or_permanent() {
        for (status, want) in [
            (200, Delivery::Delivered),
            (204, Delivery::Delivered),
            (400, Delivery::Permanent),
            (401, Delivery::Permanent),
            (404, Delivery::Permanent),
            (413, Delivery::Permanent),
            (422, Delivery::Permanent),
            (408, Delivery::Retry),
            (429, Delivery::Retry),
            (500, Delivery::Retry),
            (503, Delivery::Retry),
            (302, Delivery::Retry),
        ] {
            assert_eq!(classify(status), want, "{status}");
        }
    }

    #[test]
    fn shards_are_stable_and_spread() {
        // FNV-1a 32 test vectors: "" and "a".
        assert_eq!(shard_of("", u32::MAX), 0x811c_9dc5);
        assert_eq!(shard_of("a", u32::MAX), 0xe40c_292c);
        assert_eq!(shard_of("alice", 1), 0);
        assert_eq!(shard_of("alice", 0), 0);
        let mut counts = [0u32; 8];
        for i in 0..8000 {
            counts[shard_of(&format!("user-{i}"), 8) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (800..1200).contains(&c)), "{counts:?}");
    }

    #[test]
    fn batches_and_coalescing() {
        assert_eq!(batch_body(["{\"a\":1}", "{\"b\":2}"]), r#"[{"a":1},{"b":2}]"#);
        assert_eq!(batch_body([]), "[]");
        assert_eq!(batch_id("evt_1", 3), "evt_1.3");
        let one = coalesce(None, true, &["c1".into()], "t1");
        assert_eq!(one, json!({"opened": 1, "closed": 0, "connections": ["c1"], "firstAt": "t1", "lastAt": "t1"}));
        let two = coalesce(Some(&one), false, &[], "t2");
        assert_eq!(two, json!({"opened": 1, "closed": 1, "connections": [], "firstAt": "t1", "lastAt": "t2"}));
    }
}
