//! The collector's TOML configuration (`collector.toml`), strictly parsed
//! with the same loader as the agent's: errors name file, line and key.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use url::Url;
use vantage_service::config::units::{DAY, MINUTE, YEAR};
use vantage_service::config::{
    ConfigError, Problem, count_within, duration_within, parse_toml, read_config,
};

use crate::alert::config::{Sink, SinkConfig, WebhookConfig};
pub use crate::detector::config::{CheckStatuses, DetectorConfig, Rate};
use crate::ingest::IngestLimits;
use crate::wire::SkewLimits;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorConfig {
    /// The file this was read from (errors found later name it).
    #[serde(skip)]
    pub file: Option<std::path::PathBuf>,
    /// Where agents connect (gRPC).
    #[serde(default = "default_grpc_listen")]
    pub grpc_listen: SocketAddr,
    /// Health endpoint (`GET /healthz`); off when absent.
    #[serde(default)]
    pub http_listen: Option<SocketAddr>,
    #[serde(default)]
    pub database: DatabaseConfig,
    #[serde(default)]
    pub detector: DetectorConfig,
    /// Where pages go: `[[sink]]` entries (see docs/pages.md).
    #[serde(default, rename = "sink")]
    pub sink_configs: Vec<SinkConfig>,
    /// `[[webhook]]`: the older way to name a webhook sink.
    #[serde(default, rename = "webhook")]
    pub webhooks: Vec<WebhookConfig>,
    /// The base of every incident's link in pages (`<public_url>/incidents/
    /// <id>`); default `http://<http_listen>`.
    #[serde(default)]
    pub public_url: Option<Url>,
    /// The sinks, checked (by [`CollectorConfig::load`]).
    #[serde(skip)]
    pub sinks: Vec<Sink>,
    #[serde(default)]
    pub ingest: IngestConfig,
    /// TLS for the gRPC listener; plaintext when absent.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub retention: RetentionConfig,
    #[serde(default)]
    pub ui: UiConfig,
}

/// The incident pages on `http_listen` (`[ui]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UiConfig {
    /// Serve the pages (default true). `/healthz` and `/metrics` are
    /// served either way.
    #[serde(default = "default_ui_enabled")]
    pub enabled: bool,
    /// Without it the pages answer loopback only. With it every reader
    /// presents it: `Authorization: Bearer <token>`, or as the password of
    /// basic auth (any user name). At least 16 characters.
    #[serde(default)]
    pub token: Option<String>,
    /// Reverse proxies (addresses or CIDR ranges) whose `Forwarded` /
    /// `X-Forwarded-For` headers name the reader. Without a token, a
    /// request carrying those headers from any other peer is refused.
    #[serde(default)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

fn default_ui_enabled() -> bool {
    true
}

impl Default for UiConfig {
    fn default() -> Self {
        Self {
            enabled: default_ui_enabled(),
            token: None,
            trusted_proxies: Vec::new(),
        }
    }
}

/// How long data is kept (`[retention]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Raw results older than this are dropped a whole daily partition at
    /// a time (default 14 days); never a row-by-row DELETE.
    #[serde(with = "humantime_serde", default = "default_raw_retention")]
    pub raw: Duration,
    /// The per-minute roll-up (`probe_rollups`) older than this is dropped
    /// a whole month at a time (default 400 days); at least `raw`.
    #[serde(with = "humantime_serde", default = "default_rollup_retention")]
    pub rollup: Duration,
}

fn default_raw_retention() -> Duration {
    Duration::from_secs(14 * 24 * 3600)
}
fn default_rollup_retention() -> Duration {
    Duration::from_secs(400 * 24 * 3600)
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            raw: default_raw_retention(),
            rollup: default_rollup_retention(),
        }
    }
}

