//! The root's presence (see `docs/channels.md`, "Presence"): who is present is who is a member.
//! Every applied membership change becomes a pending row (one per user, its net change since the
//! last batch); the root's alarm takes them all, at most once per [`presence::batch_interval_ms`],
//! as one batch with the next `version`: one `presence` frame through the fan-out tree to the
//! members that watch, and the member webhook events. Also the `ok` snapshot of a presence join and
//! `GET /channels/{channel}/presence`; and the relays' part of a batch.

use super::ChannelHub;
use crate::core::channel;
use crate::core::config::Config;
use crate::core::error::Error;
use crate::core::presence::{self, Change, LeftReason, SNAPSHOT_MEMBERS};
use crate::hop::fanout::{join_boxed, presence_fan_out, Boxed};
use crate::hop::wire::MemberUpdate;
use crate::runtime::rows::{self, int, text};
use crate::runtime::{http, js, log, settings};
use futures_util::future::{select, Either};
use serde_json::{json, Value};
use std::time::Duration;
use worker::{Date, Delay, Env, Request, Response, SqlStorageValue as V};

/// Most users one page of `GET /channels/{channel}/presence` lists: each is one hop to its hub.
pub const MAX_PRESENCE_PAGE: usize = 100;

/// How long after a failed hand-over of member events the alarm tries again.
const RETRY_MS: i64 = 5_000;

/// One pending change: the user's state at the last batch, and now.
struct Pending {
    user_id: String,
    was_present: bool,
    was_data: Option<String>,
    present: bool,
    data: Option<String>,
    reason: String,
}

impl Pending {
    const COLUMNS: &'static str = "user_id, was_present, was_data, present, data, reason";

    fn read(row: &[V]) -> Pending {
        Pending {
            user_id: text(row, 0).unwrap_or_default(),
            was_present: int(row, 1) != 0,
            was_data: text(row, 2),
            present: int(row, 3) != 0,
            data: text(row, 4),
            reason: text(row, 5).unwrap_or_default(),
        }
    }
}

/// The channel's presence state: its name, the last batch's version and time.
struct BatchState {
    channel: String,
    version: i64,
    flushed_at: i64,
}

fn hop_failed(channel: &str, to: &str, message: &str) {
    log::error!("presence_hop_failed", "channel" => channel, "to" => to, "message" => message);
}

fn now_ms() -> i64 {
    Date::now().as_millis() as i64
}

impl ChannelHub {
    /// The presence side of a membership update that the root has applied (or not): `was` and `is`
    /// say whether the user was a member before it and is one after it.
    pub(super) fn presence_update(&self, update: &MemberUpdate, was: bool, is: bool) -> Result<(), Error> {
        let MemberUpdate { channel, user_id: user, version, .. } = update;
        let version = *version as i64;
        match (was, is) {
            (false, true) => {
                let watch = i64::from(update.watch == Some(true));
                self.sql().exec(
                    "INSERT INTO presence_members (user_id, data, watch, watch_version) VALUES (?, ?, ?, ?)
                     ON CONFLICT(user_id) DO UPDATE SET data = excluded.data, watch = excluded.watch,
                       watch_version = excluded.watch_version",
                    vec![user.clone().into(), update.data.clone().into(), watch.into(), version.into()],
                )?;
                self.record_change(channel, user, false, None, true, update.data.clone(), "join")
            }
            (true, false) => {
                let reason = update.reason.as_deref().and_then(LeftReason::from_name).unwrap_or(LeftReason::Leave);
                self.member_removed(channel, user, reason)
            }
            (true, true) => {
                // A present user's hub says one of its connections now watches (or none does). The
                // data stays that of the join that registered the user.
                // (An upsert: a member registered before presence existed has no row yet.)
                if let Some(watch) = update.watch {
                    self.sql().exec(
                        "INSERT INTO presence_members (user_id, data, watch, watch_version) VALUES (?, NULL, ?, ?)
                         ON CONFLICT(user_id) DO UPDATE SET watch = excluded.watch, watch_version = excluded.watch_version
                         WHERE excluded.watch_version > presence_members.watch_version",
                        vec![user.clone().into(), i64::from(watch).into(), version.into()],
                    )?;
                }
                Ok(())
            }
            (false, false) => Ok(()),
        }
    }

