//! The agent's TOML configuration: parsing, validation and error reporting.
//!
//! Parsing is strict: unknown keys and invalid values are rejected with an
//! error naming the file, line, column and key, and saying what was expected.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::probe::identity::IdentityQuery;

mod validate;
mod values;
// The check schema and the loader are shared with the collector; the
// agent's config is built from them.
use crate::probe::proxy::ProxyUrl;
pub use values::Endpoint;
pub use vantage_check::{
    CheckConfig, CheckOrigin, Dial, HttpVersion, IpFamily, Method, NonEmpty, ResolverSpec,
    StatusCode, TargetUrl, default_check_interval,
};
pub use vantage_service::config::{
    ConfigError, Problem, count_within, duration_within, locate, parse_toml, read_config, units,
};

/// The whole agent configuration (`agent.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Unique, stable identity of this agent, e.g. `fra-1`.
    pub agent_id: NonEmpty,
    /// Region this agent stands for, e.g. `eu-central`.
    pub region: NonEmpty,
    /// Free-form labels sent to the collector (provider, asn, ...).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Source address every probe binds to (another egress IP on this host).
    #[serde(default)]
    pub source_ip: Option<IpAddr>,
    /// At most this many probes run at once across all checks.
    #[serde(default = "default_max_concurrent_probes")]
    pub max_concurrent_probes: usize,
    /// Send `X-Vantage-Probe: <agent>/<vantage>/<seq>` with every probe, so
    /// site owners can find probes in their CDN and WAF logs.
    #[serde(default = "default_true")]
    pub probe_header: bool,
    pub collector: CollectorConfig,
    #[serde(default)]
    pub spool: SpoolConfig,
    /// Prometheus metrics on `http://<this>/metrics`; off when absent.
    #[serde(default)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    #[serde(default)]
    pub dns: DnsConfig,
    /// How path probes are bounded (hops, probes, timeouts, concurrency).
    #[serde(default)]
    pub path: crate::probe::path::PathSettings,
    /// Egress paths; without any, one path named `direct` from `source_ip`.
    #[serde(default, rename = "vantage")]
    pub vantages: Vec<VantageConfig>,
    /// Checks of this agent alone; the collector may assign more.
    /// Shared with the scheduler and its loops: a thousand checks are
    /// held once, not once per holder.
    #[serde(default, rename = "check")]
    pub checks: Vec<Arc<CheckConfig>>,
}

fn default_true() -> bool {
    true
}

fn default_max_concurrent_probes() -> usize {
    // Probes spend their time waiting on the network; 32 keeps a few hundred
    // checks per minute flowing without bursts that look like a flood.
    32
}

/// The name of the implicit vantage of an agent that configures none.
pub const DIRECT_VANTAGE: &str = "direct";

impl AgentConfig {
    /// The configured vantages, or the implicit `direct` one (from
    /// `source_ip`) when there are none.
    pub fn effective_vantages(&self) -> Vec<VantageConfig> {
        if !self.vantages.is_empty() {
            return self.vantages.clone();
        }
        vec![VantageConfig {
            name: Spanned::new(
                0..0,
                NonEmpty::try_from(DIRECT_VANTAGE.to_owned()).expect("a non-empty constant"),
            ),
            source_ip: self.source_ip,
            proxy: None,
            region: None,
            ip_echo_url: None,
            ip_echo_interval: default_identity_interval(),
        }]
    }
}

/// One egress path: a source address, a forward proxy, or both.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VantageConfig {
    pub name: Spanned<NonEmpty>,
    /// Source address of this path's connections and DNS queries.
    #[serde(default)]
    pub source_ip: Option<IpAddr>,
    /// `http://`, `https://` or `socks5://[user:password@]host:port`.
    #[serde(default)]
    pub proxy: Option<ProxyUrl>,
    /// Region this path stands for, instead of the agent's.
    #[serde(default)]
    pub region: Option<NonEmpty>,
    /// A URL answering with the caller's public IP address as plain text,
    /// fetched through this path to learn its public egress address.
    #[serde(default)]
    pub ip_echo_url: Option<TargetUrl>,
    #[serde(default = "default_identity_interval", with = "humantime_serde")]
    pub ip_echo_interval: Duration,
}

/// Where and how results are delivered.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorConfig {
    /// gRPC endpoint of the collector, `https://host:port` (or `http://`
    /// to loopback, or anywhere with `insecure = true`).
    #[serde(default)]
    pub endpoint: Option<Endpoint>,
    /// Several collectors (on one database), instead of `endpoint`: the
    /// agent streams to one at a time and moves to the next when a
    /// session with it fails.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// The token printed by `vantage-collector agent add`.
    #[serde(default)]
    pub token: Option<String>,
    /// A file holding the token (first line), instead of `token`.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// CA (PEM) that signed the collector's certificate; default: the
    /// system's trust store.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    /// Allow sending the token over plaintext to a non-loopback collector.
    #[serde(default)]
    pub insecure: bool,
    /// Results per batch sent to the collector (capped by the collector's
    /// own limit, learnt at hello).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Batches sent before the first is acknowledged.
    #[serde(default = "default_window")]
    pub window: usize,
}