/// What one agent may send (`[ingest]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Most results in one batch (default 10000); agents learn it at hello.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Largest gRPC message decoded (default 16 MiB).
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Sustained results per second per agent (default 20000); beyond it the
    /// collector stops reading that agent's stream for a while (others are
    /// unaffected).
    #[serde(default = "default_results_per_second")]
    pub max_results_per_second: NonZeroU32,
    /// Results that started longer ago than this are refused one by one and
    /// recorded as `timestamp_skew` gaps (default 7 days: a spool's age).
    #[serde(with = "humantime_serde", default = "default_max_past")]
    pub max_result_age: Duration,
    /// Results that start further in the future than this are refused the
    /// same way (default 5 minutes: a badly set agent clock).
    #[serde(with = "humantime_serde", default = "default_max_future")]
    pub max_clock_ahead: Duration,
    /// Connections the gRPC listener holds at once (default 1024, lowered
    /// to fit the descriptor limit). When they are all held, a new one
    /// evicts the oldest connection without an authenticated stream, or is
    /// closed at once when every one has a stream.
    #[serde(default = "default_max_connections_grpc")]
    pub max_connections: usize,
    /// Connections without an authenticated stream held at once (default
    /// 256, at most half of `max_connections`: the rest is the enrolled
    /// agents' reserve); beyond, the oldest of the source holding the most
    /// is evicted.
    #[serde(default = "default_max_unauthenticated")]
    pub max_unauthenticated: usize,
    /// Connections without an authenticated stream held at once from one
    /// IPv4 address or IPv6 /64 (default 16); beyond, that source's oldest
    /// is evicted.
    #[serde(default = "default_max_unauthenticated_per_source")]
    pub max_unauthenticated_per_source: usize,
    /// Streams one agent identity may hold open at once (default 4).
    #[serde(default = "default_max_streams_per_agent")]
    pub max_streams_per_agent: usize,
    /// Distinct vantage names one agent may report (default 256): results
    /// of further vantages are refused as `cardinality` gaps, and a Hello
    /// naming more ends its stream.
    #[serde(default = "default_max_vantages_per_agent")]
    pub max_vantages_per_agent: usize,
    /// Distinct check names one agent may report (default 5000); beyond,
    /// the same.
    #[serde(default = "default_max_checks_per_agent")]
    pub max_checks_per_agent: usize,
    /// A connection must open a stream with a valid token within this,
    /// whatever else it sends, and a stream send its Hello within this
    /// (default 10s).
    #[serde(with = "humantime_serde", default = "default_handshake_timeout")]
    pub handshake_timeout: Duration,
    /// A message that has begun must go on arriving: no byte of it for this
    /// long ends the stream (default 30s).
    #[serde(with = "humantime_serde", default = "default_message_stall_timeout")]
    pub message_stall_timeout: Duration,
}

fn default_max_batch() -> usize {
    10_000
}
fn default_max_message_bytes() -> usize {
    16 * 1024 * 1024
}
fn default_results_per_second() -> NonZeroU32 {
    NonZeroU32::new(20_000).unwrap_or(NonZeroU32::MIN)
}
fn default_max_connections_grpc() -> usize {
    1024
}
fn default_max_unauthenticated() -> usize {
    256
}
fn default_max_unauthenticated_per_source() -> usize {
    16
}
fn default_max_vantages_per_agent() -> usize {
    256
}
fn default_max_checks_per_agent() -> usize {
    5000
}
fn default_max_streams_per_agent() -> usize {
    4
}
fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_message_stall_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_past() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_max_future() -> Duration {
    Duration::from_secs(300)
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_batch: default_max_batch(),
            max_message_bytes: default_max_message_bytes(),
            max_results_per_second: default_results_per_second(),
            max_result_age: default_max_past(),
            max_clock_ahead: default_max_future(),
            max_connections: default_max_connections_grpc(),
            max_unauthenticated: default_max_unauthenticated(),
            max_unauthenticated_per_source: default_max_unauthenticated_per_source(),
            max_streams_per_agent: default_max_streams_per_agent(),
            max_vantages_per_agent: default_max_vantages_per_agent(),
            max_checks_per_agent: default_max_checks_per_agent(),
            handshake_timeout: default_handshake_timeout(),
            message_stall_timeout: default_message_stall_timeout(),
        }
    }
}

impl IngestConfig {
    pub fn limits(&self) -> IngestLimits {
        let chrono = |d: Duration| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
        IngestLimits {
            max_batch: self.max_batch,
            max_message_bytes: self.max_message_bytes,
            results_per_second: self.max_results_per_second,
            max_streams_per_agent: self.max_streams_per_agent,
            max_vantages_per_agent: self.max_vantages_per_agent,
            max_checks_per_agent: self.max_checks_per_agent,
            hello_timeout: self.handshake_timeout,
            skew: SkewLimits {
                max_past: chrono(self.max_result_age),
                max_future: chrono(self.max_clock_ahead),
            },
        }
    }
}

/// `[tls]`: the gRPC listener's certificate, and optionally the CA whose
/// client certificates it requires (mutual TLS: the certificate must name
/// the agent, as common name or DNS name).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

fn default_grpc_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7400))
}

impl Default for CollectorConfig {
    fn default() -> Self {
        Self {
            file: None,
            grpc_listen: default_grpc_listen(),
            http_listen: None,
            database: DatabaseConfig::default(),
            detector: DetectorConfig::default(),
            sink_configs: Vec::new(),
            webhooks: Vec::new(),
            public_url: None,
            sinks: Vec::new(),
            ingest: IngestConfig::default(),
            tls: None,
            retention: RetentionConfig::default(),
            ui: UiConfig::default(),
        }
    }
}

