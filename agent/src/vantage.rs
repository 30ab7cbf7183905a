//! Egress paths ("vantages"): where a probe leaves from (a source address,
//! a forward proxy, or both), the resolvers asked from there, and what the
//! path knows about its own identity (the resolvers' egress addresses and
//! NSIDs, the public address an IP-echo URL sees), kept fresh by the
//! [`IdentityRefresher`].

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use url::Url;

use crate::config::{AgentConfig, CheckConfig, DnsConfig, ProxyUrl, ResolverSpec, VantageConfig};
use crate::probe::DnsResolver;
use crate::probe::dns::DnsSetupError;
use crate::probe::identity::IdentityQuery;

/// Bytes of an IP-echo answer read at most: an address is at most 45.
const ECHO_MAX_BYTES: usize = 256;
/// Budget for one IP-echo request.
const ECHO_TIMEOUT: Duration = Duration::from_secs(10);

/// One egress path, as probes use it.
pub struct Vantage {
    pub name: String,
    pub source_ip: Option<IpAddr>,
    pub proxy: Option<ProxyUrl>,
    /// Region override; `None` means the agent's.
    pub region: Option<String>,
    /// One resolver per nameserver a check asks from here; grows when a
    /// new check names another ([`Vantage::ensure_resolvers`]).
    resolvers: RwLock<BTreeMap<ResolverSpec, Arc<DnsResolver>>>,
    default_resolvers: Vec<ResolverSpec>,
    dns_timeout: Duration,
    echo_url: Option<Url>,
    echo_interval: Duration,
    echo_ip: RwLock<Option<IpAddr>>,
    /// What it was built from, to tell whether a reload changes it.
    config: VantageConfig,
}

impl Vantage {
    /// Every vantage of `config` (the implicit `direct` one if it names
    /// none), each with a resolver per nameserver any check uses.
    pub fn build_all(config: &AgentConfig) -> Result<Vec<Arc<Self>>, DnsSetupError> {
        let mut specs: Vec<&ResolverSpec> = config.dns.resolvers.iter().collect();
        for check in &config.checks {
            specs.extend(check.resolvers.iter().flatten());
        }
        let resolvers = |source_ip: Option<IpAddr>| {
            let mut map = BTreeMap::new();
            for spec in &specs {
                if let std::collections::btree_map::Entry::Vacant(slot) = map.entry((*spec).clone())
                {
                    slot.insert(Arc::new(DnsResolver::new(
                        spec,
                        config.dns.timeout,
                        source_ip,
                    )?));
                }
            }
            Ok::<_, DnsSetupError>(map)
        };
        config
            .effective_vantages()
            .iter()
            .map(|v: &VantageConfig| {
                Ok(Arc::new(Self {
                    name: v.name.get_ref().to_string(),
                    source_ip: v.source_ip,
                    proxy: v.proxy.clone(),
                    region: v.region.as_ref().map(ToString::to_string),
                    resolvers: RwLock::new(resolvers(v.source_ip)?),
                    default_resolvers: config.dns.resolvers.clone(),
                    dns_timeout: config.dns.timeout,
                    echo_url: v.ip_echo_url.as_ref().map(|u| u.url().clone()),
                    echo_interval: v.ip_echo_interval,
                    echo_ip: RwLock::new(None),
                    config: v.clone(),
                }))
            })
            .collect()
    }

    /// The vantages of `config` after a reload: those whose settings (and
    /// the `[dns]` settings) did not change are the running ones, with
    /// what they learnt about themselves; the others are new.
    pub fn rebuild_all(
        config: &AgentConfig,
        running: &[Arc<Self>],
        dns_changed: bool,
    ) -> Result<Vec<Arc<Self>>, DnsSetupError> {
        let fresh = Self::build_all(config)?;
        Ok(fresh
            .into_iter()
            .map(|new| {
                running
                    .iter()
                    .find(|old| !dns_changed && old.config == new.config)
                    .cloned()
                    .unwrap_or(new)
            })
            .collect())
    }