    /// A member left (a leave, the end of a linger, a kick, or a prune): the pending change, and
    /// its presence row goes.
    pub(super) fn member_removed(&self, channel: &str, user: &str, reason: LeftReason) -> Result<(), Error> {
        let data =
            rows::first(self.sql().exec("SELECT data FROM presence_members WHERE user_id = ?", vec![user.into()])?)?
                .and_then(|r| text(&r, 0));
        self.sql().exec("DELETE FROM presence_members WHERE user_id = ?", vec![user.to_string().into()])?;
        self.record_change(channel, user, true, data, false, None, reason.name())
    }

    /// Records a user's change for the next batch, as its net change since the last batch (a join
    /// and a leave within one interval cancel out: nothing is sent), and makes sure the alarm will
    /// send it.
    #[allow(clippy::too_many_arguments)]
    fn record_change(
        &self,
        channel: &str,
        user: &str,
        was_present: bool,
        was_data: Option<String>,
        present: bool,
        data: Option<String>,
        reason: &str,
    ) -> Result<(), Error> {
        let sql = self.sql();
        // Presence off (nobody watches, no member webhooks): no batch to make, so no pending row,
        // no batch state and no alarm: a join costs the member's row only. The user's pending row,
        // if one is left from a watched time, goes, so a later batch never repeats a stale change (a
        // new watcher's snapshot has the truth).
        if settings::get(&self.env)?.presence_webhooks.is_none() && self.watcher_count()? == 0 {
            sql.exec("DELETE FROM presence_pending WHERE user_id = ?", vec![user.to_string().into()])?;
            return Ok(());
        }
        let query = format!("SELECT {} FROM presence_pending WHERE user_id = ?", Pending::COLUMNS);
        let earlier = rows::first(sql.exec(&query, vec![user.into()])?)?.map(|r| Pending::read(&r));
        // The state at the last batch: the earliest pending change's "before", if there is one.
        let (was_present, was_data) = match earlier {
            Some(row) => (row.was_present, row.was_data),
            None => (was_present, was_data),
        };
        if presence::is_net_change(was_present, present, was_data.as_deref(), data.as_deref()) {
            sql.exec(
                "INSERT INTO presence_pending (user_id, was_present, was_data, present, data, reason) VALUES (?, ?, ?, ?, ?, ?)
                 ON CONFLICT(user_id) DO UPDATE SET present = excluded.present, data = excluded.data, reason = excluded.reason",
                vec![
                    user.to_string().into(),
                    i64::from(was_present).into(),
                    was_data.into(),
                    i64::from(present).into(),
                    data.into(),
                    reason.to_string().into(),
                ],
            )?;
        } else {
            sql.exec("DELETE FROM presence_pending WHERE user_id = ?", vec![user.to_string().into()])?;
        }
        sql.exec(
            "INSERT INTO presence_state (id, channel, version, flushed_at) VALUES (0, ?, 0, 0) ON CONFLICT(id) DO NOTHING",
            vec![channel.to_string().into()],
        )?;
        let state = self.state_row()?;
        let watchers = self.watcher_count()?;
        let config = settings::get(&self.env)?;
        let due = state.flushed_at + presence::batch_interval_ms(config.presence_interval_ms, watchers) as i64;
        let at = due.max(now_ms());
        self.alarm_due.set(Some(self.alarm_due.get().map_or(at, |d| d.min(at))));
        Ok(())
    }

    /// Sets the alarm for the changes recorded since the last call, unless it is set early enough
    /// already. Called by whoever recorded a change, before answering.
    pub(super) async fn arm_presence(&self) -> Result<(), Error> {
        let Some(due) = self.alarm_due.take() else { return Ok(()) };
        let storage = self.state.storage();
        if let Some(current) = storage.get_alarm().await? {
            if current <= due {
                return Ok(());
            }
        }
        let at = js_sys::Date::new(&wasm_bindgen::JsValue::from_f64(due as f64));
        storage.set_alarm(worker::ScheduledTime::new(at)).await?;
        Ok(())
    }

