//! The `ChannelHub` Durable Object, in two roles (see `docs/channels.md`):
//!
//! - **root** (one per channel, named `root/{channel}`): holds the channel's members in SQLite, one
//!   row per user with at least one joined connection, and starts every publish to the channel.
//! - **relay** (named `relay/{path}/{channel}`): stateless; takes a slice of the members and fans
//!   the publish out to them (or to relays below it), then answers with the aggregate.
//!
//! Each step of the fan-out makes at most `CHANNEL_FANOUT` hops, so no invocation exceeds the
//! subrequest limit however large the channel, and the tree is `ceil(log_fanout(members))` deep.
//! Membership is kept right by versions: every update from a user's hub carries a number that only
//! grows ([`crate::channel::next_version`]), and the root applies an update only over an older one.
//! A member whose hub answers a publish with `joined: 0` is stale and removed on the spot.

use crate::channel::{self, Aggregate};
use crate::config::Config;
use crate::error::Error;
use crate::hub::{CORS_HEADER, IDEMPOTENCY_HEADER};
use crate::protocol::PublishMeta;
use crate::{http, log, multi, router};
use futures_util::future::{select, Either};
use futures_util::stream::{self, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;
use worker::{durable_object, Date, Delay, Env, Headers, Method, Request, RequestInit, Response, State, Stub};

/// The binding name of the `ChannelHub` namespace in wrangler.toml.
pub const BINDING: &str = "CHANNEL_HUB";
const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS members (user_id TEXT PRIMARY KEY, version INTEGER NOT NULL);";
/// Most members `GET /channels/{channel}/members` lists per page.
pub const MAX_PAGE: usize = 1_000;

#[durable_object]
pub struct ChannelHub {
    state: State,
    env: Env,
    /// Root role: the members, loaded from SQLite once per construction.
    members: RefCell<Option<BTreeSet<String>>>,
}

#[derive(Deserialize)]
struct MemberRow {
    user_id: String,
}

impl worker::DurableObject for ChannelHub {
    fn new(state: State, env: Env) -> Self {
        ChannelHub { state, env, members: RefCell::new(None) }
    }

    async fn fetch(&self, mut req: Request) -> worker::Result<Response> {
        let cors = req.headers().get(CORS_HEADER).ok().flatten();
        let pairs = crate::query::pairs(&req.inner().url());
        let query: HashMap<String, String> = pairs.iter().cloned().collect();
        let result = match query.get("channel") {
            None => Err(Error::Internal("the hop to the channel carried no channel".into())),
            Some(channel) => match req.path().as_str() {
                "/member" => self.update_member(channel, &query, cors.as_deref()),
                "/members" => self.list(channel, &query, cors.as_deref()),
                "/publish" => self.publish(&mut req, channel, pairs, cors.as_deref()).await,
                "/relay" => self.relay(&mut req, channel, pairs, &query).await,
                other => Err(Error::NotFound(format!("the channel has no route {other}"))),
            },
        };
        result.or_else(|e| {
            if e.status() >= 500 {
                log::error("channel_error", json!({ "code": e.code(), "message": e.to_string() }));
            }
            http::error(&e, cors.as_deref())
        })
    }
}

impl ChannelHub {
    fn sql(&self) -> worker::SqlStorage {
        self.state.storage().sql()
    }

    /// Runs `f` on the member set, loading it first if this is the first use since construction.
    fn with_members<T>(&self, f: impl FnOnce(&mut BTreeSet<String>) -> T) -> Result<T, Error> {
        let mut cache = self.members.borrow_mut();
        if cache.is_none() {
            let sql = self.sql();
            sql.exec(SCHEMA, None)?;
            let rows = sql.exec("SELECT user_id FROM members", None)?.to_array::<MemberRow>()?;
            *cache = Some(rows.into_iter().map(|r| r.user_id).collect());
        }
        Ok(f(cache.as_mut().unwrap_or_else(|| unreachable!())))
    }

    /// Re-reads one user's row into the cache after a write.
    fn refresh(&self, user_id: &str) -> Result<usize, Error> {
        let present = !self
            .sql()
            .exec("SELECT user_id FROM members WHERE user_id = ?", vec![user_id.to_string().into()])?
            .to_array::<MemberRow>()?
            .is_empty();
        self.with_members(|m| {
            if present {
                m.insert(user_id.to_string());
            } else {
                m.remove(user_id);
            }
            m.len()
        })
    }

    /// `POST /member?channel&user&joined=1|0&version`, from a user's hub: the user's first
    /// connection joined, or the last one left. An update older than the row it would change is
    /// ignored (a leave and a later join can arrive out of order).
    fn update_member(&self, channel: &str, q: &HashMap<String, String>, cors: Option<&str>) -> Result<Response, Error> {
        let config = router::settings(&self.env)?;
        let bad = || Error::Internal("a membership update without user, joined and version".into());
        let user = q.get("user").ok_or_else(bad)?;
        let joined = q.get("joined").ok_or_else(bad)? == "1";
        let version = q.get("version").and_then(|v| v.parse::<i64>().ok()).ok_or_else(bad)?;
        let (present, count) = self.with_members(|m| (m.contains(user.as_str()), m.len()))?;
        if joined {
            if !present && count >= config.max_channel_users {
                return Err(Error::TooManyRequests(format!(
                    "the channel has {count} members, the most MAX_CHANNEL_USERS allows"
                )));
            }
            self.sql().exec(
                "INSERT INTO members (user_id, version) VALUES (?, ?)
                 ON CONFLICT(user_id) DO UPDATE SET version = excluded.version WHERE excluded.version > members.version",
                vec![user.clone().into(), version.into()],
            )?;
        } else {
            self.sql().exec(
                "DELETE FROM members WHERE user_id = ? AND version < ?",
                vec![user.clone().into(), version.into()],
            )?;
        }
        let members = self.refresh(user)?;
        log::info("membership", json!({ "channel": channel, "userId": user, "joined": joined, "members": members }));
        Ok(http::json(200, json!({ "members": members }).to_string(), cors)?)
    }

    /// `GET /members?channel&limit&cursor`: one page of members in id order.
    fn list(&self, channel: &str, q: &HashMap<String, String>, cors: Option<&str>) -> Result<Response, Error> {
        let limit = match q.get("limit") {
            None => 100,
            Some(l) => match l.parse::<usize>() {
                Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
                _ => return Err(Error::bad_request("invalid_limit", format!("`limit` must be 1 to {MAX_PAGE}"))),
            },
        };
        let cursor = q.get("cursor").cloned().unwrap_or_default();
        let count = self.with_members(|m| m.len())?;
        let mut page = self
            .sql()
            .exec(
                "SELECT user_id FROM members WHERE user_id > ? ORDER BY user_id LIMIT ?",
                vec![cursor.into(), (limit as i64 + 1).into()],
            )?
            .to_array::<MemberRow>()?;
        let more = page.len() > limit;
        page.truncate(limit);
        let next = more.then(|| page.last().map(|r| r.user_id.clone())).flatten();
        let members: Vec<String> = page.into_iter().map(|r| r.user_id).collect();
        let body = json!({ "channel": channel, "count": count, "members": members, "nextCursor": next });
        Ok(http::json(200, body.to_string(), cors)?)
    }

    /// `POST /publish` (root): fans the publish out to every member, removes the stale ones found,
    /// and answers with the aggregate.
    async fn publish(
        &self,
        req: &mut Request,
        channel: &str,
        pairs: Vec<(String, String)>,
        cors: Option<&str>,
    ) -> Result<Response, Error> {
        let config = router::settings(&self.env)?;
        let meta =
            PublishMeta::from_query(pairs).ok_or_else(|| Error::Internal("a channel hop without a publish".into()))?;
        let key = req.headers().get(IDEMPOTENCY_HEADER).ok().flatten();
        let payload = req.text().await?;
        let members: Vec<String> = self.with_members(|m| m.iter().cloned().collect())?;
        let started = Date::now().as_millis();
        let aggregate = step(&self.env, &config, channel, "r", &members, &meta, &payload, key.as_deref()).await;
        for (user, version) in &aggregate.stale {
            self.sql().exec(
                "DELETE FROM members WHERE user_id = ? AND version < ?",
                vec![user.clone().into(), (*version as i64).into()],
            )?;
            self.refresh(user)?;
        }
        let t = aggregate.totals;
        log::info(
            "publish_channel",
            json!({ "channel": channel, "type": meta.kind, "from": meta.from, "users": t.users, "failed": t.failed,
                "pruned": t.pruned, "clientCount": t.client_count, "acked": t.acked,
                "depth": channel::depth(members.len(), config.channel_fanout),
                "ms": Date::now().as_millis().saturating_sub(started) }),
        );
        Ok(http::json(200, aggregate.into_response(channel).to_string(), cors)?)
    }

    /// `POST /relay` (relay): the body is the users (a JSON array), a line break, then the payload.
    async fn relay(
        &self,
        req: &mut Request,
        channel: &str,
        pairs: Vec<(String, String)>,
        q: &HashMap<String, String>,
    ) -> Result<Response, Error> {
        let config = router::settings(&self.env)?;
        let meta =
            PublishMeta::from_query(pairs).ok_or_else(|| Error::Internal("a relay hop without a publish".into()))?;
        let key = req.headers().get(IDEMPOTENCY_HEADER).ok().flatten();
        let path = q.get("path").cloned().unwrap_or_default();
        let body = req.text().await?;
        let (users, payload) =
            body.split_once('\n').ok_or_else(|| Error::Internal("a relay hop without users".into()))?;
        let users: Vec<String> =
            serde_json::from_str(users).map_err(|_| Error::Internal("a relay hop with unreadable users".into()))?;
        let aggregate = step(&self.env, &config, channel, &path, &users, &meta, payload, key.as_deref()).await;
        let body = serde_json::to_string(&aggregate).map_err(|e| Error::Internal(e.to_string()))?;
        Ok(http::json(200, body, None)?)
    }
}

/// One step of the fan-out tree at position `path`: straight to the users' hubs when they fit in
/// `CHANNEL_FANOUT` hops, else to relays that each take an even slice.
#[allow(clippy::too_many_arguments)]
async fn step(
    env: &Env,
    config: &Config,
    channel: &str,
    path: &str,
    users: &[String],
    meta: &PublishMeta,
    payload: &str,
    key: Option<&str>,
) -> Aggregate {
    let timeout_ms = meta.timeout_ms.unwrap_or(config.ack_timeout_ms).min(config.ack_timeout_max_ms);
    let fanout = config.channel_fanout;
    let mut aggregate = Aggregate::default();
    let Some(chunk) = channel::chunk_size(users.len(), fanout) else {
        for outcome in multi::fan_out(env, meta, payload, users, timeout_ms, key, multi::MAX_HOPS_IN_FLIGHT).await {
            aggregate.add_user(outcome);
        }
        return aggregate;
    };
    let outcomes: Vec<Result<Aggregate, (String, usize, Error)>> = stream::iter(users.chunks(chunk).enumerate())
        .map(|(i, part)| async move {
            let relay = format!("{path}.{i}");
            // Each level below gets the grace a user's hop gets, plus one for this hop.
            let levels = u64::from(channel::depth(part.len(), fanout));
            let limit_ms = timeout_ms + multi::HOP_GRACE_MS * (levels + 1);
            let hop = Box::pin(relay_hop(env, channel, &relay, part, meta, payload, key));
            let answered = match select(hop, Delay::from(Duration::from_millis(limit_ms))).await {
                Either::Left((result, _)) => Some(result),
                Either::Right(_) => None,
            };
            match answered {
                Some(Ok(a)) => Ok(a),
                Some(Err(e)) => Err((relay, part.len(), e)),
                None => Err((
                    relay,
                    part.len(),
                    Error::Unavailable(format!("the relay did not answer within {limit_ms} ms")),
                )),
            }
        })
        .buffer_unordered(fanout)
        .collect()
        .await;
    for outcome in outcomes {
        match outcome {
            Ok(a) => aggregate.merge(a),
            Err((relay, n, e)) => {
                log::error(
                    "relay_failed",
                    json!({ "channel": channel, "relay": relay, "users": n, "message": e.to_string() }),
                );
                aggregate.relay_failed(&relay, n, e.status(), e.code(), &e.to_string());
            }
        }
    }
    aggregate
}

fn stub(env: &Env, name: &str) -> Result<Stub, Error> {
    Ok(env.durable_object(BINDING)?.id_from_name(name)?.get_stub()?)
}

/// A hop to a channel object; a non-200 answer becomes the error it describes.
async fn hop(env: &Env, name: &str, req: Request) -> Result<Response, Error> {
    stub(env, name)?
        .fetch_with_request(req)
        .await
        .map_err(|e| Error::Unavailable(format!("the channel did not answer: {e}")))
}

async fn check(mut res: Response) -> Result<Response, Error> {
    let status = res.status_code();
    if status == 200 {
        return Ok(res);
    }
    let body: Value = res.json().await.unwrap_or_default();
    let message = body["message"].as_str().unwrap_or("the channel failed").to_string();
    Err(if status == 429 { Error::TooManyRequests(message) } else { Error::Unavailable(message) })
}

fn request(method: Method, url: &str, headers: Headers, body: Option<String>) -> Result<Request, Error> {
    let mut init = RequestInit::new();
    init.with_method(method).with_headers(headers).with_body(body.map(Into::into));
    Ok(Request::new_with_init(url, &init)?)
}

async fn relay_hop(
    env: &Env,
    channel: &str,
    relay: &str,
    users: &[String],
    meta: &PublishMeta,
    payload: &str,
    key: Option<&str>,
) -> Result<Aggregate, Error> {
    // `meta` carries the channel.
    let mut pairs = meta.to_query();
    pairs.push(("path", relay.to_string()));
    let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let url = crate::query::build("https://channel/relay", &pairs);
    let headers = Headers::new();
    if let Some(key) = key {
        headers.set(IDEMPOTENCY_HEADER, key)?;
    }
    let users = serde_json::to_string(users).map_err(|e| Error::Internal(e.to_string()))?;
    let body = format!("{users}\n{payload}");
    let req = request(Method::Post, &url, headers, Some(body))?;
    let mut res = check(hop(env, &channel::relay_name(channel, relay), req).await?).await?;
    res.json::<Aggregate>().await.map_err(|e| Error::Internal(format!("a relay answered unreadably: {e}")))
}

// ---- Reaching a channel's root (from the Worker or a user's hub) -------------------------------

/// Tells a channel's root that `user_id` has joined (its first connection) or left (its last).
pub async fn update_membership(
    env: &Env,
    channel: &str,
    user_id: &str,
    joined: bool,
    version: u64,
) -> Result<(), Error> {
    let version = version.to_string();
    let pairs =
        [("channel", channel), ("user", user_id), ("joined", if joined { "1" } else { "0" }), ("version", &version)];
    let url = crate::query::build("https://channel/member", &pairs);
    let req = request(Method::Post, &url, Headers::new(), None)?;
    check(hop(env, &channel::root_name(channel), req).await?).await?;
    Ok(())
}

/// Publishes to every member of `meta.channel` and returns the root's answer as it is.
pub async fn publish(
    env: &Env,
    meta: &PublishMeta,
    payload: &str,
    cors: Option<&str>,
    idempotency_key: Option<&str>,
) -> Result<Response, Error> {
    let channel = meta.channel.clone().ok_or_else(|| Error::Internal("a channel publish without a channel".into()))?;
    let query = meta.to_query();
    let pairs: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let url = crate::query::build("https://channel/publish", &pairs);
    let headers = Headers::new();
    if let Some(origin) = cors {
        headers.set(CORS_HEADER, origin)?;
    }
    if let Some(key) = idempotency_key {
        headers.set(IDEMPOTENCY_HEADER, key)?;
    }
    let req = request(Method::Post, &url, headers, Some(payload.to_string()))?;
    hop(env, &channel::root_name(&channel), req).await
}

/// `GET /channels/{channel}/members`: one page of the channel's members.
pub async fn members(
    env: &Env,
    channel: &str,
    limit: Option<&str>,
    cursor: Option<&str>,
    cors: Option<&str>,
) -> Result<Response, Error> {
    let mut pairs = vec![("channel", channel)];
    if let Some(limit) = limit {
        pairs.push(("limit", limit));
    }
    if let Some(cursor) = cursor {
        pairs.push(("cursor", cursor));
    }
    let url = crate::query::build("https://channel/members", &pairs);
    let headers = Headers::new();
    if let Some(origin) = cors {
        headers.set(CORS_HEADER, origin)?;
    }
    hop(env, &channel::root_name(channel), request(Method::Get, &url, headers, None)?).await
}
