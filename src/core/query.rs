//! Query strings, read and written without the `url` crate (which, with its IDNA tables, would cost
//! the wasm ~15 KB gzip for what is only `?a=b&c=d` here). Decoding follows
//! `application/x-www-form-urlencoded` (`+` is a space), as URLSearchParams does.

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Everything but the unreserved characters (`A-Z a-z 0-9 - . _ ~`) is percent-encoded.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// The decoded `(name, value)` pairs of a URL's query, in order.
pub fn pairs(url: &str) -> Vec<(String, String)> {
    let Some((_, rest)) = url.split_once('?') else { return Vec::new() };
    let query = rest.split('#').next().unwrap_or("");
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// The first value of `name` in a URL's query.
pub fn param(url: &str, name: &str) -> Option<String> {
    pairs(url).into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

fn decode(s: &str) -> String {
    percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned()
}

/// `base?k=v&…` with every name and value percent-encoded.
pub fn build(base: &str, pairs: &[(&str, &str)]) -> String {
    let mut out = String::from(base);
    for (i, (k, v)) in pairs.iter().enumerate() {
        out.push(if i == 0 { '?' } else { '&' });
        out.extend(utf8_percent_encode(k, COMPONENT));
        out.push('=');
        out.extend(utf8_percent_encode(v, COMPONENT));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_of_awkward_values() {
        let values = ["u é/🙂", "a&b=c", "100%", "plus+sign", " spaced ", "", "?#"];
        let pairs_in: Vec<(&str, &str)> = values.iter().map(|v| ("k", *v)).collect();
        let url = build("https://hub/x", &pairs_in);
        let out = pairs(&url);
        assert_eq!(out.len(), values.len());
        for ((_, got), want) in out.iter().zip(values) {
            assert_eq!(got, want);
        }
    }

    #[test]
    fn reads_like_url_search_params() {
        let url = "https://h/p?token=a.b.c&filters=%5B%7B%22type%22%3A%22t%22%7D%5D&x=1+2&empty&dup=1&dup=2#frag=no";
        assert_eq!(param(url, "token").as_deref(), Some("a.b.c"));
        assert_eq!(param(url, "filters").as_deref(), Some(r#"[{"type":"t"}]"#));
        assert_eq!(param(url, "x").as_deref(), Some("1 2"));
        assert_eq!(param(url, "empty").as_deref(), Some(""));
        assert_eq!(param(url, "dup").as_deref(), Some("1"));
        assert_eq!(param(url, "frag"), None);
        assert_eq!(param("https://h/p", "token"), None);
        assert_eq!(param("https://h/p?bad=%ZZ%", "bad").as_deref(), Some("%ZZ%"));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Any names and values survive build then read, in order (the hop's fields depend on it).
            #[test]
            fn build_then_read_round_trips(list in proptest::collection::vec((".{0,12}", ".{0,40}"), 0..8)) {
                let borrowed: Vec<(&str, &str)> = list.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let url = build("https://hub/x", &borrowed);
                let back = pairs(&url);
                // A pair with an empty name and value is written as `=` and read back as ("", "").
                prop_assert_eq!(back, list);
            }

            /// Any URL text reads without a panic.
            #[test]
            fn any_url_reads(url in ".{0,200}") {
                let _ = pairs(&url);
                let _ = param(&url, "token");
            }
        }
    }
}

/// A list endpoint's `?limit=`: 100 when absent, else 1 to `max`; anything else is `invalid_limit`.
pub fn page_limit(limit: Option<&str>, max: usize) -> Result<usize, crate::core::error::Error> {
    match limit {
        None => Ok(100.min(max)),
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(crate::core::error::Error::bad_request("invalid_limit", format!("`limit` must be 1 to {max}"))),
        },
    }
}

#[cfg(test)]
mod page_limit_tests {
    #[test]
    fn page_limit_defaults_to_100_and_refuses_what_is_out_of_range() {
        assert_eq!(super::page_limit(None, 1000).unwrap(), 100);
        assert_eq!(super::page_limit(Some("7"), 100).unwrap(), 7);
        for bad in ["0", "101", "x", "-1"] {
            assert_eq!(super::page_limit(Some(bad), 100).unwrap_err().code(), "invalid_limit", "{bad}");
        }
    }
}
