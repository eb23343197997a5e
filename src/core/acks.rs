//! Ack bookkeeping for publishes waiting on their recipients. Pure (a `futures` oneshot is the only
//! signal), host-tested. The hub registers each publish that waits, with its deadline, feeds it acks
//! and closes, and the publish returns as soon as [`Collector::is_complete`] or [`AckRegistry::expire`]
//! finds its deadline passed. The deadlines are kept here so one timer per hub serves every publish
//! in flight: a timer per publish cost a `setTimeout`, a `clearTimeout` and a wasm closure each.

use futures_channel::oneshot;
use serde_json::value::RawValue;
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting,
    Acked,
    Closed,
}

/// The acks of one envelope. Acks and closes are O(1): an index by connection id and a count of
/// connections still awaited (a fan-out to 1,000 sockets must not cost a million comparisons).
#[derive(Debug)]
pub struct Collector {
    expected: Vec<(String, State)>,
    index: HashMap<String, usize>,
    waiting: usize,
    /// `(index into expected, result)` in arrival order.
    acks: Vec<(usize, Option<Box<RawValue>>)>,
}

/// What happened to an ack.
#[derive(Debug, PartialEq, Eq)]
pub enum AckOutcome {
    Recorded,
    /// This connection already acked (or closed): the first ack stands.
    Duplicate,
    /// No waiting publish sent this envelope to this connection (unknown, timed out, or not theirs).
    Unknown,
}

impl Collector {
    pub fn new(expected: Vec<String>) -> Self {
        let index = expected.iter().enumerate().map(|(i, c)| (c.clone(), i)).collect();
        let waiting = expected.len();
        Collector {
            expected: expected.into_iter().map(|c| (c, State::Waiting)).collect(),
            index,
            waiting,
            acks: Vec::new(),
        }
    }

    pub fn ack(&mut self, connection_id: &str, result: Option<Box<RawValue>>) -> AckOutcome {
        match self.index.get(connection_id) {
            None => AckOutcome::Unknown,
            Some(&i) if self.expected[i].1 != State::Waiting => AckOutcome::Duplicate,
            Some(&i) => {
                self.expected[i].1 = State::Acked;
                self.waiting -= 1;
                self.acks.push((i, result));
                AckOutcome::Recorded
            }
        }
    }

    /// The connection closed: stop waiting for it. Returns whether it was awaited.
    pub fn closed(&mut self, connection_id: &str) -> bool {
        match self.index.get(connection_id) {
            Some(&i) if self.expected[i].1 == State::Waiting => {
                self.expected[i].1 = State::Closed;
                self.waiting -= 1;
                true
            }
            _ => false,
        }
    }

    pub fn is_complete(&self) -> bool {
        self.waiting == 0
    }

    /// Acks in arrival order as `(connectionId, result)`; a missing result is JSON `null`.
    pub fn acks(&self) -> impl Iterator<Item = (&str, &RawValue)> {
        self.acks
            .iter()
            .map(|(i, r)| (self.expected[*i].0.as_str(), r.as_deref().unwrap_or_else(|| crate::core::protocol::null())))
    }

    /// Connections still open that did not ack.
    pub fn pending(&self) -> impl Iterator<Item = &str> {
        self.with_state(State::Waiting)
    }

    /// Connections that closed before acking.
    pub fn closed_ids(&self) -> impl Iterator<Item = &str> {
        self.with_state(State::Closed)
    }

    fn with_state(&self, state: State) -> impl Iterator<Item = &str> {
        self.expected.iter().filter(move |(_, s)| *s == state).map(|(c, _)| c.as_str())
    }
}

struct Entry {
    collector: Collector,
    done: Option<oneshot::Sender<()>>,
    /// When it stops waiting, in ms since the epoch.
    deadline: f64,
}

impl Entry {
    fn signal_if_complete(&mut self) {
        if self.collector.is_complete() {
            if let Some(tx) = self.done.take() {
                let _ = tx.send(());
            }
        }
    }
}

/// Every publish of one hub that is waiting for acks, by envelope id.
#[derive(Default)]
pub struct AckRegistry {
    entries: HashMap<String, Entry>,
}

