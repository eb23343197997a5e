//! Subscription filters: parsing with limits, and matching against an envelope.
//!
//! A filter is a JSON object of string values with a non-empty `type`. It matches an envelope when
//! `type` equals the envelope's type and every other key equals the payload's top-level field of the
//! same name (so the payload must be an object). Pure and host-tested.

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::value::RawValue;
use serde_json::Value;
use std::borrow::Cow;
use std::cell::OnceCell;
use std::collections::HashMap;

/// Filters read from one subscribe/unsubscribe frame (HopeFlow's rule); the rest are skipped.
pub const MAX_FILTERS_PER_FRAME: usize = 50;
/// Filters one connection may hold.
pub const MAX_FILTERS_PER_CONNECTION: usize = 100;
/// Keys in one filter, `type` included.
pub const MAX_KEYS_PER_FILTER: usize = 16;
/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 64;
/// Longest value, in bytes.
pub const MAX_VALUE_BYTES: usize = 256;

/// A validated filter. Fields are sorted by key, so equal filters compare equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Filter {
    pub kind: String,
    pub fields: Vec<(String, String)>,
}

impl Filter {
    /// Validates one filter as a client sent it.
    pub fn parse(value: &Value) -> Result<Filter, String> {
        let obj = value.as_object().ok_or("a filter must be a JSON object")?;
        if obj.len() > MAX_KEYS_PER_FILTER {
            return Err(format!("a filter has at most {MAX_KEYS_PER_FILTER} keys"));
        }
        let mut kind = None;
        let mut fields = Vec::with_capacity(obj.len().saturating_sub(1));
        for (k, v) in obj {
            let v = v.as_str().ok_or_else(|| format!("the value of `{}` must be a string", clip(k)))?;
            if k.is_empty() || k.len() > MAX_KEY_BYTES {
                return Err(format!("keys must be 1 to {MAX_KEY_BYTES} bytes"));
            }
            if v.len() > MAX_VALUE_BYTES {
                return Err(format!("the value of `{}` is longer than {MAX_VALUE_BYTES} bytes", clip(k)));
            }
            if k == "type" {
                kind = Some(v.to_string());
            } else {
                fields.push((k.clone(), v.to_string()));
            }
        }
        let kind = kind.filter(|t| !t.is_empty()).ok_or("a filter needs a non-empty string `type`")?;
        // Already sorted: a `serde_json::Map` (without the `preserve_order` feature) iterates in key
        // order, and keys are unique (a test pins it). A sort here was its own copy of std's sort in the wasm.
        debug_assert!(fields.is_sorted());
        Ok(Filter { kind, fields })
    }

    /// Whether this filter selects the envelope.
    pub fn matches(&self, envelope: &EnvelopeView<'_>) -> bool {
        self.kind == envelope.kind
            && self.fields.iter().all(|(k, v)| envelope.field_str(k).as_deref() == Some(v.as_str()))
    }
}

impl Serialize for Filter {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.fields.len() + 1))?;
        map.serialize_entry("type", &self.kind)?;
        for (k, v) in &self.fields {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

fn clip(s: &str) -> &str {
    let mut end = s.len().min(40);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// What filters look at in an envelope: its type and, parsed only if a filter needs it, the payload's
/// top-level fields (borrowed from the payload's JSON text, never re-serialized).
pub struct EnvelopeView<'a> {
    pub kind: &'a str,
    payload: &'a str,
    fields: OnceCell<Option<HashMap<Cow<'a, str>, &'a RawValue>>>,
}

impl<'a> EnvelopeView<'a> {
    /// `payload` is the payload's JSON text.
    pub fn new(kind: &'a str, payload: &'a str) -> Self {
        EnvelopeView { kind, payload, fields: OnceCell::new() }
    }

    /// The payload's top-level field `key` when it is a JSON string.
    fn field_str(&self, key: &str) -> Option<Cow<'a, str>> {
        let fields = self.fields.get_or_init(|| {
            let p = self.payload.trim_start();
            if p.starts_with('{') {
                serde_json::from_str::<HashMap<Cow<'a, str>, &'a RawValue>>(self.payload).ok()
            } else {
                None
            }
        });
        let raw = fields.as_ref()?.get(key)?.get();
        if raw.starts_with('"') {
            serde_json::from_str::<Cow<'a, str>>(raw).ok()
        } else {
            None
        }
    }
}

