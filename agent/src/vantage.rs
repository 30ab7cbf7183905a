//! The agent's vantages: built from its configuration (the implicit
//! `direct` one when it names none), rebuilt on a reload keeping those
//! that did not change, and their identity kept fresh by the
//! [`IdentityRefresher`] (the resolvers' egress addresses and NSIDs, the
//! public address an IP-echo URL sees).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{AgentConfig, DnsConfig, ResolverSpec, VantageConfig};
use crate::probe::dns::DnsSetupError;
use crate::probe::identity::IdentityQuery;
pub use crate::probe::vantage::{Vantage, VantageDns, VantageSpec};

/// Every vantage of `config`, each with a resolver per nameserver any
/// check uses.
pub fn build_all(config: &AgentConfig) -> Result<Vec<Arc<Vantage>>, DnsSetupError> {
    let mut resolvers: Vec<ResolverSpec> = config.dns.resolvers.clone();
    for check in &config.checks {
        resolvers.extend(check.resolvers.iter().flatten().cloned());
    }
    let dns = VantageDns {
        default_resolvers: config.dns.resolvers.clone(),
        resolvers,
        timeout: config.dns.timeout,
    };
    config
        .effective_vantages()
        .iter()
        .map(|v| Vantage::new(spec_of(v), &dns).map(Arc::new))
        .collect()
}

fn spec_of(v: &VantageConfig) -> VantageSpec {
    VantageSpec {
        name: v.name.get_ref().to_string(),
        source_ip: v.source_ip,
        proxy: v.proxy.clone(),
        region: v.region.as_ref().map(ToString::to_string),
        echo_url: v.ip_echo_url.as_ref().map(|u| u.url().clone()),
        echo_interval: v.ip_echo_interval,
    }
}

/// The vantages of `config` after a reload: those whose settings (and the
/// `[dns]` settings) did not change are the running ones, with what they
/// learnt about themselves; the others are new.
pub fn rebuild_all(
    config: &AgentConfig,
    running: &[Arc<Vantage>],
    dns_changed: bool,
) -> Result<Vec<Arc<Vantage>>, DnsSetupError> {
    let fresh = build_all(config)?;
    Ok(fresh
        .into_iter()
        .map(|new| {
            running
                .iter()
                .find(|old| !dns_changed && old.spec() == new.spec())
                .cloned()
                .unwrap_or(new)
        })
        .collect())
}

/// Keeps every vantage's identity fresh: each resolver asked who it is
/// every `identity_interval`, each IP-echo URL fetched every
/// `ip_echo_interval`. Failures are logged and recorded, never fatal.
#[derive(Clone)]
pub struct IdentityRefresher {
    vantages: Vec<Arc<Vantage>>,
    interval: Duration,
    queries: Vec<IdentityQuery>,
}

impl IdentityRefresher {
    pub fn new(vantages: Vec<Arc<Vantage>>, dns: &DnsConfig) -> Self {
        Self {
            vantages,
            interval: dns.identity_interval,
            queries: dns.identity_queries.clone(),
        }
    }

    /// Learns every identity once, now. The agent calls this before the
    /// first probe so results carry identities from the start.
    pub async fn refresh_all(&self) {
        let tracker = TaskTracker::new();
        for vantage in &self.vantages {
            tracker.spawn(refresh_resolvers(vantage.clone(), self.queries.clone()));
            tracker.spawn(refresh_echo(vantage.clone()));
        }
        tracker.close();
        tracker.wait().await;
    }

    /// Refreshes on schedule until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        for vantage in self.vantages {
            if !self.queries.is_empty() {
                let (vantage, queries) = (vantage.clone(), self.queries.clone());
                tracker.spawn(every(self.interval, shutdown.clone(), move || {
                    refresh_resolvers(vantage.clone(), queries.clone())
                }));
            }
            if vantage.echo_url.is_some() {
                let interval = vantage.echo_interval;
                tracker.spawn(every(interval, shutdown.clone(), move || {
                    refresh_echo(vantage.clone())
                }));
            }
        }
        tracker.close();
        tracker.wait().await;
        // With nothing to refresh, idle until shutdown: ending early would
        // read as a failure to the supervisor.
        shutdown.cancelled().await;
    }
}

/// Runs `job` every `interval` (first after one interval) until `shutdown`.
async fn every<F, Fut>(interval: Duration, shutdown: CancellationToken, job: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            () = job() => {}
        }
    }
}

async fn refresh_resolvers(vantage: Arc<Vantage>, queries: Vec<IdentityQuery>) {
    if queries.is_empty() {
        return;
    }
    for resolver in vantage.resolvers() {
        let identity = resolver.refresh_identity(&queries).await;
        if identity.egress_ip.is_some() {
            tracing::debug!(
                vantage = %vantage.name,
                resolver = resolver.name(),
                egress_ip = ?identity.egress_ip,
                nsid = ?identity.nsid,
                "Learned resolver identity."
            );
        } else {
            tracing::warn!(
                vantage = %vantage.name,
                resolver = resolver.name(),
                error = %identity.error,
                "Could not learn the resolver's identity."
            );
        }
    }
}

async fn refresh_echo(vantage: Arc<Vantage>) {
    match vantage.refresh_echo().await {
        Ok(None) => {}
        Ok(Some(ip)) => {
            tracing::debug!(vantage = %vantage.name, %ip, "Learned public egress address.");
        }
        Err(error) => {
            tracing::warn!(vantage = %vantage.name, %error, "IP echo failed.");
        }
    }
}
