//! The user's online/offline state for `PRESENCE_WEBHOOKS=on`, and its events
//! (`switchboard.user.online.v1` / `.offline.v1`, handed to the user's event shard through the
//! outbox).
//!
//! The hub's `presence` table is the truth, so an eviction never re-emits anything: one row while
//! the user is online (`user_id`, `online_at`, and `offline_since`: when its last connection
//! closed, null while none is pending), no row while offline. The first connection of an offline user sends
//! `online`; the last close starts the debounce; a connection that opens within
//! `USER_OFFLINE_DEBOUNCE_SECONDS` cancels it (nothing is sent); otherwise the hub's alarm sends
//! `offline`. So per user the two alternate, and the outbox keeps them in order.
//!
//! A crash drops the sockets without close events: the next construction that finds the user
//! online with no socket (its alarm, a publish, a connect: whatever wakes it first) starts the
//! debounce then, as if the last connection had just closed.

use super::UserHub;
use crate::core::config::Config;
use crate::core::error::Error;
use crate::core::protocol::{rfc3339, Transport};
use crate::core::webhook;
use crate::runtime::{log, rows};
use serde_json::json;
use worker::Date;

/// Alarms are not exact to the millisecond; an offline this close to due counts as due.
const SLACK_MS: i64 = 250;

/// The row of `SELECT user_id, online_at, offline_since FROM presence`.
struct OnlineRow {
    user_id: String,
    online_at: i64,
    offline_since: Option<i64>,
}

impl UserHub {
    fn online_row(&self) -> Result<Option<OnlineRow>, Error> {
        let row = rows::first(self.sql_exec("SELECT user_id, online_at, offline_since FROM presence", Vec::new())?)?;
        Ok(row.map(|r| OnlineRow {
            user_id: rows::text(&r, 0).unwrap_or_default(),
            online_at: rows::int(&r, 1),
            offline_since: rows::opt_int(&r, 2),
        }))
    }

    fn open_count(&self) -> usize {
        self.conns.borrow().as_ref().map_or(0, |c| c.len())
    }

    /// A connection was accepted: `online` if the user was offline; a pending offline is cancelled
    /// (a reconnect within the debounce sends nothing).
    pub(crate) async fn online_opened(&self, connection_id: &str, transport: Transport) -> Result<(), Error> {
        let config = self.config()?;
        if config.presence_webhooks.is_none() {
            return Ok(());
        }
        if let Some(row) = self.online_row()? {
            if row.offline_since.is_some() {
                self.sql_exec("UPDATE presence SET offline_since = NULL", Vec::new())?;
                log::info!("offline_cancelled", "userId" => row.user_id, "connectionId" => connection_id);
            }
            return Ok(());
        }
        let now = Date::now().as_millis() as i64;
        let Some(user_id) = self.user_of(connection_id) else { return Ok(()) };
        self.sql_exec(
            "INSERT INTO presence (user_id, online_at, offline_since) VALUES (?, ?, NULL)",
            vec![user_id.clone().into(), now.into()],
        )?;
        let data = json!({ "connectionId": connection_id, "transport": transport.name(), "at": rfc3339(now as u64) });
        self.enqueue_shard_event(webhook::USER_ONLINE, &user_id, data).await
    }

    /// A connection is gone (closed, kicked, failed): the last one of an online user starts the
    /// debounce (the alarm sends `offline` at its end).
    pub(crate) async fn online_closed(&self) {
        if let Err(e) = self.start_offline_debounce("close").await {
            log::error!("storage_error", "op" => "online_closed", "message" => e.to_string());
        }
    }

    /// After a construction: online with no socket means the sockets were lost without close
    /// events (a crash); the debounce starts now. Called with the cache just loaded.
    pub(crate) fn online_after_load(&self) {
        let Ok(config) = self.config() else { return };
        if config.presence_webhooks.is_none() || self.open_count() > 0 {
            return;
        }
        match self.online_row() {
            Ok(Some(OnlineRow { offline_since: None, .. })) => {}
            Ok(_) => return,
            Err(e) => return log::error!("storage_error", "op" => "online_after_load", "message" => e.to_string()),
        }
        // The alarm must be armed, which waits; this runs inside a synchronous load.
        let hub = self.handle();
        wasm_bindgen_futures::spawn_local(async move {
            if let Err(e) = hub.start_offline_debounce("no socket after a wake").await {
                log::error!("storage_error", "op" => "online_after_load", "message" => e.to_string());
            }
        });
    }

    async fn start_offline_debounce(&self, why: &str) -> Result<(), Error> {
        let config = self.config()?;
        if config.presence_webhooks.is_none() || self.open_count() > 0 {
            return Ok(());
        }
        let Some(OnlineRow { user_id, offline_since: None, .. }) = self.online_row()? else { return Ok(()) };
        let now = Date::now().as_millis() as i64;
        self.sql_exec("UPDATE presence SET offline_since = ?", vec![now.into()])?;
        log::info!("offline_pending", "userId" => user_id, "why" => why, "dueInMs" => self.debounce_ms(&config));
        self.schedule_alarm(Some(now + self.debounce_ms(&config)), false).await
    }

    fn debounce_ms(&self, config: &Config) -> i64 {
        config.presence_webhooks.as_ref().map_or(0, |p| p.offline_debounce_seconds as i64 * 1000)
    }

    /// When the pending offline is due, for the alarm.
    pub(crate) fn next_offline_due(&self, config: &Config) -> Result<Option<i64>, Error> {
        if config.presence_webhooks.is_none() {
            return Ok(None);
        }
        Ok(self.online_row()?.and_then(|r| r.offline_since).map(|since| since + self.debounce_ms(config)))
    }

    /// The alarm: sends `offline` once the debounce has passed with no connection open.
    pub(crate) async fn offline_when_due(&self, config: &Config) -> Result<(), Error> {
        if config.presence_webhooks.is_none() {
            return Ok(());
        }
        let Some(OnlineRow { user_id, online_at, offline_since: Some(since) }) = self.online_row()? else {
            return Ok(());
        };
        if self.open_count() > 0 {
            // A connection opened meanwhile (its accept cancels the debounce; this is a backstop).
            self.sql_exec("UPDATE presence SET offline_since = NULL", Vec::new())?;
            return Ok(());
        }
        let now = Date::now().as_millis() as i64;
        if since + self.debounce_ms(config) > now + SLACK_MS {
            return Ok(());
        }
        self.sql_exec("DELETE FROM presence", Vec::new())?;
        let data = json!({ "at": rfc3339(since as u64), "onlineAt": rfc3339(online_at as u64) });
        self.enqueue_shard_event(webhook::USER_OFFLINE, &user_id, data).await
    }

    fn user_of(&self, connection_id: &str) -> Option<String> {
        self.conns.borrow().as_ref()?.get(connection_id).map(|c| c.user_id.clone())
    }
}
