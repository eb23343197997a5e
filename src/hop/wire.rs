//! The internal hop's wire format, both sides: where each call goes (paths), what rides in headers,
//! and how each call's fields are written into and read back from the hop's URL and body. Pure, so
//! every encoding is round-trip tested on the host; [`super::user`] and [`super::channel`] send and
//! receive it through the runtime.
//!
//! Fields travel in the URL's query (header values cannot carry every Unicode user id); a payload
//! travels as the body, as the JSON text the backend sent.
//!
//! Why one file: every hop's encoding sits beside its decoding and its round-trip test; split by
//! hop kind, the shared field helpers and the tests would be spread over four files.

use crate::core::channel::Grants;
use crate::core::protocol::{fingerprint, PublishRequest, Recipients, Transport};
use crate::core::query;

/// The binding name of the `UserHub` namespace in wrangler.toml.
pub const USER_HUB_BINDING: &str = "USER_HUB";
/// The binding name of the `ChannelHub` namespace in wrangler.toml.
pub const CHANNEL_HUB_BINDING: &str = "CHANNEL_HUB";

/// The binding name of the `EventHub` namespace (the event shards) in wrangler.toml.
pub const EVENT_HUB_BINDING: &str = "EVENT_HUB";

/// The name of event shard `shard`.
pub fn events_name(shard: u32) -> String {
    format!("events/{shard}")
}

/// Carries the Worker's CORS origin decision to the object, so the object's response is returned to
/// the client as it is.
pub const CORS_HEADER: &str = "x-switchboard-cors";
/// The backend's `Idempotency-Key`, passed on unchanged.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// A user hub's routes.
pub mod user_path {
    pub const CONNECT: &str = "/connect";
    pub const ACK: &str = "/ack";
    pub const CONNECTIONS: &str = "/connections";
    pub const TICKETS: &str = "/tickets";
}

/// An event shard's routes.
pub mod events_path {
    /// Queue a JSON array of CloudEvents.
    pub const ENQUEUE: &str = "/enqueue";
}

/// A channel object's routes.
pub mod channel_path {
    pub const MEMBER: &str = "/member";
    pub const MEMBERS: &str = "/members";
    pub const PUBLISH: &str = "/publish";
    pub const RELAY: &str = "/relay";
    /// A presence join's snapshot, for a user the root already lists as watching.
    pub const SNAPSHOT: &str = "/snapshot";
    /// `GET /channels/{channel}/presence`.
    pub const PRESENCE: &str = "/presence";
    /// A presence batch for a slice of the watching members.
    pub const PRESENCE_RELAY: &str = "/presence-relay";
}

/// A URL for `path` on an object, with `pairs` as its query. The host is never looked at: a stub's
/// fetch goes to its object whatever the URL says.
pub fn url(host: &str, path: &str, pairs: &[(&str, &str)]) -> String {
    let base = format!("https://{host}{path}");
    if pairs.is_empty() {
        base
    } else {
        query::build(&base, pairs)
    }
}

/// Borrows owned query pairs for [`url`].
pub fn borrowed<'a>(pairs: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    pairs.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// A new connection for a user's hub: the user and what the token and the request bring.
#[derive(Debug, Clone, PartialEq)]
pub struct Connect {
    pub user_id: String,
    /// The connect token's `exp`, in ms since the epoch.
    pub expires_at_ms: Option<i64>,
    pub transport: Transport,
    /// Filters to start with (SSE: from the query), as a JSON array.
    pub filters: Option<String>,
    /// Replay envelopes after this seq (SSE: `Last-Event-ID`).
    pub since: Option<u64>,
    /// The token's channel grants (the `channels` and `publishChannels` claims).
    pub channels: Grants,
    pub publish_channels: Grants,
    /// The token's `presence` claim (JSON text), shown to the channels' watching members.
    pub presence: Option<String>,
    /// A connect ticket's hash instead of a token: the hub takes the ticket (once) and uses the
    /// `exp` and grants stored with it.
    pub ticket: Option<String>,
}

