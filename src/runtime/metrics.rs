//! The isolate's operator counters ([`crate::core::metrics::Counters`]) and their two exports:
//! `GET /metrics` in Prometheus text (the edge serves [`prometheus`]), and one Workers Analytics
//! Engine data point per invocation when the `METRICS` dataset is bound
//! (<https://developers.cloudflare.com/analytics/analytics-engine/>).
//!
//! Counting is a field add in a thread-local (an isolate is single-threaded), never a call into JS.
//! The numbers are per isolate since it started: locally (`wrangler dev`, Miniflare) the Worker and
//! every Durable Object share one isolate, so `/metrics` shows everything; on Cloudflare each isolate
//! has its own, and the fleet's totals are the sum of the data points' delta columns.
//!
//! A data point carries the invocation's own fields (event, label, status, duration) and the
//! counters' change since this isolate's previous data point ([`crate::core::metrics::COLUMN_NAMES`]),
//! so no count is written twice and none is lost while its isolate lives. The Worker writes one per
//! publish and per connect request (its own event, label, status and duration); a hub's publish,
//! connect, close and alarm handlers add a `flush` point only when the isolate has unwritten counts
//! and wrote nothing for [`FLUSH_INTERVAL_MS`], so a channel publish to 1,000 hubs does not cost
//! 1,000 points.

use crate::core::metrics::{self as m, Counters, COLUMNS};
use crate::core::protocol::{Recipients, Transport};
use std::cell::{Cell, OnceCell, RefCell};
use std::fmt::Write;
use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::{JsCast, JsValue};
use worker::Env;

/// The least time between two `flush` points of one isolate.
pub const FLUSH_INTERVAL_MS: f64 = 10_000.0;
/// The binding's name in wrangler.toml (`[[analytics_engine_datasets]]`).
const BINDING: &str = "METRICS";

#[wasm_bindgen]
extern "C" {
    /// The dataset binding, called directly with one object made by `JSON.parse`: workers-rs's
    /// builder crosses into JS once per column.
    #[derive(Clone)]
    type Dataset;
    #[wasm_bindgen(method, catch, js_name = writeDataPoint)]
    fn write_data_point(this: &Dataset, point: &JsValue) -> Result<(), JsValue>;
}

thread_local! {
    static COUNTERS: RefCell<Counters> = const { RefCell::new(Counters::new()) };
    /// The columns as of this isolate's last data point.
    static WRITTEN: Cell<[u64; COLUMNS]> = const { Cell::new([0; COLUMNS]) };
    static LAST_POINT_AT: Cell<f64> = const { Cell::new(0.0) };
    /// The `METRICS` binding, looked up once: bindings are fixed for an isolate's life.
    static DATASET: OnceCell<Option<Dataset>> = const { OnceCell::new() };
}

/// The one way to the counters (`dyn`, so every increment shares one instantiation: the wasm stays small).
fn with(f: &mut dyn FnMut(&mut Counters)) {
    COUNTERS.with(|c| f(&mut c.borrow_mut()));
}

fn bump(family: &'static str, label: &str) {
    with(&mut |c| c.bump(family, label));
}

/// A publish the Worker accepted (parsed and authorized), by kind.
pub fn publish(to: &Recipients) {
    bump(
        m::PUBLISHES,
        match to {
            Recipients::One(_) => "userId",
            Recipients::Many(_) => "userIds",
            Recipients::Channel(_) => "channel",
        },
    );
}

/// A hub's publish is answered: `deliveries` connections were sent the envelope, `acks` answered
/// within the timeout, `pending` did not.
pub fn delivered(deliveries: usize, acks: usize, pending: usize) {
    with(&mut |c| {
        c.deliveries += deliveries as u64;
        c.acks += acks as u64;
        c.ack_timeouts += pending as u64;
    });
}

/// A hub accepted a connection.
pub fn connect(transport: Transport) {
    bump(m::CONNECTS, transport.name());
}

/// A connection closed with `code` (the client's, or the one the server sent).
pub fn close(code: u16) {
    bump(m::CLOSES, &code.to_string());
}

