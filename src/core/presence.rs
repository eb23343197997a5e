//! Channel presence, the pure parts: who is present (every member user of a channel's root), the
//! `ok` snapshot a presence join gets, the batched `presence` frames, how changes are coalesced
//! between two batches, how often a channel may send a batch, and the member webhook events' data.
//! The runtime side is `channel_hub::presence` (the root) and `user_hub::channels` (a member's hub);
//! `docs/channels.md` ("Presence") explains the design and its arithmetic.

use serde_json::{json, Map, Value};

/// Members an `ok` snapshot lists at most (sorted by user id; `truncated` says there are more).
pub const SNAPSHOT_MEMBERS: usize = 100;

/// Hub invocations per second one channel's presence may cost at most: a batch goes to every
/// watching member's hub, so a channel with `w` watchers waits at least `w` ms between batches.
/// At 1,000 watchers or fewer, `PRESENCE_INTERVAL_MS` (1 s by default) is the bound.
pub const HUB_HOPS_PER_SECOND: u64 = 1_000;

/// How long a channel with `watchers` watching members waits at least between two batches.
pub fn batch_interval_ms(interval_ms: u64, watchers: u64) -> u64 {
    interval_ms.max(watchers.saturating_mul(1_000) / HUB_HOPS_PER_SECOND)
}

/// Why a user left a channel (the `reason` of `switchboard.channel.member.left.v1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeftReason {
    /// A `leave` frame from the user's last joined connection.
    Leave,
    /// The user's last joined connection closed and `CHANNEL_LINGER_SECONDS` passed.
    Linger,
    /// The backend closed the user's connections (the connection API).
    Kick,
    /// The user's connections vanished without a close (a crash); found at a publish.
    Pruned,
}

impl LeftReason {
    pub fn name(self) -> &'static str {
        match self {
            LeftReason::Leave => "leave",
            LeftReason::Linger => "linger",
            LeftReason::Kick => "kick",
            LeftReason::Pruned => "pruned",
        }
    }

    pub fn from_name(name: &str) -> Option<LeftReason> {
        Some(match name {
            "leave" => LeftReason::Leave,
            "linger" => LeftReason::Linger,
            "kick" => LeftReason::Kick,
            "pruned" => LeftReason::Pruned,
            _ => return None,
        })
    }
}

/// One user's net change since the previous batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub user_id: String,
    /// Present now (`joined`), or not (`left`).
    pub present: bool,
    /// The user's presence data (JSON text), when present and it has some.
    pub data: Option<String>,
    /// `join`, or a [`LeftReason`] name.
    pub reason: String,
}

/// Whether a user's pending change still says something after another change: a user who was
/// present at the last batch and is present again with the same data (a leave and a join within one
/// interval), or absent at the last batch and absent again (a join and a leave), has no net change
/// and is left out of the next batch: no flapping.
pub fn is_net_change(was_present: bool, present: bool, data_then: Option<&str>, data_now: Option<&str>) -> bool {
    was_present != present || (present && data_then != data_now)
}

/// A member as frames and snapshots show it: `{"userId"}`, with `data` when the user has some.
pub fn member_json(user_id: &str, data: Option<&str>) -> Value {
    let mut m = Map::new();
    m.insert("userId".into(), Value::String(user_id.to_string()));
    if let Some(d) = data.and_then(|d| serde_json::from_str::<Value>(d).ok()) {
        m.insert("data".into(), d);
    }
    Value::Object(m)
}

/// The `presence` frame of one batch: every changed user's final state since the previous batch
/// (a user is in `joined` or in `left`, never both), and the count after it.
pub fn frame(channel: &str, version: u64, changes: &[Change], count: usize) -> String {
    let joined: Vec<Value> =
        changes.iter().filter(|c| c.present).map(|c| member_json(&c.user_id, c.data.as_deref())).collect();
    let left: Vec<&str> = changes.iter().filter(|c| !c.present).map(|c| c.user_id.as_str()).collect();
    json!({ "type": "presence", "channel": channel, "version": version, "joined": joined, "left": left, "count": count })
        .to_string()
}

