//! Channels, the pure parts: names, the token's grants, which shard holds a user, version numbers
//! for membership updates, and the aggregation of a channel publish's per-user answers. The
//! runtime side is [`crate::channel_hub`] (the `ChannelHub` Durable Object) and the join/leave
//! frames in [`crate::ws`]; `docs/channels.md` explains the design and its arithmetic.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Longest channel name, in bytes. Names travel in every connection's attachment (2 KiB in all),
/// so they are short and drawn from [`is_name_byte`].
pub const MAX_CHANNEL_BYTES: usize = 64;
/// Channels one connection may have joined at once.
pub const MAX_CHANNELS_PER_CONNECTION: usize = 16;
/// Entries a token's `channels` (or `publishChannels`) claim may hold.
pub const MAX_GRANTS: usize = 32;
/// Per-user entries (and ack results) a channel publish answers with; totals are always exact.
pub const DETAIL_LIMIT: usize = 1_000;

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

/// Exact sums over every user a channel publish reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    pub users: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub client_count: u64,
    pub acked: u64,
    pub pending: u64,
    pub closed: u64,
    /// Stale members found (their hub had no connection in the channel) and removed; not in `users`.
    pub pruned: u64,
}

/// The answer to a channel publish, built bottom-up: each relay aggregates the users it reached, the
/// step above merges the relays. Detail is bounded by [`DETAIL_LIMIT`]; failures come first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Aggregate {
    pub totals: Totals,
    pub results: Vec<Value>,
    pub failures: Vec<Value>,
    pub successes: Vec<Value>,
    pub truncated: bool,
    /// Members found stale at their hub, with the hub's membership version: `(userId, version)`.
    /// Not capped: the root removes every one of them.
    pub stale: Vec<(String, u64)>,
}

fn push_capped(list: &mut Vec<Value>, item: Value, truncated: &mut bool) {
    if list.len() < DETAIL_LIMIT {
        list.push(item);
    } else {
        *truncated = true;
    }
}

impl Aggregate {
    /// Adds one user's outcome: a hub's publish answer with `userId`, or `{userId, status, error}`.
    pub fn add_user(&mut self, outcome: Value) {
        let t = &mut self.totals;
        // `joined: 0` without `lingering`: the hub has no connection in the channel and is not
        // keeping its membership for a reconnect.
        let lingering = outcome.get("lingering").and_then(Value::as_bool) == Some(true);
        if outcome.get("joined").and_then(Value::as_u64) == Some(0) && !lingering {
            let user = outcome.get("userId").and_then(Value::as_str).unwrap_or_default().to_string();
            let version = outcome.get("version").and_then(Value::as_u64).unwrap_or(0);
            t.pruned += 1;
            self.stale.push((user, version));
            return;
        }
        t.users += 1;
        if outcome.get("error").is_some() {
            t.failed += 1;
            push_capped(&mut self.failures, outcome, &mut self.truncated);
            return;
        }
        let count = |key: &str| outcome.get(key).and_then(Value::as_array).map_or(0, |a| a.len() as u64);
        t.succeeded += 1;
        t.client_count += outcome.get("clientCount").and_then(Value::as_u64).unwrap_or(0);
        t.acked += count("acks");
        t.pending += count("pending");
        t.closed += count("closed");
        if let Some(results) = outcome.get("results").and_then(Value::as_array) {
            for r in results {
                push_capped(&mut self.results, r.clone(), &mut self.truncated);
            }
        }
        push_capped(&mut self.successes, outcome, &mut self.truncated);
    }

