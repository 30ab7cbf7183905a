//! Between probing and reporting: the owner of sequence numbers and of the
//! order in which results become sendable, in front of the [`Spool`].
//!
//! The scheduler reserves a sequence number when a probe starts (the probe
//! sends it in its `X-Vantage-Probe` header) and completes the reservation
//! with the result, which goes to the spool. The reporter reads results in
//! sequence order and never past a reservation still in flight nor past a
//! result not yet synced, so "the collector committed through seq N" never
//! skips a result below N.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::probe::ProbeResult;
use crate::spool::{Batch, Opened, Record, Spool, SpoolInUse, SpoolSettings, SpoolStats};
use crate::wire::result_to_proto;

/// Results awaiting acknowledgement by the collector.
pub struct ResultQueue {
    state: Mutex<State>,
    spool: Spool,
    /// Counts syncs (results may have become sendable). A counter, not a
    /// notification: a reporter that checked the queue just before a sync
    /// still sees it (the last sync at shutdown was once missed that way,
    /// and its results waited for the next start).
    syncs: watch::Sender<u64>,
}

struct State {
    next_seq: u64,
    /// Reserved sequence numbers whose probe is still running.
    in_flight: BTreeSet<u64>,
}

/// A reserved sequence number. Completing it spools the result; dropping it
/// (a probe abandoned at shutdown) releases the number unused.
pub struct ReservedSeq {
    seq: u64,
    queue: Arc<ResultQueue>,
    completed: bool,
}

impl crate::probe::Sequenced for ReservedSeq {
    fn seq(&self) -> u64 {
        self.seq
    }
}

impl ReservedSeq {
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Spools `result` under this ticket's sequence number.
    pub fn complete(mut self, mut result: ProbeResult) {
        self.completed = true;
        result.seq = self.seq;
        self.queue
            .spool
            .push(Record::new(&result_to_proto(&result)));
        self.queue.state().in_flight.remove(&self.seq);
    }
}

impl Drop for ReservedSeq {
    fn drop(&mut self) {
        if !self.completed {
            self.queue.state().in_flight.remove(&self.seq);
        }
    }
}

impl ResultQueue {
    /// Opens the spool and continues its sequence numbers.
    pub fn open(settings: SpoolSettings) -> Result<(Self, Opened), SpoolInUse> {
        let (spool, opened) = Spool::open(settings)?;
        let queue = Self {
            state: Mutex::new(State {
                next_seq: opened.next_seq,
                in_flight: BTreeSet::new(),
            }),
            spool,
            syncs: watch::Sender::new(0),
        };
        Ok((queue, opened))
    }

