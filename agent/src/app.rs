//! Wiring: builds every component of the agent from its configuration and
//! runs them until shutdown.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::AgentConfig;
use crate::probe::HttpProber;
use crate::probe::dns::DnsSetupError;
use crate::probe::tls::{TlsConfigs, TlsSetupError};
use crate::queue::ResultQueue;
use crate::report::{Identity, Reporter};
use crate::schedule::Scheduler;
use crate::vantage::{IdentityRefresher, Vantage};

/// The agent could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Dns(#[from] DnsSetupError),
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
}

/// How long the reporter may keep sending queued results after shutdown was
/// asked for. Below systemd's default stop timeout (90 s) with room to spare.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A built agent, ready to run.
pub struct App {
    scheduler: Scheduler,
    refresher: IdentityRefresher,
    reporter: Reporter,
    queue: Arc<ResultQueue>,
}

impl App {
    /// Builds the agent; fails only on setup errors (bad resolver config,
    /// unreadable CA file).
    pub fn build(config: AgentConfig) -> Result<Self, SetupError> {
        let vantages = Vantage::build_all(&config)?;
        let tls = TlsConfigs::build(
            config
                .checks
                .iter()
                .map(|c| (c.ca_file.clone(), c.http_version)),
        )?;
        let prober = HttpProber::new(config.agent_id.as_str(), config.probe_header, tls);
        let refresher = IdentityRefresher::new(vantages.clone(), &config.dns);
        let queue = Arc::new(ResultQueue::new(config.collector.queue_capacity));
        let (egress_tx, egress_rx) = watch::channel(None);
        let scheduler = Scheduler::new(
            config.checks,
            vantages,
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
            refresher,
            reporter,
            queue,
        })
    }

    /// Asks every resolver and IP-echo URL who they are, now.
    pub async fn refresh_identities(&self) {
        self.refresher.refresh_all().await;
    }

    /// Runs one round of the check named `check` from every vantage, now,
    /// and returns its results (also queued for delivery).
    pub async fn probe_once(&self, check: &str) -> Vec<crate::probe::ProbeResult> {
        self.scheduler.probe_once(check).await
    }

    /// The queue of results not yet acknowledged.
    pub fn queue(&self) -> Arc<ResultQueue> {
        self.queue.clone()
    }

    /// Runs until `shutdown`: stops probing first, then lets the reporter
    /// deliver what is queued (bounded by the drain timeout).
    pub async fn run(self, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        tracker.spawn(self.reporter.run(shutdown.clone()));
        // Identities first (bounded by the DNS and echo timeouts), so the
        // first results already carry them.
        tokio::select! {
            _ = shutdown.cancelled() => {}
            () = self.refresher.refresh_all() => {}
        }
        tracker.spawn(self.refresher.run(shutdown.clone()));
        tracker.spawn(self.scheduler.run(shutdown.clone()));
        tracker.close();
        tracker.wait().await;
    }
}
