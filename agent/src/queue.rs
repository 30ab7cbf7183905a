//! The bounded queue between probing and reporting, and the owner of
//! sequence numbers.
//!
//! This is the seam where the on-disk spool goes: the scheduler reserves a
//! sequence number when a probe starts (the probe sends it in its
//! `X-Vantage-Probe` header) and completes the reservation with the result;
//! the reporter only `peek`s and `ack`s. Results are released to the
//! reporter in sequence order: none passes a reservation still in flight,
//! so an acknowledgement "through seq N" never skips a result below N.
//!
//! Overflow policy: **drop oldest**. When the collector has been unreachable
//! long enough to fill the queue, the oldest results are discarded (counted,
//! logged) so the newest, most relevant ones survive.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
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
    /// Sorted by seq.
    results: VecDeque<ProbeResult>,
    /// Reserved sequence numbers whose probe is still running.
    in_flight: BTreeSet<u64>,
    dropped: u64,
}

impl State {
    /// How many results, from the front, no reservation holds back.
    fn ready(&self) -> usize {
        match self.in_flight.first() {
            None => self.results.len(),
            Some(&lowest) => self.results.partition_point(|r| r.seq < lowest),
        }
    }
}

/// A reserved sequence number. Completing it queues the result; dropping it
/// (a probe abandoned at shutdown) releases the number unused.
pub struct Ticket {
    seq: u64,
    queue: Arc<ResultQueue>,
    completed: bool,
}

impl Ticket {
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Queues `result` under this ticket's sequence number.
    pub fn complete(mut self, result: ProbeResult) {
        self.completed = true;
        self.queue.insert(self.seq, result);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.completed {
            self.queue.state().in_flight.remove(&self.seq);
            self.queue.arrived.notify_waiters();
        }
    }
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
                in_flight: BTreeSet::new(),
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

    /// Reserves the next sequence number for a probe about to start.
    pub fn reserve(self: &Arc<Self>) -> Ticket {
        let mut state = self.state();
        let seq = state.next_seq;
        state.next_seq += 1;
        state.in_flight.insert(seq);
        Ticket {
            seq,
            queue: self.clone(),
            completed: false,
        }
    }

    /// Reserves and completes at once; returns the sequence number.
    pub fn push(self: &Arc<Self>, result: ProbeResult) -> u64 {
        let ticket = self.reserve();
        let seq = ticket.seq();
        ticket.complete(result);
        seq
    }

    /// Queues `result` as `seq` in order, dropping the oldest if full.
    fn insert(&self, seq: u64, mut result: ProbeResult) {
        {
            let mut state = self.state();
            state.in_flight.remove(&seq);
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
            // Results complete nearly in order, so this is almost always
            // the end; the search keeps the queue sorted when they do not.
            let at = state.results.partition_point(|r| r.seq < seq);
            state.results.insert(at, result);
        }
        self.arrived.notify_waiters();
    }

    /// Copies of up to `max` of the oldest results ready to send.
    pub fn peek(&self, max: usize) -> Vec<ProbeResult> {
        let state = self.state();
        let ready = state.ready();
        state.results.iter().take(max.min(ready)).cloned().collect()
    }

    /// Removes every result with a sequence number up to `seq`.
    pub fn ack_through(&self, seq: u64) {
        let mut state = self.state();
        while state.results.front().is_some_and(|r| r.seq <= seq) {
            state.results.pop_front();
        }
    }

    /// Results ready to send and waiting to be acknowledged.
    pub fn len(&self) -> usize {
        self.state().ready()
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

    fn result() -> ProbeResult {
        ProbeResult::new("c", "http://a.test/", "GET", "direct", chrono::Utc::now())
    }

    #[test]
    fn results_wait_behind_a_reservation_in_flight() {
        let q = Arc::new(ResultQueue::starting_at(10, 1));
        let slow = q.reserve();
        let fast = q.reserve();
        fast.complete(result());
        assert!(q.is_empty(), "seq 2 must not pass seq 1 still in flight");
        assert!(q.peek(10).is_empty());
        slow.complete(result());
        let seqs: Vec<u64> = q.peek(10).iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![1, 2]);
    }

    #[test]
    fn dropped_reservation_releases_the_results_behind_it() {
        let q = Arc::new(ResultQueue::starting_at(10, 1));
        let abandoned = q.reserve();
        q.push(result());
        assert!(q.is_empty());
        drop(abandoned);
        let seqs: Vec<u64> = q.peek(10).iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![2]);
    }

    #[test]
    fn full_queue_drops_the_oldest_and_counts_it() {
        let q = Arc::new(ResultQueue::starting_at(2, 10));
        assert_eq!(q.push(result()), 10);
        assert_eq!(q.push(result()), 11);
        assert_eq!(q.push(result()), 12);
        let seqs: Vec<u64> = q.peek(10).iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![11, 12]);
        assert_eq!(q.dropped(), 1);
    }

    #[test]
    fn ack_removes_only_acknowledged_results() {
        let q = Arc::new(ResultQueue::starting_at(10, 1));
        for _ in 0..5 {
            q.push(result());
        }
        q.ack_through(3);
        let seqs: Vec<u64> = q.peek(10).iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![4, 5]);
    }

    #[test]
    fn sequence_numbers_start_above_earlier_runs() {
        let first = Arc::new(ResultQueue::new(1)).push(result());
        let second = Arc::new(ResultQueue::new(1)).push(result());
        assert!(second > first);
    }

    proptest::proptest! {
        #[test]
        fn queue_never_exceeds_capacity_and_keeps_order(cap in 1usize..20, pushes in 0usize..60) {
            let q = Arc::new(ResultQueue::starting_at(cap, 1));
            for _ in 0..pushes { q.push(result()); }
            let seqs: Vec<u64> = q.peek(usize::MAX).iter().map(|r| r.seq).collect();
            proptest::prop_assert!(seqs.len() <= cap);
            proptest::prop_assert!(seqs.windows(2).all(|w| w[0] + 1 == w[1]));
            proptest::prop_assert_eq!(q.dropped() as usize, pushes.saturating_sub(cap));
        }
    }
}
