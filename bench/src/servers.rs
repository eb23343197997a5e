//! Starting the servers under test (through `node bench/serve.mjs`) and reading their workerd
//! process's CPU time and memory from /proc.

use serde::Deserialize;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

#[derive(Deserialize, Clone, Debug)]
pub struct Server {
    pub name: String,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    pub secret: String,
    /// The server's own workerd process.
    pub pid: u32,
}

impl Server {
    pub fn host_port(&self) -> String {
        self.url.trim_start_matches("http://").trim_end_matches('/').to_string()
    }
}

#[derive(Deserialize)]
struct Started {
    servers: Vec<Server>,
}

pub struct Servers {
    child: Child,
    pub list: Vec<Server>,
}

impl Servers {
    pub async fn start(names: &[String]) -> Result<Servers, String> {
        let node = std::env::var("BENCH_NODE").unwrap_or_else(|_| "node".into());
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/serve.mjs");
        let mut child = Command::new(&node)
            .arg(script)
            .args(names)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("{node} {script}: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .map_err(|_| "serve.mjs did not report within 60 s".to_string())?
            .map_err(|e| e.to_string())?
            .ok_or("serve.mjs exited without reporting its servers")?;
        let started: Started = serde_json::from_str(&line).map_err(|e| format!("serve.mjs said {line:?}: {e}"))?;
        // Let the runtimes settle (startup compilation threads, first GC) before measuring.
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok(Servers { child, list: started.servers })
    }

    /// Closes serve.mjs's stdin (it disposes both Miniflare instances) and waits; kills it after 20 s.
    pub async fn stop(mut self) {
        drop(self.child.stdin.take());
        if tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }
}

/// CPU time of every thread of `pid`, in nanoseconds (sum of /proc/PID/task/*/schedstat), falling
/// back to utime+stime from /proc/PID/stat (10 ms ticks) if schedstat is missing.
pub fn cpu_ns(pid: u32) -> u64 {
    let mut total = 0u64;
    let mut any = false;
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in dir.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
                if let Some(ns) = s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()) {
                    total += ns;
                    any = true;
                }
            }
        }
    }
    if any {
        return total;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0 };
    let rest = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After "pid (comm)": state is index 0, utime is field 14 overall -> index 11 here.
    let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    ticks * 10_000_000
}

/// Resident memory of `pid` in KiB (VmRSS).
pub fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}