    /// A queue without a spool file, whose first result gets `first_seq`
    /// (for tests and one-off probes).
    pub fn in_memory(capacity: usize, first_seq: u64) -> Self {
        let Ok((queue, _)) = Self::open(SpoolSettings {
            path: None,
            max_bytes: u64::MAX,
            max_age: Duration::MAX,
            sync_interval: Duration::from_millis(500),
            memory_capacity: capacity.max(1),
        }) else {
            unreachable!("a spool without a file is never in use by another process")
        };
        queue.state().next_seq = first_seq.max(1);
        queue
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Every critical section leaves the state consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn spool(&self) -> &Spool {
        &self.spool
    }

    /// Reserves the next sequence number for a probe about to start.
    pub fn reserve(self: &Arc<Self>) -> ReservedSeq {
        let seq = {
            let mut state = self.state();
            if state.next_seq > SEQ_TOP {
                // Cannot happen from the clock in the next 290,000 years;
                // only numbers pushed up by something else get here.
                let restart = clock_seq().max(1);
                tracing::error!(
                    next_seq = state.next_seq,
                    restart,
                    "Sequence numbers reached the top of their range; restarting them at the \
                     clock (a new epoch)."
                );
                metrics::counter!("vantage_agent_seq_epoch_restarts_total").increment(1);
                state.next_seq = restart;
            }
            let seq = state.next_seq;
            state.next_seq += 1;
            state.in_flight.insert(seq);
            seq
        };
        self.spool.lease(seq);
        ReservedSeq {
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

    /// Continues numbering above `seq` (the collector has committed it: a
    /// reinstalled agent whose spool and lease are gone).
    pub fn continue_above(&self, seq: u64) {
        let mut state = self.state();
        let ceiling = vantage_proto::plausible_seq_ceiling(clock_seq(), 0);
        if seq > ceiling {
            // Continuing above it would burn the sequence space and get
            // every later result refused.
            tracing::error!(
                collector_last_seq = seq,
                ceiling,
                next_seq = state.next_seq,
                "The collector's last sequence number for this agent is beyond any it can have \
                 given (a forged result?); keeping this agent's own numbering."
            );
            return;
        }
        if state.next_seq <= seq {
            tracing::warn!(
                next_seq = state.next_seq,
                collector_last_seq = seq,
                "The collector has seen higher sequence numbers than this agent's next; continuing above them."
            );
            state.next_seq = seq + 1;
        }
    }

    /// Every number below this is completed or abandoned.
    fn complete_below(&self) -> u64 {
        let state = self.state();
        state.in_flight.first().copied().unwrap_or(state.next_seq)
    }

    /// Results with numbers below this may be sent.
    fn sendable_below(&self) -> u64 {
        let complete = self.complete_below();
        if self.spool.memory_only() {
            return complete;
        }
        self.spool
            .lowest_unsynced()
            .map_or(complete, |u| u.min(complete))
    }

    /// Up to `max` sendable results after `after` (at most `max_bytes`).
    /// Blocking: call from `spawn_blocking`.
    pub fn read(&self, after: u64, max: usize, max_bytes: usize) -> Batch {
        self.spool
            .read(after, self.sendable_below(), max, max_bytes)
    }

    /// Removes every result up to `seq`: the collector committed them.
    /// Blocking.
    pub fn ack_through(&self, seq: u64) {
        self.spool.ack_through(seq);
    }

    /// Syncs completed results to disk (blocking) and wakes the reporter.
    pub fn sync(&self) {
        self.spool.sync(self.complete_below());
        self.syncs.send_modify(|n| *n += 1);
        let stats = self.spool.stats();
        metrics::gauge!("vantage_agent_spool_records").set(stats.disk_records as f64);
        metrics::gauge!("vantage_agent_spool_bytes").set(stats.disk_bytes as f64);
        metrics::gauge!("vantage_agent_spool_degraded").set(f64::from(u8::from(stats.degraded)));
    }

    /// Syncs every `sync_interval` until `shutdown`, then once more and
    /// marks the spool cleanly closed.
    pub async fn run_sync(self: Arc<Self>, shutdown: CancellationToken) {
        let interval = self.spool.settings().sync_interval;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(interval) => {}
            }
            let queue = self.clone();
            let _ = tokio::task::spawn_blocking(move || queue.sync()).await;
        }
        let queue = self.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let below = queue.complete_below();
            queue.spool.close(below);
            queue.syncs.send_modify(|n| *n += 1);
        })
        .await;
    }

    /// Results not yet acknowledged (on disk and in memory).
    pub fn len(&self) -> usize {
        let stats = self.spool.stats();
        usize::try_from(stats.disk_records).unwrap_or(usize::MAX) + stats.unsynced
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn stats(&self) -> SpoolStats {
        self.spool.stats()
    }

    /// How many syncs happened so far: take it before looking at the
    /// queue, then wait with [`Self::synced_since`].
    pub fn sync_count(&self) -> u64 {
        *self.syncs.borrow()
    }

    /// Resolves once a sync happened after the one counted `count` (at
    /// once if one already did).
    pub async fn synced_since(&self, count: u64) {
        let mut syncs = self.syncs.subscribe();
        // The sender lives as long as the queue: no error while we wait.
        let _ = syncs.wait_for(|n| *n > count).await;
    }
}

/// Past this, numbering restarts at the clock: 2^32 below the top of the
/// collector's signed 64-bit range, so a batch in flight still fits.
const SEQ_TOP: u64 = (i64::MAX as u64) - (1 << 32);