    /// Folds another aggregate (a shard's) into this one.
    pub fn merge(&mut self, other: Aggregate) {
        let (a, b) = (&mut self.totals, other.totals);
        a.users += b.users;
        a.succeeded += b.succeeded;
        a.failed += b.failed;
        a.client_count += b.client_count;
        a.acked += b.acked;
        a.pending += b.pending;
        a.closed += b.closed;
        a.pruned += b.pruned;
        self.truncated |= other.truncated;
        self.stale.extend(other.stale);
        for (mine, theirs) in [
            (&mut self.results, other.results),
            (&mut self.failures, other.failures),
            (&mut self.successes, other.successes),
        ] {
            for item in theirs {
                push_capped(mine, item, &mut self.truncated);
            }
        }
    }

    /// A relay that did not answer: all `users` below it count as failed, in one entry.
    pub fn relay_failed(&mut self, relay: &str, users: usize, status: u16, code: &str, message: &str) {
        self.totals.users += users as u64;
        self.totals.failed += users as u64;
        let entry = serde_json::json!({
            "relay": relay, "users": users, "status": status, "error": code, "message": message,
        });
        push_capped(&mut self.failures, entry, &mut self.truncated);
    }

    /// The backend's answer: `clientCount`, `results`, `totals`, `users` (failures first).
    pub fn into_response(self, channel: &str) -> Value {
        let mut users = self.failures;
        let mut truncated = self.truncated;
        for s in self.successes {
            push_capped(&mut users, s, &mut truncated);
        }
        serde_json::json!({
            "channel": channel,
            "clientCount": self.totals.client_count,
            "results": self.results,
            "totals": self.totals,
            "users": users,
            "truncated": truncated,
        })
    }
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

    #[test]
    fn aggregates_count_exactly_and_cap_detail() {
        let mut shard = Aggregate::default();
        for i in 0..(DETAIL_LIMIT + 5) {
            shard.add_user(json!({ "userId": format!("u{i}"), "clientCount": 2, "results": [1, 2],
                "acks": [{}, {}], "pending": [], "closed": [] }));
        }
        shard.add_user(json!({ "userId": "bad", "status": 504, "error": "timeout" }));
        assert_eq!(shard.totals.users, DETAIL_LIMIT as u64 + 6);
        assert_eq!(shard.totals.failed, 1);
        assert_eq!(shard.totals.client_count, 2 * (DETAIL_LIMIT as u64 + 5));
        assert_eq!(shard.totals.acked, 2 * (DETAIL_LIMIT as u64 + 5));
        assert_eq!(shard.results.len(), DETAIL_LIMIT);
        assert!(shard.truncated);

        let mut root = Aggregate::default();
        let mut small = Aggregate::default();
        small.add_user(json!({ "userId": "x", "clientCount": 1, "results": [true], "acks": [{}],
            "pending": ["c"], "closed": [] }));
        root.merge(small.clone());
        root.relay_failed("3", 40, 504, "timeout", "late");
        let wire: Aggregate = serde_json::from_value(serde_json::to_value(&small).unwrap()).unwrap();
        root.merge(wire);
        assert_eq!(root.totals.users, 42);
        assert_eq!(root.totals.failed, 40);
        assert_eq!(root.totals.pending, 2);
        root.add_user(json!({ "userId": "gone", "joined": 0, "version": 7, "clientCount": 0 }));
        assert_eq!((root.totals.users, root.totals.pruned), (42, 1));
        assert_eq!(root.stale, vec![("gone".to_string(), 7)]);
        root.add_user(json!({ "userId": "away", "joined": 0, "lingering": true, "clientCount": 0, "acks": [] }));
        assert_eq!((root.totals.users, root.totals.succeeded, root.totals.pruned), (43, 3, 1), "lingering is a member");
        assert!(!root.truncated);
        root.merge(shard);
        let response = root.into_response("room:1");
        assert_eq!(response["totals"]["users"], DETAIL_LIMIT as u64 + 49);
        // Failures come first in `users`.
        assert_eq!(response["users"][0]["relay"], "3");
        assert_eq!(response["users"][1]["userId"], "bad");
        assert_eq!(response["users"].as_array().unwrap().len(), DETAIL_LIMIT);
        assert_eq!(response["truncated"], true);
    }
}
