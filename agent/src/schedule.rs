//! The scheduler: runs every check on its interval, from a random offset
//! inside the interval, never overlapping itself, with bounded concurrency.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::CheckConfig;
use crate::probe::HttpProber;
use crate::queue::ResultQueue;

/// Runs probes on schedule and queues their results.
pub struct Scheduler {
    checks: Vec<CheckConfig>,
    prober: HttpProber,
    queue: Arc<ResultQueue>,
    egress_ip: watch::Receiver<Option<IpAddr>>,
    permits: Arc<Semaphore>,
}

impl Scheduler {
    pub fn new(
        checks: Vec<CheckConfig>,
        prober: HttpProber,
        queue: Arc<ResultQueue>,
        egress_ip: watch::Receiver<Option<IpAddr>>,
        max_concurrent_probes: usize,
    ) -> Self {
        Self {
            checks,
            prober,
            queue,
            egress_ip,
            permits: Arc::new(Semaphore::new(max_concurrent_probes)),
        }
    }

    /// Probes until `shutdown`; a probe in progress is abandoned then.
    pub async fn run(self, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        for check in self.checks {
            let run = CheckLoop {
                offset: random_offset(check.interval),
                check,
                prober: self.prober.clone(),
                queue: self.queue.clone(),
                egress_ip: self.egress_ip.clone(),
                permits: self.permits.clone(),
            };
            tracker.spawn(run.run(shutdown.clone()));
        }
        tracker.close();
        tracker.wait().await;
    }
}

/// A uniformly random start offset in `[0, interval)`, so that checks of
/// many agents do not fire in lockstep.
fn random_offset(interval: Duration) -> Duration {
    let nanos = u64::try_from(interval.as_nanos())
        .unwrap_or(u64::MAX)
        .max(1);
    Duration::from_nanos(rand::random_range(0..nanos))
}

struct CheckLoop {
    check: CheckConfig,
    offset: Duration,
    prober: HttpProber,
    queue: Arc<ResultQueue>,
    egress_ip: watch::Receiver<Option<IpAddr>>,
    permits: Arc<Semaphore>,
}

impl CheckLoop {
    async fn run(self, shutdown: CancellationToken) {
        let mut ticker =
            tokio::time::interval_at(Instant::now() + self.offset, self.check.interval);
        // A probe that overran its slot is not made up for: the next one
        // starts at the next slot, so a check never overlaps itself.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let permit = tokio::select! {
                _ = shutdown.cancelled() => return,
                permit = self.permits.acquire() => permit,
            };
            let Ok(_permit) = permit else { return };
            let mut result = tokio::select! {
                _ = shutdown.cancelled() => return,
                result = self.prober.probe(&self.check) => result,
            };
            result.egress_ip = *self.egress_ip.borrow();
            let seq = self.queue.push(result);
            tracing::debug!(check = %self.check.name.get_ref(), seq, "Probe finished.");
        }
    }
}
