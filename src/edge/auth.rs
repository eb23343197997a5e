//! Authentication at the edge: the request's token (Bearer header first, then `?token=`), verified
//! once per isolate and cached ([`auth::TokenCache`]), and what each kind of caller must hold.

use crate::core::auth::{self, Identity};
use crate::core::config::{Config, PublishAuth};
use crate::core::error::Error;
use crate::runtime::js::now_ms;
use worker::Request;

thread_local! {
    /// Tokens verified in this isolate (see [`auth::TokenCache`]).
    static TOKENS: std::cell::RefCell<auth::TokenCache> = std::cell::RefCell::default();
}

/// Verifies the request's token (Bearer header first, then `?token=`).
pub fn authenticate(req: &Request, config: &Config) -> Result<Identity, Error> {
    let header = req.headers().get("authorization").ok().flatten();
    let query = crate::core::query::param(&req.inner().url(), "token");
    let token = auth::token_from(header.as_deref(), query.as_deref()).ok_or(Error::MissingToken)?;
    let now = now_ms() as i64;
    let identity = TOKENS.with(|cache| cache.borrow_mut().verify(token, &config.jwt_secrets, now))?;
    auth::check_rules(&identity, &config.token_rules)?;
    Ok(identity)
}

/// A connect token (WebSocket, SSE, `POST /tickets`): its user, after the rules for connect tokens
/// (`JWT_REQUIRE_EXP`, `JWT_MAX_TTL_SECONDS`).
pub fn connect_token(req: &Request, config: &Config) -> Result<(Identity, String), Error> {
    let identity = authenticate(req, config)?;
    let user_id = connecting_user(&identity)?;
    auth::check_connect(&identity, &config.token_rules, now_ms() as i64)?;
    Ok((identity, user_id))
}

/// How a connect proves who it is.
pub enum Credential {
    Token(Identity),
    /// A one-time ticket: its secret's hash, which the user's hub checks and takes.
    Ticket(String),
}

/// A connect's credential and user: `?ticket=` when the request carries no token at all, else the
/// token (so a client that sends both is judged by its token).
pub fn connect_credential(req: &Request, config: &Config) -> Result<(Credential, String), Error> {
    let url = req.inner().url();
    let has_token = req.headers().get("authorization").ok().flatten().is_some()
        || crate::core::query::param(&url, "token").is_some();
    if !has_token {
        if let Some(ticket) = crate::core::query::param(&url, "ticket") {
            let (user_id, hash) = crate::core::ticket::parse(&ticket).map_err(Error::InvalidTicket)?;
            return Ok((Credential::Ticket(hash), user_id));
        }
    }
    let (identity, user_id) = connect_token(req, config)?;
    Ok((Credential::Token(identity), user_id))
}

/// The connecting user: the token's `userId` claim.
pub fn connecting_user(identity: &Identity) -> Result<String, Error> {
    let user_id = identity
        .user_id
        .clone()
        .ok_or_else(|| Error::InvalidToken("the token has no `userId` claim (a non-empty string)".into()))?;
    auth::check_user_id(&user_id).map_err(Error::InvalidToken)?;
    Ok(user_id)
}

/// Backend endpoints need the `publish` scope. `PUBLISH_AUTH=any-token` lets any valid token through
/// only where `any_token` is set (`POST /publish`, whose body must then name one `userId`, as in
/// HopeFlow): kicks, member lists, `userIds` and channel publishes stay scope-only.
pub fn authorize_backend(req: &Request, config: &Config, any_token: bool) -> Result<Identity, Error> {
    let identity = authenticate(req, config)?;
    let any_token_allowed = any_token && config.publish_auth == PublishAuth::AnyToken;
    if !(identity.can_publish || any_token_allowed) {
        return Err(scope_needed());
    }
    Ok(identity)
}

/// The refusal of a token without the `publish` scope.
pub fn scope_needed() -> Error {
    Error::Forbidden(
        "this needs a token whose `scope` claim contains `publish` (PUBLISH_AUTH=any-token opens only `POST /publish` to one `userId` to other tokens)".into(),
    )
}
