//! The settings, parsed once per isolate and shared by the Worker and the hubs.

use crate::core::config::Config;
use crate::core::error::Error;
use std::cell::OnceCell;
use std::rc::Rc;
use worker::Env;

thread_local! {
    /// Settings are fixed for the life of an isolate (a deploy or a `.dev.vars` edit starts a new
    /// one), so they are parsed once instead of on every request.
    static SETTINGS: OnceCell<Result<Rc<Config>, String>> = const { OnceCell::new() };
}

/// The parsed settings, or 500 `server_misconfigured` naming the bad setting.
pub fn get(env: &Env) -> Result<Rc<Config>, Error> {
    SETTINGS.with(|cell| {
        cell.get_or_init(|| Config::from_lookup(|name| env.var(name).ok().map(|v| v.to_string())).map(Rc::new))
            .clone()
            .map_err(Error::Misconfigured)
    })
}
