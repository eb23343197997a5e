//! Token extraction and HS256 verification. Pure: the clock is passed in, so it is tested on the host.
//!
//! Only `HS256` is accepted (`alg: none` and every other algorithm fail before any key is tried).
//! `exp` and `nbf` are enforced when present, with [`LEEWAY_SECONDS`] of clock skew allowed.
//! Tokens are never logged: errors describe what is wrong without echoing the token.

use crate::core::channel::Grants;
use crate::core::error::Error;
use jwt_compact::{
    alg::{Hs256, Hs256Key},
    AlgorithmExt, UntrustedToken, ValidationError,
};
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;

/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECONDS: i64 = 30;
/// Longest token read; anything longer is refused unparsed.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Longest `userId` accepted, in bytes (it names a Durable Object).
pub const MAX_USER_ID_BYTES: usize = 256;

/// What a verified token says about its bearer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The `userId` claim when it is a non-empty string.
    pub user_id: Option<String>,
    /// Whether the space-separated `scope` claim contains `publish`.
    pub can_publish: bool,
    /// `exp` in milliseconds since the epoch, when present.
    pub expires_at_ms: Option<i64>,
    /// The channels the bearer may join (`channels` claim).
    pub channels: Grants,
    /// The channels the bearer may publish to from a connection (`publishChannels` claim).
    pub publish_channels: Grants,
}

#[derive(Deserialize)]
struct CustomClaims {
    #[serde(rename = "userId", default)]
    user_id: Option<Value>,
    #[serde(default)]
    scope: Option<Value>,
    #[serde(default)]
    channels: Option<Value>,
    #[serde(rename = "publishChannels", default)]
    publish_channels: Option<Value>,
}

/// Picks the token: `Authorization: Bearer <jwt>` first, else the `token` query parameter.
pub fn token_from<'a>(authorization: Option<&'a str>, query_token: Option<&'a str>) -> Option<&'a str> {
    let bearer = authorization.and_then(|h| {
        let (scheme, rest) = h.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
    });
    bearer.or(query_token).filter(|t| !t.is_empty())
}

/// Verifies `token` against each secret in turn (current first, then previous) at `now_ms`.
pub fn verify(token: &str, secrets: &[Vec<u8>], now_ms: i64) -> Result<Identity, Error> {
    let (identity, not_before_ms) = verify_signature(token, secrets)?;
    check_times(&identity, not_before_ms, now_ms)?;
    Ok(identity)
}

/// `exp` and `nbf` against `now_ms`, with [`LEEWAY_SECONDS`].
fn check_times(identity: &Identity, not_before_ms: Option<i64>, now_ms: i64) -> Result<(), Error> {
    let leeway = LEEWAY_SECONDS * 1000;
    if identity.expires_at_ms.is_some_and(|exp| now_ms > exp + leeway) {
        return Err(Error::TokenExpired);
    }
    if not_before_ms.is_some_and(|nbf| now_ms < nbf - leeway) {
        return Err(Error::TokenNotYetValid);
    }
    Ok(())
}

/// Verified tokens by their exact text, so a backend that sends the same publish token on every
/// request pays for HMAC and JSON parsing once. Only successes are kept; `exp` and `nbf` are checked
/// again on every use. Bounded: cleared when full.
#[derive(Default)]
pub struct TokenCache {
    entries: HashMap<String, (Identity, Option<i64>)>,
}

/// Most tokens a [`TokenCache`] holds before it starts over.
pub const TOKEN_CACHE_CAPACITY: usize = 1024;

