//! Wiring: builds every component of the agent from its configuration and
//! runs them until shutdown.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::AgentConfig;
use crate::probe::dns::DnsSetupError;
use crate::probe::{DnsResolver, HttpProber};
use crate::queue::ResultQueue;
use crate::report::{Identity, Reporter};
use crate::schedule::Scheduler;

/// How long the reporter may keep sending queued results after shutdown was
/// asked for. Below systemd's default stop timeout (90 s) with room to spare.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A built agent, ready to run.
pub struct App {
    scheduler: Scheduler,
    reporter: Reporter,
    queue: Arc<ResultQueue>,
}

impl App {
    /// Builds the agent; fails only on setup errors (bad resolver config).
    pub fn build(config: AgentConfig) -> Result<Self, DnsSetupError> {
        let resolver =
            DnsResolver::new(&config.dns.resolver, config.dns.timeout, config.source_ip)?;
        let prober = HttpProber::new(resolver, config.source_ip);
        let queue = Arc::new(ResultQueue::new(config.collector.queue_capacity));
        let (egress_tx, egress_rx) = watch::channel(None);
        let scheduler = Scheduler::new(
            config.checks,
            prober,
            queue.clone(),
            egress_rx,
            config.max_concurrent_probes,
        );
        let reporter = Reporter::new(
            config.collector.endpoint.as_str().to_owned(),
            Identity {
                agent_id: config.agent_id.to_string(),
                region: config.region.to_string(),
                labels: config.labels,
            },
            config.source_ip,
            queue.clone(),
            config.collector.batch_size,
            config.collector.flush_interval,
            egress_tx,
            DRAIN_TIMEOUT,
        );
        Ok(Self {
            scheduler,
            reporter,
            queue,
        })
    }

    /// The queue of results not yet acknowledged.
    pub fn queue(&self) -> Arc<ResultQueue> {
        self.queue.clone()
    }

    /// Runs until `shutdown`: stops probing first, then lets the reporter
    /// deliver what is queued (bounded by the drain timeout).
    pub async fn run(self, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        tracker.spawn(self.scheduler.run(shutdown.clone()));
        tracker.spawn(self.reporter.run(shutdown.clone()));
        tracker.close();
        tracker.wait().await;
    }
}
