//! The answer to a publish that reached many users (a channel's fan-out, or `userIds`): exact
//! totals, and detail (per-user entries and ack results) bounded by entries ([`DETAIL_LIMIT`]) and
//! by bytes (`PUBLISH_RESULTS_MAX_BYTES`), each user's ack results kept once. Pure and host-tested.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Per-user entries (and ack results) a channel publish answers with; totals are always exact.
pub const DETAIL_LIMIT: usize = 1_000;

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
    /// Most bytes of detail (`results`, `failures`, `successes`, as JSON) this aggregate keeps;
    /// 0: no byte bound. Each step applies it to what it keeps, so no step holds more than
    /// `PUBLISH_RESULTS_MAX_BYTES` of detail, however large the channel (review F3).
    #[serde(skip)]
    pub budget: usize,
    #[serde(skip)]
    bytes: usize,
}

/// Keeps `item` when the list has room ([`DETAIL_LIMIT`]) and the byte budget allows it (0: no
/// byte bound); otherwise marks the detail truncated.
fn push_capped(list: &mut Vec<Value>, item: Value, truncated: &mut bool, bytes: &mut usize, budget: usize) {
    let size = if budget == 0 { 0 } else { serde_json::to_string(&item).map_or(usize::MAX, |t| t.len()) };
    if list.len() < DETAIL_LIMIT && (budget == 0 || bytes.saturating_add(size) <= budget) {
        *bytes += size;
        list.push(item);
    } else {
        *truncated = true;
    }
}

impl Aggregate {
    /// An empty aggregate whose detail is bounded by `budget` bytes (0: only by entries).
    pub fn with_budget(budget: usize) -> Aggregate {
        Aggregate { budget, ..Aggregate::default() }
    }

    /// Adds one user's outcome: a hub's publish answer with `userId`, or `{userId, status, error}`.
    /// The user's ack results are kept once, in its `acks`: the hub's `results` (the same values)
    /// go to the aggregate's flat `results` and are removed from the user's entry.
    pub fn add_user(&mut self, mut outcome: Value) {
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
        // A leaf that had to leave this user's ack results out (its bytes) marked the entry.
        self.truncated |= outcome.get("truncated").and_then(Value::as_bool) == Some(true);
        let (budget, bytes) = (self.budget, &mut self.bytes);
        if outcome.get("error").is_some() {
            t.failed += 1;
            push_capped(&mut self.failures, outcome, &mut self.truncated, bytes, budget);
            return;
        }
        let count = |key: &str| outcome.get(key).and_then(Value::as_array).map_or(0, |a| a.len() as u64);
        t.succeeded += 1;
        t.client_count += outcome.get("clientCount").and_then(Value::as_u64).unwrap_or(0);
        t.acked += count("acks");
        t.pending += count("pending");
        t.closed += count("closed");
        if let Some(Value::Array(results)) = outcome.as_object_mut().and_then(|o| o.remove("results")) {
            for r in results {
                push_capped(&mut self.results, r, &mut self.truncated, bytes, budget);
            }
        }
        push_capped(&mut self.successes, outcome, &mut self.truncated, bytes, budget);
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
                push_capped(mine, item, &mut self.truncated, &mut self.bytes, self.budget);
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
        push_capped(&mut self.failures, entry, &mut self.truncated, &mut self.bytes, self.budget);
    }

