//! What the server sends: control frames (`welcome`, `ok`, `error`, `gap`), envelopes (built as a head
//! plus the payload's own JSON text, once for all recipients), and their Server-Sent Events framing.

use super::to_json;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

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

/// `{"type":"replay_more","since":N}`: a replay page ended with more history after `N`; subscribe
/// again with `since: N` for the next page.
pub fn replay_more_frame(since: u64) -> String {
    format!(r#"{{"type":"replay_more","since":{since}}}"#)
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
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
