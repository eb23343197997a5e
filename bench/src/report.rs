//! Medians over runs, Switchboard/reference ratios, the budget check, and printing.

use crate::{Config, Metrics};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::time::Duration;

const SB: &str = "switchboard";
const REF: &str = "reference";

/// Metrics shown in the table, per scenario kind.
fn shown(scenario: &str) -> &'static [&'static str] {
    match scenario {
        "idle" | "idle_deflate" => &[
            "sockets",
            "users",
            "mem_kb_per_socket",
            "mem_kb_per_socket_hibernated",
            "rss_base_mb",
            "rss_mb",
            "rss_hibernated_mb",
            "cpu_ms_per_connect",
            "connects_per_s",
        ],
        "throughput" | "throughput50" => &[
            "sockets",
            "publishes",
            "publishes_per_s",
            "deliveries_per_s",
            "p50_ms",
            "p99_ms",
            "cpu_ms_per_publish",
            "cpu_us_per_delivery",
            "server_cpu_util",
        ],
        _ => &[
            "sockets",
            "publishes",
            "p50_ms",
            "p99_ms",
            "delivery_p50_ms",
            "delivery_p99_ms",
            "last_delivery_p99_ms",
            "publishes_per_s",
            "deliveries_per_s",
            "cpu_ms_per_publish",
            "cpu_us_per_delivery",
            "cpu_ms_per_connect",
            // Only the deflate scenarios report these (bench/deflate.mjs): what compression saved.
            "wire_bytes_per_delivery",
            "envelope_bytes_per_delivery",
        ],
    }
}

pub fn brief(m: &Metrics) -> String {
    let keys = ["p50_ms", "p99_ms", "publishes_per_s", "cpu_ms_per_publish", "mem_kb_per_socket", "errors"];
    keys.iter().filter_map(|k| m.get(*k).map(|v| format!("{k}={}", fmt(*v)))).collect::<Vec<_>>().join(" ")
}

