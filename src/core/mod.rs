//! The pure core: everything with no `worker` types, unit-tested on the host with `cargo test`.
//! Nothing here imports the runtime (a test in `lib.rs` checks it).

pub mod acks;
pub mod aggregate;
pub mod auth;
pub mod channel;
pub mod config;
pub mod error;
pub mod filter;
pub mod ids;
pub mod log_line;
pub mod metrics;
pub mod presence;
pub mod protocol;
pub mod query;
pub mod ratelimit;
pub mod ticket;
pub mod webhook;

#[cfg(test)]
mod proptests;