/// One webhook request and its outcome (`status` when there was an answer).
pub fn webhook_attempt(status: Option<u16>, timed_out: bool) {
    let class = m::webhook_class(status, timed_out);
    bump(m::WEBHOOK_ATTEMPTS, class);
    if class != "2xx" {
        bump(m::WEBHOOK_FAILURES, class);
    }
}

/// A webhook event dropped for good.
pub fn webhook_dropped() {
    with(&mut |c| c.webhook_dropped += 1);
}

/// A client frame answered with an `error` frame carrying `code`.
pub fn rejected(code: &str) {
    bump(m::REJECTED, code);
}

/// The Worker's invocations that get a data point: `(event, label)` for a request to `path`.
pub fn edge_event(path: &str, upgrade: bool) -> Option<(&'static str, &'static str)> {
    match path {
        _ if upgrade => Some(("connect", "websocket")),
        "/sse" => Some(("connect", "sse")),
        "/publish" => Some(("publish", "")),
        _ => None,
    }
}

/// `GET /metrics`: this isolate's counters in Prometheus text.
pub fn prometheus() -> String {
    COUNTERS.with(|c| c.borrow().prometheus())
}

fn columns() -> [u64; COLUMNS] {
    COUNTERS.with(|c| c.borrow().columns())
}

fn dataset(env: &Env) -> Option<Dataset> {
    DATASET.with(|d| {
        d.get_or_init(|| {
            let value = js_sys::Reflect::get(env, &JsValue::from_str(BINDING)).ok()?;
            (!value.is_undefined() && !value.is_null()).then(|| value.unchecked_into())
        })
        .clone()
    })
}

/// Writes this invocation's data point, when `METRICS` is bound: `event` (also the index), `label`
/// (a publish's kind, a connect's transport; plain ASCII), `status`, `ms` (the invocation's
/// duration) and the counters' deltas since this isolate's previous point.
fn write(env: &Env, event: &'static str, label: &str, status: u16, ms: f64) {
    let Some(dataset) = dataset(env) else { return };
    let now = columns();
    let mut point = format!(
        r#"{{"indexes":["{event}"],"blobs":["{event}","{label}","{status}"],"doubles":[{}"#,
        ms.max(0.0) as u64
    );
    for d in m::delta(&now, &WRITTEN.get()) {
        let _ = write!(point, ",{d}");
    }
    point.push_str("]}");
    match js_sys::JSON::parse(&point).and_then(|p| dataset.write_data_point(&p)) {
        Ok(()) => {
            WRITTEN.set(now);
            LAST_POINT_AT.set(crate::runtime::js::now_ms() as f64);
            bump(m::ANALYTICS_POINTS, event);
        }
        Err(e) => {
            bump(m::ANALYTICS_ERRORS, "");
            let message = e.as_string().unwrap_or_else(|| "the runtime refused the data point".into());
            // `point`, not `event`: that key is the line's own.
            crate::runtime::log::error!("analytics_error", "point" => event, "message" => message);
        }
    }
}

/// From a hub's publish, connect, close or alarm: a `flush` point with the isolate's unwritten counts, at
/// most once per [`FLUSH_INTERVAL_MS`], only when `METRICS` is bound.
pub fn flush(env: &Env) {
    if dataset(env).is_none() || crate::runtime::js::now_ms() as f64 - LAST_POINT_AT.get() < FLUSH_INTERVAL_MS {
        return;
    }
    if columns() != WRITTEN.get() {
        write(env, "flush", "", 200, 0.0);
    }
}

/// The clock for an invocation's duration: `Some(now)` only when `METRICS` is bound, so an unbound
/// Worker makes no extra call.
pub fn clock(env: &Env) -> Option<f64> {
    dataset(env).map(|_| crate::runtime::js::now_ms() as f64)
}

/// The Worker's data point for a publish or a connect request that started at `started` (see
/// [`clock`]) and was answered with `status`.
pub fn record(env: &Env, started: Option<f64>, event: &'static str, label: &str, status: u16) {
    if let Some(started) = started {
        write(env, event, label, status, crate::runtime::js::now_ms() as f64 - started);
    }
}