fn fmt(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn num(v: f64) -> Value {
    if v.is_finite() {
        json!((v * 1000.0).round() / 1000.0)
    } else {
        Value::Null
    }
}

pub fn summarize(
    config: &Config,
    results: &BTreeMap<String, BTreeMap<String, Vec<Metrics>>>,
    extra: Option<Value>,
    errors: u64,
    error_samples: &[String],
    elapsed: Duration,
) -> Value {
    let mut scenarios = Vec::new();
    let mut medians: BTreeMap<(String, String), Metrics> = BTreeMap::new();
    for name in &config.scenarios {
        let Some(by_server) = results.get(name) else { continue };
        let mut entry = Map::new();
        entry.insert("scenario".into(), json!(name));
        for (server, runs) in by_server {
            let mut keys: Vec<&String> = runs.iter().flat_map(|m| m.keys()).collect();
            keys.sort();
            keys.dedup();
            let mut med = Metrics::new();
            for k in keys {
                med.insert(k.clone(), median(runs.iter().filter_map(|m| m.get(k).copied()).collect()));
            }
            entry.insert(server.clone(), Value::Object(med.iter().map(|(k, v)| (k.clone(), num(*v))).collect()));
            entry.insert(
                format!("{server}_runs"),
                Value::Array(
                    runs.iter().map(|m| Value::Object(m.iter().map(|(k, v)| (k.clone(), num(*v))).collect())).collect(),
                ),
            );
            medians.insert((name.clone(), server.clone()), med);
        }
        if let (Some(a), Some(b)) = (medians.get(&(name.clone(), SB.into())), medians.get(&(name.clone(), REF.into())))
        {
            let ratio: Map<String, Value> =
                a.iter().filter_map(|(k, v)| b.get(k).map(|r| (k.clone(), num(v / r)))).collect();
            entry.insert("ratio".into(), Value::Object(ratio));
        }
        scenarios.push(Value::Object(entry));
    }

    let get = |s: &str, server: &str, k: &str| {
        medians.get(&(s.to_string(), server.to_string())).and_then(|m| m.get(k)).copied()
    };
    let ratio = |s: &str, k: &str| match (get(s, SB, k), get(s, REF, k)) {
        (Some(a), Some(b)) if b != 0.0 => Some(a / b),
        _ => None,
    };
    let mut budget = Vec::new();
    let mut line = |what: String, value: Option<f64>, limit: f64, at_most: bool| {
        let holds = value.map(|v| if at_most { v <= limit } else { v >= limit });
        budget.push(json!({
            "line": what, "value": value.map(num), "limit": limit,
            "holds": holds,
        }));
    };
    let has = |s: &str| medians.contains_key(&(s.to_string(), SB.to_string()));
    // Issue 12's targets ("What to reach"), reported, not enforced: CPU per publish at most the
    // reference's (1.3x at 512 KiB), with and without permessage-deflate.
    for s in [
        "rtt",
        "fanout100",
        "fanout1000",
        "throughput",
        "throughput50",
        "payload1k",
        "payload64k",
        "payload512k",
        "rtt_deflate",
        "fanout100_deflate",
    ] {
        let limit = if s == "payload512k" { 1.3 } else { 1.0 };
        if has(s) {
            line(
                format!("{s}: server CPU per publish <= {limit}x reference"),
                ratio(s, "cpu_ms_per_publish"),
                limit,
                true,
            );
        }
    }
    if has("throughput50") {
        line(
            "throughput50: publishes/s >= 1.0x reference".into(),
            ratio("throughput50", "publishes_per_s"),
            1.0,
            false,
        );
        line("throughput50: publish p50 <= 1.1x reference".into(), ratio("throughput50", "p50_ms"), 1.1, true);
    }
    for s in ["idle", "idle_deflate"] {
        if has(s) {
            line(
                format!("{s}: server CPU per WebSocket connect <= 1.1x reference"),
                ratio(s, "cpu_ms_per_connect"),
                1.1,
                true,
            );
            line(format!("{s}: memory per idle socket <= 1.05x reference"), ratio(s, "mem_kb_per_socket"), 1.05, true);
        }
    }
    // Switchboard only (the reference has no channels): an absolute figure, CPU per member delivery.
    for s in ["channel100", "channel2000"] {
        if has(s) {
            let ms = get(s, SB, "cpu_us_per_delivery").map(|us| us / 1000.0);
            line(format!("{s}: server CPU per member delivery <= 0.25 ms"), ms, 0.25, true);
        }
    }
    let cold = |server: &str| {
        extra.as_ref().and_then(|e| e.pointer(&format!("/coldstart/{server}/first_connect_ms"))).and_then(Value::as_f64)
    };
    if let (Some(a), Some(b)) = (cold(SB), cold(REF)) {
        let r = (b > 0.0).then(|| a / b);
        line("cold start: first connect + welcome on a fresh workerd <= 1.2x reference".into(), r, 1.2, true);
    }
    // The earlier budget (README "Benchmarks": every latency line <= 1.1x, throughput >= 0.9x).
    for s in ["rtt", "fanout100", "fanout1000", "throughput", "payload1k", "payload64k", "payload512k"] {
        if has(s) {
            line(format!("{s}: publish p99 <= 1.1x reference"), ratio(s, "p99_ms"), 1.1, true);
        }
    }
    if has("throughput") {
        line("throughput: publishes/s >= 0.9x reference".into(), ratio("throughput", "publishes_per_s"), 0.9, false);
    }
    if let Some(gz) = extra.as_ref().and_then(|e| e.pointer("/wasm/gzip_bytes")).and_then(Value::as_f64) {
        // Issue 12's target (reported), and the budget a run fails on (scripts/test.sh enforces the
        // same): 350 KB since issue 15's presence, event shards and metrics.
        line("release wasm gzip <= 300 KB (issue 12's target), in KB".into(), Some(gz / 1000.0), 300.0, true);
        line("release wasm gzip <= 350 KB (350,000 bytes, enforced), in KB".into(), Some(gz / 1000.0), 350.0, true);
    }

    json!({
        "mode": if config.smoke { "smoke" } else if config.quick { "quick" } else { "full" },
        "runs": config.runs,
        "statistic": "median over runs",
        "generated_at_unix": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "elapsed_s": num(elapsed.as_secs_f64()),
        "config": {
            "rtt_n": config.rtt_n, "fanout_small": [config.fanout_small_sockets, config.fanout_small_n],
            "fanout_large": [config.fanout_large_sockets, config.fanout_large_n],
            "throughput": {"users": config.tp_users, "publishers": config.tp_publishers, "publishes": config.tp_n},
            "idle": {"sockets": config.idle_sockets, "per_user": config.idle_per_user, "hibernate_s": config.idle_hibernate_s},
            "payload_n": [config.payload_1k_n, config.payload_64k_n, config.payload_512k_n],
            "groups": {"small_n": config.group_small_n, "large_n": config.group_large_n, "timeout_ms": config.group_timeout_ms},
            "warm": config.warm,
            // `run.sh --against DIR`: the "reference" columns are the Switchboard build in DIR.
            "against": std::env::var("SWITCHBOARD_BENCH_AGAINST_FROM").ok(),
            // `BENCH_BUILD_DIR=DIR bash bench/run.sh`: the "switchboard" columns are the build in DIR
            // (an older build, or the Rust floor in bench/floor/build).
            "build": std::env::var("SWITCHBOARD_BENCH_BUILD_FROM").ok(),
        },
        "extra": extra.unwrap_or(Value::Null),
        "scenarios": scenarios,
        "budget": budget,
        "errors": errors,
        "error_samples": error_samples,
    })
}

/// The release wasm's gzip size in bytes, when the run measured it.
pub fn wasm_gzip_bytes(summary: &Value) -> Option<f64> {
    summary.pointer("/extra/wasm/gzip_bytes").and_then(Value::as_f64)
}

/// The wasm size budget line, if it was measured and fails.
pub fn failed_size_budget(summary: &Value) -> Option<String> {
    summary["budget"].as_array()?.iter().find_map(|b| {
        let line = b["line"].as_str()?;
        (line.starts_with("release wasm gzip <= 350 KB") && b["holds"].as_bool() == Some(false))
            .then(|| format!("{line}: {}", b["value"]))
    })
}

pub fn print(summary: &Value) {
    let empty = vec![];
    let scenarios = summary["scenarios"].as_array().unwrap_or(&empty);
    println!();
    println!(
        "Switchboard vs reference: {} mode, median of {} run(s)",
        summary["mode"].as_str().unwrap_or("?"),
        summary["runs"]
    );
    if let Some(dir) = summary["config"]["build"].as_str() {
        println!("The \"switchboard\" columns are the build in {dir}.");
    }
    if let Some(dir) = summary["config"]["against"].as_str() {
        println!("A/B run: the \"reference\" columns are the Switchboard build in {dir}, and the budget lines");
        println!("below compare the two builds, not Switchboard with the reference Worker.");
    }
    println!();
    println!("| scenario | metric | switchboard | reference | ratio |");
    println!("|---|---|---:|---:|---:|");
    for s in scenarios {
        let name = s["scenario"].as_str().unwrap_or("?");
        for k in shown(name) {
            let a = s[SB][*k].as_f64();
            let b = s[REF][*k].as_f64();
            if a.is_none() && b.is_none() {
                continue;
            }
            let r = s["ratio"][*k].as_f64();
            let f = |v: Option<f64>| v.map(fmt).unwrap_or_else(|| "-".into());
            let ratio = if matches!(*k, "sockets" | "publishes" | "users") { "".into() } else { f(r) };
            println!("| {name} | {k} | {} | {} | {ratio} |", f(a), f(b));
        }
    }
    if let Some(extra) = summary["extra"].as_object() {
        println!();
        if let Some(w) = extra.get("wasm") {
            println!(
                "release wasm: {} bytes raw, {} bytes gzip (-9); whole upload (index.js + wasm) gzip {} bytes",
                w["raw_bytes"], w["gzip_bytes"], w["bundle_gzip_bytes"]
            );
        }
        if let Some(cs) = extra.get("coldstart").and_then(Value::as_object) {
            for (server, v) in cs {
                println!(
                    "cold start {server}: workerd up (isolate + modules compiled) {} ms, first request {} ms, first connect+welcome {} ms (median of {})",
                    v["ready_ms"], v["first_request_ms"], v["first_connect_ms"], v["samples"]
                );
            }
        }
    }
    println!();
    println!("Budget:");
    for b in summary["budget"].as_array().unwrap_or(&empty) {
        let mark = match b["holds"].as_bool() {
            Some(true) => "HOLDS",
            Some(false) => "FAILS",
            None => "n/a  ",
        };
        println!("  [{mark}] {} (value {}, limit {})", b["line"].as_str().unwrap_or(""), b["value"], b["limit"]);
    }
    println!();
    for s in scenarios {
        let line = json!({
            "scenario": s["scenario"], SB: s[SB], REF: s[REF], "ratio": s["ratio"],
        });
        println!("{line}");
    }
    println!("errors: {}", summary["errors"]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(pairs: &[(&str, f64)]) -> Metrics {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    /// One run of every scenario: Switchboard at `factor` times the reference on every metric.
    fn results(factor: f64) -> BTreeMap<String, BTreeMap<String, Vec<Metrics>>> {
        let base = [
            ("cpu_ms_per_publish", 2.0),
            ("publishes_per_s", 100.0),
            ("p50_ms", 4.0),
            ("p99_ms", 8.0),
            ("cpu_ms_per_connect", 1.0),
            ("mem_kb_per_socket", 200.0),
            ("cpu_us_per_delivery", 200.0),
        ];
        let mut out = BTreeMap::new();
        for s in crate::ALL_SCENARIOS {
            let mut by_server = BTreeMap::new();
            let sb: Vec<(&str, f64)> = base.iter().map(|(k, v)| (*k, v * factor)).collect();
            by_server.insert(SB.to_string(), vec![metrics(&sb)]);
            if !crate::scenarios::switchboard_only(s) {
                by_server.insert(REF.to_string(), vec![metrics(&base)]);
            }
            out.insert(s.to_string(), by_server);
        }
        out
    }

    fn lines(summary: &Value) -> BTreeMap<String, (f64, bool)> {
        summary["budget"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                let line = b["line"].as_str().unwrap().to_string();
                (line, (b["limit"].as_f64().unwrap(), b["holds"].as_bool().unwrap()))
            })
            .collect()
    }

    #[test]
    fn every_issue_12_target_is_a_budget_line_with_the_issues_limit() {
        let config = Config::new(false);
        let extra = json!({
            "wasm": {"gzip_bytes": 290000.0},
            "coldstart": {"switchboard": {"first_connect_ms": 11.0}, "reference": {"first_connect_ms": 10.0}},
        });
        // Switchboard 1.08x the reference everywhere: the 1.0x lines fail, the 1.1x/1.2x lines hold.
        let s = summarize(&config, &results(1.08), Some(extra), 0, &[], Duration::ZERO);
        let got = lines(&s);
        let want: &[(&str, f64, bool)] = &[
            ("rtt: server CPU per publish <= 1x reference", 1.0, false),
            ("fanout100: server CPU per publish <= 1x reference", 1.0, false),
            ("fanout1000: server CPU per publish <= 1x reference", 1.0, false),
            ("throughput: server CPU per publish <= 1x reference", 1.0, false),
            ("throughput50: server CPU per publish <= 1x reference", 1.0, false),
            ("payload1k: server CPU per publish <= 1x reference", 1.0, false),
            ("payload64k: server CPU per publish <= 1x reference", 1.0, false),
            ("payload512k: server CPU per publish <= 1.3x reference", 1.3, true),
            ("rtt_deflate: server CPU per publish <= 1x reference", 1.0, false),
            ("fanout100_deflate: server CPU per publish <= 1x reference", 1.0, false),
            ("throughput50: publishes/s >= 1.0x reference", 1.0, true),
            ("throughput50: publish p50 <= 1.1x reference", 1.1, true),
            ("idle: server CPU per WebSocket connect <= 1.1x reference", 1.1, true),
            ("idle: memory per idle socket <= 1.05x reference", 1.05, false),
            ("idle_deflate: server CPU per WebSocket connect <= 1.1x reference", 1.1, true),
            ("idle_deflate: memory per idle socket <= 1.05x reference", 1.05, false),
            // 200 µs * 1.08 = 0.216 ms per member delivery.
            ("channel100: server CPU per member delivery <= 0.25 ms", 0.25, true),
            ("channel2000: server CPU per member delivery <= 0.25 ms", 0.25, true),
            ("cold start: first connect + welcome on a fresh workerd <= 1.2x reference", 1.2, true),
            ("release wasm gzip <= 300 KB (issue 12's target), in KB", 300.0, true),
            ("release wasm gzip <= 350 KB (350,000 bytes, enforced), in KB", 350.0, true),
        ];
        for (line, limit, holds) in want {
            assert_eq!(got.get(*line), Some(&(*limit, *holds)), "{line}");
        }
        // throughput50's rate is the reference's times 1.08 here: a rate line must count higher as better.
        let slow = summarize(&config, &results(0.95), None, 0, &[], Duration::ZERO);
        assert_eq!(lines(&slow)["throughput50: publishes/s >= 1.0x reference"], (1.0, false));
        assert_eq!(lines(&slow)["rtt: server CPU per publish <= 1x reference"], (1.0, true));
        // A channel at 0.3 ms per member delivery fails its line.
        let heavy = summarize(&config, &results(1.5), None, 0, &[], Duration::ZERO);
        assert_eq!(lines(&heavy)["channel2000: server CPU per member delivery <= 0.25 ms"], (0.25, false));
        assert!(failed_size_budget(&heavy).is_none(), "no wasm measured, nothing to fail");
    }

    #[test]
    fn the_deflate_scenarios_are_in_the_default_set() {
        let c = Config::new(false);
        for s in ["rtt_deflate", "fanout100_deflate", "idle_deflate", "throughput50", "fanout1000", "channel2000"] {
            assert!(c.scenarios.iter().any(|x| x == s), "{s}");
        }
        assert!(Config::smoke().scenarios.iter().any(|x| x == "rtt_deflate"));
    }
}
