//! The bounded queue between probing and reporting, and the owner of
//! sequence numbers.
//!
//! This is the seam where the on-disk spool goes: the scheduler only
//! `push`es, the reporter only `peek`s and `ack`s.
//!
//! Overflow policy: **drop oldest**. When the collector has been unreachable
//! long enough to fill the queue, the oldest results are discarded (counted,
//! logged) so the newest, most relevant ones survive.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

use crate::probe::ProbeResult;

/// Results awaiting acknowledgement by the collector.
pub struct ResultQueue {
    state: Mutex<State>,
    capacity: usize,
    arrived: Notify,
}

struct State {
    next_seq: u64,
    results: VecDeque<ProbeResult>,
    dropped: u64,
}

impl ResultQueue {
    /// An empty queue holding at most `capacity` results.
    ///
    /// Sequence numbers start at the current Unix time in microseconds: a
    /// restarted agent (which has lost this in-memory queue) thus continues
    /// above every number it used before, as long as it produced fewer than
    /// a million results per second and the clock did not step back.
    pub fn new(capacity: usize) -> Self {
        let epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2));
        Self::starting_at(capacity, epoch)
    }

    /// An empty queue whose first result gets `first_seq`.
    pub fn starting_at(capacity: usize, first_seq: u64) -> Self {
        Self {
            state: Mutex::new(State {
                next_seq: first_seq.max(1),
                results: VecDeque::with_capacity(capacity.min(1024)),
                dropped: 0,
            }),
            capacity: capacity.max(1),
            arrived: Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue torn (every
        // critical section is a single VecDeque operation), so keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Assigns the next sequence number to `result` and queues it, dropping
    /// the oldest result if full. Returns the assigned sequence number.
    pub fn push(&self, mut result: ProbeResult) -> u64 {
        let seq = {
            let mut state = self.state();
            let seq = state.next_seq;
            state.next_seq += 1;
            result.seq = seq;
            if state.results.len() >= self.capacity
                && let Some(oldest) = state.results.pop_front()
            {
                state.dropped += 1;
                tracing::warn!(
                    dropped_seq = oldest.seq,
                    dropped_total = state.dropped,
                    capacity = self.capacity,
                    "Result queue full, dropped the oldest result."
                );
            }
            state.results.push_back(result);
            seq
        };
        self.arrived.notify_waiters();
        seq
    }

    /// Copies of up to `max` of the oldest queued results.
    pub fn peek(&self, max: usize) -> Vec<ProbeResult> {
        self.state().results.iter().take(max).cloned().collect()
    }

    /// Removes every result with a sequence number up to `seq`.
    pub fn ack_through(&self, seq: u64) {
        let mut state = self.state();
        while state.results.front().is_some_and(|r| r.seq <= seq) {
            state.results.pop_front();
        }
    }

    /// Results waiting to be acknowledged.
    pub fn len(&self) -> usize {
        self.state().results.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Results dropped because the queue was full, since start.
    pub fn dropped(&self) -> u64 {
        self.state().dropped
    }

    /// Resolves once the queue is non-empty.
    pub async fn wait_nonempty(&self) {
        loop {
            let arrived = self.arrived.notified();
            if !self.is_empty() {
                return;
            }
            arrived.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::{Outcome, Timings};

    fn result() -> ProbeResult {
        ProbeResult {
            seq: 0,
            started_at: chrono::Utc::now(),
            check: "c".into(),
            url: "http://a.test/".into(),
            method: "GET".into(),
            outcome: Outcome::Ok,
            message: String::new(),
            http_status: Some(200),
            http_version: None,
            resolver: String::new(),
            resolved: vec![],
            dialed: None,
            local_ip: None,
            egress_ip: None,
            timings: Timings::default(),
            headers: Default::default(),
        }
    }

    #[test]
    fn full_queue_drops_the_oldest_and_counts_it() {
        let q = ResultQueue::starting_at(2, 10);
        assert_eq!(q.push(result()), 10);
        assert_eq!(q.push(result()), 11);
        assert_eq!(q.push(result()), 12);
        let seqs: Vec<u64> = q.peek(10).iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![11, 12]);
        assert_eq!(q.dropped(), 1);
    }

    #[test]
    fn ack_removes_only_acknowledged_results() {
        let q = ResultQueue::starting_at(10, 1);
        for _ in 0..5 {
            q.push(result());
        }
        q.ack_through(3);
        let seqs: Vec<u64> = q.peek(10).iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![4, 5]);
    }

    #[test]
    fn sequence_numbers_start_above_earlier_runs() {
        let first = ResultQueue::new(1).push(result());
        let second = ResultQueue::new(1).push(result());
        assert!(second > first);
    }

    proptest::proptest! {
        #[test]
        fn queue_never_exceeds_capacity_and_keeps_order(cap in 1usize..20, pushes in 0usize..60) {
            let q = ResultQueue::starting_at(cap, 1);
            for _ in 0..pushes { q.push(result()); }
            let seqs: Vec<u64> = q.peek(usize::MAX).iter().map(|r| r.seq).collect();
            proptest::prop_assert!(seqs.len() <= cap);
            proptest::prop_assert!(seqs.windows(2).all(|w| w[0] + 1 == w[1]));
            proptest::prop_assert_eq!(q.dropped() as usize, pushes.saturating_sub(cap));
        }
    }
}
