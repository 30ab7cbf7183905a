//! An egress path ("vantage") as probes use it: where a probe leaves from
//! (a source address, a forward proxy, or both), the resolvers asked from
//! there, and what the path knows about its own identity (the public
//! address an IP-echo URL sees). The agent builds them from its
//! configuration (`crate::vantage`) and keeps their identity fresh.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use url::Url;
use vantage_check::{CheckConfig, ResolverSpec};

use super::DnsResolver;
use super::dns::DnsSetupError;
use super::proxy::ProxyUrl;

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
    pub(crate) echo_url: Option<Url>,
    pub(crate) echo_interval: Duration,
    echo_ip: RwLock<Option<IpAddr>>,
    /// What it was built from, to tell whether a reload changes it.
    spec: VantageSpec,
}

/// What a vantage is made from: its part of the agent's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct VantageSpec {
    pub name: String,
    pub source_ip: Option<IpAddr>,
    pub proxy: Option<ProxyUrl>,
    pub region: Option<String>,
    pub echo_url: Option<Url>,
    pub echo_interval: Duration,
}

/// The resolvers of a vantage: the nameservers its checks name, and how
/// long a lookup may take.
#[derive(Debug, Clone, PartialEq)]
pub struct VantageDns {
    /// Asked by a check that names none.
    pub default_resolvers: Vec<ResolverSpec>,
    /// Every nameserver some check names (or the defaults).
    pub resolvers: Vec<ResolverSpec>,
    pub timeout: Duration,
}

impl Vantage {
    /// A vantage made from `spec`, with a resolver per nameserver of `dns`
    /// bound to its source address.
    pub fn new(spec: VantageSpec, dns: &VantageDns) -> Result<Self, DnsSetupError> {
        let mut resolvers = BTreeMap::new();
        for resolver in &dns.resolvers {
            if !resolvers.contains_key(resolver) {
                let made = DnsResolver::new(resolver, dns.timeout, spec.source_ip)?;
                resolvers.insert(resolver.clone(), Arc::new(made));
            }
        }
        Ok(Self {
            name: spec.name.clone(),
            source_ip: spec.source_ip,
            proxy: spec.proxy.clone(),
            region: spec.region.clone(),
            resolvers: RwLock::new(resolvers),
            default_resolvers: dns.default_resolvers.clone(),
            dns_timeout: dns.timeout,
            echo_url: spec.echo_url.clone(),
            echo_interval: spec.echo_interval,
            echo_ip: RwLock::new(None),
            spec,
        })
    }

    /// What this vantage was made from.
    pub fn spec(&self) -> &VantageSpec {
        &self.spec
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