/// A new connect ticket for a user's hub to store: its secret's hash and the checked claims of the
/// token it was traded for.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTicket {
    pub hash: String,
    /// The token's `exp`, in ms since the epoch.
    pub expires_at_ms: Option<i64>,
    pub channels: Grants,
    pub publish_channels: Grants,
    /// The token's `presence` claim (JSON text).
    pub presence: Option<String>,
}

impl NewTicket {
    pub fn to_query(&self) -> Vec<(&'static str, String)> {
        let mut q = vec![
            ("hash", self.hash.clone()),
            ("channels", self.channels.to_text()),
            ("publishChannels", self.publish_channels.to_text()),
        ];
        if let Some(exp) = self.expires_at_ms {
            q.push(("exp", exp.to_string()));
        }
        if let Some(data) = &self.presence {
            q.push(("presence", data.clone()));
        }
        q
    }

    /// Reads the hop's query pairs back; `None` without a hash.
    pub fn from_query(pairs: Vec<(String, String)>) -> Option<NewTicket> {
        let mut t = NewTicket {
            hash: String::new(),
            expires_at_ms: None,
            channels: Grants::default(),
            publish_channels: Grants::default(),
            presence: None,
        };
        let mut hash = None;
        for (k, v) in pairs {
            match k.as_str() {
                "hash" => hash = Some(v),
                "exp" => t.expires_at_ms = v.parse::<i64>().ok(),
                "channels" => t.channels = Grants::from_text(&v),
                "publishChannels" => t.publish_channels = Grants::from_text(&v),
                "presence" => t.presence = Some(v),
                _ => {}
            }
        }
        t.hash = hash?;
        Some(t)
    }
}

impl Connect {
    pub fn to_query(&self) -> Vec<(&'static str, String)> {
        let mut q = vec![("user", self.user_id.clone()), ("transport", self.transport.name().to_string())];
        if let Some(exp) = self.expires_at_ms {
            q.push(("exp", exp.to_string()));
        }
        if let Some(filters) = &self.filters {
            q.push(("filters", filters.clone()));
        }
        if let Some(since) = self.since {
            q.push(("since", since.to_string()));
        }
        if !self.channels.is_empty() {
            q.push(("channels", self.channels.to_text()));
        }
        if !self.publish_channels.is_empty() {
            q.push(("publishChannels", self.publish_channels.to_text()));
        }
        if let Some(ticket) = &self.ticket {
            q.push(("ticket", ticket.clone()));
        }
        if let Some(data) = &self.presence {
            q.push(("presence", data.clone()));
        }
        q
    }

    /// Reads the hop's query pairs back; `None` without a user.
    pub fn from_query(pairs: Vec<(String, String)>) -> Option<Connect> {
        let mut c = Connect {
            user_id: String::new(),
            expires_at_ms: None,
            transport: Transport::WebSocket,
            filters: None,
            since: None,
            channels: Grants::default(),
            publish_channels: Grants::default(),
            presence: None,
            ticket: None,
        };
        let mut user = None;
        for (k, v) in pairs {
            match k.as_str() {
                "user" => user = Some(v),
                "transport" => c.transport = Transport::from_name(&v),
                "exp" => c.expires_at_ms = v.parse::<i64>().ok(),
                "filters" => c.filters = Some(v),
                "since" => c.since = v.parse::<u64>().ok(),
                "channels" => c.channels = Grants::from_text(&v),
                "publishChannels" => c.publish_channels = Grants::from_text(&v),
                "ticket" => c.ticket = Some(v),
                "presence" => c.presence = Some(v),
                _ => {}
            }
        }
        c.user_id = user?;
        Some(c)
    }
}

