//! Token extraction and HS256 verification. Pure: the clock is passed in, so it is tested on the host.
//!
//! Only `HS256` is accepted (`alg: none` and every other algorithm fail before any key is tried).
//! `exp` and `nbf` are enforced when present, with [`LEEWAY_SECONDS`] of clock skew allowed.
//! [`TokenRules`] add what a deployment may require: `iss` and `aud` on every token (so tokens the
//! backend signs with the same secret for other purposes are refused), and `exp` with a greatest TTL
//! on connect tokens.
//! Tokens are never logged: errors describe what is wrong without echoing the token.
//!
//! Why one file: the claims a token may carry, their checks and the rules a deployment adds are one
//! contract, read together with the tests that pin each refusal (about half of the file).

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
    /// The `presence` claim as compact JSON text: the data other members see for this user in a
    /// channel's presence (its size is checked against `PRESENCE_DATA_MAX_BYTES` in [`check_rules`]).
    pub presence: Option<String>,
    /// The `iss` claim when it is a string.
    pub issuer: Option<String>,
    /// The `aud` claim: a string, or the strings of an array (anything else: none).
    pub audience: Vec<String>,
}

/// Claims a deployment may require (`JWT_ISSUER`, `JWT_AUDIENCE`, `JWT_REQUIRE_EXP`,
/// `JWT_MAX_TTL_SECONDS`). The default requires nothing beyond a valid signature and times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRules {
    /// Every token's `iss` must equal this.
    pub issuer: Option<String>,
    /// Every token's `aud` must be, or contain, this.
    pub audience: Option<String>,
    /// Connect tokens must have `exp`.
    pub require_exp: bool,
    /// A connect token's `exp` may be at most this far ahead (0: no limit).
    pub max_ttl_seconds: u64,
    /// The largest `presence` claim, as compact JSON text (`PRESENCE_DATA_MAX_BYTES`).
    pub presence_data_max_bytes: usize,
}

/// The default of `PRESENCE_DATA_MAX_BYTES`.
pub const DEFAULT_PRESENCE_DATA_MAX_BYTES: usize = 1024;

impl Default for TokenRules {
    fn default() -> Self {
        TokenRules {
            issuer: None,
            audience: None,
            require_exp: false,
            max_ttl_seconds: 0,
            presence_data_max_bytes: DEFAULT_PRESENCE_DATA_MAX_BYTES,
        }
    }
}

/// `iss` and `aud` against the rules (every token, connect and backend alike).
pub fn check_rules(identity: &Identity, rules: &TokenRules) -> Result<(), Error> {
    if let Some(data) = &identity.presence {
        // Every presence frame and snapshot carries it, to every watching member: kept small.
        if data.len() > rules.presence_data_max_bytes {
            return Err(Error::InvalidToken(format!(
                "the token's `presence` claim is {} bytes of JSON, more than PRESENCE_DATA_MAX_BYTES ({})",
                data.len(),
                rules.presence_data_max_bytes
            )));
        }
    }
    if let Some(iss) = &rules.issuer {
        if identity.issuer.as_deref() != Some(iss.as_str()) {
            return Err(Error::InvalidToken("the token's `iss` claim is not this deployment's JWT_ISSUER".into()));
        }
    }
    if let Some(aud) = &rules.audience {
        if !identity.audience.iter().any(|a| a == aud) {
            return Err(Error::InvalidToken(
                "the token's `aud` claim does not name this deployment's JWT_AUDIENCE".into(),
            ));
        }
    }
    Ok(())
}

