//! Authentication at the edge: the request's token (Bearer header first, then `?token=`), verified
//! once per isolate and cached ([`auth::TokenCache`]), and what each kind of caller must hold.

use crate::core::auth::{self, Identity};
use crate::core::config::{Config, PublishAuth};
use crate::core::error::Error;
use worker::{Date, Request};

thread_local! {
    /// Tokens verified in this isolate (see [`auth::TokenCache`]).
    static TOKENS: std::cell::RefCell<auth::TokenCache> = std::cell::RefCell::default();
}

/// Verifies the request's token (Bearer header first, then `?token=`).
pub fn authenticate(req: &Request, config: &Config) -> Result<Identity, Error> {
    let header = req.headers().get("authorization").ok().flatten();
    let query = crate::core::query::param(&req.inner().url(), "token");
    let token = auth::token_from(header.as_deref(), query.as_deref()).ok_or(Error::MissingToken)?;
    let now = Date::now().as_millis() as i64;
    TOKENS.with(|cache| cache.borrow_mut().verify(token, &config.jwt_secrets, now))
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

/// Backend endpoints need the `publish` scope (or any valid token with `PUBLISH_AUTH=any-token`).
pub fn authorize_backend(req: &Request, config: &Config) -> Result<Identity, Error> {
    let identity = authenticate(req, config)?;
    if config.publish_auth == PublishAuth::Scope && !identity.can_publish {
        return Err(Error::Forbidden(
            "this needs a token whose `scope` claim contains `publish` (PUBLISH_AUTH=any-token restores HopeFlow's any-token behaviour)".into(),
        ));
    }
    Ok(identity)
}
