//! Switchboard load generator. Runs each scenario against Switchboard and the reference Worker (both
//! started by `bench/serve.mjs` as separate workerd processes on 127.0.0.1), measures client-side
//! latency and the server process's CPU time and memory from /proc, and prints Switchboard/reference
//! ratios. Every count is bounded and every wait has a timeout, so it always stops by itself.
//!
//! See BENCHMARKS.md for the method. `switchboard-bench --help` lists the flags.

mod proto;
mod report;
mod scenarios;
mod servers;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Counts for every scenario. `--quick` and the defaults are full mode; any can be overridden by a
/// flag (`--rtt-n 500`) or an environment variable (`BENCH_RTT_N=500`).
#[derive(Clone, Debug)]
pub struct Config {
    pub quick: bool,
    /// `--smoke`: the CI smoke (a few hundred checked publishes, well under a minute).
    pub smoke: bool,
    pub runs: usize,
    pub scenarios: Vec<String>,
    pub servers: Vec<String>,
    pub out: Option<String>,
    pub extra: Option<String>,
    pub rtt_n: usize,
    pub fanout_small_sockets: usize,
    pub fanout_small_n: usize,
    pub fanout_large_sockets: usize,
    pub fanout_large_n: usize,
    pub tp_users: usize,
    pub tp_publishers: usize,
    pub tp_n: usize,
    pub idle_sockets: usize,
    pub idle_per_user: usize,
    /// Seconds to leave the idle sockets alone after the first RSS reading, so workerd evicts the
    /// idle hubs (~10 s), before a second reading; 0 skips it.
    pub idle_hibernate_s: usize,
    pub payload_1k_n: usize,
    pub payload_64k_n: usize,
    pub payload_512k_n: usize,
    pub connect_concurrency: usize,
    pub group_small_n: usize,
    pub group_large_n: usize,
    /// `timeoutMs` of the group publishes (`users*`, `channel*`). A channel relay must answer within
    /// it plus `HOP_GRACE_MS` per level, and on a loaded machine a 500-member relay takes longer than
    /// 5 s + 4 s; raise it there (it changes nothing when every ack comes in time).
    pub group_timeout_ms: usize,
    /// Publishes each fresh server handles before a scenario (`--warm N`, default 0): V8 compiles
    /// wasm with its baseline compiler first and moves a function to the optimizing one only after
    /// a budget of executions, so a short run measures Rust code partly unoptimized, while JS
    /// tiers up within a few hundred calls. A long-lived isolate runs optimized code; this measures
    /// that steady state, for both servers alike.
    pub warm: usize,
}

const ALL_SCENARIOS: &[&str] = &[
    "rtt",
    "fanout100",
    "fanout1000",
    "throughput",
    "throughput50",
    "idle",
    "payload1k",
    "payload64k",
    "payload512k",
    "users100",
    "channel100",
    "channel100_presence",
    "users2000",
    "channel2000",
    "rtt_deflate",
    "fanout100_deflate",
    "idle_deflate",
];

impl Config {
    fn new(quick: bool) -> Config {
        let f = !quick;
        let pick = |a: usize, b: usize| if f { a } else { b };
        Config {
            quick,
            smoke: false,
            runs: 1,
            scenarios: ALL_SCENARIOS.iter().map(|s| s.to_string()).collect(),
            servers: vec!["switchboard".into(), "reference".into()],
            out: None,
            extra: None,
            rtt_n: pick(5000, 300),
            fanout_small_sockets: 100,
            fanout_small_n: pick(500, 40),
            fanout_large_sockets: 1000,
            fanout_large_n: pick(100, 8),
            tp_users: pick(200, 50),
            tp_publishers: 16,
            tp_n: pick(10000, 800),
            idle_sockets: pick(5000, 500),
            idle_per_user: 10,
            idle_hibernate_s: pick(12, 0),
            payload_1k_n: pick(2000, 150),
            payload_64k_n: pick(600, 60),
            payload_512k_n: pick(150, 15),
            connect_concurrency: 32,
            group_small_n: pick(100, 10),
            group_large_n: pick(20, 3),
            group_timeout_ms: 5000,
            warm: 0,
        }
    }

