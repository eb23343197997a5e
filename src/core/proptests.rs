//! Property tests (proptest) on the pure parsers that read untrusted input: client frames, filter
//! lists, channel names and grants, query strings, publish and ack bodies. For any input: no
//! panic, every refusal is a clean error (a known code and a bounded message), and what is
//! written can be read back (round trips). Issue 13's "proof beyond unit tests".

use crate::core::channel::{self, Grants};
use crate::core::filter::{self, FilterList, MAX_FILTERS_PER_FRAME};
use crate::core::protocol::{self, ClientFrame};
use crate::core::query;
use proptest::prelude::*;
use serde_json::{json, Value};

/// Codes a client frame may be refused with (the README's socket error table).
const FRAME_CODES: &[&str] = &["invalid_json", "invalid_frame", "unknown_type", "invalid_channel"];

/// Arbitrary JSON values, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
        ".{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::hash_map("[a-z]{0,6}", inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Frames that look like protocol frames: the right keys, any values.
fn frame_like() -> impl Strategy<Value = Value> {
    let kind = prop_oneof![
        Just(json!("subscribe")),
        Just(json!("unsubscribe")),
        Just(json!("ack")),
        Just(json!("message")),
        Just(json!("join")),
        Just(json!("leave")),
        Just(json!("publish")),
        Just(json!("ping")),
        json_value(),
    ];
    let keys = ["id", "filters", "since", "envelopeId", "result", "data", "channel", "event", "payload", "timeoutMs"];
    (kind, prop::collection::vec((prop::sample::select(keys.to_vec()), json_value()), 0..6)).prop_map(|(k, fields)| {
        let mut o = serde_json::Map::new();
        o.insert("type".into(), k);
        for (key, v) in fields {
            o.insert(key.into(), v);
        }
        Value::Object(o)
    })
}