    /// The backend's answer: `clientCount`, `results`, `totals`, `users` (failures first).
    pub fn into_response(self, channel: &str) -> Value {
        let mut users = self.failures;
        let mut truncated = self.truncated;
        // Their bytes were counted when they were kept.
        for s in self.successes {
            push_capped(&mut users, s, &mut truncated, &mut 0, 0);
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

/// Leaves the ack results out of a user's entry: its `acks` keep their `connectionId` (so counts
/// and attribution stay), and the entry says `"truncated": true`.
pub fn drop_results(o: &mut serde_json::Map<String, Value>) {
    if let Some(Value::Array(acks)) = o.get_mut("acks") {
        for a in acks {
            if let Some(a) = a.as_object_mut() {
                a.remove("result");
            }
        }
    }
    o.insert("truncated".into(), Value::Bool(true));
}

/// Moves each user's ack `results` out of its entry into one flat list (HopeFlow's shape), so each
/// result is in the answer once more only as its attributed `acks` entry, and keeps the detail
/// within `budget` bytes (review F3): past it, a user's ack results are left out (see
/// [`drop_results`]) and so are further flat results. Every user keeps its entry and counts.
pub fn bound_detail(per_user: &mut [Value], budget: usize) -> (Vec<Value>, bool) {
    let mut results = Vec::new();
    let (mut used, mut truncated) = (0usize, false);
    let size = |v: &Value| serde_json::to_string(v).map_or(usize::MAX, |t| t.len());
    for entry in per_user.iter_mut() {
        let Some(o) = entry.as_object_mut() else { continue };
        let mine = match o.remove("results") {
            Some(Value::Array(r)) => r,
            _ => Vec::new(),
        };
        let acks_size = o.get("acks").map_or(0, size);
        if used.saturating_add(acks_size) <= budget {
            used += acks_size;
        } else {
            drop_results(o);
        }
        truncated |= o.get("truncated").is_some();
        for r in mine {
            let n = size(&r);
            if used.saturating_add(n) <= budget {
                used += n;
                results.push(r);
            } else {
                truncated = true;
            }
        }
    }
    (results, truncated)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn aggregates_keep_results_once_and_bound_detail_by_bytes() {
        let big = "r".repeat(1500);
        let mut a = Aggregate::with_budget(4096);
        for i in 0..6 {
            a.add_user(json!({ "userId": format!("u{i}"), "clientCount": 1, "results": [big],
                "acks": [{"connectionId": "c", "result": big}], "pending": [], "closed": [] }));
        }
        assert_eq!((a.totals.users, a.totals.acked, a.totals.client_count), (6, 6, 6), "totals stay exact");
        assert!(a.truncated);
        assert!(a.successes.iter().all(|s| s.get("results").is_none()), "no per-user copy of results");
        let text = serde_json::to_string(&a.clone().into_response("c")).unwrap();
        assert!(text.len() < 4096 + 1024, "{}", text.len());
        // Merging into a bounded parent applies the parent's bound too.
        let mut parent = Aggregate::with_budget(2048);
        parent.merge(a);
        assert_eq!(parent.totals.acked, 6);
        let text = serde_json::to_string(&parent.into_response("c")).unwrap();
        assert!(text.len() < 2048 + 1024, "{}", text.len());
    }

    #[test]
    fn an_entry_trimmed_below_marks_the_aggregate_truncated() {
        let mut a = Aggregate::with_budget(1 << 20);
        a.add_user(json!({ "userId": "u", "clientCount": 1, "acks": [{"connectionId": "c"}], "truncated": true }));
        assert!(a.truncated);
        assert_eq!(a.totals.acked, 1);
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

    #[test]
    fn results_once_and_bounded_by_bytes() {
        let big = "r".repeat(1500);
        let mut users: Vec<Value> = (0..3)
            .map(|i| {
                json!({ "userId": format!("u{i}"), "results": [big, big],
                "acks": [{"connectionId": "a", "result": big}, {"connectionId": "b", "result": big}] })
            })
            .collect();
        users.push(json!({ "userId": "x", "status": 504, "error": "timeout" }));
        let (results, truncated) = bound_detail(&mut users, 4096);
        assert!(truncated);
        assert!(users.iter().all(|u| u.get("results").is_none()));
        assert!(users.iter().take(3).all(|u| u["acks"].as_array().unwrap().len() == 2), "acks keep counting");
        assert_eq!(users.len(), 4, "every user keeps an entry");
        let text = serde_json::to_string(&json!({ "results": results, "users": users })).unwrap();
        assert!(text.len() < 4096 + 512, "{}", text.len());
        let mut small = vec![json!({ "userId": "u", "results": [1], "acks": [{"connectionId": "a", "result": 1}] })];
        assert_eq!(bound_detail(&mut small, 4096), (vec![json!(1)], false));
        assert_eq!(small[0]["acks"][0]["result"], 1);
    }
}
