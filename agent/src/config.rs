//! The agent's TOML configuration: parsing, validation and error reporting.
//!
//! Parsing is strict: unknown keys and invalid values are rejected with an
//! error naming the file, line, column and key, and saying what was expected.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use url::Url;

use crate::probe::identity::IdentityQuery;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        /// Dotted path of the offending key, e.g. `check[0].interval`.
        key: String,
        message: String,
    },
}

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
    /// Egress paths; without any, one path named `direct` from `source_ip`.
    #[serde(default, rename = "vantage")]
    pub vantages: Vec<VantageConfig>,
    #[serde(rename = "check")]
    pub checks: Vec<CheckConfig>,
}

fn default_true() -> bool {
    true
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
            name: Spanned::new(0..0, NonEmpty(DIRECT_VANTAGE.to_owned())),
            source_ip: self.source_ip,
            proxy: None,
            region: None,
            ip_echo_url: None,
            ip_echo_interval: default_identity_interval(),
        }]
    }
}

/// One egress path: a source address, a forward proxy, or both.
#[derive(Debug, Clone, Deserialize)]
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

/// Which kind of forward proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyKind {
    Http,
    Https,
    Socks5,
}

/// A forward proxy, with its credentials decoded.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct ProxyUrl {
    pub kind: ProxyKind,
    pub host: String,
    pub port: u16,
    pub credentials: Option<(String, String)>,
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print credentials.
        f.write_str(&self.redacted())
    }
}

impl TryFrom<String> for ProxyUrl {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let expected = "expected http://, https:// or socks5://[USER:PASSWORD@]HOST:PORT";
        let url = Url::parse(&s).map_err(|e| format!("invalid proxy URL: {e}: {expected}"))?;
        let (kind, default_port) = match url.scheme() {
            "http" => (ProxyKind::Http, 80),
            "https" => (ProxyKind::Https, 443),
            "socks5" => (ProxyKind::Socks5, 1080),
            other => return Err(format!("invalid proxy scheme {other:?}: {expected}")),
        };
        let host = match url.host() {
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            Some(host) => host.to_string(),
            None => return Err(format!("invalid proxy URL: no host: {expected}")),
        };
        if !matches!(url.path(), "" | "/") || url.query().is_some() {
            return Err(format!(
                "invalid proxy URL: unexpected path or query: {expected}"
            ));
        }
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| "invalid proxy URL: credentials are not UTF-8".to_owned())
        };
        let credentials = if url.username().is_empty() {
            None
        } else {
            Some((
                decode(url.username())?,
                decode(url.password().unwrap_or(""))?,
            ))
        };
        Ok(Self {
            kind,
            host,
            port: url.port().unwrap_or(default_port),
            credentials,
        })
    }
}

impl ProxyUrl {
    /// The proxy's URL without credentials, safe to log and store.
    pub fn redacted(&self) -> String {
        let scheme = match self.kind {
            ProxyKind::Http => "http",
            ProxyKind::Https => "https",
            ProxyKind::Socks5 => "socks5",
        };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("{scheme}://{host}:{}", self.port)
    }

    /// The URL with credentials, for clients that take one (IP echo).
    pub fn with_credentials(&self) -> String {
        match &self.credentials {
            None => self.redacted(),
            Some((user, pass)) => {
                let enc = |s: &str| {
                    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC)
                        .to_string()
                };
                let redacted = self.redacted();
                let (scheme, rest) = redacted.split_once("://").unwrap_or(("http", &redacted));
                format!("{scheme}://{}:{}@{rest}", enc(user), enc(pass))
            }
        }
    }
}

fn default_max_concurrent_probes() -> usize {
    // Probes spend their time waiting on the network; 32 keeps a few hundred
    // checks per minute flowing without bursts that look like a flood.
    32
}