/// The clock as a sequence number (the spool numbers from it too).
fn clock_seq() -> u64 {
    u64::try_from(crate::spool::now_us()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result() -> ProbeResult {
        ProbeResult::new("c", "http://a.test/", "GET", "direct", chrono::Utc::now())
    }

    fn seqs(batch: &Batch) -> Vec<u64> {
        batch.results.iter().map(|r| r.seq).collect()
    }

    fn disk_queue(dir: &std::path::Path) -> Arc<ResultQueue> {
        Arc::new(
            ResultQueue::open(SpoolSettings {
                path: Some(dir.join("spool.redb")),
                max_bytes: 1 << 30,
                max_age: Duration::from_secs(3600),
                sync_interval: Duration::from_millis(500),
                memory_capacity: 100,
            })
            .unwrap()
            .0,
        )
    }

    /// A probe never waits on the disk: while a sync is stuck in its
    /// commit (holding the disk), probes still get numbers and hand in
    /// results, past the lease the last sync wrote; once the disk moves,
    /// every one of them is stored, and a reopened spool numbers above
    /// them all.
    #[test]
    fn probes_go_on_while_a_sync_is_stuck_on_the_disk() {
        let scenario = fail::FailScenario::setup();
        let dir = tempfile::tempdir().unwrap();
        let q = disk_queue(dir.path());
        let first = q.reserve();
        first.complete(result());
        q.sync();
        fail::cfg("spool-sync-commit", "pause").unwrap();
        let stuck = {
            let q = q.clone();
            std::thread::spawn(move || q.sync())
        };
        // The sync holds the disk, paused inside its transaction.
        while !q.spool.disk_busy() {
            std::thread::sleep(Duration::from_millis(5));
        }
        let (done, probes_done) = std::sync::mpsc::channel();
        let prober = {
            let q = q.clone();
            std::thread::spawn(move || {
                let mut last = 0;
                for _ in 0..(crate::spool::LEASE / 4) {
                    let ticket = q.reserve();
                    last = ticket.seq();
                    ticket.complete(result());
                }
                done.send(last).unwrap();
            })
        };
        // A deadlock detector, not a timing: the probes must finish while
        // the sync is still stuck.
        let last = probes_done
            .recv_timeout(Duration::from_secs(30))
            .expect("probes waited on the stuck sync");
        assert!(q.spool.disk_busy(), "the sync is still stuck");
        fail::cfg("spool-sync-commit", "off").unwrap();
        stuck.join().unwrap();
        prober.join().unwrap();
        q.sync();
        assert_eq!(
            q.len(),
            1 + usize::try_from(crate::spool::LEASE / 4).unwrap()
        );
        scenario.teardown();
        q.spool.close(q.complete_below());
        drop(q);
        let reopened = disk_queue(dir.path());
        assert!(reopened.reserve().seq() > last);
    }

    /// A forged result at 2^63-1 must not make the agent number above it.
    #[test]
    fn an_implausible_collector_seq_is_not_continued_above() {
        let q = Arc::new(ResultQueue::in_memory(10, 1));
        q.continue_above(i64::MAX as u64);
        assert_eq!(q.reserve().seq(), 1);
        let plausible = clock_seq();
        q.continue_above(plausible);
        assert_eq!(q.reserve().seq(), plausible + 1);
    }

    #[test]
    fn numbering_restarts_at_the_clock_before_the_top_of_the_range() {
        let q = Arc::new(ResultQueue::in_memory(10, SEQ_TOP));
        assert_eq!(q.reserve().seq(), SEQ_TOP);
        let restarted = q.reserve().seq();
        assert!(restarted < SEQ_TOP, "{restarted}");
        assert!(restarted.abs_diff(clock_seq()) < 60_000_000, "{restarted}");
    }

    #[test]
    fn results_wait_behind_a_reservation_in_flight() {
        let q = Arc::new(ResultQueue::in_memory(10, 1));
        let slow = q.reserve();
        let fast = q.reserve();
        fast.complete(result());
        assert!(
            q.read(0, 10, usize::MAX).results.is_empty(),
            "seq 2 must not pass seq 1 in flight"
        );
        slow.complete(result());
        assert_eq!(seqs(&q.read(0, 10, usize::MAX)), vec![1, 2]);
    }

    #[test]
    fn dropped_reservation_releases_the_results_behind_it() {
        let q = Arc::new(ResultQueue::in_memory(10, 1));
        let abandoned = q.reserve();
        q.push(result());
        assert!(q.read(0, 10, usize::MAX).results.is_empty());
        drop(abandoned);
        assert_eq!(seqs(&q.read(0, 10, usize::MAX)), vec![2]);
    }

    #[test]
    fn memory_queue_drops_the_oldest_and_records_a_gap() {
        let q = Arc::new(ResultQueue::in_memory(2, 10));
        for _ in 0..3 {
            q.push(result());
        }
        assert_eq!(seqs(&q.read(0, 10, usize::MAX)), vec![11, 12]);
        // The probe only drops it; the next sync records the gap.
        assert_eq!(q.stats().dropped, 0);
        q.sync();
        assert_eq!(q.stats().dropped, 1);
        let gaps = q.spool().pending_gaps();
        assert_eq!(gaps.len(), 1);
        assert_eq!(
            (gaps[0].1.first_seq, gaps[0].1.last_seq, gaps[0].1.count),
            (10, 10, Some(1))
        );
        assert_eq!(
            gaps[0].1.reason,
            vantage_proto::v1::GapReason::MemoryFull.text()
        );
    }

    #[test]
    fn disk_results_are_sendable_only_once_synced() {
        let dir = tempfile::tempdir().unwrap();
        let q = disk_queue(dir.path());
        let first = q.push(result());
        assert!(
            q.read(0, 10, usize::MAX).results.is_empty(),
            "not synced yet"
        );
        q.sync();
        assert_eq!(seqs(&q.read(0, 10, usize::MAX)), vec![first]);
        assert_eq!(q.len(), 1);
        q.ack_through(first);
        assert!(q.is_empty());
    }

    #[test]
    fn spooled_results_survive_a_restart_and_numbers_are_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = {
            let q = disk_queue(dir.path());
            let a = q.push(result());
            let b = q.push(result());
            q.sync();
            q.spool().close(q.complete_below());
            (a, b)
        };
        let q = disk_queue(dir.path());
        assert_eq!(seqs(&q.read(0, 10, usize::MAX)), vec![a, b]);
        let c = q.push(result());
        assert!(c > b);
        assert!(
            q.spool().pending_gaps().is_empty(),
            "a clean close records no gap"
        );
    }

    #[test]
    fn a_crash_records_the_unsynced_numbers_as_a_possible_gap() {
        let dir = tempfile::tempdir().unwrap();
        let (synced, lost) = {
            let q = disk_queue(dir.path());
            let synced = q.push(result());
            q.sync();
            let lost = q.push(result());
            // No sync, no close: as if killed.
            drop(q);
            (synced, lost)
        };
        let q = disk_queue(dir.path());
        assert_eq!(seqs(&q.read(0, 10, usize::MAX)), vec![synced]);
        let gaps = q.spool().pending_gaps();
        assert_eq!(gaps.len(), 1, "{gaps:?}");
        let gap = &gaps[0].1;
        assert_eq!(gap.reason, vantage_proto::v1::GapReason::AgentCrash.text());
        assert!(
            gap.first_seq <= lost && lost <= gap.last_seq,
            "{gap:?} covers {lost}"
        );
        assert!(gap.first_seq > synced);
        assert!(
            q.push(result()) > gap.last_seq,
            "new numbers start above the gap"
        );
    }

    #[test]
    fn a_second_agent_on_the_same_spool_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = disk_queue(dir.path());
        let second = ResultQueue::open(SpoolSettings {
            path: Some(dir.path().join("spool.redb")),
            max_bytes: 1 << 30,
            max_age: Duration::from_secs(3600),
            sync_interval: Duration::from_millis(500),
            memory_capacity: 100,
        });
        let error = second.err().expect("refused").to_string();
        assert!(error.contains("in use by another process"), "{error}");
    }

    #[test]
    fn ack_removes_only_acknowledged_results_and_reads_stream_in_order() {
        let q = Arc::new(ResultQueue::in_memory(100, 1));
        for _ in 0..5 {
            q.push(result());
        }
        let batch = q.read(0, 2, usize::MAX);
        assert_eq!(seqs(&batch), vec![1, 2]);
        assert_eq!(
            seqs(&q.read(batch.through_seq, 10, usize::MAX)),
            vec![3, 4, 5]
        );
        q.ack_through(3);
        assert_eq!(seqs(&q.read(0, 10, usize::MAX)), vec![4, 5]);
    }

    proptest::proptest! {
        #[test]
        fn memory_queue_never_exceeds_capacity_and_keeps_order(cap in 1usize..20, pushes in 0usize..60) {
            let q = Arc::new(ResultQueue::in_memory(cap, 1));
            for _ in 0..pushes { q.push(result()); }
            let seqs = seqs(&q.read(0, usize::MAX, usize::MAX));
            proptest::prop_assert!(seqs.len() <= cap);
            proptest::prop_assert!(seqs.windows(2).all(|w| w[0] + 1 == w[1]));
            q.sync();
            proptest::prop_assert_eq!(q.stats().dropped as usize, pushes.saturating_sub(cap));
        }
    }

    #[tokio::test]
    async fn a_sync_between_looking_and_waiting_is_not_missed() {
        let dir = tempfile::tempdir().unwrap();
        let queue = disk_queue(dir.path());
        queue.push(result());
        let seen = queue.sync_count();
        // The sync lands after the reporter looked, before it waits.
        queue.sync();
        tokio::time::timeout(Duration::from_secs(5), queue.synced_since(seen))
            .await
            .expect("the wait sees the sync that already happened");
        // And a wait from the current count waits for the next one.
        let now = queue.sync_count();
        assert!(
            tokio::time::timeout(Duration::from_millis(50), queue.synced_since(now))
                .await
                .is_err()
        );
    }
}
