//! Name resolution for probes: one hickory resolver per nameserver, no
//! cache, so every result knows exactly which nameserver answered what.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ProtocolConfig, ResolveHosts,
    ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;

use super::ResolvedAddr;
use crate::config::ResolverSpec;

/// The resolver could not be set up (bad system configuration).
#[derive(Debug, thiserror::Error)]
pub enum DnsSetupError {
    #[error("cannot read the system resolver configuration: {0}")]
    SystemConf(String),
    #[error("the system resolver configuration names no nameserver")]
    NoNameserver,
    #[error("cannot build the resolver for {server}: {message}")]
    Build { server: String, message: String },
}

/// A lookup that failed, with how long it took to fail.
#[derive(Debug, Clone)]
pub struct LookupFailure {
    pub message: String,
    pub elapsed: Duration,
}

/// A successful lookup: every A/AAAA answer, and the time it took.
#[derive(Debug, Clone)]
pub struct LookupAnswer {
    pub addrs: Vec<ResolvedAddr>,
    pub elapsed: Duration,
}

/// A resolver bound to exactly one nameserver.
#[derive(Clone)]
pub struct DnsResolver {
    name: String,
    inner: TokioResolver,
}

impl DnsResolver {
    /// Builds the resolver for `spec`. `system` uses the first nameserver of
    /// /etc/resolv.conf (one nameserver, so the answer's origin is known).
    /// Queries leave from `source_ip` when given.
    pub fn new(
        spec: &ResolverSpec,
        timeout: Duration,
        source_ip: Option<IpAddr>,
    ) -> Result<Self, DnsSetupError> {
        let (server, protocol, label) = match spec {
            ResolverSpec::Udp(a) => (*a, ProtocolConfig::Udp, spec.to_string()),
            ResolverSpec::Tcp(a) => (*a, ProtocolConfig::Tcp, spec.to_string()),
            ResolverSpec::System => {
                let (conf, _) = hickory_resolver::system_conf::read_system_conf()
                    .map_err(|e| DnsSetupError::SystemConf(e.to_string()))?;
                let ns = conf
                    .name_servers()
                    .first()
                    .ok_or(DnsSetupError::NoNameserver)?;
                let port = ns.connections.first().map_or(53, |c| c.port);
                let addr = SocketAddr::new(ns.ip, port);
                (addr, ProtocolConfig::Udp, format!("system(udp://{addr})"))
            }
        };
        let mut connection = ConnectionConfig::new(protocol);
        connection.port = server.port();
        connection.bind_addr = source_ip.map(|ip| SocketAddr::new(ip, 0));
        let ns = NameServerConfig::new(server.ip(), true, vec![connection]);
        let mut opts = ResolverOpts::default();
        // Every probe must reach the nameserver: a cached answer would hide
        // a resolver that has since changed its mind.
        opts.cache_size = 0;
        opts.timeout = timeout;
        // One attempt: a retry would blur the lookup time and the failure.
        opts.attempts = 1;
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        opts.use_hosts_file = ResolveHosts::Never;
        let inner = TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(vec![ns]),
            TokioRuntimeProvider::default(),
        )
        .with_options(opts)
        .build()
        .map_err(|e| DnsSetupError::Build {
            server: label.clone(),
            message: e.to_string(),
        })?;
        Ok(Self { name: label, inner })
    }

    /// The nameserver this resolver asks, e.g. `udp://127.0.0.1:53`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Looks up every A and AAAA record of `host`.
    pub async fn lookup(&self, host: &str) -> Result<LookupAnswer, LookupFailure> {
        let fqdn = if host.ends_with('.') {
            host.to_owned()
        } else {
            format!("{host}.")
        };
        let started = Instant::now();
        let lookup = self.inner.lookup_ip(fqdn.as_str()).await;
        let elapsed = started.elapsed();
        match lookup {
            Ok(lookup) => {
                let addrs: Vec<ResolvedAddr> = lookup
                    .as_lookup()
                    .answers()
                    .iter()
                    .filter_map(|record| {
                        let ip = match &record.data {
                            RData::A(a) => IpAddr::V4(a.0),
                            RData::AAAA(aaaa) => IpAddr::V6(aaaa.0),
                            _ => return None,
                        };
                        Some(ResolvedAddr {
                            ip,
                            ttl_seconds: record.ttl,
                        })
                    })
                    .collect();
                if addrs.is_empty() {
                    return Err(LookupFailure {
                        message: format!("{host}: no A or AAAA records"),
                        elapsed,
                    });
                }
                Ok(LookupAnswer { addrs, elapsed })
            }
            Err(e) => Err(LookupFailure {
                message: format!("{host}: {e}"),
                elapsed,
            }),
        }
    }
}