/// The `presence` object of a presence join's `ok`: the version of the last batch, the count, and
/// the first [`SNAPSHOT_MEMBERS`] members by user id (`members` holds one more than that when there
/// are more, so `truncated` can be told).
pub fn snapshot(version: u64, count: usize, mut members: Vec<(String, Option<String>)>) -> Value {
    let truncated = members.len() > SNAPSHOT_MEMBERS;
    members.truncate(SNAPSHOT_MEMBERS);
    let members: Vec<Value> = members.iter().map(|(u, d)| member_json(u, d.as_deref())).collect();
    json!({ "version": version, "count": count, "members": members, "truncated": truncated })
}

/// The `data` of a `switchboard.channel.member.joined.v1` / `.left.v1` webhook event.
pub fn event_data(channel: &str, change: &Change) -> Value {
    let mut data = member_json(&change.user_id, change.data.as_deref());
    if let Value::Object(m) = &mut data {
        m.insert("channel".into(), Value::String(channel.to_string()));
        m.insert("reason".into(), Value::String(change.reason.clone()));
    }
    data
}

/// The webhook event type of a change.
pub fn event_type(change: &Change) -> &'static str {
    if change.present {
        "switchboard.channel.member.joined.v1"
    } else {
        "switchboard.channel.member.left.v1"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(user: &str, present: bool, data: Option<&str>, reason: &str) -> Change {
        Change { user_id: user.into(), present, data: data.map(str::to_string), reason: reason.into() }
    }

    #[test]
    fn frames_list_each_user_once_in_joined_or_left() {
        let changes = [change("carol", true, Some(r#"{"n":"C"}"#), "join"), change("bob", false, None, "linger")];
        let f: Value = serde_json::from_str(&frame("room:1", 18, &changes, 2)).unwrap();
        assert_eq!(
            f,
            json!({"type": "presence", "channel": "room:1", "version": 18,
                "joined": [{"userId": "carol", "data": {"n": "C"}}], "left": ["bob"], "count": 2})
        );
        let none: Value = serde_json::from_str(&frame("c", 1, &[], 0)).unwrap();
        assert_eq!((none["joined"].clone(), none["left"].clone()), (json!([]), json!([])));
    }

    #[test]
    fn snapshots_hold_at_most_100_members_and_say_when_there_are_more() {
        let members: Vec<(String, Option<String>)> =
            (0..101).map(|i| (format!("u{i:03}"), (i == 0).then(|| "7".to_string()))).collect();
        let s = snapshot(17, 150, members.clone());
        assert_eq!(s["members"].as_array().unwrap().len(), 100);
        assert_eq!(
            (s["truncated"].clone(), s["count"].clone(), s["version"].clone()),
            (json!(true), json!(150), json!(17))
        );
        assert_eq!(s["members"][0], json!({"userId": "u000", "data": 7}));
        assert_eq!(s["members"][1], json!({"userId": "u001"}), "no data, no field");
        let s = snapshot(0, 100, members[..100].to_vec());
        assert_eq!(s["truncated"], json!(false));
    }

    #[test]
    fn only_net_changes_are_sent() {
        assert!(!is_net_change(true, true, Some("1"), Some("1")), "left and came back: nothing");
        assert!(!is_net_change(false, false, None, None), "came and went: nothing");
        assert!(is_net_change(true, true, Some("1"), Some("2")), "came back with new data");
        assert!(is_net_change(false, true, None, None));
        assert!(is_net_change(true, false, Some("1"), None));
    }

    #[test]
    fn a_channel_with_many_watchers_batches_less_often() {
        assert_eq!(batch_interval_ms(1000, 0), 1000);
        assert_eq!(batch_interval_ms(1000, 1000), 1000);
        assert_eq!(batch_interval_ms(1000, 100_000), 100_000, "100,000 watchers: one batch per 100 s");
        assert_eq!(batch_interval_ms(50, 200), 200);
    }

    #[test]
    fn event_data_carries_channel_user_data_and_reason() {
        let c = change("bob", false, None, "pruned");
        assert_eq!(event_data("room:1", &c), json!({"channel": "room:1", "userId": "bob", "reason": "pruned"}));
        assert_eq!(event_type(&c), "switchboard.channel.member.left.v1");
        let j = change("al", true, Some("[1]"), "join");
        assert_eq!(event_data("r", &j), json!({"channel": "r", "userId": "al", "data": [1], "reason": "join"}));
        assert_eq!(event_type(&j), "switchboard.channel.member.joined.v1");
        for r in [LeftReason::Leave, LeftReason::Linger, LeftReason::Kick, LeftReason::Pruned] {
            assert_eq!(LeftReason::from_name(r.name()), Some(r));
        }
    }
}