fn check_frame(text: &str) {
    match protocol::parse_client_frame(text) {
        Ok(_) => {}
        Err(e) => {
            assert!(FRAME_CODES.contains(&e.code), "unknown code {}", e.code);
            assert!(!e.message.is_empty() && e.message.len() < 400, "message {:?}", e.message);
            // The error frame built from it is JSON, and bounded whatever the input.
            let frame = protocol::error_frame(e.code, &e.message, e.id, &[]);
            let v: Value = serde_json::from_str(&frame).expect("error frame is JSON");
            assert_eq!(v["type"], "error");
            assert!(frame.len() < 1024, "{}", frame.len());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn client_frames_from_any_text_never_panic(text in ".{0,300}") {
        check_frame(&text);
    }

    #[test]
    fn client_frames_from_any_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        check_frame(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn frame_shaped_json_is_parsed_or_refused_cleanly(v in frame_like()) {
        check_frame(&v.to_string());
    }

    #[test]
    fn subscribe_round_trips(types in prop::collection::vec("[a-z_]{1,12}", 0..70), since in proptest::option::of(0u64..1 << 53)) {
        let filters: Vec<Value> = types.iter().map(|t| json!({ "type": t })).collect();
        let mut frame = json!({ "type": "subscribe", "filters": filters, "id": 7 });
        if let Some(s) = since {
            frame["since"] = json!(s);
        }
        match protocol::parse_client_frame(&frame.to_string()) {
            Ok(ClientFrame::Subscribe { filters: list, since: got, id }) => {
                prop_assert_eq!(got, since);
                prop_assert_eq!(id.map(|i| i.get().to_string()), Some("7".to_string()));
                prop_assert_eq!(list.total, types.len());
                let parsed = filter::parse_list(&list).unwrap();
                let read = types.len().min(MAX_FILTERS_PER_FRAME);
                prop_assert_eq!(parsed.valid.len(), read);
                for ((i, f), t) in parsed.valid.iter().zip(&types) {
                    prop_assert_eq!(&f.kind, t);
                    prop_assert!(*i < MAX_FILTERS_PER_FRAME);
                }
                prop_assert_eq!(parsed.skipped.len(), usize::from(types.len() > MAX_FILTERS_PER_FRAME));
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }

    #[test]
    fn ack_round_trips_its_result(envelope in "[a-zA-Z0-9-]{1,40}", result in json_value()) {
        let text = json!({ "type": "ack", "envelopeId": envelope, "result": result }).to_string();
        match protocol::parse_client_frame(&text) {
            Ok(ClientFrame::Ack { envelope_id, result: raw, .. }) => {
                prop_assert_eq!(envelope_id, envelope);
                // Byte for byte: the result is kept as the JSON text the client sent (`null` reads
                // as no result, which the answer reports as `null` again).
                prop_assert_eq!(raw.map_or("null".to_string(), |r| r.get().to_string()), result.to_string());
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }

    #[test]
    fn filter_lists_of_any_json_are_bounded(v in json_value(), extra in 0usize..2_000) {
        // Any value, and arrays far past the per-frame limit: at most 50 read, one entry for the rest.
        let mut items = vec![v.clone(); extra];
        items.push(v.clone());
        for text in [v.to_string(), Value::Array(items).to_string()] {
            let list = FilterList::from_json(&text);
            prop_assert!(list.head.len() <= MAX_FILTERS_PER_FRAME);
            match filter::parse_list(&list) {
                Ok(p) => {
                    prop_assert!(p.valid.len() + p.skipped.len() <= MAX_FILTERS_PER_FRAME + 1);
                    prop_assert!(p.skipped.iter().all(|(_, r)| r.len() < 200));
                }
                Err(m) => prop_assert!(!list.is_array && !m.is_empty()),
            }
        }
    }

    #[test]
    fn channel_names_are_checked_exactly(name in prop::collection::vec(any::<u8>(), 0..80)) {
        let name = String::from_utf8_lossy(&name).into_owned();
        let ok = !name.is_empty() && name.len() <= channel::MAX_CHANNEL_BYTES && name.bytes().all(channel::is_name_byte);
        prop_assert_eq!(channel::check_name(&name).is_ok(), ok);
        let frame = json!({ "type": "join", "channel": name, "id": 1 }).to_string();
        match protocol::parse_client_frame(&frame) {
            Ok(ClientFrame::Join { channel, .. }) => prop_assert!(ok && channel == name),
            Err(e) => prop_assert!(!ok && e.code == "invalid_channel"),
            Ok(other) => prop_assert!(false, "{:?}", other),
        }
    }

    #[test]
    fn grants_round_trip_through_text(names in prop::collection::vec("[a-z0-9:_./@=+-]{1,20}\\*?", 0..channel::MAX_GRANTS)) {
        let claim = json!(names);
        if let Ok(grants) = Grants::from_claim(Some(&claim), "channels") {
            let back = Grants::from_text(&grants.to_text());
            prop_assert_eq!(&back, &grants);
            for n in &names {
                let plain = n.trim_end_matches('*');
                if channel::check_name(plain).is_ok() {
                    prop_assert!(grants.allows(plain), "{} allows {}", n, plain);
                }
            }
        }
    }

    #[test]
    fn query_strings_round_trip(pairs in prop::collection::vec((".{0,12}", ".{0,24}"), 0..8)) {
        let borrowed: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let url = query::build("https://hub/x", &borrowed);
        let back = query::pairs(&url);
        let expected: Vec<(String, String)> = pairs.into_iter().collect();
        prop_assert_eq!(back, expected);
    }

    #[test]
    fn query_strings_from_any_url_never_panic(url in ".{0,200}") {
        let _ = query::pairs(&url);
        let _ = query::param(&url, "token");
    }

    #[test]
    fn publish_and_ack_bodies_are_parsed_or_refused_cleanly(v in json_value(), frame in frame_like()) {
        for body in [v.to_string(), frame.to_string()] {
            if let Err(e) = protocol::parse_publish(body.as_bytes()) {
                prop_assert_eq!(e.status(), 400);
            }
            if let Err(e) = protocol::parse_ack(body.as_bytes()) {
                prop_assert_eq!(e.status(), 400);
            }
        }
    }
}
