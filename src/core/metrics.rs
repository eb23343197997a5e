//! Operator counters, pure: what they count, their Prometheus text (`GET /metrics`) and the fixed
//! column layout of an Analytics Engine data point. The runtime keeps one [`Counters`] per isolate
//! (`runtime::metrics`); incrementing is a field add, with no call into JS, so counting costs nothing
//! measurable on the hot path. Host-tested here.

use std::fmt::Write;

/// A webhook attempt's outcome class: the status class of the answer, or why there was none.
pub fn webhook_class(status: Option<u16>, timed_out: bool) -> &'static str {
    match status {
        Some(200..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(500..=599) => "5xx",
        Some(_) => "other",
        None if timed_out => "timeout",
        None => "network",
    }
}

/// The labeled families, in the order they are exposed. Their fixed labels (listed here) are shown at
/// zero before any event, so a dashboard sees the series from the start; others appear when counted.
const LABELED: [(&str, &str, &str, &[&str]); 8] = [
    (
        "switchboard_publishes_total",
        "kind",
        "Publishes the Worker accepted, by kind.",
        &["userId", "userIds", "channel"],
    ),
    ("switchboard_connects_total", "transport", "Connections accepted, by transport.", &["websocket", "sse"]),
    ("switchboard_closes_total", "code", "Connections closed, by close code.", &[]),
    (
        "switchboard_webhook_attempts_total",
        "class",
        "Webhook requests sent, by outcome (status class, timeout or network error).",
        &CLASSES,
    ),
    (
        "switchboard_webhook_failures_total",
        "class",
        "Webhook requests that did not deliver, by outcome.",
        &FAILURE_CLASSES,
    ),
    ("switchboard_frames_rejected_total", "code", "Client frames answered with an error frame, by error code.", &[]),
    (
        "switchboard_analytics_points_total",
        "event",
        "Analytics Engine data points written (METRICS binding), by event.",
        &[],
    ),
    ("switchboard_analytics_errors_total", "", "Analytics Engine writes the runtime refused.", &[]),
];
const CLASSES: [&str; 7] = ["2xx", "3xx", "4xx", "5xx", "other", "timeout", "network"];
const FAILURE_CLASSES: [&str; 6] = ["3xx", "4xx", "5xx", "other", "timeout", "network"];

/// Families with no label: name, help (the fields of [`Counters`] in this order).
const PLAIN: [(&str, &str); 4] = [
    ("switchboard_deliveries_total", "Envelopes sent to a connection by a publish."),
    ("switchboard_acks_total", "Acks recorded by a waiting publish within its timeout."),
    (
        "switchboard_ack_timeouts_total",
        "Deliveries still unacknowledged when their publish timed out (its pending list).",
    ),
    ("switchboard_webhook_dropped_total", "Webhook events dropped for good (permanent refusal or too old)."),
];

/// Every counter, since the isolate started. The hot ones (a publish's) are plain fields; the rest
/// are `(family, label, count)` rows found by a linear scan (a few dozen rows at most: labels are
/// close codes, error codes and fixed names).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Counters {
    /// Envelopes sent to a connection (one per connection a publish reached).
    pub deliveries: u64,
    /// Acks a waiting publish recorded within its timeout.
    pub acks: u64,
    /// Connections still unacknowledged when their publish's timeout ended (`pending` in its answer).
    pub ack_timeouts: u64,
    /// Webhook events dropped for good (permanent refusal, or older than `WEBHOOK_MAX_AGE_SECONDS`).
    pub webhook_dropped: u64,
    labeled: Vec<(&'static str, String, u64)>,
}

/// How many columns [`Counters::columns`] has (Analytics Engine takes at most 20 doubles; the first
/// is the invocation's duration, so this layout is full).
pub const COLUMNS: usize = 19;

/// The names of [`Counters::columns`], in order: doubles 2 to 18 of a data point (README, "Metrics").
pub const COLUMN_NAMES: [&str; COLUMNS] = [
    "publishes_user",
    "publishes_users",
    "publishes_channel",
    "deliveries",
    "acks",
    "ack_timeouts",
    "connects_websocket",
    "connects_sse",
    "closes",
    "closes_normal",
    "closes_abnormal",
    "closes_token_expired",
    "closes_backend",
    "closes_lifetime",
    "closes_abuse",
    "webhook_attempts",
    "webhook_failures",
    "webhook_dropped",
    "frames_rejected",
];

