//! Structured logs: one JSON object per line, `{"event": ..., ...fields}`, so `wrangler tail` and
//! Workers Logs (`[observability]` in wrangler.toml) can filter on fields. Never pass a token or a
//! secret here.

pub use crate::core::log_line::Line;

/// Prints a line at info level.
pub fn write_info(line: Line) {
    worker::console_log!("{}", line.finish());
}

/// Prints a line at error level.
pub fn write_error(line: Line) {
    worker::console_error!("{}", line.finish());
}

/// Logs an event at info level: `log::info!("connect", "userId" => user_id, "open" => open + 1)`,
/// each value anything serde serializes (borrowed, not moved), in the order given.
macro_rules! info {
    ($event:expr $(, $key:literal => $value:expr)* $(,)?) => {
        $crate::runtime::log::write_info($crate::runtime::log::Line::new($event)$(.field($key, &$value))*)
    };
}

/// Logs an event at error level, as [`info!`].
macro_rules! error {
    ($event:expr $(, $key:literal => $value:expr)* $(,)?) => {
        $crate::runtime::log::write_error($crate::runtime::log::Line::new($event)$(.field($key, &$value))*)
    };
}

pub(crate) use {error, info};
