//! One-time connect tickets (`POST /tickets` at the Worker): this hub stores each ticket's hash with
//! the checked claims of the token it was traded for, and takes it when a connect presents it. Kept
//! here, in the user's own hub, because a single object serialises every use of a ticket: a read and
//! a delete with no `await` between them cannot be raced, so a ticket connects once.

use super::UserHub;
use crate::core::error::Error;
use crate::core::ticket::MAX_TICKETS_PER_USER;
use crate::hop::wire::NewTicket;
use crate::runtime::{http, rows};
use serde_json::json;
use worker::{Date, Response};

impl UserHub {
    /// Stores a ticket for `TICKET_SECONDS`. Expired tickets are deleted first; a user holds at most
    /// [`MAX_TICKETS_PER_USER`] live ones (429 beyond).
    pub(super) fn issue_ticket(&self, ticket: NewTicket) -> Result<Response, Error> {
        let config = self.config()?;
        self.ensure_loaded()?;
        let now = Date::now().as_millis() as i64;
        self.sql_exec("DELETE FROM tickets WHERE expires_at <= ?", vec![now.into()])?;
        self.sql_exec("DELETE FROM ticket_presence WHERE hash NOT IN (SELECT hash FROM tickets)", Vec::new())?;
        let live = rows::first_int(self.sql_exec("SELECT count(*) FROM tickets", Vec::new())?)?.unwrap_or(0);
        if live as usize >= MAX_TICKETS_PER_USER {
            return Err(Error::TooManyRequests(format!(
                "this user holds {live} unused connect tickets: use them, or wait {} s",
                config.ticket_seconds
            )));
        }
        let expires_at = now + (config.ticket_seconds as i64) * 1000;
        self.sql_exec(
            "INSERT INTO tickets (hash, expires_at, exp, join_grants, publish_grants) VALUES (?, ?, ?, ?, ?)",
            vec![
                ticket.hash.clone().into(),
                expires_at.into(),
                ticket.expires_at_ms.into(),
                ticket.channels.to_text().into(),
                ticket.publish_channels.to_text().into(),
            ],
        )?;
        if let Some(data) = ticket.presence {
            self.sql_exec(
                "INSERT INTO ticket_presence (hash, data) VALUES (?, ?)",
                vec![ticket.hash.into(), data.into()],
            )?;
        }
        Ok(http::json(200, json!({ "expiresIn": config.ticket_seconds }).to_string(), None)?)
    }

    /// Takes the ticket with this hash (deleting it whatever happens next) and returns the claims
    /// stored with it; unknown and expired tickets are 401 `invalid_ticket`.
    pub(super) fn take_ticket(&self, hash: &str) -> Result<NewTicket, Error> {
        let query = "SELECT expires_at, exp, join_grants, publish_grants FROM tickets WHERE hash = ?";
        let Some(row) = rows::first(self.sql_exec(query, vec![hash.into()])?)? else {
            return Err(Error::InvalidTicket(
                "unknown connect ticket: a ticket connects once, within TICKET_SECONDS of POST /tickets".into(),
            ));
        };
        self.sql_exec("DELETE FROM tickets WHERE hash = ?", vec![hash.to_string().into()])?;
        let presence =
            rows::first(self.sql_exec("SELECT data FROM ticket_presence WHERE hash = ?", vec![hash.into()])?)?
                .and_then(|r| rows::text(&r, 0));
        self.sql_exec("DELETE FROM ticket_presence WHERE hash = ?", vec![hash.to_string().into()])?;
        if rows::int(&row, 0) <= Date::now().as_millis() as i64 {
            return Err(Error::InvalidTicket("the connect ticket has expired: ask POST /tickets for a new one".into()));
        }
        Ok(NewTicket {
            hash: hash.to_string(),
            expires_at_ms: rows::opt_int(&row, 1),
            channels: crate::core::channel::Grants::from_text(&rows::text(&row, 2).unwrap_or_default()),
            publish_channels: crate::core::channel::Grants::from_text(&rows::text(&row, 3).unwrap_or_default()),
            presence,
        })
    }
}
