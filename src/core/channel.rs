//! Channels, the pure parts: names, the token's grants, which shard holds a user, version numbers
//! for membership updates, and the aggregation of a channel publish's per-user answers. The
//! runtime side is [`crate::channel_hub`] (the `ChannelHub` Durable Object) and the join/leave
//! frames in [`crate::ws`]; `docs/channels.md` explains the design and its arithmetic.

pub use super::aggregate::{Aggregate, Totals, DETAIL_LIMIT};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Longest channel name, in bytes. Names travel in every connection's attachment (2 KiB in all),
/// so they are short and drawn from [`is_name_byte`].
pub const MAX_CHANNEL_BYTES: usize = 64;
/// Channels one connection may have joined at once.
pub const MAX_CHANNELS_PER_CONNECTION: usize = 16;
/// Entries a token's `channels` (or `publishChannels`) claim may hold.
pub const MAX_GRANTS: usize = 32;

/// Letters, digits and `_ - : . @ / = +`: safe in URLs, logs and attachments without escaping.
pub fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':' | b'.' | b'@' | b'/' | b'=' | b'+')
}

/// Checks a channel name, with a message that says what is wrong.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("`channel` must be a non-empty string".into());
    }
    if name.len() > MAX_CHANNEL_BYTES {
        return Err(format!("`channel` is longer than {MAX_CHANNEL_BYTES} bytes"));
    }
    if !name.bytes().all(is_name_byte) {
        return Err("`channel` may only hold letters, digits and _ - : . @ / = +".into());
    }
    Ok(())
}

/// One entry of a token's grant: an exact name, or a prefix (`room:*`; a lone `*` is every channel).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Pattern {
    Exact(String),
    Prefix(String),
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Pattern, String> {
        match text.strip_suffix('*') {
            Some(prefix) => {
                if prefix.len() >= MAX_CHANNEL_BYTES || !prefix.bytes().all(is_name_byte) {
                    return Err(format!("`{}` is not a channel pattern", clip(text)));
                }
                Ok(Pattern::Prefix(prefix.to_string()))
            }
            None => {
                check_name(text).map_err(|_| format!("`{}` is not a channel name", clip(text)))?;
                Ok(Pattern::Exact(text.to_string()))
            }
        }
    }

    pub fn allows(&self, channel: &str) -> bool {
        match self {
            Pattern::Exact(name) => name == channel,
            Pattern::Prefix(prefix) => channel.starts_with(prefix.as_str()),
        }
    }

    fn text(&self) -> String {
        match self {
            Pattern::Exact(name) => name.clone(),
            Pattern::Prefix(prefix) => format!("{prefix}*"),
        }
    }
}

fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(40).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// The channels a token lets its bearer join (`channels`) or publish to (`publishChannels`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    patterns: Vec<Pattern>,
}

