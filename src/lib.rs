//! # Switchboard
//!
//! Persistent connections as a service: browsers hold WebSockets to this Worker, request/response
//! backends `POST /publish`, and a Durable Object per user fans each envelope out to that user's
//! matching connections and returns their acks.
//!
//! # Layout
//!
//! Pure modules (no `worker` types; unit-tested on the host with `cargo test`):
//! - [`protocol`]: client frames in, control frames and envelopes out, the `/publish` body and reply.
//! - [`filter`]: subscription filters, their limits, and matching against an envelope.
//! - [`auth`]: token extraction and HS256 verification with `exp`/`nbf` and secret rotation.
//! - [`channel`]: channel names and grants, the fan-out tree's shape, membership versions, and the
//!   aggregation of a channel publish's answers.
//! - [`acks`]: bookkeeping for publishes waiting on their recipients' acks.
//! - [`config`]: every setting, parsed once, with errors that name the setting.
//! - [`error`]: the one error type, with its HTTP status and stable code.
//! - [`ratelimit`]: the per-connection token bucket that stops floods.
//! - [`ids`]: random UUIDs for connections and envelopes.
//! - [`query`]: query strings, read and written without the `url` crate.
//! - [`webhook`]: CloudEvents for the backend, Standard Webhooks signatures, retry backoff.
//!
//! Runtime-facing modules (thin, exercised by the end-to-end suite in `tests/` against workerd):
//! - [`router`]: the Worker entry point: routing, authentication, CORS, and the hop to a hub.
//! - [`hub`]: the `UserHub` Durable Object: connection cache, storage, publish fan-out and acks,
//!   plus the Worker-side helpers that reach a user's hub.
//! - [`ws`]: the WebSocket transport inside the hub: accept, frames, close codes.
//! - [`sse`]: Server-Sent Events: the Worker holds the stream and bridges it to a hibernatable
//!   WebSocket into the hub.
//! - [`multi`]: multi-user publish (`userIds`): concurrent hops to each user's hub, aggregated.
//! - [`channel_hub`]: the `ChannelHub` Durable Object: a channel's members (root) and the relays
//!   of its fan-out tree; see `docs/channels.md`.
//! - [`outbox`]: the hub's durable webhook queue and its alarm (which also closes expired connections).
//! - [`http`]: JSON responses, CORS headers, and reading bodies under a size limit.
//! - [`log`]: one JSON line per event, readable in `wrangler dev` and `wrangler tail`.

pub mod acks;
pub mod auth;
pub mod channel;
pub mod config;
pub mod error;
pub mod filter;
pub mod ids;
pub mod protocol;
pub mod query;
pub mod ratelimit;
pub mod webhook;

#[cfg(target_arch = "wasm32")]
mod channel_hub;
#[cfg(target_arch = "wasm32")]
mod http;
#[cfg(target_arch = "wasm32")]
mod hub;
#[cfg(target_arch = "wasm32")]
mod log;
#[cfg(target_arch = "wasm32")]
mod multi;
#[cfg(target_arch = "wasm32")]
mod outbox;
#[cfg(target_arch = "wasm32")]
mod router;
#[cfg(target_arch = "wasm32")]
mod sse;
#[cfg(target_arch = "wasm32")]
mod ws;

#[cfg(target_arch = "wasm32")]
pub use channel_hub::ChannelHub;
#[cfg(target_arch = "wasm32")]
pub use hub::UserHub;