impl TokenCache {
    pub fn verify(&mut self, token: &str, secrets: &[Vec<u8>], now_ms: i64) -> Result<Identity, Error> {
        if let Some((identity, nbf)) = self.entries.get(token) {
            check_times(identity, *nbf, now_ms)?;
            return Ok(identity.clone());
        }
        let (identity, nbf) = verify_signature(token, secrets)?;
        check_times(&identity, nbf, now_ms)?;
        if self.entries.len() >= TOKEN_CACHE_CAPACITY {
            self.entries.clear();
        }
        self.entries.insert(token.to_string(), (identity.clone(), nbf));
        Ok(identity)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Signature and claims, without the time checks: `(identity, nbf in ms)`.
fn verify_signature(token: &str, secrets: &[Vec<u8>]) -> Result<(Identity, Option<i64>), Error> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Error::InvalidToken(format!("the token is longer than {MAX_TOKEN_BYTES} bytes")));
    }
    let untrusted =
        UntrustedToken::new(token).map_err(|_| Error::InvalidToken("the token is not a well-formed JWT".into()))?;
    if untrusted.algorithm() != "HS256" {
        return Err(Error::InvalidToken("only HS256-signed tokens are accepted".into()));
    }
    let mut verified = None;
    for secret in secrets {
        let key = Hs256Key::new(secret);
        match Hs256.validator::<CustomClaims>(&key).validate(&untrusted) {
            Ok(token) => {
                verified = Some(token);
                break;
            }
            Err(ValidationError::InvalidSignature) => continue,
            Err(ValidationError::MalformedClaims(_)) => {
                return Err(Error::InvalidToken("the token's claims are not valid JSON claims".into()))
            }
            Err(_) => return Err(Error::InvalidToken("the token's signature is malformed".into())),
        }
    }
    let token = verified.ok_or_else(|| Error::InvalidToken("the token's signature does not verify".into()))?;
    let claims = token.claims();

    let user_id = match &claims.custom.user_id {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
        _ => None,
    };
    let can_publish = match &claims.custom.scope {
        Some(Value::String(s)) => s.split_ascii_whitespace().any(|s| s == "publish"),
        _ => false,
    };
    let channels = Grants::from_claim(claims.custom.channels.as_ref(), "channels").map_err(Error::InvalidToken)?;
    let publish_channels =
        Grants::from_claim(claims.custom.publish_channels.as_ref(), "publishChannels").map_err(Error::InvalidToken)?;
    let identity = Identity {
        user_id,
        can_publish,
        expires_at_ms: claims.expiration.map(|e| e.timestamp_millis()),
        channels,
        publish_channels,
    };
    Ok((identity, claims.not_before.map(|n| n.timestamp_millis())))
}

