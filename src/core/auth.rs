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
use base64ct::{Base64UrlUnpadded, Encoding};
use jwt_compact::{
    alg::{Hs256, Hs256Key, Hs256Signature},
    Algorithm, AlgorithmSignature,
};
use serde::{de::DeserializeOwned, Deserialize, Deserializer};
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

/// The JOSE header fields read (any others are ignored).
#[derive(Deserialize)]
struct JoseHeader {
    alg: String,
    #[serde(default)]
    cty: Option<String>,
}

/// The claims read, each as the token carries it (any others are ignored). Read in one pass into
/// this struct: jwt-compact's `Claims<T>` reads custom claims through `#[serde(flatten)]` (serde's
/// buffered `Content`) and its times through chrono, 10.5 KB of gzip wasm more (BENCHMARKS.md, "The
/// token check").
#[derive(Deserialize)]
struct RawClaims {
    #[serde(default, deserialize_with = "timestamp")]
    exp: Option<i64>,
    #[serde(default, deserialize_with = "timestamp")]
    nbf: Option<i64>,
    /// Read only so that a malformed one refuses the token, as `exp` and `nbf` do.
    #[serde(default, deserialize_with = "timestamp")]
    #[allow(dead_code)]
    iat: Option<i64>,
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

/// Farthest a time claim may be from the epoch, in seconds (about 300,000 years): its milliseconds
/// and the leeway then fit an `i64`.
const MAX_TIMESTAMP_SECONDS: i64 = 10_000_000_000_000;

/// A NumericDate (RFC 7519): seconds since the epoch, an integer or a number whose fraction is
/// dropped. Anything else (a string, `null`, out of range) makes the claims malformed.
fn timestamp<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    use serde::de::Error as _;
    let seconds = match serde_json::Number::deserialize(deserializer)? {
        n if n.is_f64() => n.as_f64().filter(|f| f.is_finite()).map(|f| f.trunc() as i64),
        n => n.as_i64(),
    };
    match seconds {
        Some(s) if s.abs() <= MAX_TIMESTAMP_SECONDS => Ok(Some(s * 1000)),
        _ => Err(D::Error::custom("a time claim is out of range")),
    }
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

/// A token part read into `T`: UTF-8 text of a JSON object (serde would also read a struct from an
/// array, element by element). The header and the claims are both read so.
fn read_object<T: DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    let text = std::str::from_utf8(bytes).ok()?;
    text.trim_ascii_start().starts_with('{').then(|| serde_json::from_str(text).ok()).flatten()
}

