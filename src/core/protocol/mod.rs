//! The wire protocol: client frames in ([`client`]), control frames and envelopes out ([`server`]),
//! the backend's `/publish` and `/ack` bodies and answers ([`publish`]), and WebSocket close codes
//! ([`close`]). Pure serde, host-tested. Payloads and ack results stay as raw JSON text ([`RawValue`])
//! from the moment they are read until they are written, so a publish never re-encodes its payload;
//! an envelope is [`envelope_head`] plus the payload's own text, built once for all of its recipients.

pub mod client;
pub mod close;
pub mod publish;
pub mod server;

pub use client::*;
pub use close::*;
pub use publish::*;
pub use server::*;

use serde::Serialize;
use serde_json::value::RawValue;

/// Longest `id` a client may attach to a frame, as JSON text.
pub const MAX_ID_BYTES: usize = 256;
/// Longest envelope `type`, in bytes.
pub const MAX_TYPE_BYTES: usize = 256;

/// How a connection reaches its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    WebSocket,
    /// Server-Sent Events, bridged by the Worker: frames go out as SSE events.
    Sse,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::Sse => "sse",
        }
    }

    pub fn from_name(name: &str) -> Transport {
        if name == "sse" {
            Transport::Sse
        } else {
            Transport::WebSocket
        }
    }
}

/// JSON `null` as raw JSON (the payload of a publish without one, the result of an ack without one).
pub fn null() -> &'static RawValue {
    // Borrowed from a static string; `null` always parses.
    serde_json::from_str("null").unwrap_or_else(|_| unreachable!())
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
}
