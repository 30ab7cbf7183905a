//! Name resolution for probes: one hickory resolver per nameserver, no
//! cache, so every result knows exactly which nameserver answered what.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ProtocolConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RData;

use super::identity::{self, IdentityQuery};
use super::{ResolvedAddr, ResolverIdentity};
use vantage_check::{IpFamily, ResolverSpec};

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
    /// The response code, when a response arrived (`NXDOMAIN`, `SERVFAIL`).
    pub rcode: Option<String>,
}

/// A successful lookup: every A/AAAA answer, and the time it took.
#[derive(Debug, Clone)]
pub struct LookupAnswer {
    pub addrs: Vec<ResolvedAddr>,
    pub elapsed: Duration,
    pub rcode: String,
}

/// A resolver bound to exactly one nameserver, with what it last said
/// about its own identity.
#[derive(Clone)]
pub struct DnsResolver {
    name: String,
    server: SocketAddr,
    protocol: &'static str,
    source_ip: Option<IpAddr>,
    timeout: Duration,
    inner: TokioResolver,
    identity: Arc<RwLock<ResolverIdentity>>,
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
        let protocol_name = if matches!(protocol, ProtocolConfig::Tcp) {
            "tcp"
        } else {
            "udp"
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
        Ok(Self {
            name: label,
            server,
            protocol: protocol_name,
            source_ip,
            timeout,
            inner,
            identity: Arc::default(),
        })
    }

    /// The nameserver this resolver asks, e.g. `udp://127.0.0.1:53`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the resolver last said about itself.
    pub fn identity(&self) -> ResolverIdentity {
        self.identity
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Asks the resolver who it is (see [`identity::learn`]) and keeps the
    /// answer for the results that follow.
    pub async fn refresh_identity(&self, queries: &[IdentityQuery]) -> ResolverIdentity {
        let learned = identity::learn(
            self.server,
            self.protocol,
            self.source_ip,
            self.timeout,
            queries,
        )
        .await;
        *self.identity.write().unwrap_or_else(|e| e.into_inner()) = learned.clone();
        learned
    }

    /// Looks up the A and/or AAAA records of `host`, as `family` asks. With
    /// `any`, both queries run at once and the answers are listed IPv4
    /// first, as a stub resolver orders them.
    pub async fn lookup(
        &self,
        host: &str,
        family: IpFamily,
    ) -> Result<LookupAnswer, LookupFailure> {
        let fqdn = if host.ends_with('.') {
            host.to_owned()
        } else {
            format!("{host}.")
        };
        let started = Instant::now();
        let (v4, v6) = match family {
            IpFamily::V4 => (Some(self.inner.ipv4_lookup(fqdn.as_str()).await), None),
            IpFamily::V6 => (None, Some(self.inner.ipv6_lookup(fqdn.as_str()).await)),
            IpFamily::Any => {
                let (a, b) = tokio::join!(
                    self.inner.ipv4_lookup(fqdn.as_str()),
                    self.inner.ipv6_lookup(fqdn.as_str())
                );
                (Some(a), Some(b))
            }
        };
        let elapsed = started.elapsed();
        let mut addrs = Vec::new();
        let mut rcodes = Vec::new();
        let mut errors = Vec::new();
        for lookup in [v4, v6].into_iter().flatten() {
            match lookup {
                Ok(lookup) => {
                    rcodes.push(rcode_name(ResponseCode::NoError));
                    addrs.extend(lookup.answers().iter().filter_map(|record| {
                        let ip = match &record.data {
                            RData::A(a) => IpAddr::V4(a.0),
                            RData::AAAA(aaaa) => IpAddr::V6(aaaa.0),
                            _ => return None,
                        };
                        Some(ResolvedAddr {
                            ip,
                            ttl_seconds: record.ttl,
                        })
                    }));
                }
                Err(e) => {
                    if let Some(code) = response_code(&e) {
                        rcodes.push(rcode_name(code));
                    }
                    errors.push(e.to_string());
                }
            }
        }
        // NOERROR for one family and NXDOMAIN for the other cannot both be
        // true; report the most telling: an error code over NOERROR.
        let rcode = rcodes
            .iter()
            .find(|c| *c != "NOERROR")
            .or(rcodes.first())
            .cloned();
        if addrs.is_empty() {
            let message = if errors.is_empty() {
                format!("{host}: no A or AAAA records")
            } else {
                format!("{host}: {}", errors.join("; "))
            };
            return Err(LookupFailure {
                message,
                elapsed,
                rcode,
            });
        }
        Ok(LookupAnswer {
            addrs,
            elapsed,
            rcode: rcode.unwrap_or_else(|| rcode_name(ResponseCode::NoError)),
        })
    }
}

/// The response code inside a lookup error, when a response arrived.
fn response_code(error: &NetError) -> Option<ResponseCode> {
    match error {
        NetError::Dns(DnsError::ResponseCode(code)) => Some(*code),
        NetError::Dns(DnsError::NoRecordsFound(none)) => Some(none.response_code),
        _ => None,
    }
}

/// The response code as `dig` prints it: `NOERROR`, `NXDOMAIN`, ...
pub fn rcode_name(code: ResponseCode) -> String {
    let name = match u16::from(code) {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        6 => "YXDOMAIN",
        7 => "YXRRSET",
        8 => "NXRRSET",
        9 => "NOTAUTH",
        10 => "NOTZONE",
        other => return format!("RCODE{other}"),
    };
    name.to_owned()
}