/// The result of reading a frame's `filters` array.
#[derive(Debug, Default, PartialEq)]
pub struct ParsedFilters {
    /// `(index in the frame, filter)` for every valid entry.
    pub valid: Vec<(usize, Filter)>,
    /// `(index in the frame, reason)` for every entry skipped.
    pub skipped: Vec<(usize, String)>,
}

/// A frame's `filters` as read from the wire: the first [`MAX_FILTERS_PER_FRAME`] entries as values,
/// and how many entries there were. Entries past the limit are counted and skipped by the parser
/// without being built, so a frame of half a million tiny entries costs no allocation per entry and
/// gets one small error back (security review F5: it used to be one `skipped` line per entry, an
/// error frame 34 times the input).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FilterList {
    /// Whether `filters` was a JSON array at all.
    pub is_array: bool,
    pub head: Vec<Value>,
    pub total: usize,
}

impl FilterList {
    /// Reads a `filters` JSON text (the SSE query parameter); anything unreadable is "not an array".
    pub fn from_json(text: &str) -> FilterList {
        serde_json::from_str(text).unwrap_or_default()
    }
}

impl<'de> serde::Deserialize<'de> for FilterList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FilterList;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an array of filter objects")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<FilterList, A::Error> {
                let mut out = FilterList { is_array: true, head: Vec::new(), total: 0 };
                loop {
                    let more = if out.head.len() < MAX_FILTERS_PER_FRAME {
                        seq.next_element::<Value>()?.map(|v| out.head.push(v)).is_some()
                    } else {
                        seq.next_element::<IgnoredAny>()?.is_some()
                    };
                    if !more {
                        return Ok(out);
                    }
                    out.total += 1;
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<FilterList, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(FilterList::default())
            }
            fn visit_bool<E>(self, _: bool) -> Result<FilterList, E> {
                Ok(FilterList::default())
            }
            fn visit_i64<E>(self, _: i64) -> Result<FilterList, E> {
                Ok(FilterList::default())
            }
            fn visit_u64<E>(self, _: u64) -> Result<FilterList, E> {
                Ok(FilterList::default())
            }
            fn visit_f64<E>(self, _: f64) -> Result<FilterList, E> {
                Ok(FilterList::default())
            }
            fn visit_str<E>(self, _: &str) -> Result<FilterList, E> {
                Ok(FilterList::default())
            }
            fn visit_unit<E>(self) -> Result<FilterList, E> {
                Ok(FilterList::default())
            }
        }
        d.deserialize_any(V)
    }
}

/// Reads up to [`MAX_FILTERS_PER_FRAME`] filters from a frame's `filters`. Entries past the limit
/// are reported as one skipped entry at the first index not read.
pub fn parse_list(list: &FilterList) -> Result<ParsedFilters, String> {
    if !list.is_array {
        return Err("`filters` must be an array of filter objects".into());
    }
    let mut out = ParsedFilters::default();
    for (i, item) in list.head.iter().enumerate() {
        match Filter::parse(item) {
            Ok(f) => out.valid.push((i, f)),
            Err(e) => out.skipped.push((i, e)),
        }
    }
    if list.total > list.head.len() {
        out.skipped.push((
            list.head.len(),
            format!(
                "entries {} to {} were not read: at most {MAX_FILTERS_PER_FRAME} filters are read from one frame",
                list.head.len(),
                list.total - 1
            ),
        ));
    }
    Ok(out)
}

/// The set of filters one connection holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FilterSet {
    filters: Vec<Filter>,
}

impl FilterSet {
    pub fn from_vec(filters: Vec<Filter>) -> Self {
        FilterSet { filters }
    }

    pub fn as_slice(&self) -> &[Filter] {
        &self.filters
    }