/// Signature and claims, without the time checks: `(identity, nbf in ms)`.
///
/// jwt-compact checks the HS256 signature (an HMAC compared in constant time); the token's three
/// parts are split and decoded here, and the claims are parsed only once a secret has verified
/// them.
fn verify_signature(token: &str, secrets: &[Vec<u8>]) -> Result<(Identity, Option<i64>), Error> {
    let malformed = || Error::InvalidToken("the token is not a well-formed JWT".into());
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Error::InvalidToken(format!("the token is longer than {MAX_TOKEN_BYTES} bytes")));
    }
    let mut parts = token.split('.');
    let (Some(header), Some(claims), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed());
    };
    // What the signature covers: `header.claims`, as sent.
    let signed = &token.as_bytes()[..header.len() + 1 + claims.len()];
    let header = Base64UrlUnpadded::decode_vec(header).map_err(|_| malformed())?;
    let claims = Base64UrlUnpadded::decode_vec(claims).map_err(|_| malformed())?;
    let signature = Base64UrlUnpadded::decode_vec(signature).map_err(|_| malformed())?;
    let header: JoseHeader = read_object(&header).ok_or_else(malformed)?;
    if header.cty.as_deref().is_some_and(|cty| !cty.eq_ignore_ascii_case("json")) {
        return Err(malformed());
    }
    if header.alg != "HS256" {
        return Err(Error::InvalidToken("only HS256-signed tokens are accepted".into()));
    }
    let bad_signature = || Error::InvalidToken("the token's signature is malformed".into());
    // An HMAC-SHA256 is 32 bytes; jwt-compact's `try_from_slice` panics on any other length.
    if signature.len() != 32 {
        return Err(bad_signature());
    }
    let signature = Hs256Signature::try_from_slice(&signature).map_err(|_| bad_signature())?;
    if !secrets.iter().any(|secret| Hs256.verify_signature(&signature, &Hs256Key::new(secret), signed)) {
        return Err(Error::InvalidToken("the token's signature does not verify".into()));
    }

    let claims: RawClaims = read_object(&claims)
        .ok_or_else(|| Error::InvalidToken("the token's claims are not valid JSON claims".into()))?;
    let user_id = match claims.user_id {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s),
        _ => None,
    };
    let can_publish = match &claims.scope {
        Some(Value::String(s)) => s.split_ascii_whitespace().any(|s| s == "publish"),
        _ => false,
    };
    let channels = Grants::from_claim(claims.channels.as_ref(), "channels").map_err(Error::InvalidToken)?;
    let publish_channels =
        Grants::from_claim(claims.publish_channels.as_ref(), "publishChannels").map_err(Error::InvalidToken)?;
    let identity = Identity {
        user_id,
        can_publish,
        expires_at_ms: claims.exp,
        channels,
        publish_channels,
        // `null` counts as no data, like an absent claim.
        presence: claims.presence.as_ref().filter(|v| !v.is_null()).map(Value::to_string),
        issuer: match claims.iss {
            Some(Value::String(s)) => Some(s),
            _ => None,
        },
        audience: match claims.aud {
            Some(Value::String(s)) => vec![s],
            Some(Value::Array(list)) => list.into_iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
            _ => Vec::new(),
        },
    };
    Ok((identity, claims.nbf))
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
    use jwt_compact::{AlgorithmExt, AlgorithmSignature, Claims, Header};
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

    fn b64(s: impl AsRef<[u8]>) -> String {
        // Minimal base64url without padding, for hand-made hostile tokens.
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let b = s.as_ref();
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

    /// A token with this exact header and claims text, signed with `secret`.
    fn sign_raw(secret: &[u8], header: impl AsRef<[u8]>, claims: impl AsRef<[u8]>) -> String {
        let message = format!("{}.{}", b64(header), b64(claims));
        let signature = Hs256.sign(&Hs256Key::new(secret), message.as_bytes());
        format!("{message}.{}", base64ct::Base64UrlUnpadded::encode_string(&signature.as_bytes()))
    }

    #[test]
    fn signed_tokens_with_malformed_parts_are_refused_with_the_reason() {
        let s = [b"s".to_vec()];
        let hs = r#"{"alg":"HS256","typ":"JWT"}"#;
        let reason = |t: &str| match verify(t, &s, NOW) {
            Err(Error::InvalidToken(m)) => m,
            other => panic!("{other:?}"),
        };
        for claims in [
            r#"[]"#,
            r#"[1800000000,1,1,"u1"]"#,
            r#"{"exp":"soon"}"#,
            r#"{"nbf":null}"#,
            r#"{"iat":[1]}"#,
            r#"{"exp":1e300}"#,
            "7",
        ] {
            assert!(reason(&sign_raw(b"s", hs, claims)).contains("not valid JSON claims"), "{claims}");
        }
        let not_utf8 = b"{\"userId\":\"u\xff\"}";
        assert!(reason(&sign_raw(b"s", hs, not_utf8)).contains("not valid JSON claims"), "claims that are not UTF-8");
        assert!(reason(&sign_raw(b"s", b"{\"alg\":\"HS256\xff\"}", r#"{"userId":"u"}"#)).contains("well-formed"));
        // The header is an object too: serde would read `alg` from an array's first element.
        assert!(reason(&sign_raw(b"s", r#"["HS256"]"#, r#"{"userId":"u"}"#)).contains("well-formed"), "array header");
        // Claims are read only once a secret verifies them.
        assert!(reason(&sign_raw(b"other", hs, r#"{"exp":"soon"}"#)).contains("does not verify"));
        assert!(reason(&sign_raw(b"s", r#"{"alg":"HS256","cty":"cbor"}"#, r#"{"userId":"u"}"#)).contains("well-formed"));
        assert!(reason(&sign_raw(b"s", r#"{"typ":"JWT"}"#, r#"{"userId":"u"}"#)).contains("well-formed"));
        let t = sign_raw(b"s", hs, r#"{"userId":"u"}"#);
        assert!(reason(&format!("{t}.x")).contains("well-formed"), "four parts");
        assert!(reason(&t[..t.len() - 4]).contains("signature is malformed"), "a short signature");
        // What is accepted: any header order and fields, a content type of JSON, a fractional time.
        let ok = sign_raw(b"s", r#"{"typ":"JWT","cty":"JSON","alg":"HS256"}"#, r#"{"userId":"u","exp":1800000060.9}"#);
        assert_eq!(verify(&ok, &s, NOW).unwrap().expires_at_ms, Some(1_800_000_060_000));
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
