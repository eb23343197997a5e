//! One-time connect tickets, the pure part: their text form and the hash a hub stores.
//!
//! A browser cannot set headers on a WebSocket or an EventSource, so a connect token would have to
//! travel in the URL, where the platform's request logs, proxies and browser history keep it. Instead
//! the client trades its token for a ticket (`POST /tickets`, token in the `Authorization` header)
//! and puts only the ticket in the URL. A ticket is `t1.<base64url(userId)>.<base64url(secret)>`: the
//! user part routes it to that user's hub, which stored the SHA-256 of the secret with the token's
//! checked claims and deletes the row on first use, so a ticket connects once, within
//! `TICKET_SECONDS`. A logged ticket is therefore worthless.

use base64ct::{Base64UrlUnpadded, Encoding};
use sha2::{Digest, Sha256};

/// Version prefix of the text form.
const PREFIX: &str = "t1";
/// Random bytes in a ticket's secret.
pub const SECRET_BYTES: usize = 32;
/// Most unexpired tickets one user may hold; more are refused with 429.
pub const MAX_TICKETS_PER_USER: usize = 100;
/// Longest ticket text read; anything longer is refused unparsed.
pub const MAX_TICKET_BYTES: usize = 512;

/// A ticket's text form for `user_id` and `secret`.
pub fn make(user_id: &str, secret: &[u8]) -> String {
    format!(
        "{PREFIX}.{}.{}",
        Base64UrlUnpadded::encode_string(user_id.as_bytes()),
        Base64UrlUnpadded::encode_string(secret)
    )
}

/// Reads a ticket: `(userId, hash of its secret)`. Every malformed ticket is an error sentence.
pub fn parse(text: &str) -> Result<(String, String), String> {
    if text.len() > MAX_TICKET_BYTES {
        return Err(format!("the ticket is longer than {MAX_TICKET_BYTES} bytes"));
    }
    let mut parts = text.split('.');
    let (Some(PREFIX), Some(user), Some(secret), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("the ticket is not one issued by POST /tickets".into());
    };
    let user = Base64UrlUnpadded::decode_vec(user)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| "the ticket is not one issued by POST /tickets".to_string())?;
    crate::core::auth::check_user_id(&user)?;
    let secret = Base64UrlUnpadded::decode_vec(secret)
        .ok()
        .filter(|s| s.len() == SECRET_BYTES)
        .ok_or_else(|| "the ticket is not one issued by POST /tickets".to_string())?;
    Ok((user, hash(&secret)))
}

/// What a hub stores for a ticket's secret (hex SHA-256): the secret itself is never stored.
pub fn hash(secret: &[u8]) -> String {
    Sha256::digest(secret).iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_refusals() {
        let secret = [7u8; SECRET_BYTES];
        let t = make("alice é/🙂", &secret);
        assert_eq!(parse(&t).unwrap(), ("alice é/🙂".to_string(), hash(&secret)));
        for bad in ["", "t1", "t1..", "t2.YQ.AAAA", &format!("{t}.x"), &t.replace("t1.", "t0."), "t1.YQ.AAAA"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        // An empty or oversized user is refused like any bad userId.
        assert!(parse(&make("", &secret)).is_err());
        assert!(parse(&make(&"u".repeat(300), &secret)).is_err());
        assert_ne!(hash(&[1; 32]), hash(&[2; 32]));
    }

    proptest! {
        #[test]
        fn any_text_parses_or_is_refused_without_panic(s in ".{0,600}") {
            let _ = parse(&s);
        }

        #[test]
        fn made_tickets_round_trip(user in "[^\u{0}]{1,64}", secret in proptest::collection::vec(any::<u8>(), SECRET_BYTES)) {
            prop_assume!(crate::core::auth::check_user_id(&user).is_ok());
            let (u, h) = parse(&make(&user, &secret)).unwrap();
            prop_assert_eq!(u, user);
            prop_assert_eq!(h, hash(&secret));
        }
    }
}