    /// The CI smoke: every answer and delivery checked as always, on ~950 publishes (rtt 300,
    /// fanout100 40 x 100 sockets, throughput 300 over 20 users, channel100 10 x 100 members,
    /// rtt_deflate 300 through bench/deflate.mjs), one run, with the wasm size budget enforced. Not for
    /// figures: the counts are too small.
    fn smoke() -> Config {
        let mut c = Config::new(true);
        c.smoke = true;
        c.scenarios =
            ["rtt", "fanout100", "throughput", "channel100", "rtt_deflate"].iter().map(|s| s.to_string()).collect();
        c.rtt_n = 300;
        c.fanout_small_n = 40;
        c.tp_users = 20;
        c.tp_n = 300;
        c.group_small_n = 10;
        c
    }
}

const HELP: &str = "switchboard-bench [--quick | --smoke] [--runs N] [--scenarios a,b,...] [--servers switchboard,reference]
  [--out FILE] [--extra FILE] [--rtt-n N] [--fanout-small-sockets N] [--fanout-small-n N]
  [--fanout-large-sockets N] [--fanout-large-n N] [--tp-users N] [--tp-publishers N] [--tp-n N]
  [--idle-sockets N] [--idle-per-user N] [--idle-hibernate-s N] [--payload-1k-n N] [--payload-64k-n N] [--payload-512k-n N]
  [--connect-concurrency N] [--group-small-n N] [--group-large-n N] [--group-timeout-ms N] [--warm N]
Every numeric flag can also be set as BENCH_<NAME> (e.g. BENCH_RTT_N=500). Scenarios:
  rtt fanout100 fanout1000 throughput throughput50 idle payload1k payload64k payload512k
  users100 channel100 users2000 channel2000 (Switchboard only: a group via `userIds` vs a channel)
  rtt_deflate fanout100_deflate idle_deflate (rtt, fanout100 and idle with permessage-deflate negotiated,
  through bench/deflate.mjs; same counts as their plain scenarios)";

fn parse_args() -> Result<Config, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{HELP}");
        std::process::exit(0);
    }
    let quick = args.iter().any(|a| a == "--quick") || std::env::var("BENCH_QUICK").is_ok_and(|v| v == "1");
    let smoke = args.iter().any(|a| a == "--smoke") || std::env::var("BENCH_SMOKE").is_ok_and(|v| v == "1");
    let mut c = if smoke { Config::smoke() } else { Config::new(quick) };
    // Environment first, flags override.
    let mut pairs: Vec<(String, String)> = Vec::new();
    for (k, v) in std::env::vars() {
        if let Some(name) = k.strip_prefix("BENCH_") {
            pairs.push((name.to_ascii_lowercase().replace('_', "-"), v));
        }
    }
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a == "--quick" || a == "--smoke" {
            i += 1;
            continue;
        }
        let Some(name) = a.strip_prefix("--") else { return Err(format!("unexpected argument {a}\n{HELP}")) };
        let (name, value) = match name.split_once('=') {
            Some((n, v)) => (n.to_string(), v.to_string()),
            None => {
                i += 1;
                (name.to_string(), args.get(i).cloned().ok_or(format!("--{name} needs a value"))?)
            }
        };
        pairs.push((name, value));
        i += 1;
    }
    for (name, v) in pairs {
        let num = || v.parse::<usize>().map_err(|_| format!("--{name}: not a whole number: {v}"));
        match name.as_str() {
            "runs" => c.runs = num()?.max(1),
            "scenarios" => {
                c.scenarios = v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
                if let Some(bad) = c.scenarios.iter().find(|s| !ALL_SCENARIOS.contains(&s.as_str())) {
                    return Err(format!("unknown scenario {bad}"));
                }
            }
            "servers" => c.servers = v.split(',').map(|s| s.trim().to_string()).collect(),
            "out" => c.out = Some(v),
            "extra" => c.extra = Some(v),
            "rtt-n" => c.rtt_n = num()?,
            "fanout-small-sockets" => c.fanout_small_sockets = num()?,
            "fanout-small-n" => c.fanout_small_n = num()?,
            "fanout-large-sockets" => c.fanout_large_sockets = num()?,
            "fanout-large-n" => c.fanout_large_n = num()?,
            "tp-users" => c.tp_users = num()?.max(1),
            "tp-publishers" => c.tp_publishers = num()?.max(1),
            "tp-n" => c.tp_n = num()?,
            "idle-sockets" => c.idle_sockets = num()?,
            "idle-per-user" => c.idle_per_user = num()?.max(1),
            "idle-hibernate-s" => c.idle_hibernate_s = num()?,
            "payload-1k-n" => c.payload_1k_n = num()?,
            "payload-64k-n" => c.payload_64k_n = num()?,
            "payload-512k-n" => c.payload_512k_n = num()?,
            "connect-concurrency" => c.connect_concurrency = num()?.max(1),
            "group-small-n" => c.group_small_n = num()?,
            "group-large-n" => c.group_large_n = num()?,
            "group-timeout-ms" => c.group_timeout_ms = num()?,
            "warm" => c.warm = num()?,
            // Environment variables the scripts use for other things.
            "quick" | "smoke" | "no-build" | "coldstart-samples" | "node" | "serve-max-s" | "build-dir"
            | "show-stderr" | "timeout" => {}
            other => return Err(format!("unknown option --{other}\n{HELP}")),
        }
    }
    Ok(c)
}

