//! WebSocket close codes (the README's table): 4000-4499 mean "reconnect", 4500-4999 "do not
//! reconnect". A close reason stays under 123 bytes.

/// The connect token's `exp` passed: reconnect with a fresh token.
pub const CLOSE_TOKEN_EXPIRED: u16 = 4001;
/// Closed by the backend through the connection API.
pub const CLOSE_BY_BACKEND: u16 = 4002;
/// `MAX_CONNECTION_SECONDS` reached: reconnect.
pub const CLOSE_LIFETIME: u16 = 4003;
/// A frame larger than `MAX_FRAME_BYTES` (reconnecting is fine; resending it is not).
pub const CLOSE_FRAME_TOO_LARGE: u16 = 4009;
/// More frames than `MAX_FRAMES_PER_SECOND` allows (reconnect after a backoff).
pub const CLOSE_FLOOD: u16 = 4029;

/// The code to answer a client's close with: its own when it may be sent, else 1000
/// (1005 "no code" and 1006 "abnormal" are reserved and cannot be sent).
pub fn reply_close_code(code: usize) -> u16 {
    match code {
        1000 | 3000..=4999 => code as u16,
        _ => 1000,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_close_codes_are_answered_with_1000() {
        assert_eq!(reply_close_code(1000), 1000);
        assert_eq!(reply_close_code(4002), 4002);
        assert_eq!(reply_close_code(3000), 3000);
        for reserved in [1005, 1006, 1015, 2999, 5000] {
            assert_eq!(reply_close_code(reserved), 1000, "{reserved}");
        }
    }
}