impl CollectorConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::parse(path, &read_config(path)?)
    }

    /// Parses and checks `text`; `path` is only named in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let text = text.to_owned();
        let mut config: Self = parse_toml(path, &text)?;
        config.sinks =
            crate::alert::config::sinks(path, &text, &config.sink_configs, &config.webhooks)?;
        if let Some(url) = &config.public_url
            && !matches!(url.scheme(), "http" | "https")
        {
            return Err(ConfigError::at(
                path,
                &text,
                None,
                "public_url".into(),
                "expected an http:// or https:// URL".into(),
            ));
        }
        config.validate().map_err(|p| p.into_error(path, &text))?;
        config.file = Some(path.to_owned());
        if config.detector.min_probes.is_some() {
            tracing::warn!(
                file = %path.display(),
                "detector.min_probes is ignored since detection v2: small samples are weighed \
                 by the exact test over windows of 1, 2, 4... probe rounds; remove the key."
            );
        }
        Ok(config)
    }

    /// The base of incident links: `public_url`, else the HTTP listener.
    pub fn link_base(&self) -> Option<String> {
        match (&self.public_url, self.http_listen) {
            (Some(url), _) => Some(url.as_str().trim_end_matches('/').to_owned()),
            (None, Some(addr)) => Some(format!("http://{addr}")),
            (None, None) => None,
        }
    }

    /// The rules serde cannot see: every duration and count within a
    /// range that makes sense, so that a config that loads never panics,
    /// hangs or spins at run time.
    fn validate(&self) -> Result<(), Problem> {
        self.detector.validate()?;
        if let Some(token) = &self.ui.token
            && (token.chars().count() < 16 || token.trim() != token)
        {
            return Err(Problem::new(
                "ui.token",
                "expected at least 16 characters without surrounding spaces (e.g. from \
                 `openssl rand -hex 24`)",
            ));
        }
        let db = &self.database;
        count_within("database.max_connections", db.max_connections, 1, 1000)?;
        count_within(
            "database.partitions_ahead_days",
            db.partitions_ahead_days,
            0,
            366,
        )?;
        if let Some(url) = &db.url {
            database_options(url).map_err(|e| Problem::new("database.url", e))?;
        }
        let ingest = &self.ingest;
        count_within("ingest.max_batch", ingest.max_batch, 1, 100_000)?;
        count_within(
            "ingest.max_message_bytes",
            ingest.max_message_bytes,
            1 << 10,
            256 << 20,
        )?;
        count_within(
            "ingest.max_results_per_second",
            ingest.max_results_per_second.get(),
            1,
            10_000_000,
        )?;
        duration_within("ingest.max_result_age", ingest.max_result_age, MINUTE, YEAR)?;
        // A result as old as the collector still accepts must not land in
        // a partition the next maintenance drops.
        duration_within(
            "retention.raw",
            self.retention.raw,
            ingest.max_result_age + DAY,
            10 * YEAR,
        )?;
        duration_within(
            "retention.rollup",
            self.retention.rollup,
            self.retention.raw,
            10 * YEAR,
        )?;
        duration_within(
            "ingest.max_clock_ahead",
            ingest.max_clock_ahead,
            Duration::ZERO,
            DAY,
        )?;
        count_within(
            "ingest.max_connections",
            ingest.max_connections,
            1,
            1_000_000,
        )?;
        count_within(
            "ingest.max_unauthenticated",
            ingest.max_unauthenticated,
            1,
            1_000_000,
        )?;
        count_within(
            "ingest.max_unauthenticated_per_source",
            ingest.max_unauthenticated_per_source,
            1,
            1_000_000,
        )?;
        count_within(
            "ingest.max_vantages_per_agent",
            ingest.max_vantages_per_agent,
            1,
            100_000,
        )?;
        count_within(
            "ingest.max_checks_per_agent",
            ingest.max_checks_per_agent,
            1,
            1_000_000,
        )?;
        count_within(
            "ingest.max_streams_per_agent",
            ingest.max_streams_per_agent,
            1,
            1000,
        )?;
        duration_within(
            "ingest.handshake_timeout",
            ingest.handshake_timeout,
            Duration::from_millis(100),
            MINUTE,
        )?;
        duration_within(
            "ingest.message_stall_timeout",
            ingest.message_stall_timeout,
            Duration::from_secs(1),
            10 * MINUTE,
        )?;
        if let Some(url) = &self.public_url
            && !matches!(url.scheme(), "http" | "https")
        {
            return Err(Problem::new(
                "public_url",
                "expected an http:// or https:// URL",
            ));
        }
        Ok(())
    }
}

mod database;
pub use database::{DatabaseConfig, database_options};

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