/// Where and how results are delivered.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorConfig {
    /// gRPC endpoint of the collector, `https://host:port` (or `http://`
    /// to loopback, or anywhere with `insecure = true`).
    pub endpoint: Endpoint,
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
    /// Whether the endpoint is plaintext to somewhere other than loopback:
    /// the token would cross the network readable by anyone on the path.
    pub fn plaintext_beyond_loopback(&self) -> bool {
        let url = &self.endpoint.0;
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

    /// The token, from `token` or `token_file`.
    pub fn load_token(&self) -> Result<String, String> {
        match (&self.token, &self.token_file) {
            (Some(t), None) => Ok(t.trim().to_owned()),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read collector.token_file {}: {e}", path.display()))
                .and_then(|text| {
                    text.lines()
                        .next()
                        .map(|l| l.trim().to_owned())
                        .filter(|l| !l.is_empty())
                        .ok_or_else(|| format!("collector.token_file {} is empty", path.display()))
                }),
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
#[derive(Debug, Clone, Deserialize)]
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

/// One nameserver, or the system's configuration.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Default, Deserialize)]
#[serde(try_from = "String")]
pub enum ResolverSpec {
    #[default]
    System,
    Udp(SocketAddr),
    Tcp(SocketAddr),
}

impl FromStr for ResolverSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let expected = "expected `system`, `IP:PORT`, `udp://IP:PORT` or `tcp://IP:PORT`";
        if s == "system" {
            return Ok(Self::System);
        }
        let (ctor, rest): (fn(SocketAddr) -> Self, &str) = if let Some(r) = s.strip_prefix("tcp://")
        {
            (Self::Tcp, r)
        } else if let Some(r) = s.strip_prefix("udp://") {
            (Self::Udp, r)
        } else {
            (Self::Udp, s)
        };
        rest.parse::<SocketAddr>()
            .map(ctor)
            .map_err(|_| format!("invalid resolver {s:?}: {expected}"))
    }
}

impl TryFrom<String> for ResolverSpec {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl fmt::Display for ResolverSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::System => f.write_str("system"),
            Self::Udp(a) => write!(f, "udp://{a}"),
            Self::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

/// One target URL probed on a schedule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckConfig {
    pub name: Spanned<NonEmpty>,
    pub url: TargetUrl,
    #[serde(with = "humantime_serde", default = "default_interval")]
    pub interval: Duration,
    #[serde(with = "humantime_serde", default = "default_timeout")]
    pub timeout: Duration,
    #[serde(default)]
    pub method: Method,
    /// Statuses that count as success; empty means any 2xx or 3xx.
    #[serde(default)]
    pub expected_status: Vec<StatusCode>,
    /// Resolvers for this check (one result per resolver per round);
    /// default: `[dns] resolvers`.
    #[serde(default)]
    pub resolvers: Option<Vec<ResolverSpec>>,
    /// Which address families to resolve and dial.
    #[serde(default)]
    pub ip_family: IpFamily,
    /// Dial the first answer, or each (one result per address).
    #[serde(default)]
    pub dial: Dial,
    /// Redirects followed at most; 0 (default) makes a 3xx the result.
    #[serde(default)]
    pub follow_redirects: u8,
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Body bytes read and hashed at most; the rest is not downloaded.
    #[serde(default = "default_body_hash_bytes")]
    pub body_hash_bytes: usize,
    /// A certificate expiring sooner than this fails the probe as
    /// `cert_expiry`; 0 turns the check off.
    #[serde(default = "default_cert_expiry_threshold", with = "humantime_serde")]
    pub cert_expiry_threshold: Duration,
    /// PEM file of extra CAs trusted for this check (private PKI).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// HTTP version offered: `auto` (ALPN h2 and http/1.1 on https, 1.1 on
    /// http), `1.1`, or `2` (h2 by ALPN, or prior knowledge on http).
    #[serde(default)]
    pub http_version: HttpVersion,
    /// The vantages this check runs from; default: all.
    #[serde(default)]
    pub vantages: Option<Vec<String>>,
}

fn default_body_hash_bytes() -> usize {
    64 * 1024
}
fn default_cert_expiry_threshold() -> Duration {
    // A week: enough warning to renew, late enough not to page on every
    // certificate in its last renewal window.
    Duration::from_secs(7 * 24 * 3600)
}

/// The address families a check resolves and dials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpFamily {
    #[default]
    Any,
    V4,
    V6,
}

/// Which resolved addresses a check dials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dial {
    #[default]
    First,
    Each,
}

/// The HTTP version a check offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
pub enum HttpVersion {
    #[default]
    #[serde(rename = "auto")]
    Auto,
    #[serde(rename = "1.1")]
    Http1,
    #[serde(rename = "2")]
    Http2,
}

fn default_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

