//! The scenarios. Each connects its sockets, warms up, then measures a fixed number of publishes
//! (or, for `idle`, a fixed number of sockets) against one server, checking every answer.

use crate::proto::{self, Delivery, Http, Socket};
use crate::servers::{cpu_ns, rss_kb, Server};
use crate::{Config, Metrics};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

pub struct Outcome {
    pub metrics: Metrics,
    pub errors: u64,
    pub error_samples: Vec<String>,
}

impl Outcome {
    pub fn failed(msg: &str) -> Outcome {
        let mut metrics = Metrics::new();
        metrics.insert("errors".into(), 1.0);
        Outcome { metrics, errors: 1, error_samples: vec![msg.to_string()] }
    }
}

#[derive(Default)]
struct Errors {
    count: u64,
    samples: Vec<String>,
}

impl Errors {
    fn add(&mut self, e: impl Into<String>) {
        self.count += 1;
        if self.samples.len() < 10 {
            self.samples.push(e.into());
        }
    }
}

/// `--warm N`: N sequential publishes to a user of its own with one acking socket, checked like
/// any other, before the scenario is measured on the same server (see `Config::warm`).
pub async fn warm(server: &Server, c: &Config, run: usize) -> Outcome {
    sequential(server, c, &format!("warm-r{run}"), 1, c.warm, 0).await
}

pub async fn run(name: &str, server: &Server, c: &Config, run: usize) -> Outcome {
    let tag = format!("r{run}");
    match name {
        "rtt" => sequential(server, c, &format!("rtt-{tag}"), 1, c.rtt_n, 0).await,
        "fanout100" => sequential(server, c, &format!("fan-{tag}"), c.fanout_small_sockets, c.fanout_small_n, 0).await,
        "fanout1000" => sequential(server, c, &format!("fan-{tag}"), c.fanout_large_sockets, c.fanout_large_n, 0).await,
        "payload1k" => sequential(server, c, &format!("pl-{tag}"), 1, c.payload_1k_n, 1024).await,
        "payload64k" => sequential(server, c, &format!("pl-{tag}"), 1, c.payload_64k_n, 64 * 1024).await,
        "payload512k" => sequential(server, c, &format!("pl-{tag}"), 1, c.payload_512k_n, 512 * 1024).await,
        "throughput" => throughput(server, c, &tag, c.tp_users).await,
        // The issue-12 shape: fewer users than publishers' backlog, so publishes to one user overlap.
        "throughput50" => throughput(server, c, &format!("{tag}-50"), 50).await,
        "idle" => idle(server, c, &tag).await,
        "channel100" => group(server, c, &format!("ch-{tag}"), 100, c.group_small_n, true, false).await,
        "channel100_presence" => group(server, c, &format!("chp-{tag}"), 100, c.group_small_n, true, true).await,
        "channel2000" => group(server, c, &format!("ch-{tag}"), 2000, c.group_large_n, true, false).await,
        "users100" => group(server, c, &format!("us-{tag}"), 100, c.group_small_n, false, false).await,
        "users2000" => group(server, c, &format!("us-{tag}"), 2000, c.group_large_n, false, false).await,
        // The same shapes with permessage-deflate negotiated, through the Node driver (bench/deflate.mjs).
        "rtt_deflate" => {
            let n = c.rtt_n.to_string();
            deflate(server, &["sequential", "--user", &format!("rttz-{tag}"), "--sockets", "1", "--n", &n]).await
        }
        "fanout100_deflate" => {
            let (s, n) = (c.fanout_small_sockets.to_string(), c.fanout_small_n.to_string());
            deflate(server, &["sequential", "--user", &format!("fanz-{tag}"), "--sockets", &s, "--n", &n]).await
        }
        "idle_deflate" => {
            let (s, per, h) = (c.idle_sockets.to_string(), c.idle_per_user.to_string(), c.idle_hibernate_s.to_string());
            let user = format!("idlez-{tag}");
            let cc = c.connect_concurrency.to_string();
            deflate(
                server,
                &[
                    "idle",
                    "--user",
                    &user,
                    "--sockets",
                    &s,
                    "--per-user",
                    &per,
                    "--hibernate-s",
                    &h,
                    "--concurrency",
                    &cc,
                ],
            )
            .await
        }
        other => Outcome::failed(&format!("unknown scenario {other}")),
    }
}