/// What the Worker has checked about a publish, handed to the hub in the hop's URL (the payload's
/// JSON text is the hop's body).
#[derive(Debug, Clone, PartialEq)]
pub struct PublishMeta {
    pub user_id: String,
    pub kind: String,
    pub connection_id: Option<String>,
    pub timeout_ms: Option<u64>,
    /// A fingerprint of the whole request body, for `Idempotency-Key` conflicts; empty without a key
    /// (hashing a large body costs as much as reading it, and nothing else uses it).
    pub body_hash: String,
    /// A channel publish: only connections that joined it receive the envelope.
    pub channel: Option<String>,
    /// A client's channel publish: its user (the envelope's `from`) and its connection (skipped).
    pub from: Option<String>,
    pub except: Option<String>,
}

impl PublishMeta {
    pub fn from_request(p: &PublishRequest<'_>, user_id: &str, body: &[u8], idempotent: bool) -> PublishMeta {
        PublishMeta {
            user_id: user_id.to_string(),
            kind: p.kind.clone(),
            connection_id: p.connection_id.clone(),
            timeout_ms: p.timeout_ms,
            body_hash: if idempotent { fingerprint(body) } else { String::new() },
            channel: match &p.recipients {
                Recipients::Channel(c) => Some(c.clone()),
                _ => None,
            },
            from: None,
            except: None,
        }
    }

    /// `(name, value)` query pairs for the hop.
    pub fn to_query(&self) -> Vec<(&'static str, String)> {
        let mut q = vec![("user", self.user_id.clone()), ("type", self.kind.clone())];
        if !self.body_hash.is_empty() {
            q.push(("hash", self.body_hash.clone()));
        }
        if let Some(c) = &self.connection_id {
            q.push(("conn", c.clone()));
        }
        if let Some(t) = self.timeout_ms {
            q.push(("timeout", t.to_string()));
        }
        for (name, value) in [("channel", &self.channel), ("from", &self.from), ("except", &self.except)] {
            if let Some(v) = value {
                q.push((name, v.clone()));
            }
        }
        q
    }

    /// The fields as one query string (`user=…&type=…`), the form an RPC hop carries them in.
    pub fn to_query_string(&self) -> String {
        query::build("", &borrowed(&self.to_query())).split_off(1)
    }

    /// Reads [`PublishMeta::to_query_string`] back.
    pub fn from_query_string(text: &str) -> Option<PublishMeta> {
        PublishMeta::from_query(query::pairs(&format!("?{text}")))
    }

    /// Reads the hop's query pairs back.
    pub fn from_query(pairs: Vec<(String, String)>) -> Option<PublishMeta> {
        let (mut user_id, mut kind, mut body_hash, mut connection_id, mut timeout_ms) = (None, None, None, None, None);
        let (mut channel, mut from, mut except) = (None, None, None);
        for (k, v) in pairs {
            match k.as_str() {
                "user" => user_id = Some(v),
                "type" => kind = Some(v),
                "hash" => body_hash = Some(v),
                "conn" => connection_id = Some(v),
                "timeout" => timeout_ms = Some(v.parse().ok()?),
                "channel" => channel = Some(v),
                "from" => from = Some(v),
                "except" => except = Some(v),
                _ => {}
            }
        }
        Some(PublishMeta {
            user_id: user_id?,
            kind: kind?,
            connection_id,
            timeout_ms,
            body_hash: body_hash.unwrap_or_default(),
            channel,
            from,
            except,
        })
    }
}

/// A user hub telling a channel's root that the user joined (its first connection) or left (its last).
#[derive(Debug, Clone, PartialEq)]
pub struct MemberUpdate {
    pub channel: String,
    pub user_id: String,
    pub joined: bool,
    /// Only grows (see [`crate::core::channel::next_version`]); the root applies an update only over
    /// an older one.
    pub version: u64,
    /// Whether one of the user's connections in the channel now watches its presence (sent when
    /// that changes between none and some; `None`: unchanged).
    pub watch: Option<bool>,
    /// A join: the joining connection's presence data (the token's `presence` claim, JSON text).
    pub data: Option<String>,
    /// A leave: why (`leave`, `linger` or `kick`; see [`crate::core::presence::LeftReason`]).
    pub reason: Option<String>,
    /// Answer with the presence snapshot (a join with `presence: true`).
    pub snapshot: bool,
}

