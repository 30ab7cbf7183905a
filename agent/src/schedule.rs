//! The scheduler: runs every check from every vantage it applies to, on its
//! interval, from a random offset inside the interval, never overlapping
//! itself, with bounded concurrency.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::config::CheckConfig;
use crate::probe::http::Probed;
use crate::probe::{HttpProber, ProbeResult};
use crate::queue::ResultQueue;
use crate::supervise::{Liveness, Policy, Supervisor};
use crate::vantage::Vantage;

/// Runs probes on schedule and queues their results.
pub struct Scheduler {
    checks: Vec<CheckConfig>,
    vantages: Vec<Arc<Vantage>>,
    prober: Arc<HttpProber>,
    queue: Arc<ResultQueue>,
    egress_ip: watch::Receiver<Option<IpAddr>>,
    permits: Arc<Semaphore>,
}

impl Scheduler {
    pub fn new(
        checks: Vec<CheckConfig>,
        vantages: Vec<Arc<Vantage>>,
        prober: HttpProber,
        queue: Arc<ResultQueue>,
        egress_ip: watch::Receiver<Option<IpAddr>>,
        max_concurrent_probes: usize,
    ) -> Self {
        Self {
            checks,
            vantages,
            prober: Arc::new(prober),
            queue,
            egress_ip,
            permits: Arc::new(Semaphore::new(max_concurrent_probes)),
        }
    }

    /// Runs the check named `check` once from every vantage it applies to,
    /// queues the results and returns copies: what a scheduled round does,
    /// on demand (tests, `--probe-once`).
    pub async fn probe_once(&self, check: &str) -> Vec<ProbeResult> {
        let Some(check) = self
            .checks
            .iter()
            .find(|c| c.name.get_ref().as_str() == check)
        else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for vantage in self.vantages.iter().filter(|v| v.runs(check)) {
            let reserve = || self.queue.reserve();
            let probed = self.prober.round(check, vantage, &reserve).await;
            complete(probed, &self.egress_ip, |r| out.push(r.clone()));
        }
        out
    }

    /// Probes until `shutdown`; a probe in progress is abandoned then.
    /// Starts one supervised loop per check and vantage (component
    /// `check:<name>@<vantage>`, made again after a panic); they stop with
    /// the supervisor's shutdown.
    pub fn run(self, supervisor: &Supervisor) {
        for check in self.checks {
            let check = Arc::new(check);
            // A loop that has not finished a round in three intervals
            // (plus one timeout) is stuck.
            let stale_after = check.interval * 3 + check.timeout;
            for vantage in self.vantages.iter().filter(|v| v.runs(&check)) {
                let run = CheckLoop {
                    offset: random_offset(check.interval),
                    check: check.clone(),
                    vantage: vantage.clone(),
                    prober: self.prober.clone(),
                    queue: self.queue.clone(),
                    egress_ip: self.egress_ip.clone(),
                    permits: self.permits.clone(),
                };
                let name = format!("check:{}@{}", check.name.get_ref(), vantage.name);
                supervisor.spawn(
                    name,
                    Policy::Restart,
                    Some(stale_after + run.offset),
                    move |live, stop| {
                        let run = run.clone();
                        async move {
                            run.run(stop, live).await;
                            Ok(())
                        }
                    },
                );
            }
        }
    }
}

fn random_offset(interval: Duration) -> Duration {
    let nanos = u64::try_from(interval.as_nanos())
        .unwrap_or(u64::MAX)
        .max(1);
    Duration::from_nanos(rand::random_range(0..nanos))
}

/// How long a round already under way may run on after shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

#[derive(Clone)]
struct CheckLoop {
    check: Arc<CheckConfig>,
    vantage: Arc<Vantage>,
    offset: Duration,
    prober: Arc<HttpProber>,
    queue: Arc<ResultQueue>,
    egress_ip: watch::Receiver<Option<IpAddr>>,
    permits: Arc<Semaphore>,
}

impl CheckLoop {
    async fn run(self, shutdown: CancellationToken, liveness: Liveness) {
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
            // Fault tests make a round panic here (test builds only).
            fail::fail_point!("check-round");
            let reserve = || self.queue.reserve();
            // A round under way at shutdown may finish within a grace
            // period (its request has reached the site: its result should
            // too); beyond, its tickets drop and release their numbers.
            let grace = async {
                shutdown.cancelled().await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            };
            let probed = tokio::select! {
                _ = grace => return,
                probed = self.prober.round(&self.check, &self.vantage, &reserve) => probed,
            };
            complete(probed, &self.egress_ip, |_| {});
            liveness.beat();
        }
    }
}

/// Stamps each result of a round with the agent's egress address as the
/// collector last saw it, shows it to `inspect`, and queues it under its
/// ticket.
fn complete(
    probed: Vec<Probed>,
    egress_ip: &watch::Receiver<Option<IpAddr>>,
    mut inspect: impl FnMut(&ProbeResult),
) {
    let egress_ip = *egress_ip.borrow();
    for p in probed {
        let mut result = p.result;
        result.egress_ip = egress_ip;
        tracing::debug!(
            check = %result.check,
            vantage = %result.vantage,
            seq = p.ticket.seq(),
            outcome = ?result.outcome,
            "Probe finished."
        );
        inspect(&result);
        p.ticket.complete(result);
    }
}