/// Checks a `userId` read from a token or a request body.
pub fn check_user_id(user_id: &str) -> Result<(), String> {
    if user_id.trim().is_empty() {
        return Err("userId must be a non-empty string".into());
    }
    if user_id.len() > MAX_USER_ID_BYTES {
        return Err(format!("userId is longer than {MAX_USER_ID_BYTES} bytes"));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use chrono::DateTime;
    use jwt_compact::{Claims, Header};
    use serde_json::json;

    const NOW: i64 = 1_800_000_000_000;

    pub fn mint(secret: &[u8], claims: Value) -> String {
        let key = Hs256Key::new(secret);
        let mut custom = claims.clone();
        if let Some(map) = custom.as_object_mut() {
            map.remove("exp");
            map.remove("nbf");
        }
        let mut c = Claims::new(custom);
        if let Some(exp) = claims.get("exp").and_then(Value::as_i64) {
            c.expiration = DateTime::from_timestamp(exp, 0);
        }
        if let Some(nbf) = claims.get("nbf").and_then(Value::as_i64) {
            c.not_before = DateTime::from_timestamp(nbf, 0);
        }
        Hs256.token(&Header::empty(), &c, &key).unwrap()
    }

    fn b64(s: &str) -> String {
        // Minimal base64url without padding, for hand-made hostile tokens.
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let b = s.as_bytes();
        let mut out = String::new();
        for chunk in b.chunks(3) {
            let n = chunk.iter().enumerate().fold(0u32, |acc, (i, &x)| acc | (x as u32) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }

    #[test]
    fn valid_token_yields_identity() {
        let t = mint(b"secret", json!({"userId": "u1", "scope": "read publish", "exp": NOW / 1000 + 60}));
        let id = verify(&t, &[b"secret".to_vec()], NOW).unwrap();
        assert_eq!(id.user_id.as_deref(), Some("u1"));
        assert!(id.can_publish);
        assert_eq!(id.expires_at_ms, Some(NOW + 60_000));
    }

    #[test]
    fn scope_must_contain_publish_as_a_word() {
        for (scope, ok) in [(json!("publish"), true), (json!("publisher"), false), (json!(["publish"]), false)] {
            let t = mint(b"s", json!({"userId": "u", "scope": scope}));
            assert_eq!(verify(&t, &[b"s".to_vec()], NOW).unwrap().can_publish, ok);
        }
    }

    #[test]
    fn user_id_must_be_a_non_empty_string() {
        for uid in [json!(""), json!("  "), json!(5), json!(null)] {
            let t = mint(b"s", json!({"userId": uid}));
            assert_eq!(verify(&t, &[b"s".to_vec()], NOW).unwrap().user_id, None);
        }
    }

    #[test]
    fn channel_claims_become_grants_and_bad_ones_invalidate_the_token() {
        let t = mint(b"s", json!({"userId": "u", "channels": ["lobby", "room:*"], "publishChannels": ["room:*"]}));
        let id = verify(&t, &[b"s".to_vec()], NOW).unwrap();
        assert!(id.channels.allows("lobby") && id.channels.allows("room:7") && !id.channels.allows("admin"));
        assert!(id.publish_channels.allows("room:7") && !id.publish_channels.allows("lobby"));
        let none = mint(b"s", json!({"userId": "u"}));
        assert!(verify(&none, &[b"s".to_vec()], NOW).unwrap().channels.is_empty());
        for bad in [json!({"channels": "lobby"}), json!({"publishChannels": [5]}), json!({"channels": ["a b"]})] {
            let t = mint(b"s", bad);
            match verify(&t, &[b"s".to_vec()], NOW) {
                Err(Error::InvalidToken(m)) => assert!(m.contains("hannels`"), "{m}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn wrong_secret_and_rotation() {
        let t = mint(b"old", json!({"userId": "u"}));
        assert!(matches!(verify(&t, &[b"new".to_vec()], NOW), Err(Error::InvalidToken(_))));
        assert!(verify(&t, &[b"new".to_vec(), b"old".to_vec()], NOW).is_ok());
    }

    #[test]
    fn expiry_and_maturity_with_leeway() {
        let s = [b"s".to_vec()];
        let expired = mint(b"s", json!({"userId": "u", "exp": NOW / 1000 - 60}));
        assert_eq!(verify(&expired, &s, NOW), Err(Error::TokenExpired));
        let just_expired = mint(b"s", json!({"userId": "u", "exp": NOW / 1000 - 5}));
        assert!(verify(&just_expired, &s, NOW).is_ok(), "within leeway");
        let future = mint(b"s", json!({"userId": "u", "nbf": NOW / 1000 + 120}));
        assert_eq!(verify(&future, &s, NOW), Err(Error::TokenNotYetValid));
    }

    #[test]
    fn hostile_tokens_are_refused() {
        let s = [b"s".to_vec()];
        let none = format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), b64(r#"{"userId":"u"}"#));
        let hs512 = format!("{}.{}.AAAA", b64(r#"{"alg":"HS512"}"#), b64(r#"{"userId":"u"}"#));
        let not_json = format!("{}.{}.AAAA", b64(r#"{"alg":"HS256"}"#), b64("nope"));
        for t in [
            "".to_string(),
            "abc".to_string(),
            "a.b.c".to_string(),
            none,
            hs512,
            not_json,
            "x".repeat(MAX_TOKEN_BYTES + 1),
        ] {
            assert!(matches!(verify(&t, &s, NOW), Err(Error::InvalidToken(_))), "{t:.40}");
        }
        // A valid token with its signature tampered with.
        let mut t = mint(b"s", json!({"userId": "u"}));
        t.pop();
        t.push(if t.ends_with('A') { 'B' } else { 'A' });
        assert!(verify(&t, &s, NOW).is_err());
    }

    #[test]
    fn cache_rechecks_time_and_never_keeps_failures() {
        let s = [b"s".to_vec()];
        let mut cache = TokenCache::default();
        let t = mint(b"s", json!({"userId": "u", "exp": NOW / 1000 + 10}));
        assert!(cache.verify(&t, &s, NOW).is_ok());
        assert_eq!(cache.len(), 1);
        assert!(cache.verify(&t, &s, NOW).is_ok(), "hit");
        assert_eq!(cache.verify(&t, &s, NOW + 60_000), Err(Error::TokenExpired), "expiry is checked on a hit");
        let forged = format!("{}x", t);
        assert!(cache.verify(&forged, &s, NOW).is_err());
        assert_eq!(cache.len(), 1, "failures are not cached");
        let wrong = mint(b"other", json!({"userId": "u"}));
        assert!(cache.verify(&wrong, &s, NOW).is_err());
        for i in 0..TOKEN_CACHE_CAPACITY + 5 {
            let t = mint(b"s", json!({"userId": format!("u{i}")}));
            assert!(cache.verify(&t, &s, NOW).is_ok());
        }
        assert!(cache.len() <= TOKEN_CACHE_CAPACITY, "bounded");
    }

    #[test]
    fn token_source_precedence() {
        assert_eq!(token_from(Some("Bearer abc"), Some("q")), Some("abc"));
        assert_eq!(token_from(Some("bearer  abc "), None), Some("abc"));
        assert_eq!(token_from(Some("Basic xyz"), Some("q")), Some("q"));
        assert_eq!(token_from(None, Some("q")), Some("q"));
        assert_eq!(token_from(None, Some("")), None);
        assert_eq!(token_from(None, None), None);
    }

    #[test]
    fn user_id_checks() {
        assert!(check_user_id("u1").is_ok());
        assert!(check_user_id(" ").is_err());
        assert!(check_user_id(&"x".repeat(MAX_USER_ID_BYTES + 1)).is_err());
    }
}