/// What a connect token (WebSocket, SSE, ticket) must also satisfy: `exp` when required, and no
/// further ahead than the greatest TTL, so a leaked token is not a key for months.
pub fn check_connect(identity: &Identity, rules: &TokenRules, now_ms: i64) -> Result<(), Error> {
    match identity.expires_at_ms {
        None if rules.require_exp || rules.max_ttl_seconds > 0 => Err(Error::InvalidToken(
            "the token has no `exp` claim, and this deployment requires one on connect tokens (JWT_REQUIRE_EXP, JWT_MAX_TTL_SECONDS)".into(),
        )),
        Some(exp)
            if rules.max_ttl_seconds > 0
                && exp > now_ms + (rules.max_ttl_seconds as i64 + LEEWAY_SECONDS) * 1000 =>
        {
            Err(Error::InvalidToken(format!(
                "the token's `exp` is more than {} s ahead (JWT_MAX_TTL_SECONDS): mint shorter-lived connect tokens",
                rules.max_ttl_seconds
            )))
        }
        _ => Ok(()),
    }
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
    #[serde(default)]
    presence: Option<Value>,
    #[serde(default)]
    iss: Option<Value>,
    #[serde(default)]
    aud: Option<Value>,
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
        // `null` counts as no data, like an absent claim.
        presence: claims.custom.presence.as_ref().filter(|v| !v.is_null()).map(Value::to_string),
        issuer: match &claims.custom.iss {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        },
        audience: match &claims.custom.aud {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(list)) => list.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
            _ => Vec::new(),
        },
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

    #[test]
    fn issuer_and_audience_rules() {
        let s = [b"s".to_vec()];
        let rules = TokenRules { issuer: Some("i".into()), audience: Some("a".into()), ..TokenRules::default() };
        for (claims, ok) in [
            (json!({"userId": "u", "iss": "i", "aud": "a"}), true),
            (json!({"userId": "u", "iss": "i", "aud": ["x", "a"]}), true),
            (json!({"userId": "u", "iss": "i", "aud": "x"}), false),
            (json!({"userId": "u", "iss": "i", "aud": 5}), false),
            (json!({"userId": "u", "iss": "i"}), false),
            (json!({"userId": "u", "aud": "a"}), false),
            (json!({"userId": "u", "iss": "j", "aud": "a"}), false),
        ] {
            let id = verify(&mint(b"s", claims.clone()), &s, NOW).unwrap();
            assert_eq!(check_rules(&id, &rules).is_ok(), ok, "{claims}");
            assert!(check_rules(&id, &TokenRules::default()).is_ok(), "no rules, no refusal");
        }
    }

    #[test]
    fn connect_rules_require_exp_and_bound_the_ttl() {
        let s = [b"s".to_vec()];
        let id = |claims| verify(&mint(b"s", claims), &s, NOW).unwrap();
        let required = TokenRules { require_exp: true, ..TokenRules::default() };
        assert!(check_connect(&id(json!({"userId": "u"})), &required, NOW).is_err());
        assert!(check_connect(&id(json!({"userId": "u", "exp": NOW / 1000 + 99_999})), &required, NOW).is_ok());
        let ttl = TokenRules { max_ttl_seconds: 600, ..TokenRules::default() };
        assert!(check_connect(&id(json!({"userId": "u"})), &ttl, NOW).is_err(), "a TTL needs an exp");
        assert!(check_connect(&id(json!({"userId": "u", "exp": NOW / 1000 + 600})), &ttl, NOW).is_ok());
        assert!(check_connect(&id(json!({"userId": "u", "exp": NOW / 1000 + 3600})), &ttl, NOW).is_err());
        assert!(check_connect(&id(json!({"userId": "u"})), &TokenRules::default(), NOW).is_ok());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn refusal(e: &Error) -> bool {
            e.status() == 401
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

            /// Any text as a token: verified or refused with a 401, never a panic.
            #[test]
            fn any_text_is_refused_cleanly(t in ".{0,300}") {
                if let Err(e) = verify(&t, &[b"s".to_vec()], NOW) {
                    prop_assert!(refusal(&e), "{e:?}");
                }
            }

            /// Three base64url-ish segments of arbitrary bytes (a JWT's shape, hostile contents).
            #[test]
            fn jwt_shaped_junk_is_refused_cleanly(h in proptest::collection::vec(any::<u8>(), 0..80),
                                                  c in proptest::collection::vec(any::<u8>(), 0..200),
                                                  sig in "[A-Za-z0-9_-]{0,90}") {
                use base64ct::{Base64UrlUnpadded, Encoding};
                let t = format!("{}.{}.{sig}", Base64UrlUnpadded::encode_string(&h), Base64UrlUnpadded::encode_string(&c));
                if let Err(e) = verify(&t, &[b"s".to_vec()], NOW) {
                    prop_assert!(refusal(&e), "{e:?}");
                }
            }

            /// Any claims object signed with the secret: verifies, and what it says comes back.
            #[test]
            fn minted_tokens_round_trip(user in "[a-zA-Z0-9 é🙂_.:-]{1,40}", publish in any::<bool>(),
                                        ttl in 1i64..1_000_000, extra in "[a-z]{1,8}", junk in any::<i64>()) {
                prop_assume!(!user.trim().is_empty());
                let scope = if publish { "read publish" } else { "read" };
                let exp = NOW / 1000 + ttl;
                let t = mint(b"s", json!({"userId": user, "scope": scope, "exp": exp, extra.clone(): junk}));
                let id = verify(&t, &[b"other".to_vec(), b"s".to_vec()], NOW).unwrap();
                prop_assert_eq!(id.user_id.as_deref(), Some(user.as_str()));
                prop_assert_eq!(id.can_publish, publish);
                prop_assert_eq!(id.expires_at_ms, Some(exp * 1000));
                // The same token under a wrong secret, or one byte changed, is a clean 401.
                prop_assert!(verify(&t, &[b"wrong".to_vec()], NOW).is_err());
                let mut tampered = t.clone().into_bytes();
                let i = tampered.len() / 2;
                tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
                if let Ok(text) = String::from_utf8(tampered) {
                    if text != t {
                        prop_assert!(verify(&text, &[b"s".to_vec()], NOW).is_err());
                    }
                }
            }
        }
    }
}
