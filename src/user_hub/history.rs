//! The user's history: every envelope recorded under its `seq` before it leaves, trimmed by age and
//! count, and replayed to a connection that resumes with `since`.

use super::UserHub;
use crate::core::config::Config;
use crate::core::error::Error;
use crate::core::filter::{EnvelopeView, FilterSet};
use crate::core::protocol::{self, StoredEnvelope};
use crate::runtime::{log, rows};
use worker::Date;

impl UserHub {
    /// Records the next `seq` and stores the envelope in history, before any envelope carrying it
    /// leaves (the output gate holds sends until the write is durable). With history on this is one
    /// INSERT per publish: the seq is recovered from history after an eviction, trimming by count
    /// runs once per batch of publishes, and `meta` is written only before an age trim (the one
    /// thing that could delete the newest row).
    pub(super) fn record(
        &self,
        config: &Config,
        seq: u64,
        now_ms: i64,
        envelope: &js_sys::JsString,
    ) -> Result<(), Error> {
        let sql = self.sql();
        let store_seq = || {
            sql.exec(
                "INSERT INTO meta (key, value) VALUES ('seq', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                vec![(seq as i64).into()],
            )
        };
        if !config.history_enabled() {
            store_seq()?;
            self.seq.set(seq);
            return Ok(());
        }
        // The envelope is bound as the JS string it already is: it is never copied into wasm.
        sql.exec_raw(
            "INSERT INTO history (seq, at, envelope) VALUES (?, ?, ?)",
            vec![(seq as f64).into(), (now_ms as f64).into(), envelope.into()],
        )?;
        self.seq.set(seq);
        let cutoff = now_ms - (config.history_seconds as i64) * 1000;
        let Some((oldest_seq, oldest_at)) = self.oldest.get() else {
            self.oldest.set(Some((seq, now_ms)));
            return Ok(());
        };
        // Rows past the limit are ignored by replay, so they can wait for a batch delete.
        let slack = config.history_limit.min(64);
        let keep_from = seq.saturating_sub(config.history_limit) + 1;
        let over_count = oldest_seq + slack < keep_from;
        let expired = oldest_at < cutoff;
        if over_count || expired {
            if expired {
                store_seq()?;
            }
            sql.exec("DELETE FROM history WHERE seq < ? OR at < ?", vec![(keep_from as i64).into(), cutoff.into()])?;
            self.reload_oldest(&sql)?;
        }
        Ok(())
    }

    /// When the alarm should next delete expired history: the oldest row's expiry plus a slack of a
    /// tenth of the window (at least 1 s, at most 10 min), so a steady stream of publishes costs one
    /// alarm per slack, not one per envelope.
    pub(super) fn next_history_expiry(&self, config: &Config) -> Option<i64> {
        if !config.history_enabled() {
            return None;
        }
        let window = (config.history_seconds as i64) * 1000;
        let slack = (window / 10).clamp(1_000, 600_000);
        self.oldest.get().map(|(_, at)| at + window + slack)
    }

    /// The alarm's part: history past `HISTORY_SECONDS` is deleted even when no publish comes to
    /// trim it (a user who stops receiving would otherwise keep it stored forever).
    pub(super) fn trim_history_by_age(&self, config: &Config) -> Result<(), Error> {
        let Some((_, oldest_at)) = self.oldest.get() else { return Ok(()) };
        let cutoff = Date::now().as_millis() as i64 - (config.history_seconds as i64) * 1000;
        if config.history_enabled() && oldest_at >= cutoff {
            return Ok(());
        }
        let sql = self.sql();
        // The newest row may go: its seq is kept in meta first (see `record`).
        sql.exec(
            "INSERT INTO meta (key, value) VALUES ('seq', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            vec![(self.seq.get() as i64).into()],
        )?;
        let deleted = if config.history_enabled() {
            sql.exec("DELETE FROM history WHERE at < ?", vec![cutoff.into()])?.rows_written()
        } else {
            sql.exec("DELETE FROM history", None)?.rows_written()
        };
        self.reload_oldest(&sql)?;
        let remaining = rows::first_int(sql.exec("SELECT count(*) FROM history", None)?)?.unwrap_or(0);
        log::info!("history_trimmed", "deleted" => deleted, "remaining" => remaining);
        Ok(())
    }

