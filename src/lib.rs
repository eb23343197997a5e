//! # Switchboard
//!
//! Persistent connections as a service: browsers hold WebSockets to this Worker, request/response
//! backends `POST /publish`, and a Durable Object per user fans each envelope out to that user's
//! matching connections and returns their acks.
//!
//! # Layout
//!
//! The folders are the layers, and every dependency points down this list (a test below reads the
//! `use crate::` lines and fails on a cycle or a layer violation):
//!
//! 1. [`core`]: everything with no `worker` types, unit-tested on the host with `cargo test`: the
//!    wire [`core::protocol`] (client frames, server frames and envelopes, the backend's bodies and
//!    answers, close codes), [`core::filter`], [`core::auth`] (tokens), [`core::channel`] (names,
//!    grants, the fan-out tree, aggregates), [`core::acks`], [`core::config`] (every setting),
//!    [`core::error`], [`core::ratelimit`], [`core::ids`], [`core::query`], [`core::webhook`],
//!    [`core::ticket`] (one-time connect tickets) and [`core::metrics`] (operator counters).
//! 2. `runtime`: glue to the Workers runtime that every part shares: JSON responses and CORS, log
//!    lines, the settings parsed once per isolate, JS strings passed without a copy, the isolate's
//!    metrics (`GET /metrics`, Analytics Engine).
//! 3. [`hop`]: the internal hop, both sides: the Worker to a user's hub or a channel's root, a hub to
//!    a root, a root to its relays, a relay to users' hubs. [`hop::wire`] is its pure encoding.
//! 4. The four runtime roles, which never import each other and talk only through the hop:
//!    - `edge`: the Worker: routing, authentication, the SSE bridge, multi-user publish;
//!    - `user_hub`: the `UserHub` Durable Object, one per user, one file per role (state, socket
//!      frames, publish and acks, history, channels, presence, connections, outbox and alarm);
//!    - `channel_hub`: the `ChannelHub` Durable Object: a channel's root and the relays of its
//!      fan-out tree, and the root's presence batches (see `docs/channels.md`);
//!    - `event_hub`: the `EventHub` Durable Object, an event shard (`events/{shard}`) that sends
//!      many users' presence webhooks in batches ([`hop::events`] hands events to it).
//!
//! The runtime layers (2-4, except [`hop::wire`]) build for `wasm32` only; end-to-end tests in
//! `tests/` run the built wasm in workerd.

pub mod core;
pub mod hop;

#[cfg(target_arch = "wasm32")]
mod channel_hub;
#[cfg(target_arch = "wasm32")]
mod edge;
#[cfg(target_arch = "wasm32")]
mod event_hub;
#[cfg(target_arch = "wasm32")]
mod runtime;
#[cfg(target_arch = "wasm32")]
mod user_hub;

#[cfg(target_arch = "wasm32")]
pub use channel_hub::ChannelHub;
#[cfg(target_arch = "wasm32")]
pub use event_hub::EventHub;
#[cfg(target_arch = "wasm32")]
pub use user_hub::UserHub;

#[cfg(test)]
mod layers;
