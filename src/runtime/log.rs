//! Structured logs: one JSON object per line, `{"event": ..., ...fields}`, so `wrangler tail` and
//! Workers Logs (`[observability]` in wrangler.toml) can filter on fields. Never pass a token or a
//! secret here.

use serde_json::{Map, Value};

/// Logs an event at info level.
pub fn info(event: &str, fields: Value) {
    worker::console_log!("{}", line(event, fields));
}

/// Logs an event at error level.
pub fn error(event: &str, fields: Value) {
    worker::console_error!("{}", line(event, fields));
}

fn line(event: &str, fields: Value) -> String {
    let mut map = Map::new();
    map.insert("event".into(), Value::String(event.into()));
    if let Value::Object(fields) = fields {
        map.extend(fields);
    }
    Value::Object(map).to_string()
}
