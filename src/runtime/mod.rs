//! Glue to the Workers runtime shared by the Worker and the Durable Object kinds: JSON responses and
//! CORS ([`http`]), log lines ([`log`]), the settings parsed once per isolate ([`settings`]), JS
//! strings handed to the runtime without a copy through wasm ([`js`]), the signed sending of
//! backend webhooks from a durable queue ([`webhook`]), query rows read as plain values ([`rows`]),
//! and the operator counters and their exports ([`metrics`]). It knows nothing of routes, hubs or
//! hops.

pub mod http;
pub mod js;
pub mod log;
pub mod metrics;
pub mod rows;
pub mod settings;
pub mod webhook;