impl Counters {
    pub const fn new() -> Self {
        Counters { deliveries: 0, acks: 0, ack_timeouts: 0, webhook_dropped: 0, labeled: Vec::new() }
    }

    /// Adds one to `family{label}` (a family's name from the exposed list).
    pub fn bump(&mut self, family: &'static str, label: &str) {
        match self.labeled.iter_mut().find(|(f, l, _)| *f == family && l == label) {
            Some(row) => row.2 += 1,
            None => self.labeled.push((family, label.to_string(), 1)),
        }
    }

    /// `family{label}`'s count.
    pub fn get(&self, family: &str, label: &str) -> u64 {
        self.labeled.iter().find(|(f, l, _)| *f == family && l == label).map_or(0, |r| r.2)
    }

    /// The sum of a family's rows whose label `pick` accepts.
    fn sum(&self, family: &str, pick: impl Fn(&str) -> bool) -> u64 {
        self.labeled.iter().filter(|(f, l, _)| *f == family && pick(l)).map(|r| r.2).sum()
    }

    /// The totals an Analytics Engine data point carries (as deltas), in [`COLUMN_NAMES`] order.
    /// Close codes are grouped so the layout stays fixed: normal (1000, 1001, 1005), abnormal (1006,
    /// 1011), 4001, 4002, 4003, abuse (4009, 4029); the rest is `closes` minus those.
    pub fn columns(&self) -> [u64; COLUMNS] {
        let closes = |codes: &[&str]| self.sum(CLOSES, |l| codes.contains(&l));
        let attempts = self.sum(WEBHOOK_ATTEMPTS, |_| true);
        [
            self.get(PUBLISHES, "userId"),
            self.get(PUBLISHES, "userIds"),
            self.get(PUBLISHES, "channel"),
            self.deliveries,
            self.acks,
            self.ack_timeouts,
            self.get(CONNECTS, "websocket"),
            self.get(CONNECTS, "sse"),
            self.sum(CLOSES, |_| true),
            closes(&["1000", "1001", "1005"]),
            closes(&["1006", "1011"]),
            closes(&["4001"]),
            closes(&["4002"]),
            closes(&["4003"]),
            closes(&["4009", "4029"]),
            attempts,
            attempts - self.get(WEBHOOK_ATTEMPTS, "2xx"),
            self.webhook_dropped,
            self.sum(REJECTED, |_| true),
        ]
    }

    /// The Prometheus text exposition format, version 0.0.4
    /// (<https://prometheus.io/docs/instrumenting/exposition_formats/>).
    pub fn prometheus(&self) -> String {
        let mut out = String::with_capacity(4096);
        let head = |out: &mut String, name: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        };
        let plain = [self.deliveries, self.acks, self.ack_timeouts, self.webhook_dropped];
        for ((name, help), value) in PLAIN.iter().zip(plain) {
            head(&mut out, name, help);
            let _ = writeln!(out, "{name} {value}");
        }
        for (name, label, help, fixed) in LABELED {
            head(&mut out, name, help);
            if label.is_empty() {
                let _ = writeln!(out, "{name} {}", self.get(name, ""));
                continue;
            }
            let extra = self.labeled.iter().filter(|(f, l, _)| *f == name && !fixed.contains(&l.as_str()));
            for value in fixed.iter().copied().chain(extra.map(|(_, l, _)| l.as_str())) {
                let _ = writeln!(out, "{name}{{{label}=\"{}\"}} {}", escape(value), self.get(name, value));
            }
        }
        out
    }
}

/// Family names, for the runtime's increments.
pub const PUBLISHES: &str = "switchboard_publishes_total";
pub const CONNECTS: &str = "switchboard_connects_total";
pub const CLOSES: &str = "switchboard_closes_total";
pub const WEBHOOK_ATTEMPTS: &str = "switchboard_webhook_attempts_total";
pub const WEBHOOK_FAILURES: &str = "switchboard_webhook_failures_total";
pub const REJECTED: &str = "switchboard_frames_rejected_total";
pub const ANALYTICS_POINTS: &str = "switchboard_analytics_points_total";
pub const ANALYTICS_ERRORS: &str = "switchboard_analytics_errors_total";

