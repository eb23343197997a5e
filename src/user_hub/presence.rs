//! Channel presence, this user's side: the `presence` batches a channel's root sends to this hub,
//! passed on to the connections that joined with `presence: true`, and telling the root when none
//! of them watches any more. The presence join itself is in [`super::channels`] (`join` and
//! `register`). See `docs/channels.md`, "Presence".

use super::UserHub;
use crate::core::error::Error;
use crate::hop::channel as channel_hop;
use crate::hop::wire::MemberUpdate;
use crate::runtime::js::send_shared;
use crate::runtime::log;

impl UserHub {
    /// After a `leave` of the user's last watching connection while others stay joined: the root
    /// stops sending this user presence batches. Best effort: a root that missed it is told by this
    /// hub's answer to its next batch.
    pub(super) async fn unwatch(&self, user_id: &str, channel: &str) {
        let removed = self.sql_exec("DELETE FROM channel_watch WHERE name = ?", vec![channel.to_string().into()]);
        if !removed.is_ok_and(|c| c.rows_written() > 0) {
            return;
        }
        let update =
            MemberUpdate { watch: Some(false), ..MemberUpdate::new(channel, user_id, true, self.next_version()) };
        if let Err(e) = channel_hop::update_membership(&self.env, &update).await {
            log::error!("unwatch_failed", "userId" => user_id, "channel" => channel, "message" => e.to_string());
        }
    }

    /// A channel's presence batch: to every connection that watches the channel (held for one whose
    /// presence join waits for its snapshot). When none watches it, and the user is not lingering in
    /// it, answers a version so the root stops sending (see `hop::user::presence`).
    pub(super) fn deliver_presence(&self, channel: &str, frame: &js_sys::JsString) -> Result<Option<u64>, Error> {
        self.ensure_loaded()?;
        let mut reached = 0;
        if let Some(conns) = self.conns.borrow_mut().as_mut() {
            for conn in conns.values_mut() {
                if let Some((_, held)) = conn.held.iter_mut().find(|(c, _)| c == channel) {
                    held.push(frame.clone());
                    reached += 1;
                } else if conn.watching.iter().any(|c| c == channel) {
                    send_shared(&conn.ws, frame);
                    reached += 1;
                }
            }
        }
        if reached > 0 || self.lingering(&*self.config()?, channel)? {
            return Ok(None);
        }
        self.sql_exec("DELETE FROM channel_watch WHERE name = ?", vec![channel.to_string().into()])?;
        Ok(Some(self.next_version()))
    }

    /// How many of this user's connections watch `channel`'s presence (or wait for its snapshot).
    pub(crate) fn watching_count(&self, channel: &str) -> usize {
        let conns = self.conns.borrow();
        conns
            .iter()
            .flat_map(|c| c.values())
            .filter(|c| c.watching.iter().any(|n| n == channel) || c.held.iter().any(|(n, _)| n == channel))
            .count()
    }
}