impl CheckConfig {
    /// Whether `status` counts as success for this check.
    pub fn expects(&self, status: u16) -> bool {
        if self.expected_status.is_empty() {
            (200..400).contains(&status)
        } else {
            self.expected_status.iter().any(|s| s.0 == status)
        }
    }
}

/// A string that must not be empty or blank.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct NonEmpty(String);

impl TryFrom<String> for NonEmpty {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.trim().is_empty() {
            Err("expected a non-empty string".into())
        } else {
            Ok(Self(s))
        }
    }
}

impl NonEmpty {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NonEmpty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An `http://` or `https://` URL with a host.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct TargetUrl(Url);

impl TryFrom<String> for TargetUrl {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let url = Url::parse(&s).map_err(|e| format!("invalid URL {s:?}: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("invalid URL {s:?}: expected scheme http or https"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("invalid URL {s:?}: expected a host"));
        }
        Ok(Self(url))
    }
}

impl TargetUrl {
    pub fn url(&self) -> &Url {
        &self.0
    }
}

/// The collector's gRPC endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Endpoint(Url);

impl TryFrom<String> for Endpoint {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let url = Url::parse(&s).map_err(|e| format!("invalid endpoint {s:?}: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(format!(
                "invalid endpoint {s:?}: expected http://HOST:PORT or https://HOST:PORT"
            ));
        }
        Ok(Self(url))
    }
}

impl Endpoint {
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

/// HTTP method of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    #[default]
    Get,
    Head,
    Post,
    Options,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Head => "HEAD",
            Self::Post => "POST",
            Self::Options => "OPTIONS",
        }
    }
}

/// An HTTP status code, 100..=599.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "u16")]
pub struct StatusCode(pub u16);