fn default_batch_size() -> usize {
    500
}
fn default_window() -> usize {
    4
}

impl CollectorConfig {
    /// The collectors, in the order they are tried: `endpoint`, or
    /// `endpoints`.
    pub fn all_endpoints(&self) -> Vec<&Endpoint> {
        self.endpoint.iter().chain(&self.endpoints).collect()
    }
}

impl Endpoint {
    /// Whether it is plaintext to somewhere other than loopback: the token
    /// would cross the network readable by anyone on the path.
    pub fn plaintext_beyond_loopback(&self) -> bool {
        let url = &self.0;
        if url.scheme() != "http" {
            return false;
        }
        match url.host() {
            Some(url::Host::Ipv4(ip)) => !ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => !ip.is_loopback(),
            Some(url::Host::Domain(name)) => name != "localhost",
            None => true,
        }
    }
}

impl CollectorConfig {
    /// The token, from `token` or `token_file`. A token file that group
    /// or others may read is refused, as ssh refuses such a key: anyone on
    /// the host could stream results in this agent's name.
    pub fn load_token(&self) -> Result<String, String> {
        match (&self.token, &self.token_file) {
            (Some(t), None) if t.trim().is_empty() => Err("collector.token is empty".into()),
            (Some(t), None) => Ok(t.trim().to_owned()),
            (None, Some(path)) => {
                let text = vantage_service::config::read_secret_file("collector.token_file", path)?;
                text.lines()
                    .next()
                    .map(|l| l.trim().to_owned())
                    .filter(|l| !l.is_empty())
                    .ok_or_else(|| format!("collector.token_file {} is empty", path.display()))
            }
            _ => Err("expected exactly one of collector.token or collector.token_file".into()),
        }
    }
}

/// The on-disk spool (`[spool]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// The spool file; without it results are kept in memory only and are
    /// lost when the agent stops.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Bytes of results kept at most (default 256 MiB); beyond, the oldest
    /// are dropped and recorded as a gap.
    #[serde(default = "default_spool_max_bytes")]
    pub max_bytes: u64,
    /// Results older than this are dropped unsent (default 7 days).
    #[serde(default = "default_spool_max_age", with = "humantime_serde")]
    pub max_age: Duration,
    /// Completed results are synced to disk at least this often.
    #[serde(default = "default_sync_interval", with = "humantime_serde")]
    pub sync_interval: Duration,
    /// Results held in memory when the disk cannot be written (or without
    /// a path); beyond, the oldest are dropped and recorded as a gap.
    #[serde(default = "default_memory_capacity")]
    pub memory_capacity: usize,
}

fn default_spool_max_bytes() -> u64 {
    256 * 1024 * 1024
}
fn default_spool_max_age() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_sync_interval() -> Duration {
    Duration::from_millis(500)
}
fn default_memory_capacity() -> usize {
    // About an hour of 10 checks at 30 s intervals, a few MB of memory.
    100_000
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            path: None,
            max_bytes: default_spool_max_bytes(),
            max_age: default_spool_max_age(),
            sync_interval: default_sync_interval(),
            memory_capacity: default_memory_capacity(),
        }
    }
}

impl SpoolConfig {
    pub fn settings(&self) -> crate::spool::SpoolSettings {
        crate::spool::SpoolSettings {
            path: self.path.clone(),
            max_bytes: self.max_bytes,
            max_age: self.max_age,
            sync_interval: self.sync_interval,
            memory_capacity: self.memory_capacity,
        }
    }
}

/// Which nameserver answers the probes' lookups.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// Resolvers of every check that names none: `system` (from
    /// /etc/resolv.conf), `IP:PORT` / `udp://IP:PORT`, or `tcp://IP:PORT`.
    #[serde(default = "default_resolvers")]
    pub resolvers: Vec<ResolverSpec>,
    /// Budget for one lookup (the check's timeout still bounds the probe).
    #[serde(default = "default_dns_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// How often each resolver is asked who it is.
    #[serde(default = "default_identity_interval", with = "humantime_serde")]
    pub identity_interval: Duration,
    /// Names whose answer is the asking resolver's address, `NAME TYPE`;
    /// empty turns identity learning off.
    #[serde(default = "crate::probe::identity::default_queries")]
    pub identity_queries: Vec<IdentityQuery>,
}

fn default_resolvers() -> Vec<ResolverSpec> {
    vec![ResolverSpec::System]
}
fn default_dns_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_identity_interval() -> Duration {
    // A resolver's egress changes with anycast routing or failover, which
    // is slow; five minutes costs a handful of queries per hour.
    Duration::from_secs(300)
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            resolvers: default_resolvers(),
            timeout: default_dns_timeout(),
            identity_interval: default_identity_interval(),
            identity_queries: crate::probe::identity::default_queries(),
        }
    }
}

impl AgentConfig {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::parse(path, &read_config(path)?)
    }

    /// Parses and validates `text`; `path` is only used in error messages.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let config: Self = parse_toml(path, text)?;
        config.validate().map_err(|p| p.into_error(path, text))?;
        for warning in config.checks.iter().flat_map(|c| c.warnings()) {
            tracing::warn!(file = %path.display(), "{warning}");
        }
        Ok(config)
    }
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