    fn state_row(&self) -> Result<BatchState, Error> {
        let found = rows::first(
            self.sql().exec("SELECT channel, version, flushed_at FROM presence_state WHERE id = 0", None)?,
        )?;
        Ok(match found.as_deref() {
            Some(r) => {
                BatchState { channel: text(r, 0).unwrap_or_default(), version: int(r, 1), flushed_at: int(r, 2) }
            }
            None => BatchState { channel: String::new(), version: 0, flushed_at: 0 },
        })
    }

    fn count(&self, query: &str) -> Result<i64, Error> {
        Ok(rows::first_int(self.sql().exec(query, None)?)?.unwrap_or(0))
    }

    fn watcher_count(&self) -> Result<u64, Error> {
        Ok(self.count("SELECT count(*) FROM presence_members WHERE watch = 1")?.max(0) as u64)
    }

    /// Members with their data, in user id order, after `cursor`.
    fn members_with_data(&self, cursor: &str, limit: usize) -> Result<Vec<(String, Option<String>)>, Error> {
        let found = rows::all(self.sql().exec(
            "SELECT m.user_id, p.data FROM members m LEFT JOIN presence_members p ON p.user_id = m.user_id
             WHERE m.user_id > ? ORDER BY m.user_id LIMIT ?",
            vec![cursor.to_string().into(), (limit as i64).into()],
        )?)?;
        Ok(found.iter().map(|r| (text(r, 0).unwrap_or_default(), text(r, 1))).collect())
    }

    /// The `presence` object of a presence join's `ok`: the last batch's version, the count, and
    /// the first members by user id. The members are the current ones (pending changes included):
    /// the next batch carries each changed user's final state, so applying it over this is right.
    pub(super) fn snapshot(&self) -> Result<Value, Error> {
        let count = self.member_count()?;
        let version = self.state_row()?.version.max(0) as u64;
        let members = self.members_with_data("", SNAPSHOT_MEMBERS + 1)?;
        Ok(presence::snapshot(version, count, members))
    }

    /// The alarm: takes every pending change as one batch with the next version, emits the member
    /// events, and sends the frame to the watching members through the fan-out tree.
    pub(super) async fn flush_presence(&self) -> Result<(), Error> {
        let config = settings::get(&self.env)?;
        self.load()?;
        let sql = self.sql();
        let query = format!("SELECT {} FROM presence_pending ORDER BY user_id", Pending::COLUMNS);
        let pending: Vec<Pending> = rows::all(sql.exec(&query, None)?)?.iter().map(|r| Pending::read(r)).collect();
        let state = self.state_row()?;
        if pending.is_empty() {
            // Only member events an earlier batch could not hand on (their retry).
            return self.hand_member_events(&state.channel, Vec::new()).await;
        }
        let version = state.version.max(0) as u64 + 1;
        let started = now_ms();
        // The batch is taken before anything is sent: changes that arrive while it is on its way
        // wait for the next one (the alarm set by their arrival).
        sql.exec("DELETE FROM presence_pending", None)?;
        sql.exec(
            "UPDATE presence_state SET version = ?, flushed_at = ? WHERE id = 0",
            vec![(version as i64).into(), started.into()],
        )?;
        let changes: Vec<Change> = pending
            .into_iter()
            .map(|r| Change { user_id: r.user_id, present: r.present, data: r.data, reason: r.reason })
            .collect();
        let count = self.member_count()?;
        self.hand_member_events(&state.channel, member_events(&state.channel, &changes)).await?;
        let watchers: Vec<String> =
            rows::all(sql.exec("SELECT user_id FROM presence_members WHERE watch = 1 ORDER BY user_id", None)?)?
                .iter()
                .filter_map(|r| text(r, 0))
                .collect();
        let mut stopped = 0;
        if !watchers.is_empty() {
            let frame = js_sys::JsString::from(presence::frame(&state.channel, version, &changes, count).as_str());
            let not_watching = step(&self.env, &config, &state.channel, "p", &watchers, &frame).await;
            stopped = not_watching.len();
            for (user, v) in not_watching {
                sql.exec(
                    "UPDATE presence_members SET watch = 0, watch_version = ? WHERE user_id = ? AND watch_version < ?",
                    vec![(v as i64).into(), user.into(), (v as i64).into()],
                )?;
            }
        }
        // Changes that came in while the batch was on its way: the alarm they asked for may have
        // been taken for this running one (`get_alarm` still shows it); set it again.
        if self.count("SELECT count(*) FROM presence_pending")? > 0 {
            let due = started + presence::batch_interval_ms(config.presence_interval_ms, watchers.len() as u64) as i64;
            let at = js_sys::Date::new(&wasm_bindgen::JsValue::from_f64(due.max(now_ms()) as f64));
            self.state.storage().set_alarm(worker::ScheduledTime::new(at)).await?;
        }
        log::info!(
            "presence_batch",
            "channel" => state.channel, "version" => version, "changes" => changes.len(), "count" => count,
            "watchers" => watchers.len(), "stoppedWatching" => stopped, "ms" => now_ms().saturating_sub(started),
        );
        Ok(())
    }

