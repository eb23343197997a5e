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
//! grows ([`crate::core::channel::next_version`]), and the root applies an update only over an older one.
//! A member whose hub answers a publish with `joined: 0` is stale and removed on the spot.
//!
//! The root also keeps the channel's presence ([`presence`]): membership changes are coalesced in
//! its SQLite and sent by its alarm, in batches, through the same tree to the members that watch.

mod presence;
mod relay;
mod root;

use crate::core::error::Error;
use crate::core::ratelimit::TokenBucket;
use crate::hop::channel::{self, Call};
use crate::runtime::{http, log, rows};
use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::rc::Rc;
use worker::{durable_object, Env, Request, Response, State};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS members (user_id TEXT PRIMARY KEY, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS presence_members (user_id TEXT PRIMARY KEY, data TEXT, watch INTEGER NOT NULL,
  watch_version INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS presence_watchers ON presence_members (watch, user_id);
CREATE TABLE IF NOT EXISTS presence_pending (user_id TEXT PRIMARY KEY, was_present INTEGER NOT NULL, was_data TEXT,
  present INTEGER NOT NULL, data TEXT, reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS presence_state (id INTEGER PRIMARY KEY CHECK (id = 0), channel TEXT NOT NULL,
  version INTEGER NOT NULL, flushed_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS presence_events (id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL);";

#[durable_object]
pub struct ChannelHub {
    state: State,
    env: Env,
    /// Root role: the members, loaded from SQLite once per construction.
    members: RefCell<Option<BTreeSet<String>>>,
    /// The members as a list publishes share (made on the first publish after a change), so a
    /// publish holds a reference, not its own copy of 100,000 ids (review F2).
    snapshot: RefCell<Option<Rc<[String]>>>,
    /// Publishes this root is running (`CHANNEL_MAX_CONCURRENT_PUBLISHES`).
    running: Rc<Cell<usize>>,
    /// Client publishes to this channel (`CHANNEL_CLIENT_PUBLISH_PER_SECOND`), across publishers.
    client_bucket: RefCell<Option<TokenBucket>>,
    /// Root role: when the alarm must send the presence changes recorded since it was last set.
    alarm_due: Cell<Option<i64>>,
}

/// Counts a running publish for as long as it lives, however the publish ends.
struct Running(Rc<Cell<usize>>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

impl worker::DurableObject for ChannelHub {
    fn new(state: State, env: Env) -> Self {
        crate::runtime::js::install_fast_microtasks();
        ChannelHub {
            state,
            env,
            members: RefCell::new(None),
            snapshot: RefCell::new(None),
            running: Rc::new(Cell::new(0)),
            client_bucket: RefCell::new(None),
            alarm_due: Cell::new(None),
        }
    }

    async fn fetch(&self, mut req: Request) -> worker::Result<Response> {
        let cors = crate::hop::cors(&req);
        let result = match channel::read(&req) {
            Err(e) => Err(e),
            Ok(Call::Member(update)) => self.update_member(&update, cors.as_deref()).await,
            Ok(Call::Members { channel, limit, cursor }) => {
                self.list(&channel, limit.as_deref(), cursor.as_deref(), cors.as_deref())
            }
            Ok(Call::Publish { channel, meta, idempotency_key }) => {
                self.publish(&mut req, &channel, &meta, idempotency_key.as_deref(), cors.as_deref()).await
            }
            Ok(Call::Relay { channel, path, meta, idempotency_key }) => {
                self.relay(&mut req, &channel, &path, &meta, idempotency_key.as_deref()).await
            }
            Ok(Call::Snapshot { channel: _ }) => {
                self.snapshot().and_then(|s| Ok(http::json(200, s.to_string(), None)?))
            }
            Ok(Call::Presence { channel, limit, cursor }) => {
                self.presence_page(&channel, limit.as_deref(), cursor.as_deref(), cors.as_deref()).await
            }
            Ok(Call::PresenceRelay { channel, path }) => self.presence_relay(&mut req, &channel, &path).await,
        };
        result.or_else(|e| {
            if e.status() >= 500 {
                log::error!("channel_error", "code" => e.code(), "message" => e.to_string());
            }
            http::error(&e, cors.as_deref())
        })
    }

    /// The root's alarm: the next presence batch (see [`presence`]). A failed run is retried by the
    /// runtime (the pending changes stay in SQLite until a batch has taken them).
    async fn alarm(&self) -> worker::Result<Response> {
        if let Err(e) = self.flush_presence().await {
            log::error!("presence_error", "op" => "flush", "message" => e.to_string());
            return Err(worker::Error::RustError(format!("the presence batch failed: {e}")));
        }
        Response::empty()
    }
}

impl ChannelHub {
    fn sql(&self) -> worker::SqlStorage {
        self.state.storage().sql()
    }

    /// Loads the member set (and makes the tables) on the first use since construction.
    fn load(&self) -> Result<(), Error> {
        let mut cache = self.members.borrow_mut();
        if cache.is_none() {
            let sql = self.sql();
            sql.exec(SCHEMA, None)?;
            // Inserted one by one: `collect` into a set sorts a `Vec` first, its own copy of std's
            // sort in the wasm.
            let mut members = BTreeSet::new();
            for row in rows::all(sql.exec("SELECT user_id FROM members", None)?)? {
                members.extend(rows::text(&row, 0));
            }
            *cache = Some(members);
        }
        Ok(())
    }

    /// How many members the channel has.
    fn member_count(&self) -> Result<usize, Error> {
        self.load()?;
        Ok(self.members.borrow().as_ref().map_or(0, |m| m.len()))
    }

    /// Runs `f` on the member set, loading it first if this is the first use since construction.
    /// Any use may change the set, so the shared snapshot is made again on the next publish.
    fn with_members<T>(&self, f: impl FnOnce(&mut BTreeSet<String>) -> T) -> Result<T, Error> {
        self.load()?;
        *self.snapshot.borrow_mut() = None;
        let mut cache = self.members.borrow_mut();
        Ok(f(cache.as_mut().unwrap_or_else(|| unreachable!())))
    }

    /// Re-reads one user's row into the cache after a write.
    fn refresh(&self, user_id: &str) -> Result<usize, Error> {
        let present =
            rows::first(self.sql().exec("SELECT user_id FROM members WHERE user_id = ?", vec![user_id.into()])?)?
                .is_some();
        self.with_members(|m| {
            if present {
                m.insert(user_id.to_string());
            } else {
                m.remove(user_id);
            }
            m.len()
        })
    }
}