/// Connects `users[i].1` sockets for each user `users[i].0`, `concurrency` at a time. Socket
/// numbers are global and consecutive in the order of `users`.
async fn connect_many(
    server: &Server,
    users: &[(String, usize)],
    channel: Option<&str>,
    presence: bool,
    concurrency: usize,
    deliveries: Option<mpsc::UnboundedSender<Delivery>>,
    shutdown: &watch::Receiver<bool>,
) -> Result<Vec<(usize, Socket)>, String> {
    let host = server.host_port();
    let mut jobs = Vec::new();
    let mut number = 0u64;
    for (u, (user, count)) in users.iter().enumerate() {
        for _ in 0..*count {
            jobs.push((u, user.clone(), number));
            number += 1;
        }
    }
    let results: Vec<Result<(usize, Socket), String>> = futures_util::stream::iter(jobs)
        .map(|(u, user, n)| {
            let (host, secret, d, s) = (host.clone(), server.secret.clone(), deliveries.clone(), shutdown.clone());
            let channel = channel.map(str::to_string);
            async move {
                proto::connect(&host, &secret, &user, n, channel.as_deref(), presence, d, s).await.map(|sock| (u, sock))
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut out = Vec::with_capacity(results.len());
    for r in results {
        out.push(r?);
    }
    out.sort_by_key(|(_, s)| s.number);
    Ok(out)
}

async fn close_all(sockets: Vec<(usize, Socket)>, shutdown: watch::Sender<bool>) {
    let _ = shutdown.send(true);
    for (_, s) in sockets {
        let _ = tokio::time::timeout(Duration::from_secs(2), s.task).await;
    }
}

/// Every socket must have received exactly `total` envelopes and nothing unexpected.
fn check_sockets(socks: &[(usize, Socket)], total: u64, errors: &mut Errors) {
    for (_, s) in socks {
        let got = s.received.load(Ordering::Relaxed);
        if got != total {
            errors.add(format!("socket {} received {got} envelopes, expected {total}", s.number));
        }
        if s.unexpected.load(Ordering::Relaxed) > 0 {
            errors.add(format!("socket {} saw unexpected frames or closed", s.number));
        }
    }
}

/// The metrics every publishing scenario reports, from its measured phase.
struct Phase {
    sockets: usize,
    publishes: usize,
    elapsed: f64,
    cpu_ns: u64,
    connect_s: f64,
    cpu_connect_ns: u64,
}

fn phase_metrics(p: &Phase, errors: &Errors) -> Metrics {
    let mut m = Metrics::new();
    let deliveries = (p.publishes * p.sockets) as f64;
    m.insert("sockets".into(), p.sockets as f64);
    m.insert("publishes".into(), p.publishes as f64);
    m.insert("elapsed_s".into(), p.elapsed);
    m.insert("publishes_per_s".into(), p.publishes as f64 / p.elapsed);
    m.insert("deliveries_per_s".into(), deliveries / p.elapsed);
    m.insert("cpu_ms_per_publish".into(), p.cpu_ns as f64 / 1e6 / p.publishes as f64);
    m.insert("cpu_us_per_delivery".into(), p.cpu_ns as f64 / 1e3 / deliveries);
    m.insert("server_cpu_util".into(), p.cpu_ns as f64 / 1e9 / p.elapsed);
    m.insert("connect_s".into(), p.connect_s);
    m.insert("cpu_ms_per_connect".into(), p.cpu_connect_ns as f64 / 1e6 / p.sockets as f64);
    m.insert("errors".into(), errors.count as f64);
    m
}

fn body(user: &str, i: usize, pad: &str) -> Vec<u8> {
    format!(r#"{{"userId":"{user}","type":"bench","payload":{{"n":{i},"pad":"{pad}"}},"timeoutMs":5000}}"#).into_bytes()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn latency_metrics(m: &mut Metrics, prefix: &str, mut v: Vec<f64>) {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return;
    }
    m.insert(format!("{prefix}p50_ms"), percentile(&v, 50.0));
    m.insert(format!("{prefix}p99_ms"), percentile(&v, 99.0));
    m.insert(format!("{prefix}mean_ms"), v.iter().sum::<f64>() / v.len() as f64);
    m.insert(format!("{prefix}max_ms"), v[v.len() - 1]);
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One user, `sockets` sockets, `n` sequential publishes (after a warm-up) of a payload padded to
/// about `pad_bytes`.
async fn sequential(server: &Server, c: &Config, user: &str, sockets: usize, n: usize, pad_bytes: usize) -> Outcome {
    let mut errors = Errors::default();
    let (tx, mut rx) = mpsc::unbounded_channel::<Delivery>();
    let (stop_tx, stop_rx) = watch::channel(false);
    let cpu_c0 = cpu_ns(server.pid);
    let t_c = Instant::now();
    let socks = match connect_many(
        server,
        &[(user.to_string(), sockets)],
        None,
        false,
        c.connect_concurrency,
        Some(tx),
        &stop_rx,
    )
    .await
    {
        Ok(s) => s,
        Err(e) => return Outcome::failed(&e),
    };
    let connect_s = t_c.elapsed().as_secs_f64();
    let cpu_connect = cpu_ns(server.pid) - cpu_c0;
    let expected: HashMap<String, u64> = socks.iter().map(|(_, s)| (s.connection_id.clone(), s.number)).collect();
    let pad = "x".repeat(pad_bytes.saturating_sub(20));
    let warmup = (n / 10).clamp(5, 100);
    let mut http = Http::new(&server.host_port(), &proto::publish_token(&server.secret));
    let mut lat = Vec::with_capacity(n);
    let mut dlat = Vec::with_capacity(n * sockets);
    let mut dlast = Vec::with_capacity(n);
    let (mut cpu0, mut t0) = (cpu_ns(server.pid), Instant::now());
    for i in 0..warmup + n {
        if i == warmup {
            cpu0 = cpu_ns(server.pid);
            t0 = Instant::now();
        }
        let b = body(user, i, &pad);
        let sent = Instant::now();
        let r = http.publish(&b).await;
        let took = sent.elapsed();
        let resp = match r.and_then(|(status, body)| proto::check_response(status, &body, &expected)) {
            Ok(resp) => resp,
            Err(e) => {
                errors.add(format!("publish {i}: {e}"));
                // Drop whatever was delivered for it.
                tokio::time::sleep(Duration::from_millis(50)).await;
                while rx.try_recv().is_ok() {}
                continue;
            }
        };
        // Every socket recorded its delivery before acking, so all are already queued.
        let mut got = 0;
        let mut last = Duration::ZERO;
        while got < resp.client_count {
            match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
                Ok(Some(d)) if d.envelope_id == resp.envelope_id => {
                    got += 1;
                    let dl = d.at.saturating_duration_since(sent);
                    last = last.max(dl);
                    if i >= warmup {
                        dlat.push(ms(dl));
                    }
                }
                Ok(Some(d)) => errors.add(format!("publish {i}: stray delivery of {}", d.envelope_id)),
                _ => {
                    errors.add(format!("publish {i}: only {got} of {} deliveries seen", resp.client_count));
                    break;
                }
            }
        }
        if i >= warmup {
            lat.push(ms(took));
            dlast.push(ms(last));
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = cpu_ns(server.pid) - cpu0;
    let total = (warmup + n) as u64;
    check_sockets(&socks, total, &mut errors);
    close_all(socks, stop_tx).await;
    let phase = Phase { sockets, publishes: n, elapsed, cpu_ns: cpu, connect_s, cpu_connect_ns: cpu_connect };
    let mut m = phase_metrics(&phase, &errors);
    m.insert("payload_bytes".into(), pad_bytes as f64);
    latency_metrics(&mut m, "", lat);
    latency_metrics(&mut m, "delivery_", dlat);
    latency_metrics(&mut m, "last_delivery_", dlast);
    Outcome { metrics: m, errors: errors.count, error_samples: errors.samples }
}

/// Many users with 1-4 sockets each; `tp_publishers` concurrent publishers, round-robin over users.
async fn throughput(server: &Server, c: &Config, tag: &str, n_users: usize) -> Outcome {
    let mut errors = Errors::default();
    let (stop_tx, stop_rx) = watch::channel(false);
    let users: Vec<(String, usize)> = (0..n_users).map(|u| (format!("tp-{tag}-{u}"), 1 + u % 4)).collect();
    let t_c = Instant::now();
    let socks = match connect_many(server, &users, None, false, c.connect_concurrency, None, &stop_rx).await {
        Ok(s) => s,
        Err(e) => return Outcome::failed(&e),
    };
    let connect_s = t_c.elapsed().as_secs_f64();
    let mut expected: Vec<HashMap<String, u64>> = vec![HashMap::new(); users.len()];
    for (u, s) in &socks {
        expected[*u].insert(s.connection_id.clone(), s.number);
    }
    let expected = Arc::new(expected);
    let token = proto::publish_token(&server.secret);
    let host = server.host_port();
    let n_users = users.len();
    let user_names: Arc<Vec<String>> = Arc::new(users.iter().map(|u| u.0.clone()).collect());
    // Warm-up (one publish per user, concurrently), then the measured phase.
    let phase = |count: usize, offset: usize| {
        let next = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..c.tp_publishers {
            let (next, expected, names, host, token) =
                (next.clone(), expected.clone(), user_names.clone(), host.clone(), token.clone());
            tasks.push(tokio::spawn(async move {
                let mut http = Http::new(&host, &token);
                let mut lat = Vec::new();
                let mut errs = Errors::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    let u = (i + offset) % n_users;
                    let b = body(&names[u], i, "");
                    let sent = Instant::now();
                    let r = http.publish(&b).await;
                    let took = sent.elapsed();
                    match r.and_then(|(status, body)| proto::check_response(status, &body, &expected[u])) {
                        Ok(_) => lat.push(ms(took)),
                        Err(e) => errs.add(format!("publish {i} to user {u}: {e}")),
                    }
                }
                (lat, errs)
            }));
        }
        tasks
    };
    let warm = n_users;
    for t in phase(warm, 0) {
        if let Ok((_, e)) = t.await {
            errors.count += e.count;
            errors.samples.extend(e.samples);
        }
    }
    let cpu0 = cpu_ns(server.pid);
    let t0 = Instant::now();
    let mut lat = Vec::new();
    for t in phase(c.tp_n, 0) {
        match t.await {
            Ok((l, e)) => {
                lat.extend(l);
                errors.count += e.count;
                errors.samples.extend(e.samples);
            }
            Err(e) => errors.add(format!("publisher task failed: {e}")),
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = cpu_ns(server.pid) - cpu0;
    // Each socket must have seen one envelope per publish to its user.
    let mut per_user = vec![1u64; n_users]; // the warm-up
    for i in 0..c.tp_n {
        per_user[i % n_users] += 1;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut deliveries = 0u64;
    for (u, s) in &socks {
        let got = s.received.load(Ordering::Relaxed);
        deliveries += got;
        if got != per_user[*u] {
            errors.add(format!("socket {} of user {u} received {got}, expected {}", s.number, per_user[*u]));
        }
        if s.unexpected.load(Ordering::Relaxed) > 0 {
            errors.add(format!("socket {} saw unexpected frames or closed", s.number));
        }
    }
    let sockets = socks.len();
    close_all(socks, stop_tx).await;
    let measured_deliveries = deliveries.saturating_sub(sockets as u64);
    let mut m = Metrics::new();
    m.insert("users".into(), n_users as f64);
    m.insert("sockets".into(), sockets as f64);
    m.insert("publishers".into(), c.tp_publishers as f64);
    m.insert("publishes".into(), c.tp_n as f64);
    m.insert("elapsed_s".into(), elapsed);
    m.insert("publishes_per_s".into(), c.tp_n as f64 / elapsed);
    m.insert("deliveries_per_s".into(), measured_deliveries as f64 / elapsed);
    latency_metrics(&mut m, "", lat);
    m.insert("cpu_ms_per_publish".into(), cpu as f64 / 1e6 / c.tp_n as f64);
    m.insert("cpu_us_per_delivery".into(), cpu as f64 / 1e3 / measured_deliveries.max(1) as f64);
    m.insert("server_cpu_util".into(), cpu as f64 / 1e9 / elapsed);
    m.insert("connect_s".into(), connect_s);
    m.insert("errors".into(), errors.count as f64);
    Outcome { metrics: m, errors: errors.count, error_samples: errors.samples }
}

/// `idle_sockets` subscribed sockets over `idle_sockets / idle_per_user` users, then nothing: the
/// workerd process's RSS growth per socket.
async fn idle(server: &Server, c: &Config, tag: &str) -> Outcome {
    let mut errors = Errors::default();
    let (stop_tx, stop_rx) = watch::channel(false);
    let n_users = c.idle_sockets.div_ceil(c.idle_per_user).max(1);
    let users: Vec<(String, usize)> = (0..n_users)
        .map(|u| (format!("idle-{tag}-{u}"), c.idle_per_user.min(c.idle_sockets - u * c.idle_per_user)))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss0 = rss_kb(server.pid);
    let cpu0 = cpu_ns(server.pid);
    let t0 = Instant::now();
    let socks = match connect_many(server, &users, None, false, c.connect_concurrency, None, &stop_rx).await {
        Ok(s) => s,
        Err(e) => return Outcome::failed(&e),
    };
    let connect_s = t0.elapsed().as_secs_f64();
    let cpu = cpu_ns(server.pid) - cpu0;
    // Settle, then read RSS a few times and keep the last.
    let mut rss1 = 0;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        rss1 = rss_kb(server.pid);
    }
    // Then leave them alone until workerd has evicted the idle hubs (~10 s without events), and read
    // again: what an idle, hibernated user costs (the reading above is of hubs still in memory).
    let mut rss2 = None;
    if c.idle_hibernate_s > 0 {
        tokio::time::sleep(Duration::from_secs(c.idle_hibernate_s as u64)).await;
        rss2 = Some(rss_kb(server.pid));
    }
    // Still alive and answering? One publish to the first user.
    let expected: HashMap<String, u64> =
        socks.iter().filter(|(u, _)| *u == 0).map(|(_, s)| (s.connection_id.clone(), s.number)).collect();
    let mut http = Http::new(&server.host_port(), &proto::publish_token(&server.secret));
    if let Err(e) = http
        .publish(&body(&users[0].0, 0, ""))
        .await
        .and_then(|(status, body)| proto::check_response(status, &body, &expected))
    {
        errors.add(format!("publish after idle: {e}"));
    }
    for (_, s) in &socks {
        if s.unexpected.load(Ordering::Relaxed) > 0 {
            errors.add(format!("socket {} saw unexpected frames or closed", s.number));
        }
    }
    let sockets = socks.len();
    close_all(socks, stop_tx).await;
    let mut m = Metrics::new();
    m.insert("users".into(), n_users as f64);
    m.insert("sockets".into(), sockets as f64);
    m.insert("rss_base_mb".into(), rss0 as f64 / 1024.0);
    m.insert("rss_mb".into(), rss1 as f64 / 1024.0);
    m.insert("mem_kb_per_socket".into(), (rss1 as f64 - rss0 as f64) / sockets.max(1) as f64);
    if let Some(rss2) = rss2 {
        m.insert("rss_hibernated_mb".into(), rss2 as f64 / 1024.0);
        m.insert("mem_kb_per_socket_hibernated".into(), (rss2 as f64 - rss0 as f64) / sockets.max(1) as f64);
    }
    m.insert("connect_s".into(), connect_s);
    m.insert("connects_per_s".into(), sockets as f64 / connect_s);
    m.insert("cpu_ms_per_connect".into(), cpu as f64 / 1e6 / sockets.max(1) as f64);
    m.insert("errors".into(), errors.count as f64);
    Outcome { metrics: m, errors: errors.count, error_samples: errors.samples }
}

/// Scenarios that only Switchboard can run (the reference has no channels or `userIds`).
pub fn switchboard_only(name: &str) -> bool {
    name.starts_with("channel") || name.starts_with("users")
}

/// `users` users with one socket each; `n` sequential publishes that reach all of them, either to
/// a channel they all joined (`via_channel`) or with `userIds` naming them all (the only way to
/// reach a group before channels). Every answer must count every user and every ack.
/// `presence`: the channel's members join with `presence: true` (they watch, and get presence batches).
async fn group(
    server: &Server,
    c: &Config,
    tag: &str,
    users: usize,
    n: usize,
    via_channel: bool,
    presence: bool,
) -> Outcome {
    let mut errors = Errors::default();
    let (tx, mut rx) = mpsc::unbounded_channel::<Delivery>();
    let (stop_tx, stop_rx) = watch::channel(false);
    let channel = format!("bench:{tag}");
    let names: Vec<(String, usize)> = (0..users).map(|u| (format!("{tag}-g{u}"), 1)).collect();
    let cpu_c0 = cpu_ns(server.pid);
    let t_c = Instant::now();
    let join = via_channel.then_some(channel.as_str());
    let socks = match connect_many(server, &names, join, presence, c.connect_concurrency, Some(tx), &stop_rx).await {
        Ok(s) => s,
        Err(e) => return Outcome::failed(&e),
    };
    let connect_s = t_c.elapsed().as_secs_f64();
    let cpu_connect = cpu_ns(server.pid) - cpu_c0;
    let target = if via_channel {
        format!(r#""channel":{}"#, serde_json::json!(channel))
    } else {
        format!(r#""userIds":{}"#, serde_json::json!(names.iter().map(|u| &u.0).collect::<Vec<_>>()))
    };
    let warmup = (n / 10).clamp(2, 10);
    let mut http = Http::new(&server.host_port(), &proto::publish_token(&server.secret));
    let (mut lat, mut dlast) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut cpu0, mut t0) = (cpu_ns(server.pid), Instant::now());
    for i in 0..warmup + n {
        if i == warmup {
            cpu0 = cpu_ns(server.pid);
            t0 = Instant::now();
        }
        let body = format!(r#"{{{target},"type":"bench","payload":{{"n":{i}}},"timeoutMs":{}}}"#, c.group_timeout_ms);
        let sent = Instant::now();
        let r = http.publish(body.as_bytes()).await;
        let took = sent.elapsed();
        let checked = r.and_then(|(status, body)| {
            if status != 200 {
                return Err(format!("status {status}: {}", String::from_utf8_lossy(&body[..body.len().min(300)])));
            }
            let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| format!("bad json: {e}"))?;
            let t = &v["totals"];
            let want = users as u64;
            if t["users"] != want || t["failed"] != 0 || t["clientCount"] != want || t["acked"] != want {
                // The answer lists failures first: the first one says why (a relay's or a user's error).
                let first: String =
                    v["users"].get(0).map(|u| u.to_string()).unwrap_or_default().chars().take(400).collect();
                return Err(format!("totals {t} (expected {users} users, all acked); first of users: {first}"));
            }
            Ok(())
        });
        if let Err(e) = checked {
            errors.add(format!("publish {i}: {e}"));
            tokio::time::sleep(Duration::from_millis(200)).await;
            while rx.try_recv().is_ok() {}
            continue;
        }
        // Every socket recorded its delivery before acking, so all are already queued.
        let mut last = Duration::ZERO;
        for got in 0..users {
            match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
                Ok(Some(d)) => last = last.max(d.at.saturating_duration_since(sent)),
                _ => {
                    errors.add(format!("publish {i}: only {got} of {users} deliveries seen"));
                    break;
                }
            }
        }
        if i >= warmup {
            lat.push(ms(took));
            dlast.push(ms(last));
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = cpu_ns(server.pid) - cpu0;
    let total = (warmup + n) as u64;
    check_sockets(&socks, total, &mut errors);
    close_all(socks, stop_tx).await;
    let phase = Phase { sockets: users, publishes: n, elapsed, cpu_ns: cpu, connect_s, cpu_connect_ns: cpu_connect };
    let mut m = phase_metrics(&phase, &errors);
    latency_metrics(&mut m, "", lat);
    latency_metrics(&mut m, "last_delivery_", dlast);
    Outcome { metrics: m, errors: errors.count, error_samples: errors.samples }
}

/// Runs bench/deflate.mjs (`mode` first in `args`, then its flags) against `server` and reads its one
/// JSON line: the Rust WebSocket client has no permessage-deflate, `ws` has. The driver measures the
/// same metrics the same way (see its header); the child is killed if the scenario times out.
async fn deflate(server: &Server, args: &[&str]) -> Outcome {
    let node = std::env::var("BENCH_NODE").unwrap_or_else(|_| "node".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/deflate.mjs");
    let pid = server.pid.to_string();
    let child = tokio::process::Command::new(&node)
        .arg(script)
        .arg("--mode")
        .args(args)
        .args(["--url", &server.url, "--secret", &server.secret, "--pid", &pid])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .output()
        .await;
    let out = match child {
        Ok(o) => o,
        Err(e) => return Outcome::failed(&format!("{node} {script}: {e}")),
    };
    #[derive(serde::Deserialize)]
    struct Report {
        metrics: std::collections::BTreeMap<String, f64>,
        errors: u64,
        error_samples: Vec<String>,
    }
    let text = String::from_utf8_lossy(&out.stdout);
    match text.lines().last().map(serde_json::from_str::<Report>) {
        Some(Ok(r)) => Outcome { metrics: r.metrics, errors: r.errors, error_samples: r.error_samples },
        _ => Outcome::failed(&format!(
            "deflate.mjs exited with {} and said {:?}",
            out.status,
            &text[..text.len().min(300)]
        )),
    }
}