    /// Hands member events on, after any that an earlier batch could not hand (kept in order in
    /// `presence_events`); what cannot be handed now is kept for the next alarm, set for it.
    async fn hand_member_events(&self, channel: &str, fresh: Vec<Value>) -> Result<(), Error> {
        let sql = self.sql();
        let kept: Vec<(i64, Value)> = rows::all(sql.exec("SELECT id, body FROM presence_events ORDER BY id", None)?)?
            .iter()
            .filter_map(|r| serde_json::from_str(&text(r, 1)?).ok().map(|v| (int(r, 0), v)))
            .collect();
        let mut events: Vec<Value> = kept.iter().map(|(_, v)| v.clone()).collect();
        let last_kept = kept.last().map_or(0, |(id, _)| *id);
        events.extend(fresh.iter().cloned());
        if events.is_empty() {
            return Ok(());
        }
        match send_member_events(&self.env, channel, &events).await {
            Ok(()) => {
                sql.exec("DELETE FROM presence_events WHERE id <= ?", vec![last_kept.into()])?;
            }
            Err(e) => {
                log::error!(
                    "presence_error",
                    "op" => "member_events", "kept" => events.len(), "message" => e.to_string(),
                );
                for event in fresh {
                    sql.exec("INSERT INTO presence_events (body) VALUES (?)", vec![event.to_string().into()])?;
                }
                let at = js_sys::Date::new(&wasm_bindgen::JsValue::from_f64((now_ms() + RETRY_MS) as f64));
                self.state.storage().set_alarm(worker::ScheduledTime::new(at)).await?;
            }
        }
        Ok(())
    }

    /// `GET /presence?channel&limit&cursor`: one page of present users in id order, each with its
    /// data and how many of its connections are joined right now (asked of its hub: one hop per
    /// listed user, all at once).
    pub(super) async fn presence_page(
        &self,
        channel: &str,
        limit: Option<&str>,
        cursor: Option<&str>,
        cors: Option<&str>,
    ) -> Result<Response, Error> {
        let limit = crate::core::query::page_limit(limit, MAX_PRESENCE_PAGE)?;
        let count = self.member_count()?;
        let mut page = self.members_with_data(cursor.unwrap_or_default(), limit + 1)?;
        let more = page.len() > limit;
        page.truncate(limit);
        let next = more.then(|| page.last().map(|(u, _)| u.clone())).flatten();
        let env = &self.env;
        let counts = join_boxed(
            page.iter()
                .map(|(user, _)| {
                    Box::pin(async move {
                        match crate::hop::user::channel_connections(env, user, channel).await {
                            Ok(n) => Some(n),
                            Err(e) => {
                                hop_failed(channel, user, &e.to_string());
                                None
                            }
                        }
                    }) as Boxed<'_, Option<u64>>
                })
                .collect(),
        )
        .await;
        let members: Vec<Value> = page
            .iter()
            .zip(counts)
            .map(|((user, data), n)| {
                let mut m = presence::member_json(user, data.as_deref());
                // `null`: the user's hub did not answer.
                m["connections"] = json!(n);
                m
            })
            .collect();
        let body = json!({ "channel": channel, "count": count, "members": members, "nextCursor": next });
        Ok(http::json(200, body.to_string(), cors)?)
    }