/// A label value as the text format wants it: backslash, quote and newline escaped.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The difference `now - before` of two [`Counters::columns`] results (counters only grow).
pub fn delta(now: &[u64; COLUMNS], before: &[u64; COLUMNS]) -> [u64; COLUMNS] {
    let mut d = *now;
    d.iter_mut().zip(before).for_each(|(n, b)| *n = n.saturating_sub(*b));
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_lists_every_family_with_zeroes_and_labels() {
        let mut c = Counters::default();
        for (family, label) in [
            (PUBLISHES, "channel"),
            (PUBLISHES, "channel"),
            (CLOSES, "4002"),
            (CLOSES, "1000"),
            (WEBHOOK_ATTEMPTS, "5xx"),
            (WEBHOOK_FAILURES, "5xx"),
            (WEBHOOK_ATTEMPTS, "2xx"),
            (REJECTED, "invalid_frame"),
            (REJECTED, "a\"b"),
        ] {
            c.bump(family, label);
        }
        c.deliveries = 7;
        let text = c.prometheus();
        for line in [
            "# TYPE switchboard_publishes_total counter",
            "switchboard_publishes_total{kind=\"userId\"} 0",
            "switchboard_publishes_total{kind=\"channel\"} 2",
            "switchboard_deliveries_total 7",
            "switchboard_connects_total{transport=\"sse\"} 0",
            "switchboard_closes_total{code=\"1000\"} 1",
            "switchboard_closes_total{code=\"4002\"} 1",
            "switchboard_webhook_attempts_total{class=\"2xx\"} 1",
            "switchboard_webhook_failures_total{class=\"5xx\"} 1",
            "switchboard_frames_rejected_total{code=\"invalid_frame\"} 1",
            "switchboard_frames_rejected_total{code=\"a\\\"b\"} 1",
            "switchboard_analytics_errors_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("switchboard_webhook_failures_total{class=\"2xx\"}"));
        assert!(!text.contains("switchboard_analytics_points_total{"));
        // Every sample line is `name{labels} value` or `name value`, each series once.
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        for l in &samples {
            l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap();
        }
        let mut series: Vec<&str> = samples.iter().map(|l| l.rsplit_once(' ').unwrap().0).collect();
        series.sort();
        series.dedup();
        assert_eq!(series.len(), samples.len());
    }

    #[test]
    fn columns_group_close_codes_and_failures() {
        let mut c = Counters::default();
        let bump = |c: &mut Counters, family, label, n| (0..n).for_each(|_| c.bump(family, label));
        bump(&mut c, PUBLISHES, "userId", 1);
        bump(&mut c, PUBLISHES, "channel", 5);
        for (code, n) in [("1000", 1), ("1005", 1), ("1006", 2), ("4001", 1), ("4029", 5), ("3000", 7)] {
            bump(&mut c, CLOSES, code, n);
        }
        for (class, n) in [("2xx", 4), ("5xx", 1), ("timeout", 2)] {
            bump(&mut c, WEBHOOK_ATTEMPTS, class, n);
        }
        let cols = c.columns();
        let col = |name: &str| cols[COLUMN_NAMES.iter().position(|n| *n == name).unwrap()];
        assert_eq!((col("publishes_user"), col("publishes_users"), col("publishes_channel")), (1, 0, 5));
        assert_eq!(col("closes"), 17);
        assert_eq!(col("closes_normal"), 2);
        assert_eq!(col("closes_abnormal"), 2);
        assert_eq!(col("closes_token_expired"), 1);
        assert_eq!(col("closes_abuse"), 5);
        assert_eq!(col("webhook_attempts"), 7);
        assert_eq!(col("webhook_failures"), 3);
        let before = cols;
        c.acks += 3;
        let d = delta(&c.columns(), &before);
        assert_eq!(d.iter().sum::<u64>(), 3);
        assert_eq!(d[COLUMN_NAMES.iter().position(|n| *n == "acks").unwrap()], 3);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn webhook_classes() {
        assert_eq!(webhook_class(Some(204), false), "2xx");
        assert_eq!(webhook_class(Some(410), false), "4xx");
        assert_eq!(webhook_class(Some(503), false), "5xx");
        assert_eq!(webhook_class(None, true), "timeout");
        assert_eq!(webhook_class(None, false), "network");
    }
}