impl TryFrom<u16> for StatusCode {
    type Error = String;
    fn try_from(v: u16) -> Result<Self, String> {
        if (100..=599).contains(&v) {
            Ok(Self(v))
        } else {
            Err(format!("invalid status {v}: expected 100..=599"))
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
        config
            .validate()
            .map_err(|(span, key, msg)| ConfigError::at(path, text, span, key, msg))?;
        Ok(config)
    }

    /// Checks that relate several keys, which serde cannot see one at a time.
    fn validate(&self) -> Result<(), (Option<std::ops::Range<usize>>, String, String)> {
        if self.checks.is_empty() {
            return Err((
                None,
                "check".into(),
                "expected at least one [[check]]".into(),
            ));
        }
        if self.max_concurrent_probes == 0 {
            return Err((
                None,
                "max_concurrent_probes".into(),
                "expected at least 1".into(),
            ));
        }
        if self.collector.batch_size == 0 || self.collector.window == 0 {
            return Err((
                None,
                "collector".into(),
                "batch_size and window must be at least 1".into(),
            ));
        }
        if self.collector.token.is_some() == self.collector.token_file.is_some() {
            return Err((
                None,
                "collector".into(),
                "expected exactly one of token or token_file (see `vantage-collector agent add`)"
                    .into(),
            ));
        }
        if self.collector.plaintext_beyond_loopback() && !self.collector.insecure {
            return Err((
                None,
                "collector.endpoint".into(),
                format!(
                    "{} is plaintext to a non-loopback host: the token would be readable on the \
                     network. Use https://, or set insecure = true to accept that",
                    self.collector.endpoint.as_str()
                ),
            ));
        }
        if self.collector.client_cert_file.is_some() != self.collector.client_key_file.is_some() {
            return Err((
                None,
                "collector".into(),
                "client_cert_file and client_key_file go together".into(),
            ));
        }
        if self.spool.sync_interval.is_zero() || self.spool.memory_capacity == 0 {
            return Err((
                None,
                "spool".into(),
                "sync_interval and memory_capacity must be above zero".into(),
            ));
        }
        let mut vantage_names = HashSet::new();
        for (i, vantage) in self.vantages.iter().enumerate() {
            let name = vantage.name.get_ref().as_str();
            if !vantage_names.insert(name) {
                return Err((
                    Some(vantage.name.span()),
                    format!("vantage[{i}].name"),
                    format!("duplicate vantage name {name:?}: expected unique names"),
                ));
            }
        }
        if self.vantages.is_empty() {
            vantage_names.insert(DIRECT_VANTAGE);
        }
        if self.dns.resolvers.is_empty() {
            return Err((
                None,
                "dns.resolvers".into(),
                "expected at least one resolver".into(),
            ));
        }
        let mut names = HashSet::new();
        for (i, check) in self.checks.iter().enumerate() {
            let span = Some(check.name.span());
            if !names.insert(check.name.get_ref().as_str()) {
                return Err((
                    span,
                    format!("check[{i}].name"),
                    format!(
                        "duplicate check name {:?}: expected unique names",
                        check.name.get_ref().as_str()
                    ),
                ));
            }
            if check.interval < Duration::from_millis(100) {
                return Err((
                    span,
                    format!("check[{i}].interval"),
                    format!(
                        "interval {:?} is too short: expected at least 100ms",
                        check.interval
                    ),
                ));
            }
            if check.timeout.is_zero() || check.timeout > check.interval {
                return Err((
                    span,
                    format!("check[{i}].timeout"),
                    format!(
                        "timeout {:?} must be non-zero and at most the interval {:?}, so a check never overlaps itself",
                        check.timeout, check.interval
                    ),
                ));
            }
            if check.resolvers.as_ref().is_some_and(Vec::is_empty) {
                return Err((
                    span,
                    format!("check[{i}].resolvers"),
                    "expected at least one resolver (or no key, for [dns] resolvers)".into(),
                ));
            }
            for name in check.vantages.iter().flatten() {
                if !vantage_names.contains(name.as_str()) {
                    return Err((
                        span,
                        format!("check[{i}].vantages"),
                        format!("unknown vantage {name:?}: expected one of the [[vantage]] names"),
                    ));
                }
            }
            if check.follow_redirects > 20 {
                return Err((
                    span,
                    format!("check[{i}].follow_redirects"),
                    "expected at most 20".into(),
                ));
            }
            if check.body_hash_bytes > 16 * 1024 * 1024 {
                return Err((
                    span,
                    format!("check[{i}].body_hash_bytes"),
                    "expected at most 16 MiB (16777216)".into(),
                ));
            }
            for (name, value) in &check.headers {
                if http::HeaderName::from_bytes(name.as_bytes()).is_err()
                    || http::HeaderValue::from_str(value).is_err()
                {
                    return Err((
                        span,
                        format!("check[{i}].headers.{name}"),
                        "expected a valid HTTP header name and value".into(),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Reads a configuration file; the error names the path.
pub fn read_config(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Deserializes `text` strictly into `T`; errors name `path`, the line and
/// column, and the dotted key. Shared by every Vantage configuration file.
pub fn parse_toml<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
) -> Result<T, ConfigError> {
    let de = toml::Deserializer::parse(text).map_err(|e| {
        ConfigError::at(
            path,
            text,
            e.span(),
            "(document)".into(),
            e.message().to_owned(),
        )
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        ConfigError::at(path, text, inner.span(), key, inner.message().to_owned())
    })
}

impl ConfigError {
    /// An `Invalid` error located at byte range `span` of `text`.
    pub fn at(
        path: &Path,
        text: &str,
        span: Option<std::ops::Range<usize>>,
        key: String,
        message: String,
    ) -> Self {
        let (line, column) = line_col(text, span.map_or(0, |s| s.start));
        Self::Invalid {
            path: path.to_owned(),
            line,
            column,
            key,
            message,
        }
    }
}

/// 1-based line and column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"
agent_id = "fra-1"
region = "eu-central"
labels = { provider = "lab" }
source_ip = "127.0.2.1"

[collector]
endpoint = "http://127.0.0.1:7400"
token = "vantage_test"

[dns]
resolvers = ["tcp://127.0.0.1:5353"]

[[check]]
name = "shop"
url = "https://shop.test/health"
interval = "30s"
timeout = "5s"
expected_status = [200, 204]
"#;

    fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
        AgentConfig::parse(Path::new("agent.toml"), text)
    }

    fn error(text: &str) -> String {
        parse(text)
            .expect_err("config should be rejected")
            .to_string()
    }

    #[test]
    fn valid_config_parses_with_defaults() {
        let c = parse(VALID).unwrap();
        let check = &c.checks[0];
        assert_eq!(c.agent_id.as_str(), "fra-1");
        assert_eq!(c.source_ip, Some("127.0.2.1".parse().unwrap()));
        assert_eq!(
            c.dns.resolvers,
            vec![ResolverSpec::Tcp("127.0.0.1:5353".parse().unwrap())]
        );
        assert_eq!(check.ip_family, IpFamily::Any);
        assert_eq!(check.dial, Dial::First);
        assert_eq!(check.follow_redirects, 0);
        assert_eq!(check.body_hash_bytes, 65536);
        assert!(c.probe_header);
        assert!(c.vantages.is_empty());
        assert_eq!(check.interval, Duration::from_secs(30));
        assert_eq!(check.http_version, HttpVersion::Auto);
        assert_eq!(check.method, Method::Get);
        assert!(check.expects(204));
        assert!(!check.expects(301));
        assert_eq!(c.collector.batch_size, 500);
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let text = VALID.replace("interval = \"30s\"", "intervall = \"30s\"");
        let e = error(&text);
        assert!(e.starts_with("agent.toml:17:"), "{e}");
        assert!(e.contains("unknown field `intervall`"), "{e}");
        assert!(e.contains("check[0]"), "{e}");
    }

    #[test]
    fn bad_url_names_line_and_key() {
        let text = VALID.replace("https://shop.test/health", "ftp://shop.test/");
        let e = error(&text);
        assert!(e.starts_with("agent.toml:16:"), "{e}");
        assert!(e.contains("check[0].url"), "{e}");
        assert!(e.contains("expected scheme http or https"), "{e}");
    }

    #[test]
    fn bad_interval_names_line_and_key() {
        let text = VALID.replace("\"30s\"", "\"thirty seconds\"");
        let e = error(&text);
        assert!(e.starts_with("agent.toml:17:"), "{e}");
        assert!(e.contains("check[0].interval"), "{e}");
    }

    #[test]
    fn token_goes_in_plaintext_only_to_loopback_unless_insecure() {
        for loopback in [
            "http://127.0.0.1:7400",
            "http://[::1]:7400",
            "http://localhost:7400",
        ] {
            let text = VALID.replace("http://127.0.0.1:7400", loopback);
            assert!(parse(&text).is_ok(), "{loopback} is loopback");
        }
        for remote in ["http://10.0.0.5:7400", "http://collector.example.net:7400"] {
            let text = VALID.replace("http://127.0.0.1:7400", remote);
            let e = error(&text);
            assert!(e.contains("collector.endpoint"), "{e}");
            assert!(e.contains("plaintext to a non-loopback host"), "{e}");
            let insecure = text.replace(
                "token = \"vantage_test\"",
                "token = \"vantage_test\"\ninsecure = true",
            );
            let c = parse(&insecure).expect("insecure = true allows it");
            assert!(c.collector.plaintext_beyond_loopback() && c.collector.insecure);
        }
        let tls = VALID.replace(
            "http://127.0.0.1:7400",
            "https://collector.example.net:7400",
        );
        assert!(!parse(&tls).unwrap().collector.plaintext_beyond_loopback());
    }

    #[test]
    fn exactly_one_token_source_is_required() {
        let none = VALID.replace("token = \"vantage_test\"\n", "");
        assert!(error(&none).contains("exactly one of token or token_file"));
        let both = VALID.replace(
            "token = \"vantage_test\"",
            "token = \"a\"\ntoken_file = \"/etc/vantage/token\"",
        );
        assert!(error(&both).contains("exactly one of token or token_file"));
    }

    #[test]
    fn timeout_longer_than_interval_is_rejected() {
        let text = VALID.replace("timeout = \"5s\"", "timeout = \"60s\"");
        let e = error(&text);
        assert!(e.contains("check[0].timeout"), "{e}");
        assert!(e.contains("at most the interval"), "{e}");
    }

    #[test]
    fn bad_resolver_says_what_is_expected() {
        let text = VALID.replace("tcp://127.0.0.1:5353", "dns.example");
        let e = error(&text);
        assert!(e.starts_with("agent.toml:12:"), "{e}");
        assert!(e.contains("dns.resolvers"), "{e}");
        assert!(e.contains("expected `system`"), "{e}");
    }

    #[test]
    fn duplicate_check_names_are_rejected() {
        let dup = format!("{VALID}\n[[check]]\nname = \"shop\"\nurl = \"http://a.test/\"\n");
        let e = error(&dup);
        assert!(e.contains("check[1].name"), "{e}");
        assert!(e.contains("duplicate check name"), "{e}");
    }

    #[test]
    fn empty_region_is_rejected() {
        let e = error(&VALID.replace("\"eu-central\"", "\"  \""));
        assert!(e.contains("region"), "{e}");
        assert!(e.contains("non-empty"), "{e}");
    }

    #[test]
    fn proxy_url_keeps_credentials_out_of_its_display() {
        let p = ProxyUrl::try_from("socks5://bob:p%40ss@127.0.0.9:1081".to_owned()).unwrap();
        assert_eq!(p.kind, ProxyKind::Socks5);
        assert_eq!(p.credentials, Some(("bob".into(), "p@ss".into())));
        assert_eq!(p.redacted(), "socks5://127.0.0.9:1081");
        assert_eq!(format!("{p:?}"), "socks5://127.0.0.9:1081");
        assert_eq!(p.with_credentials(), "socks5://bob:p%40ss@127.0.0.9:1081");
        let http = ProxyUrl::try_from("http://[::1]".to_owned()).unwrap();
        assert_eq!((http.kind, http.port), (ProxyKind::Http, 80));
        assert_eq!(http.redacted(), "http://[::1]:80");
    }

    #[test]
    fn bad_proxy_scheme_says_what_is_expected() {
        let text = format!("{VALID}\n[[vantage]]\nname = \"p\"\nproxy = \"ftp://127.0.0.1:21\"\n");
        let e = error(&text);
        assert!(e.contains("vantage[0].proxy"), "{e}");
        assert!(e.contains("expected http://, https:// or socks5://"), "{e}");
    }

    #[test]
    fn check_naming_an_unknown_vantage_is_rejected() {
        let text = VALID.replace(
            "expected_status = [200, 204]",
            "expected_status = [200, 204]\nvantages = [\"mars\"]",
        );
        let e = error(&format!("{text}\n[[vantage]]\nname = \"earth\"\n"));
        assert!(e.contains("check[0].vantages"), "{e}");
        assert!(e.contains("unknown vantage \"mars\""), "{e}");
    }

    #[test]
    fn duplicate_vantage_names_are_rejected() {
        let text = format!("{VALID}\n[[vantage]]\nname = \"a\"\n[[vantage]]\nname = \"a\"\n");
        let e = error(&text);
        assert!(e.contains("vantage[1].name"), "{e}");
    }

    #[test]
    fn check_options_parse_and_invalid_header_is_rejected() {
        let text = VALID.replace(
            "expected_status = [200, 204]",
            "ip_family = \"v6\"\ndial = \"each\"\nfollow_redirects = 3\nhttp_version = \"2\"\nheaders = { \"X-A\" = \"b\" }",
        );
        let c = parse(&text).unwrap();
        let check = &c.checks[0];
        assert_eq!((check.ip_family, check.dial), (IpFamily::V6, Dial::Each));
        assert_eq!(
            (check.follow_redirects, check.http_version),
            (3, HttpVersion::Http2)
        );
        let bad = text.replace("\"X-A\" = \"b\"", "\"bad header\" = \"b\"");
        let e = error(&bad);
        assert!(e.contains("check[0].headers.bad header"), "{e}");
        let family = text.replace("\"v6\"", "\"v5\"");
        assert!(error(&family).contains("check[0].ip_family"));
    }

    proptest::proptest! {
        #[test]
        fn resolver_spec_round_trips(ip in proptest::prelude::any::<std::net::Ipv4Addr>(), port in 1u16.., tcp: bool) {
            let addr = SocketAddr::new(IpAddr::V4(ip), port);
            let spec = if tcp { ResolverSpec::Tcp(addr) } else { ResolverSpec::Udp(addr) };
            proptest::prop_assert_eq!(spec.to_string().parse::<ResolverSpec>().unwrap(), spec);
        }

        #[test]
        fn line_col_points_inside_the_text(text in "[a-z\n]{0,40}", offset in 0usize..50) {
            let (line, col) = line_col(&text, offset);
            proptest::prop_assert!(line >= 1 && col >= 1);
            proptest::prop_assert!(line <= text.matches('\n').count() + 1);
        }
    }
}
