//! The root's role: the channel's members (joins and leaves from users' hubs, versioned), the members
//! API, and the start of every publish to the channel.

use super::{relay, ChannelHub, Running};
use crate::core::channel;
use crate::core::error::Error;
use crate::core::presence::LeftReason;
use crate::core::ratelimit::TokenBucket;
use crate::hop::wire::{MemberUpdate, PublishMeta};
use crate::runtime::{http, js, log, rows, settings};
use serde_json::json;
use std::rc::Rc;
use worker::{Date, Request, Response};

/// Most members `GET /channels/{channel}/members` lists per page.
pub const MAX_PAGE: usize = 1_000;

impl ChannelHub {
    /// `POST /member?channel&user&joined=1|0&version`, from a user's hub: the user's first
    /// connection joined, or the last one left. An update older than the row it would change is
    /// ignored (a leave and a later join can arrive out of order).
    pub(super) async fn update_member(&self, update: &MemberUpdate, cors: Option<&str>) -> Result<Response, Error> {
        let config = settings::get(&self.env)?;
        let MemberUpdate { channel, user_id: user, joined, version, .. } = update;
        let (joined, version) = (*joined, *version as i64);
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
        let now_present = self.with_members(|m| m.contains(user.as_str()))?;
        // Presence follows what was applied: a join of a new member, a newer update of a present one
        // (its watch flag), or a leave that removed the member.
        self.presence_update(update, present, now_present)?;
        self.arm_presence().await?;
        log::info!("membership", "channel" => channel, "userId" => user, "joined" => joined, "members" => members);
        let mut body = json!({ "members": members });
        if update.snapshot {
            body["presence"] = self.snapshot()?;
        }
        Ok(http::json(200, body.to_string(), cors)?)
    }

    /// `GET /members?channel&limit&cursor`: one page of members in id order.
    pub(super) fn list(
        &self,
        channel: &str,
        limit: Option<&str>,
        cursor: Option<&str>,
        cors: Option<&str>,
    ) -> Result<Response, Error> {
        let limit = crate::core::query::page_limit(limit, MAX_PAGE)?;
        let cursor = cursor.unwrap_or_default().to_string();
        let count = self.with_members(|m| m.len())?;
        let query = "SELECT user_id FROM members WHERE user_id > ? ORDER BY user_id LIMIT ?";
        let page = rows::all(self.sql().exec(query, vec![cursor.into(), (limit as i64 + 1).into()])?)?;
        let mut members: Vec<String> = page.iter().filter_map(|r| rows::text(r, 0)).collect();
        let more = members.len() > limit;
        members.truncate(limit);
        let next = more.then(|| members.last().cloned()).flatten();
        let body = json!({ "channel": channel, "count": count, "members": members, "nextCursor": next });
        Ok(http::json(200, body.to_string(), cors)?)
    }

    /// `POST /publish` (root): fans the publish out to every member, removes the stale ones found,
    /// and answers with the aggregate.
    pub(super) async fn publish(
        &self,
        req: &mut Request,
        channel: &str,
        meta: &PublishMeta,
        key: Option<&str>,
        cors: Option<&str>,
    ) -> Result<Response, Error> {
        let config = settings::get(&self.env)?;
        // Refused before anything is read or sent, so a refused publish reaches nobody.
        let limit = config.channel_max_concurrent_publishes;
        if self.running.get() >= limit {
            return Err(Error::Limited {
                code: "channel_busy",
                message: format!(
                    "this channel is already running {limit} publishes (CHANNEL_MAX_CONCURRENT_PUBLISHES); nothing was sent: retry in a moment"
                ),
            });
        }
        if meta.from.is_some() {
            let rate = config.channel_client_publish_per_second;
            let now = Date::now().as_millis() as f64;
            if !self.client_bucket.borrow_mut().get_or_insert_with(|| TokenBucket::new(rate, now)).take(now) {
                return Err(Error::Limited {
                    code: "rate_limited",
                    message: format!(
                        "this channel takes at most {rate} client publishes per second (CHANNEL_CLIENT_PUBLISH_PER_SECOND); nothing was sent: publish again later"
                    ),
                });
            }
        }
        self.running.set(self.running.get() + 1);
        let _running = Running(self.running.clone());
        let payload = js::body_text(req).await?;
        let members = self.members_snapshot()?;
        let started = Date::now().as_millis();
        let aggregate = relay::step(&self.env, &config, channel, "r", &members, meta, &payload, key).await;
        for (user, version) in &aggregate.stale {
            let was_member = self.with_members(|m| m.contains(user.as_str()))?;
            self.sql().exec(
                "DELETE FROM members WHERE user_id = ? AND version < ?",
                vec![user.clone().into(), (*version as i64).into()],
            )?;
            self.refresh(user)?;
            if was_member && !self.with_members(|m| m.contains(user.as_str()))? {
                self.member_removed(channel, user, LeftReason::Pruned)?;
            }
        }
        self.arm_presence().await?;
        let t = aggregate.totals;
        log::info!(
            "publish_channel",
            "channel" => channel, "type" => meta.kind, "from" => meta.from, "users" => t.users, "failed" => t.failed,
            "pruned" => t.pruned, "clientCount" => t.client_count, "acked" => t.acked,
            "depth" => channel::depth(members.len(), config.channel_fanout),
            "ms" => Date::now().as_millis().saturating_sub(started),
        );
        if meta.from.is_some() {
            // A client publisher hears the totals only: its hub reads nothing else.
            return Ok(http::json(200, json!({ "totals": t }).to_string(), cors)?);
        }
        Ok(http::json(200, aggregate.into_response(channel).to_string(), cors)?)
    }

    /// The members as a shared list, made once per change of the set.
    fn members_snapshot(&self) -> Result<Rc<[String]>, Error> {
        if let Some(s) = self.snapshot.borrow().as_ref() {
            return Ok(s.clone());
        }
        let list: Rc<[String]> = self.with_members(|m| m.iter().cloned().collect())?;
        *self.snapshot.borrow_mut() = Some(list.clone());
        Ok(list)
    }
}