impl MemberUpdate {
    /// A join or leave with no presence detail.
    pub fn new(channel: &str, user_id: &str, joined: bool, version: u64) -> MemberUpdate {
        MemberUpdate {
            channel: channel.to_string(),
            user_id: user_id.to_string(),
            joined,
            version,
            watch: None,
            data: None,
            reason: None,
            snapshot: false,
        }
    }

    pub fn to_query(&self) -> Vec<(&'static str, String)> {
        let mut q = vec![
            ("channel", self.channel.clone()),
            ("user", self.user_id.clone()),
            ("joined", if self.joined { "1" } else { "0" }.to_string()),
            ("version", self.version.to_string()),
        ];
        if let Some(watch) = self.watch {
            q.push(("watch", if watch { "1" } else { "0" }.to_string()));
        }
        if let Some(data) = &self.data {
            q.push(("data", data.clone()));
        }
        if let Some(reason) = &self.reason {
            q.push(("reason", reason.clone()));
        }
        if self.snapshot {
            q.push(("snapshot", "1".to_string()));
        }
        q
    }

    pub fn from_query(pairs: &[(String, String)]) -> Option<MemberUpdate> {
        let get = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        Some(MemberUpdate {
            channel: get("channel")?.to_string(),
            user_id: get("user")?.to_string(),
            joined: match get("joined")? {
                "1" => true,
                "0" => false,
                _ => return None,
            },
            version: get("version")?.parse().ok()?,
            watch: match get("watch") {
                None => None,
                Some("1") => Some(true),
                Some("0") => Some(false),
                Some(_) => return None,
            },
            data: get("data").map(str::to_string),
            reason: get("reason").map(str::to_string),
            snapshot: get("snapshot") == Some("1"),
        })
    }
}

/// The body of a hop to a relay: the users it serves (a JSON array), a line break, then the payload's
/// JSON text (a JSON array never holds a raw line break, so the first one splits them).
pub fn relay_body(users: &[String], payload: &str) -> String {
    format!("{}{payload}", relay_head(users))
}

/// A relay body up to its payload: the users line and its line break. The hop appends the payload
/// as the JS string it already is, so a relay hop never copies the payload into wasm.
pub fn relay_head(users: &[String]) -> String {
    let users = serde_json::to_string(users).unwrap_or_else(|_| "[]".into());
    format!("{users}\n")
}

/// Reads a relay hop's body back into its users and payload.
pub fn read_relay_body(body: &str) -> Option<(Vec<String>, &str)> {
    let (users, payload) = body.split_once('\n')?;
    Some((read_relay_users(users)?, payload))
}

/// Reads the users line of a relay body (without its line break).
pub fn read_relay_users(line: &str) -> Option<Vec<String>> {
    serde_json::from_str(line).ok()
}