    /// `POST /presence-relay` (relay): the body is the users (a JSON array), a line break, then the
    /// frame; answers the users that no longer watch, with their hubs' versions.
    pub(super) async fn presence_relay(&self, req: &mut Request, channel: &str, path: &str) -> Result<Response, Error> {
        let config = settings::get(&self.env)?;
        let body = js::body_text(req).await?;
        let (users, frame) = crate::hop::channel::read_relay_body(&body)
            .ok_or_else(|| Error::Internal("a presence relay hop without readable users".into()))?;
        let stopped = step(&self.env, &config, channel, path, &users, &frame).await;
        let body = serde_json::to_string(&stopped).map_err(|e| Error::Internal(e.to_string()))?;
        Ok(http::json(200, body, None)?)
    }
}

/// Hands member events to the channel's event shard (`hop::events`, keyed by the channel so one
/// channel's events stay in order); nothing, without a hop, when `PRESENCE_WEBHOOKS` is off. `Err`
/// means nothing may be assumed handed: the caller keeps the events in `presence_events` and the
/// next alarm tries again, in order (each event keeps its id, so a retry is deduplicated).
async fn send_member_events(env: &Env, channel: &str, events: &[Value]) -> Result<(), Error> {
    crate::hop::events::send(env, channel, events).await.map(|_| ())
}

/// The member webhook events of a batch's changes: `subject` is the user id.
fn member_events(channel: &str, changes: &[Change]) -> Vec<Value> {
    changes
        .iter()
        .map(|c| crate::hop::events::event(presence::event_type(c), &c.user_id, presence::event_data(channel, c)))
        .collect()
}

/// One step of a presence batch's way down the tree at position `path`: straight to the watchers'
/// hubs when they fit in `CHANNEL_FANOUT` hops, else to relays that each take an even slice.
/// Presence frames are not acked, so a step waits only for its hops' answers (the users that no
/// longer watch), at most `HOP_GRACE_MS` (and at least 1 s) per level.
async fn step(
    env: &Env,
    config: &Config,
    channel: &str,
    path: &str,
    users: &[String],
    frame: &js_sys::JsString,
) -> Vec<(String, u64)> {
    let hop_ms = config.hop_grace_ms.max(1_000);
    let fanout = config.channel_fanout;
    let Some(chunk) = channel::chunk_size(users.len(), fanout) else {
        return presence_fan_out(env, channel, frame, users, hop_ms).await;
    };
    let hops = users.chunks(chunk).enumerate().map(|(i, part)| -> Boxed<'_, Vec<(String, u64)>> {
        Box::pin(async move {
            let relay = format!("{path}.{i}");
            let levels = u64::from(channel::depth(part.len(), fanout));
            let limit_ms = hop_ms * (levels + 1);
            let hop = Box::pin(crate::hop::channel::presence_relay(env, channel, &relay, part, frame));
            let answered = match select(hop, Delay::from(Duration::from_millis(limit_ms))).await {
                Either::Left((result, _)) => Some(result),
                Either::Right(_) => None,
            };
            match answered {
                Some(Ok(stopped)) => stopped,
                Some(Err(e)) => {
                    hop_failed(channel, &relay, &e.to_string());
                    Vec::new()
                }
                None => {
                    hop_failed(channel, &relay, &format!("no answer within {limit_ms} ms"));
                    Vec::new()
                }
            }
        })
    });
    join_boxed(hops.collect()).await.into_iter().flatten().collect()
}