impl Grants {
    /// Reads a claim: absent or `null` grants nothing; otherwise an array of names and patterns.
    pub fn from_claim(claim: Option<&Value>, name: &str) -> Result<Grants, String> {
        let list = match claim {
            None | Some(Value::Null) => return Ok(Grants::default()),
            Some(Value::Array(list)) => list,
            Some(_) => return Err(format!("the `{name}` claim must be an array of channel names and patterns")),
        };
        if list.len() > MAX_GRANTS {
            return Err(format!("the `{name}` claim lists more than {MAX_GRANTS} entries"));
        }
        let patterns = list
            .iter()
            .map(|v| match v {
                Value::String(s) => Pattern::parse(s).map_err(|m| format!("the `{name}` claim: {m}")),
                _ => Err(format!("the `{name}` claim must hold strings only")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Grants { patterns })
    }

    /// The grants in the claim's own text form (one entry per line), to hand to a hub.
    pub fn to_text(&self) -> String {
        self.patterns.iter().map(Pattern::text).collect::<Vec<_>>().join("\n")
    }

    /// Reads [`Grants::to_text`] back; entries that do not parse are dropped.
    pub fn from_text(text: &str) -> Grants {
        Grants { patterns: text.lines().filter_map(|l| Pattern::parse(l).ok()).collect() }
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    pub fn allows(&self, channel: &str) -> bool {
        self.patterns.iter().any(|p| p.allows(channel))
    }
}

/// What a connection's token allows it to do with channels (the `channels` and `publishChannels`
/// claims); a hub keeps it in SQLite because it may not fit the socket's attachment.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ChannelGrants {
    pub join: Grants,
    pub publish: Grants,
}

impl ChannelGrants {
    pub fn is_empty(&self) -> bool {
        self.join.is_empty() && self.publish.is_empty()
    }
}

/// How one step of a channel's fan-out splits `n` users: `None` when the step reaches the users'
/// hubs itself (`n <= fanout`), else the number of users per relay below it. Each relay's share fits
/// a subtree one level shallower, so no step ever makes more than `fanout` hops, and the tree is
/// `ceil(log_fanout(n))` steps deep.
pub fn chunk_size(n: usize, fanout: usize) -> Option<usize> {
    let fanout = fanout.max(2);
    if n <= fanout {
        return None;
    }
    let mut subtree = fanout;
    while subtree.saturating_mul(fanout) < n {
        subtree = subtree.saturating_mul(fanout);
    }
    // As many relays as needed, with the users spread evenly over them.
    let relays = n.div_ceil(subtree);
    Some(n.div_ceil(relays))
}

/// Steps from the root to the users' hubs for `n` members (1 when the root reaches them itself).
pub fn depth(n: usize, fanout: usize) -> u32 {
    match chunk_size(n, fanout) {
        None => 1,
        Some(chunk) => 1 + depth(chunk, fanout),
    }
}

/// The next version number for a membership update: strictly above `last`, and above every number
/// handed out before `now_ms` (so a hub rebuilt after eviction, whose `last` is 0, still counts up).
/// Below 2^53 until the year 2248, so it survives JavaScript numbers and SQLite integers.
pub fn next_version(last: u64, now_ms: u64) -> u64 {
    (last + 1).max(now_ms.saturating_mul(1024))
}

/// Durable Object names: a channel's root (which holds its members), and the stateless relays of
/// its fan-out tree (`path` is the relay's position, like `3.17`).
pub fn root_name(channel: &str) -> String {
    format!("root/{channel}")
}

pub fn relay_name(channel: &str, path: &str) -> String {
    format!("relay/{path}/{channel}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_are_checked() {
        assert!(check_name("room:42").is_ok());
        assert!(check_name("a/b.c=d+e@f_g-h").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("has space").is_err());
        assert!(check_name("star*").is_err());
        assert!(check_name("ünïcode").is_err());
        assert!(check_name(&"x".repeat(MAX_CHANNEL_BYTES)).is_ok());
        assert!(check_name(&"x".repeat(MAX_CHANNEL_BYTES + 1)).is_err());
    }

    #[test]
    fn grants_match_exact_names_and_prefixes() {
        let claim = json!(["lobby", "room:*"]);
        let g = Grants::from_claim(Some(&claim), "channels").unwrap();
        assert!(g.allows("lobby"));
        assert!(!g.allows("lobby2"));
        assert!(g.allows("room:1"));
        assert!(g.allows("room:"));
        assert!(!g.allows("rooms"));
        assert!(!g.allows("private"));
        let all = Grants::from_claim(Some(&json!(["*"])), "channels").unwrap();
        assert!(all.allows("anything"));
        assert!(Grants::from_claim(None, "channels").unwrap().is_empty());
        assert!(!Grants::default().allows("lobby"));
    }

    #[test]
    fn bad_claims_are_refused_with_the_claim_named() {
        for bad in [json!("lobby"), json!([1]), json!(["a b"]), json!(["ro*m"]), json!(vec!["x"; MAX_GRANTS + 1])] {
            let e = Grants::from_claim(Some(&bad), "channels").unwrap_err();
            assert!(e.contains("`channels`"), "{e}");
        }
    }

    #[test]
    fn grants_round_trip_through_text() {
        let g = Grants::from_claim(Some(&json!(["lobby", "room:*", "*"])), "channels").unwrap();
        assert_eq!(Grants::from_text(&g.to_text()), g);
    }

    #[test]
    fn the_fan_out_tree_never_exceeds_its_fanout() {
        for fanout in [2, 3, 10, 500] {
            for n in [1, 2, 3, 9, 10, 11, 99, 100, 101, 999, 2_000, 100_000, 1_000_000] {
                // Walk the whole tree: every step makes at most `fanout` hops, and every user is
                // reached exactly once.
                fn walk(n: usize, fanout: usize, steps: &mut usize) -> usize {
                    *steps += 1;
                    match chunk_size(n, fanout) {
                        None => {
                            assert!(n <= fanout);
                            n
                        }
                        Some(chunk) => {
                            let relays = n.div_ceil(chunk);
                            assert!(relays <= fanout && relays >= 2, "n {n} fanout {fanout} relays {relays}");
                            (0..relays).map(|i| walk(chunk.min(n - i * chunk), fanout, steps)).sum()
                        }
                    }
                }
                if fanout == 2 && n > 2_000 {
                    continue;
                }
                let mut steps = 0;
                assert_eq!(walk(n, fanout, &mut steps), n);
                assert!(depth(n, fanout) as f64 <= (n.max(2) as f64).log(fanout as f64).ceil().max(1.0) + 1e-9);
            }
        }
        // The numbers in docs/channels.md.
        assert_eq!(chunk_size(500, 500), None);
        assert_eq!(chunk_size(2_000, 500), Some(500));
        assert_eq!(chunk_size(100_000, 500), Some(500));
        assert_eq!(100_000usize.div_ceil(500), 200);
        assert_eq!(depth(100_000, 500), 2);
        assert_eq!(depth(1_000_000, 500), 3);
        assert_eq!(depth(2_000, 10), 4);
    }

    #[test]
    fn versions_count_up_across_restarts() {
        let a = next_version(0, 1_000);
        let b = next_version(a, 1_000);
        assert!(b > a);
        // A restarted hub (last = 0) a millisecond later is still above everything before.
        let c = next_version(0, 1_001);
        assert!(c > b);
        // Up to 1024 updates within one millisecond keep the order.
        let mut v = 0;
        for _ in 0..5_000 {
            let n = next_version(v, 7);
            assert!(n > v);
            v = n;
        }
        assert!(next_version(0, 8_700_000_000_000) < (1u64 << 53));
    }
}
