//! One error type for everything the Worker can answer with, and the single place that decides its
//! HTTP status, stable `error` code and human message. Turning it into a `worker::Response` (with
//! CORS headers) happens in [`crate::runtime::http`], so this module stays host-testable.

use thiserror::Error;

/// An error that ends an HTTP request. Each variant maps to one status and one stable code.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum Error {
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("no token: send `Authorization: Bearer <jwt>` or `?token=<jwt>`")]
    MissingToken,
    #[error("{0}")]
    InvalidToken(String),
    #[error("the token has expired")]
    TokenExpired,
    #[error("the token is not valid yet (nbf is in the future)")]
    TokenNotYetValid,
    /// A connect ticket that is malformed, unknown, used already or expired.
    #[error("{0}")]
    InvalidTicket(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("no open connection {0} for this user")]
    ConnectionNotFound(String),
    #[error("no publish is waiting for this ack (unknown envelope, or its timeout has passed)")]
    UnknownEnvelope,
    #[error("this Idempotency-Key was already used with a different body")]
    IdempotencyConflict,
    #[error("{method} is not allowed here; allowed: {allow}")]
    MethodNotAllowed { method: String, allow: &'static str },
    #[error("the body is larger than {limit} bytes (MAX_PUBLISH_BYTES)")]
    PayloadTooLarge { limit: usize },
    #[error("the body must be JSON: send `Content-Type: application/json`")]
    UnsupportedMediaType,
    #[error("this endpoint speaks WebSocket: connect with `Upgrade: websocket`")]
    UpgradeRequired,
    #[error("{0}")]
    TooManyRequests(String),
    #[error("server misconfigured: {0}")]
    Misconfigured(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("{0}")]
    Unavailable(String),
}

impl Error {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Error::BadRequest { code, message: message.into() }
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            Error::BadRequest { .. } => 400,
            Error::MissingToken
            | Error::InvalidToken(_)
            | Error::TokenExpired
            | Error::TokenNotYetValid
            | Error::InvalidTicket(_) => 401,
            Error::Forbidden(_) => 403,
            Error::NotFound(_) | Error::ConnectionNotFound(_) | Error::UnknownEnvelope => 404,
            Error::MethodNotAllowed { .. } => 405,
            Error::IdempotencyConflict => 409,
            Error::PayloadTooLarge { .. } => 413,
            Error::UnsupportedMediaType => 415,
            Error::UpgradeRequired => 426,
            Error::TooManyRequests(_) => 429,
            Error::Misconfigured(_) | Error::Internal(_) => 500,
            Error::Unavailable(_) => 503,
        }
    }

    /// The stable machine-readable code (the README lists them all).
    pub fn code(&self) -> &'static str {
        match self {
            Error::BadRequest { code, .. } => code,
            Error::MissingToken => "missing_token",
            Error::InvalidToken(_) => "invalid_token",
            Error::TokenExpired => "token_expired",
            Error::TokenNotYetValid => "token_not_yet_valid",
            Error::InvalidTicket(_) => "invalid_ticket",
            Error::Forbidden(_) => "forbidden",
            Error::NotFound(_) => "not_found",
            Error::ConnectionNotFound(_) => "connection_not_found",
            Error::UnknownEnvelope => "unknown_envelope",
            Error::IdempotencyConflict => "idempotency_conflict",
            Error::MethodNotAllowed { .. } => "method_not_allowed",
            Error::PayloadTooLarge { .. } => "payload_too_large",
            Error::UnsupportedMediaType => "unsupported_media_type",
            Error::UpgradeRequired => "upgrade_required",
            Error::TooManyRequests(_) => "too_many_requests",
            Error::Misconfigured(_) => "server_misconfigured",
            Error::Internal(_) => "internal_error",
            Error::Unavailable(_) => "unavailable",
        }
    }

    /// The JSON body: `{"error": code, "message": sentence}`. An internal error's details (runtime
    /// and SQLite messages) go to the log, not to the caller.
    pub fn body(&self) -> String {
        let message = match self {
            Error::Internal(_) => "internal error: the details are in the service's logs; try again".to_string(),
            other => other.to_string(),
        };
        serde_json::json!({ "error": self.code(), "message": message }).to_string()
    }
}

pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_has_status_code_and_message() {
        let all = [
            Error::bad_request("invalid_json", "x"),
            Error::MissingToken,
            Error::InvalidToken("bad".into()),
            Error::TokenExpired,
            Error::TokenNotYetValid,
            Error::InvalidTicket("used".into()),
            Error::Forbidden("no".into()),
            Error::NotFound("nope".into()),
            Error::ConnectionNotFound("c1".into()),
            Error::UnknownEnvelope,
            Error::IdempotencyConflict,
            Error::MethodNotAllowed { method: "PUT".into(), allow: "POST, OPTIONS" },
            Error::PayloadTooLarge { limit: 10 },
            Error::UnsupportedMediaType,
            Error::UpgradeRequired,
            Error::TooManyRequests("slow down".into()),
            Error::Misconfigured("JWT_SECRET is not set".into()),
            Error::Internal("boom".into()),
            Error::Unavailable("later".into()),
        ];
        for e in all {
            let body: serde_json::Value = serde_json::from_str(&e.body()).unwrap();
            assert_eq!(body["error"], e.code());
            assert!(!body["message"].as_str().unwrap().is_empty());
            assert!((400..600).contains(&e.status()));
        }
    }

    #[test]
    fn internal_details_stay_in_the_log() {
        let e = Error::Internal("SQLITE_FULL: table history".into());
        assert!(e.to_string().contains("SQLITE_FULL"), "logged");
        assert!(!e.body().contains("SQLITE"), "not answered");
    }

    #[test]
    fn misconfigured_names_the_setting() {
        let e = Error::Misconfigured("JWT_SECRET is not set".into());
        assert_eq!(e.status(), 500);
        assert_eq!(e.code(), "server_misconfigured");
        assert!(e.to_string().contains("JWT_SECRET"));
    }
}