/// The value of query parameter `name` among `pairs`.
pub fn param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::protocol::parse_publish;

    #[test]
    fn publish_meta_round_trips_through_the_query() {
        let body = r#"{"userId":"u é","type":"t&x=1","connectionId":"c","timeoutMs":0}"#.as_bytes();
        let p = parse_publish(body).unwrap();
        let meta = PublishMeta::from_request(&p, "u é", body, true);
        let query = meta.to_query();
        let pairs: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let url = query::build("https://hub/publish", &pairs);
        assert_eq!(PublishMeta::from_query(query::pairs(&url)), Some(meta));
        assert_eq!(PublishMeta::from_query(query::pairs("https://hub/p?type=t")), None);
        let unhashed = PublishMeta::from_request(&p, "u é", body, false);
        assert_eq!(unhashed.body_hash, "", "no key, no hash");
        assert_eq!(PublishMeta::from_query_string(&unhashed.to_query_string()), Some(unhashed));
        assert_ne!(fingerprint(b"{}"), fingerprint(b"{ }"));
    }

    #[test]
    fn publish_meta_round_trips_through_a_query_string() {
        let body = r#"{"userId":"u &=?#é","type":"t","timeoutMs":5}"#.as_bytes();
        let meta = PublishMeta::from_request(&parse_publish(body).unwrap(), "u &=?#é", body, true);
        let text = meta.to_query_string();
        assert!(!text.starts_with('?'), "{text}");
        assert_eq!(PublishMeta::from_query_string(&text), Some(meta));
        assert_eq!(PublishMeta::from_query_string("type=t"), None);
    }

    #[test]
    fn channel_publish_meta_round_trips() {
        let p = parse_publish(br#"{"channel":"room:1","type":"t","payload":[1]}"#).unwrap();
        let meta = PublishMeta::from_request(&p, "", b"x", true);
        assert_eq!(meta.channel.as_deref(), Some("room:1"));
        let mut meta = meta;
        meta.from = Some("alice".into());
        meta.except = Some("conn-1".into());
        let pairs = meta.to_query().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        assert_eq!(PublishMeta::from_query(pairs).unwrap(), meta);
    }

    #[test]
    fn connect_round_trips_through_the_query() {
        let c = Connect {
            user_id: "u é&x".into(),
            expires_at_ms: Some(1_800_000_000_000),
            transport: Transport::Sse,
            filters: Some(r#"[{"type":"a b"}]"#.into()),
            since: Some(7),
            channels: Grants::from_text("room:*"),
            publish_channels: Grants::from_text("room:1"),
            presence: Some(r#"{"name":"é&x"}"#.into()),
            ticket: Some("ab12".into()),
        };
        let url = url("hub", user_path::CONNECT, &borrowed(&c.to_query()));
        assert_eq!(Connect::from_query(query::pairs(&url)), Some(c));
        let t = NewTicket {
            hash: "ab12".into(),
            expires_at_ms: Some(1_800_000_000_000),
            channels: Grants::from_text("room:*"),
            publish_channels: Grants::default(),
            presence: Some("[1,2]".into()),
        };
        let ticket_url = super::url("hub", user_path::TICKETS, &borrowed(&t.to_query()));
        assert_eq!(NewTicket::from_query(query::pairs(&ticket_url)), Some(t));
        assert_eq!(NewTicket::from_query(query::pairs("https://hub/tickets?exp=1")), None);
        assert_eq!(Connect::from_query(query::pairs("https://hub/connect?transport=sse")), None);
    }

    #[test]
    fn member_updates_round_trip_and_refuse_junk() {
        let m = MemberUpdate::new("room:1", "ü", false, 42);
        let url = url("channel", channel_path::MEMBER, &borrowed(&m.to_query()));
        assert_eq!(MemberUpdate::from_query(&query::pairs(&url)), Some(m));
        let full = MemberUpdate {
            watch: Some(true),
            data: Some(r#"{"n":"a&b=c"}"#.into()),
            reason: Some("kick".into()),
            snapshot: true,
            ..MemberUpdate::new("room:1", "u", true, 7)
        };
        let url = super::url("channel", channel_path::MEMBER, &borrowed(&full.to_query()));
        assert_eq!(MemberUpdate::from_query(&query::pairs(&url)), Some(full));
        let bad = query::pairs("https://c/member?channel=c&user=u&joined=yes&version=1");
        assert_eq!(MemberUpdate::from_query(&bad), None);
    }

    #[test]
    fn relay_bodies_split_at_the_first_line_break() {
        let users = vec!["a\nb".to_string(), "c".to_string()];
        let body = relay_body(&users, "{\"x\":\n1}");
        assert_eq!(read_relay_body(&body), Some((users, "{\"x\":\n1}")));
        assert_eq!(read_relay_body("no users"), None);
    }
}