impl AckRegistry {
    /// Starts waiting for `expected` until `deadline` (ms since the epoch); the receiver fires once
    /// every one has acked or closed, or when [`expire`](Self::expire) finds the deadline passed.
    pub fn register(&mut self, envelope_id: &str, expected: Vec<String>, deadline: f64) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let mut entry = Entry { collector: Collector::new(expected), done: Some(tx), deadline };
        entry.signal_if_complete();
        self.entries.insert(envelope_id.to_string(), entry);
        rx
    }

    pub fn ack(&mut self, envelope_id: &str, connection_id: &str, result: Option<Box<RawValue>>) -> AckOutcome {
        let Some(entry) = self.entries.get_mut(envelope_id) else {
            return AckOutcome::Unknown;
        };
        let outcome = entry.collector.ack(connection_id, result);
        entry.signal_if_complete();
        outcome
    }

    /// A connection closed: every publish waiting on it stops waiting.
    pub fn connection_closed(&mut self, connection_id: &str) {
        for entry in self.entries.values_mut() {
            if entry.collector.closed(connection_id) {
                entry.signal_if_complete();
            }
        }
    }

    /// Ends the wait of every publish whose deadline is at or before `now` (ms since the epoch), and
    /// returns the earliest deadline still to come: when the hub's timer must fire next.
    pub fn expire(&mut self, now: f64) -> Option<f64> {
        let mut next: Option<f64> = None;
        for entry in self.entries.values_mut() {
            if entry.done.is_none() {
                continue; // complete or expired: its publish is answering
            }
            if entry.deadline <= now {
                if let Some(tx) = entry.done.take() {
                    let _ = tx.send(());
                }
            } else {
                next = Some(next.map_or(entry.deadline, |n| n.min(entry.deadline)));
            }
        }
        next
    }

    /// Whether any publish is still waiting (neither complete nor expired).
    pub fn is_waiting(&self) -> bool {
        self.entries.values().any(|e| e.done.is_some())
    }

    /// Stops waiting and hands back what arrived.
    pub fn finish(&mut self, envelope_id: &str) -> Option<Collector> {
        self.entries.remove(envelope_id).map(|e| e.collector)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Option<Box<RawValue>> {
        Some(serde_json::from_str(s).unwrap())
    }

    #[test]
    fn completes_when_all_acked_or_closed() {
        let mut reg = AckRegistry::default();
        let mut rx = reg.register("e1", vec!["a".into(), "b".into(), "c".into()], 0.0);
        assert_eq!(reg.ack("e1", "a", raw("1")), AckOutcome::Recorded);
        assert_eq!(rx.try_recv(), Ok(None));
        reg.connection_closed("c");
        assert_eq!(rx.try_recv(), Ok(None));
        assert_eq!(reg.ack("e1", "b", None), AckOutcome::Recorded);
        assert_eq!(rx.try_recv(), Ok(Some(())));
        let c = reg.finish("e1").unwrap();
        let acks: Vec<_> = c.acks().map(|(id, r)| (id.to_string(), r.get().to_string())).collect();
        assert_eq!(acks, vec![("a".into(), "1".into()), ("b".into(), "null".into())]);
        assert_eq!(c.pending().count(), 0);
        assert_eq!(c.closed_ids().collect::<Vec<_>>(), vec!["c"]);
        assert!(reg.is_empty());
    }

    #[test]
    fn duplicates_and_strangers_do_not_count() {
        let mut reg = AckRegistry::default();
        let _rx = reg.register("e1", vec!["a".into(), "b".into()], 0.0);
        assert_eq!(reg.ack("e1", "a", raw("1")), AckOutcome::Recorded);
        assert_eq!(reg.ack("e1", "a", raw("2")), AckOutcome::Duplicate);
        assert_eq!(reg.ack("e1", "z", raw("3")), AckOutcome::Unknown);
        assert_eq!(reg.ack("e2", "a", raw("4")), AckOutcome::Unknown);
        let c = reg.finish("e1").unwrap();
        assert_eq!(c.acks().count(), 1);
        assert_eq!(c.pending().collect::<Vec<_>>(), vec!["b"]);
        // After finishing (timeout), late acks are unknown.
        assert_eq!(reg.ack("e1", "b", None), AckOutcome::Unknown);
    }

    #[test]
    fn empty_expectation_is_complete_at_once() {
        let mut reg = AckRegistry::default();
        let mut rx = reg.register("e1", vec![], 0.0);
        assert_eq!(rx.try_recv(), Ok(Some(())));
    }

    #[test]
    fn large_fanouts_complete_exactly_once() {
        let ids: Vec<String> = (0..1000).map(|i| format!("c{i}")).collect();
        let mut c = Collector::new(ids.clone());
        for id in &ids[..999] {
            assert_eq!(c.ack(id, None), AckOutcome::Recorded);
            assert!(!c.is_complete());
        }
        assert!(c.closed("c999"));
        assert!(c.is_complete());
        assert_eq!(c.acks().count(), 999);
        assert_eq!(c.closed_ids().collect::<Vec<_>>(), vec!["c999"]);
    }

    #[test]
    fn ack_after_close_is_a_duplicate() {
        let mut c = Collector::new(vec!["a".into()]);
        assert!(c.closed("a"));
        assert!(!c.closed("a"));
        assert_eq!(c.ack("a", None), AckOutcome::Duplicate);
        assert!(c.is_complete());
    }

    #[test]
    fn expire_ends_only_the_waits_past_their_deadline_and_names_the_next() {
        let mut reg = AckRegistry::default();
        let mut early = reg.register("e1", vec!["a".into()], 1_000.0);
        let mut late = reg.register("e2", vec!["a".into()], 3_000.0);
        let mut done = reg.register("e3", vec!["a".into()], 500.0);
        assert_eq!(reg.ack("e3", "a", raw("1")), AckOutcome::Recorded); // complete: no longer timed
        assert_eq!(reg.expire(999.0), Some(1_000.0));
        assert_eq!((early.try_recv(), late.try_recv()), (Ok(None), Ok(None)));
        assert_eq!(reg.expire(1_000.0), Some(3_000.0));
        assert_eq!((early.try_recv(), late.try_recv()), (Ok(Some(())), Ok(None)));
        assert_eq!(done.try_recv(), Ok(Some(())));
        assert!(reg.is_waiting());
        // The expired publish keeps what arrived until it finishes; a late ack is still recorded.
        assert_eq!(reg.ack("e1", "a", raw("2")), AckOutcome::Recorded);
        assert_eq!(reg.finish("e1").unwrap().acks().count(), 1);
        assert_eq!(reg.expire(5_000.0), None);
        assert_eq!(late.try_recv(), Ok(Some(())));
        assert!(!reg.is_waiting());
        assert_eq!(reg.len(), 2); // e2 and e3 are answering; they leave with `finish`
    }
}