    /// Whether `check` runs from this vantage.
    pub fn runs(&self, check: &CheckConfig) -> bool {
        check
            .vantages
            .as_ref()
            .is_none_or(|names| names.contains(&self.name))
    }

    /// Makes the resolvers `check` names (a check assigned after start)
    /// ready; their identity is learnt at the next refresh.
    pub fn ensure_resolvers(&self, check: &CheckConfig) -> Result<(), DnsSetupError> {
        let Some(specs) = &check.resolvers else {
            return Ok(());
        };
        let mut resolvers = self.resolvers.write().unwrap_or_else(|e| e.into_inner());
        for spec in specs {
            if !resolvers.contains_key(spec) {
                let resolver = DnsResolver::new(spec, self.dns_timeout, self.source_ip)?;
                resolvers.insert(spec.clone(), Arc::new(resolver));
            }
        }
        Ok(())
    }

    /// The resolvers `check` asks from here, in configuration order.
    pub fn resolvers_for(&self, check: &CheckConfig) -> Vec<Arc<DnsResolver>> {
        let resolvers = self.resolvers.read().unwrap_or_else(|e| e.into_inner());
        check
            .resolvers
            .as_ref()
            .unwrap_or(&self.default_resolvers)
            .iter()
            .filter_map(|spec| resolvers.get(spec).cloned())
            .collect()
    }

    /// Every resolver of this vantage.
    pub fn resolvers(&self) -> Vec<Arc<DnsResolver>> {
        let resolvers = self.resolvers.read().unwrap_or_else(|e| e.into_inner());
        resolvers.values().cloned().collect()
    }

    /// The public address the IP-echo URL last saw through this path.
    pub fn echo_ip(&self) -> Option<IpAddr> {
        *self.echo_ip.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The proxy's socket address; its host is resolved by the system
    /// (a proxy is infrastructure of the vantage, not a probed site).
    pub async fn proxy_addr(&self, proxy: &ProxyUrl) -> Result<SocketAddr, String> {
        if let Ok(ip) = proxy.host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, proxy.port));
        }
        tokio::net::lookup_host((proxy.host.as_str(), proxy.port))
            .await
            .map_err(|e| format!("resolving proxy {}: {e}", proxy.redacted()))?
            .next()
            .ok_or_else(|| format!("resolving proxy {}: no address", proxy.redacted()))
    }

    /// Asks the IP-echo URL, through this path, which address it sees.
    pub async fn refresh_echo(&self) -> Result<Option<IpAddr>, String> {
        let Some(url) = &self.echo_url else {
            return Ok(None);
        };
        let mut builder = reqwest::Client::builder()
            .timeout(ECHO_TIMEOUT)
            .local_address(self.source_ip)
            .user_agent(format!("vantage-agent/{}", env!("CARGO_PKG_VERSION")));
        builder = match &self.proxy {
            Some(proxy) => builder.proxy(
                reqwest::Proxy::all(proxy.with_credentials())
                    .map_err(|e| format!("proxy {}: {e}", proxy.redacted()))?,
            ),
            None => builder.no_proxy(),
        };
        let client = builder.build().map_err(|e| e.to_string())?;
        let mut response = client
            .get(url.clone())
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| format!("{url}: {e}"))?;
        let mut body = Vec::new();
        while body.len() < ECHO_MAX_BYTES {
            match response.chunk().await.map_err(|e| format!("{url}: {e}"))? {
                Some(chunk) => body.extend_from_slice(&chunk),
                None => break,
            }
        }
        let text = String::from_utf8_lossy(&body[..body.len().min(ECHO_MAX_BYTES)]);
        let ip: IpAddr = text
            .trim()
            .parse()
            .map_err(|_| format!("{url}: expected an IP address, got {:?}", text.trim()))?;
        *self.echo_ip.write().unwrap_or_else(|e| e.into_inner()) = Some(ip);
        Ok(Some(ip))
    }
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