    pub fn len(&self) -> usize {
        self.filters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// Adds `(index, filter)` pairs, ignoring duplicates. Returns the indexes refused because the
    /// connection already holds [`MAX_FILTERS_PER_CONNECTION`].
    pub fn add(&mut self, new: Vec<(usize, Filter)>) -> Vec<usize> {
        let mut refused = Vec::new();
        for (i, f) in new {
            if self.filters.contains(&f) {
                continue;
            }
            if self.filters.len() >= MAX_FILTERS_PER_CONNECTION {
                refused.push(i);
            } else {
                self.filters.push(f);
            }
        }
        refused
    }

    /// Removes exactly-equal filters; returns how many were removed.
    pub fn remove(&mut self, gone: &[(usize, Filter)]) -> usize {
        let before = self.filters.len();
        self.filters.retain(|f| !gone.iter().any(|(_, g)| g == f));
        before - self.filters.len()
    }

    pub fn matches(&self, envelope: &EnvelopeView<'_>) -> bool {
        self.filters.iter().any(|f| f.matches(envelope))
    }

    /// Whether matching an envelope of type `kind` needs its payload's fields (a filter of that
    /// type with keys besides `type`). When no connection's does, the payload is never read.
    pub fn needs_payload(&self, kind: &str) -> bool {
        self.filters.iter().any(|f| f.kind == kind && !f.fields.is_empty())
    }

    /// The filters as a JSON array (the stored form).
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.filters).unwrap_or_else(|_| "[]".into())
    }

    /// Reads the stored form; entries that no longer validate are dropped.
    pub fn from_json(text: &str) -> FilterSet {
        let list: Vec<Value> = serde_json::from_str(text).unwrap_or_default();
        FilterSet { filters: list.iter().filter_map(|v| Filter::parse(v).ok()).collect() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn f(v: Value) -> Filter {
        Filter::parse(&v).unwrap()
    }

    #[test]
    fn matches_type_and_payload_fields() {
        let filter = f(json!({"type": "chat_message", "questId": "q1", "nodeId": "n1"}));
        let yes = EnvelopeView::new("chat_message", r#"{"questId":"q1","nodeId":"n1","text":"hi"}"#);
        let other_type = EnvelopeView::new("other", r#"{"questId":"q1","nodeId":"n1"}"#);
        let other_field = EnvelopeView::new("chat_message", r#"{"questId":"q1","nodeId":"n2"}"#);
        let missing = EnvelopeView::new("chat_message", r#"{"questId":"q1"}"#);
        let number = EnvelopeView::new("chat_message", r#"{"questId":"q1","nodeId":1}"#);
        let not_object = EnvelopeView::new("chat_message", r#"["q1"]"#);
        assert!(filter.matches(&yes));
        for e in [other_type, other_field, missing, number, not_object] {
            assert!(!filter.matches(&e));
        }
    }

    #[test]
    fn type_only_filter_matches_any_payload() {
        let filter = f(json!({"type": "t"}));
        assert!(filter.matches(&EnvelopeView::new("t", "null")));
        assert!(filter.matches(&EnvelopeView::new("t", "[1,2]")));
    }

    #[test]
    fn payload_type_is_not_envelope_type() {
        let filter = f(json!({"type": "a"}));
        assert!(!filter.matches(&EnvelopeView::new("b", r#"{"type":"a"}"#)));
    }

    #[test]
    fn escaped_strings_compare_by_value() {
        let filter = f(json!({"type": "t", "room": "a\"b é"}));
        assert!(filter.matches(&EnvelopeView::new("t", r#"{"room":"a\"b \u00e9"}"#)));
    }

    #[test]
    fn invalid_filters_are_refused_with_reasons() {
        let long = "x".repeat(MAX_VALUE_BYTES + 1);
        let many: serde_json::Map<String, Value> =
            (0..MAX_KEYS_PER_FILTER + 1).map(|i| (format!("k{i}"), json!("v"))).collect();
        for bad in [
            json!("type"),
            json!([]),
            json!({}),
            json!({"type": ""}),
            json!({"type": 1}),
            json!({"type": "t", "a": 1}),
            json!({"type": "t", "a": null}),
            json!({"type": "t", "": "v"}),
            json!({"type": "t", "a": long}),
            Value::Object(many),
        ] {
            assert!(Filter::parse(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn equal_filters_are_equal_whatever_key_order() {
        let a = f(json!({"type": "t", "a": "1", "b": "2"}));
        let b: Value = serde_json::from_str(r#"{"c":"3","b":"2","type":"t","a":"1"}"#).unwrap();
        let b = f(b);
        let keys: Vec<&str> = b.fields.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["a", "b", "c"], "fields are kept in key order, whatever the client's order");
        assert_ne!(a, b);
        let c: Value = serde_json::from_str(r#"{"b":"2","type":"t","a":"1"}"#).unwrap();
        assert_eq!(a, f(c));
    }

    #[test]
    fn list_reads_at_most_fifty_and_reports_skips() {
        let mut items: Vec<Value> = (0..60).map(|i| json!({"type": format!("t{i}")})).collect();
        items[3] = json!({"type": 3});
        let list: FilterList = serde_json::from_value(Value::Array(items)).unwrap();
        assert_eq!((list.head.len(), list.total), (50, 60));
        let parsed = parse_list(&list).unwrap();
        assert_eq!(parsed.valid.len(), 49);
        assert_eq!(parsed.skipped.len(), 2, "one for the bad entry, one for everything past the 50th");
        assert_eq!(parsed.skipped[0].0, 3);
        assert_eq!(parsed.skipped[1].0, 50);
        assert!(parsed.skipped[1].1.contains("50 to 59"));
        for not_array in [r#"{"type":"t"}"#, "1", "true", r#""x""#, "null", "1.5", "-3", "{"] {
            assert!(parse_list(&FilterList::from_json(not_array)).is_err(), "{not_array}");
        }
    }

    #[test]
    fn a_huge_list_is_counted_not_built() {
        let text = format!("[{}]", vec!["0"; 500_000].join(","));
        let list = FilterList::from_json(&text);
        assert_eq!((list.head.len(), list.total), (MAX_FILTERS_PER_FRAME, 500_000));
        let parsed = parse_list(&list).unwrap();
        assert_eq!(parsed.skipped.len(), MAX_FILTERS_PER_FRAME + 1);
        let reasons: usize = parsed.skipped.iter().map(|(_, r)| r.len()).sum();
        assert!(reasons < 4_000, "{reasons}");
    }

    #[test]
    fn set_dedups_caps_and_removes() {
        let mut set = FilterSet::default();
        assert!(set.add(vec![(0, f(json!({"type": "a"}))), (1, f(json!({"type": "a"})))]).is_empty());
        assert_eq!(set.len(), 1);
        let many: Vec<(usize, Filter)> =
            (0..MAX_FILTERS_PER_CONNECTION + 5).map(|i| (i, f(json!({"type": format!("t{i}")})))).collect();
        let refused = set.add(many);
        assert_eq!(set.len(), MAX_FILTERS_PER_CONNECTION);
        assert_eq!(refused, (MAX_FILTERS_PER_CONNECTION - 1..MAX_FILTERS_PER_CONNECTION + 5).collect::<Vec<_>>());
        assert_eq!(set.remove(&[(0, f(json!({"type": "a"}))), (1, f(json!({"type": "zzz"})))]), 1);
        assert_eq!(set.len(), MAX_FILTERS_PER_CONNECTION - 1);
    }

    #[test]
    fn stored_form_round_trips() {
        let set = FilterSet::from_vec(vec![f(json!({"type": "t", "k": "v"})), f(json!({"type": "u"}))]);
        assert_eq!(FilterSet::from_json(&set.to_json()), set);
        assert!(FilterSet::from_json("garbage").is_empty());
    }

    #[test]
    fn needs_payload_only_for_field_filters_of_that_type() {
        let set = FilterSet::from_vec(vec![f(json!({"type": "a"})), f(json!({"type": "b", "k": "v"}))]);
        assert!(!set.needs_payload("a"));
        assert!(set.needs_payload("b"));
        assert!(!set.needs_payload("c"));
    }

    #[test]
    fn empty_set_matches_nothing() {
        assert!(!FilterSet::default().matches(&EnvelopeView::new("t", "{}")));
    }
}
