//! The collector's TOML configuration (`collector.toml`), strictly parsed
//! with the same loader as the agent's: errors name file, line and key.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use url::Url;
use vantage_agent::config::{ConfigError, parse_toml, read_config};

use crate::detect::Thresholds;
use crate::ingest::IngestLimits;
use crate::wire::SkewLimits;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorConfig {
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
    #[serde(default, rename = "webhook")]
    pub webhooks: Vec<WebhookConfig>,
    #[serde(default)]
    pub ingest: IngestConfig,
    /// TLS for the gRPC listener; plaintext when absent.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://...`; the `DATABASE_URL` environment variable wins.
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Daily partitions created ahead of today.
    #[serde(default = "default_partitions_ahead")]
    pub partitions_ahead_days: u64,
}

fn default_max_connections() -> u32 {
    10
}
fn default_partitions_ahead() -> u64 {
    3
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            max_connections: default_max_connections(),
            partitions_ahead_days: default_partitions_ahead(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorConfig {
    #[serde(with = "humantime_serde", default = "default_detect_interval")]
    pub interval: Duration,
    #[serde(with = "humantime_serde", default = "default_window")]
    pub window: Duration,
    #[serde(default = "default_min_probes")]
    pub min_probes: u64,
    #[serde(default = "default_open_rate")]
    pub open_rate: Rate,
    #[serde(default = "default_healthy_rate")]
    pub healthy_rate: Rate,
    #[serde(default = "default_close_rate")]
    pub close_rate: Rate,
}

fn default_detect_interval() -> Duration {
    Duration::from_secs(15)
}
fn default_window() -> Duration {
    Duration::from_secs(300)
}
fn default_min_probes() -> u64 {
    Thresholds::default().min_probes
}
fn default_open_rate() -> Rate {
    Rate(Thresholds::default().open_rate)
}
fn default_healthy_rate() -> Rate {
    Rate(Thresholds::default().healthy_rate)
}
fn default_close_rate() -> Rate {
    Rate(Thresholds::default().close_rate)
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            interval: default_detect_interval(),
            window: default_window(),
            min_probes: default_min_probes(),
            open_rate: default_open_rate(),
            healthy_rate: default_healthy_rate(),
            close_rate: default_close_rate(),
        }
    }
}

impl DetectorConfig {
    pub fn thresholds(&self) -> Thresholds {
        Thresholds {
            min_probes: self.min_probes,
            open_rate: self.open_rate.0,
            healthy_rate: self.healthy_rate.0,
            close_rate: self.close_rate.0,
        }
    }
}

/// A fraction in `[0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(try_from = "f64")]
pub struct Rate(pub f64);

impl TryFrom<f64> for Rate {
    type Error = String;
    fn try_from(v: f64) -> Result<Self, String> {
        if (0.0..=1.0).contains(&v) {
            Ok(Self(v))
        } else {
            Err(format!(
                "invalid rate {v}: expected a fraction between 0.0 and 1.0"
            ))
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: Url,
    #[serde(with = "humantime_serde", default = "default_webhook_timeout")]
    pub timeout: Duration,
    #[serde(default = "default_webhook_attempts")]
    pub attempts: usize,
}

fn default_webhook_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_webhook_attempts() -> usize {
    5
}

impl Default for CollectorConfig {
    fn default() -> Self {
        Self {
            grpc_listen: default_grpc_listen(),
            http_listen: None,
            database: DatabaseConfig::default(),
            detector: DetectorConfig::default(),
            webhooks: Vec::new(),
            ingest: IngestConfig::default(),
            tls: None,
        }
    }
}

impl CollectorConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = read_config(path)?;
        let config: Self = parse_toml(path, &text)?;
        let d = &config.detector;
        if d.close_rate.0 > d.open_rate.0 || d.healthy_rate.0 >= d.open_rate.0 {
            return Err(ConfigError::at(
                path,
                &text,
                None,
                "detector".into(),
                "expected healthy_rate < open_rate and close_rate <= open_rate".into(),
            ));
        }
        if config.ingest.max_batch == 0 || config.ingest.max_message_bytes < 1024 {
            return Err(ConfigError::at(
                path,
                &text,
                None,
                "ingest".into(),
                "expected max_batch >= 1 and max_message_bytes >= 1024".into(),
            ));
        }
        if d.interval.is_zero() || d.window < d.interval {
            return Err(ConfigError::at(
                path,
                &text,
                None,
                "detector".into(),
                "expected a non-zero interval and a window at least as long".into(),
            ));
        }
        Ok(config)
    }

    /// The database URL: `DATABASE_URL` if set, else `database.url`.
    pub fn database_url(&self) -> Option<String> {
        std::env::var("DATABASE_URL")
            .ok()
            .filter(|s| !s.is_empty())
            .or_else(|| self.database.url.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<CollectorConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("collector.toml");
        std::fs::write(&path, text).unwrap();
        CollectorConfig::load(&path)
    }

    #[test]
    fn minimal_config_uses_defaults() {
        let c = load("grpc_listen = \"127.0.0.1:7400\"\n").unwrap();
        assert_eq!(c.detector.window, Duration::from_secs(300));
        assert!(c.webhooks.is_empty());
    }

    #[test]
    fn rate_out_of_range_names_line_and_key() {
        let e = load("[detector]\nopen_rate = 1.5\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("collector.toml:2:"), "{e}");
        assert!(e.contains("detector.open_rate"), "{e}");
        assert!(e.contains("between 0.0 and 1.0"), "{e}");
    }

    #[test]
    fn unknown_webhook_key_is_rejected() {
        let e = load("[[webhook]]\nurl = \"http://127.0.0.1:9/\"\nretries = 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains(":3:"), "{e}");
        assert!(e.contains("unknown field `retries`"), "{e}");
    }
}