    /// Replays to connection `id` the stored envelopes after `since` that match its filters, oldest
    /// first, marked `replayed`, after a `gap` frame when history no longer reaches back that far.
    /// `before` is the connection's filter set before this subscribe: envelopes it matched after the
    /// connection opened were delivered live already and are not sent twice. Runs synchronously
    /// (SQLite reads are synchronous), so no publish can interleave with the replay.
    /// Returns whether the page ended with more history to send (`replay_more` was sent).
    pub(crate) fn replay(&self, id: &str, since: u64, before: &FilterSet) -> Result<bool, Error> {
        let current = self.seq.get();
        if since >= current {
            return Ok(false);
        }
        let config = self.config()?;
        // One page: at most REPLAY_PAGE_ENVELOPES rows, read one at a time from the cursor, and at
        // most REPLAY_PAGE_BYTES of them (at least one). The whole history is never in memory at
        // once (review F4); the page ends with `replay_more` when more may remain.
        let cursor = if config.history_enabled() {
            let cutoff = Date::now().as_millis() as i64 - (config.history_seconds as i64) * 1000;
            // Rows beyond HISTORY_LIMIT may still be stored until the next batch trim; they don't count.
            let from = since.max(current.saturating_sub(config.history_limit));
            Some(self.sql().exec(
                "SELECT seq, envelope FROM history WHERE seq > ? AND at >= ? ORDER BY seq LIMIT ?",
                vec![(from as i64).into(), cutoff.into(), (config.replay_page_envelopes as i64).into()],
            )?)
        } else {
            None
        };
        // Each row is `(seq, envelope)`.
        let mut stored = cursor
            .as_ref()
            .map(|c| c.raw())
            .into_iter()
            .flatten()
            .map(|row| row.map(|r| (rows::int(&r, 0) as u64, rows::text(&r, 1).unwrap_or_default())))
            .peekable();
        let conns = self.conns.borrow();
        let Some(conn) = conns.as_ref().and_then(|c| c.get(id)) else { return Ok(false) };
        let first_kept = match stored.peek() {
            Some(Ok((seq, _))) => *seq,
            Some(Err(_)) => since + 1,
            None => current + 1,
        };
        if first_kept > since + 1 {
            conn.send(&protocol::gap_frame(since + 1, first_kept - 1), None);
        }
        let (mut sent, mut read, mut bytes, mut last) = (0, 0u64, 0usize, since);
        let mut full = false;
        for row in stored {
            let (seq, envelope) = row?;
            if read > 0 && bytes + envelope.len() > config.replay_page_bytes {
                full = true;
                break;
            }
            read += 1;
            bytes += envelope.len();
            last = seq;
            let Ok(stored) = serde_json::from_str::<StoredEnvelope<'_>>(&envelope) else { continue };
            let wanted = match &stored.channel {
                // A channel's envelopes go to the connections that joined it; those after the join
                // were sent live.
                Some(channel) => conn.channels.iter().any(|(c, joined_at)| c == channel && seq <= *joined_at),
                None => {
                    let view = EnvelopeView::new(&stored.kind, stored.payload.get());
                    let delivered_live = seq > conn.accepted_seq && before.matches(&view);
                    conn.filters.matches(&view) && !delivered_live
                }
            };
            if wanted {
                conn.send(&protocol::replayed(&envelope), Some(seq));
                sent += 1;
            }
        }
        let more = (full || read == config.replay_page_envelopes) && last < current;
        if more {
            // Over SSE this event's `id:` is `last`, so a reconnect with Last-Event-ID continues.
            conn.send(&protocol::replay_more_frame(last), Some(last));
        }
        log::info!(
            "replay",
            "connectionId" => id, "since" => since, "replayed" => sent, "gap" => first_kept > since + 1, "more" => more,
        );
        Ok(more)
    }

    /// Re-reads the oldest stored envelope's `(seq, at)` after a trim (see `UserHub::oldest`).
    pub(super) fn reload_oldest(&self, sql: &super::HubSql<'_>) -> Result<(), Error> {
        let oldest = rows::first(sql.exec("SELECT seq, at FROM history ORDER BY seq LIMIT 1", None)?)?
            .map(|r| (rows::int(&r, 0) as u64, rows::int(&r, 1)));
        self.oldest.set(oldest);
        Ok(())
    }
}
