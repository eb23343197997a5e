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

mod relay;
mod root;

use crate::core::error::Error;
use crate::hop::channel::{self, Call};
use crate::runtime::{http, log};
use serde::Deserialize;
use serde_json::json;
use std::cell::RefCell;
use std::collections::BTreeSet;
use worker::{durable_object, Env, Request, Response, State};

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS members (user_id TEXT PRIMARY KEY, version INTEGER NOT NULL);";

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
        crate::runtime::js::install_fast_microtasks();
        ChannelHub { state, env, members: RefCell::new(None) }
    }

    async fn fetch(&self, mut req: Request) -> worker::Result<Response> {
        let cors = crate::hop::cors(&req);
        let result = match channel::read(&req) {
            Err(e) => Err(e),
            Ok(Call::Member(update)) => self.update_member(&update, cors.as_deref()),
            Ok(Call::Members { channel, limit, cursor }) => {
                self.list(&channel, limit.as_deref(), cursor.as_deref(), cors.as_deref())
            }
            Ok(Call::Publish { channel, meta, idempotency_key }) => {
                self.publish(&mut req, &channel, &meta, idempotency_key.as_deref(), cors.as_deref()).await
            }
            Ok(Call::Relay { channel, path, meta, idempotency_key }) => {
                self.relay(&mut req, &channel, &path, &meta, idempotency_key.as_deref()).await
            }
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
}