pub type Metrics = BTreeMap<String, f64>;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let config = match parse_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let started = Instant::now();
    eprintln!(
        "[bench] mode={} runs={} scenarios={} servers={}",
        if config.smoke {
            "smoke"
        } else if config.quick {
            "quick"
        } else {
            "full"
        },
        config.runs,
        config.scenarios.join(","),
        config.servers.join(",")
    );
    // results[scenario][server] = one Metrics per run
    let mut results: BTreeMap<String, BTreeMap<String, Vec<Metrics>>> = BTreeMap::new();
    let mut total_errors = 0u64;
    let mut error_samples: Vec<String> = Vec::new();
    for run in 0..config.runs {
        for scenario in &config.scenarios {
            let servers = match servers::Servers::start(&config.servers).await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("[bench] could not start the servers: {e}");
                    std::process::exit(1);
                }
            };
            // Alternate which server goes first, so drift over a run cancels out.
            let mut order: Vec<&servers::Server> = servers.list.iter().collect();
            if run % 2 == 1 {
                order.reverse();
            }
            for server in order {
                // With `run.sh --against`, the reference's place holds another Switchboard build,
                // which runs every scenario.
                let ab = std::env::var_os("SWITCHBOARD_BENCH_AGAINST").is_some();
                if scenarios::switchboard_only(scenario) && server.name != "switchboard" && !ab {
                    continue;
                }
                if config.warm > 0 {
                    let warm = scenarios::warm(server, &config, run).await;
                    total_errors += warm.errors;
                    for e in warm.error_samples.iter().take(5) {
                        if error_samples.len() < 20 {
                            error_samples.push(format!("{scenario}/{} warm-up: {e}", server.name));
                        }
                    }
                }
                let t = Instant::now();
                let out =
                    tokio::time::timeout(Duration::from_secs(600), scenarios::run(scenario, server, &config, run))
                        .await
                        .unwrap_or_else(|_| scenarios::Outcome::failed("scenario timed out after 600 s"));
                total_errors += out.errors;
                for e in out.error_samples.iter().take(5) {
                    if error_samples.len() < 20 {
                        error_samples.push(format!("{scenario}/{}: {e}", server.name));
                    }
                }
                eprintln!(
                    "[bench] run {} {:<12} {:<11} {:>6.1}s  {}",
                    run + 1,
                    scenario,
                    server.name,
                    t.elapsed().as_secs_f64(),
                    report::brief(&out.metrics)
                );
                results.entry(scenario.clone()).or_default().entry(server.name.clone()).or_default().push(out.metrics);
            }
            servers.stop().await;
        }
    }
    let extra =
        config.extra.as_ref().and_then(|p| std::fs::read_to_string(p).ok()).and_then(|t| serde_json::from_str(&t).ok());
    let summary = report::summarize(&config, &results, extra, total_errors, &error_samples, started.elapsed());
    report::print(&summary);
    if let Some(out) = &config.out {
        if let Err(e) = std::fs::write(out, serde_json::to_string_pretty(&summary).unwrap_or_default() + "\n") {
            eprintln!("[bench] could not write {out}: {e}");
        }
    }
    if total_errors > 0 {
        eprintln!("[bench] {total_errors} error(s); first ones:");
        for e in &error_samples {
            eprintln!("  {e}");
        }
        std::process::exit(1);
    }
    // The size budget is a hard limit (README: Contributing), unlike the CPU and latency lines, which
    // are reported (they all fail today; see BENCHMARKS.md "Budget") but too noisy here to gate on.
    if let Some(failed) = report::failed_size_budget(&summary) {
        eprintln!("[bench] the wasm size budget fails: {failed}");
        std::process::exit(1);
    }
    if config.smoke && report::wasm_gzip_bytes(&summary).is_none() {
        eprintln!("[bench] smoke: no wasm size measured (run through bench/run.sh, which passes --extra)");
        std::process::exit(1);
    }
}
