//! The collector's TOML configuration (`collector.toml`), strictly parsed
//! with the same loader as the agent's: errors name file, line and key.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use url::Url;
use vantage_agent::config::{ConfigError, parse_toml, read_config};

use crate::alert::config::{Sink, SinkConfig, WebhookConfig};
pub use crate::detect::config::{CheckStatuses, DetectorConfig, Rate};
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
    /// Where pages go: `[[sink]]` entries (see the README).
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

impl Default for CollectorConfig {
    fn default() -> Self {
        Self {
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
        }
    }
}

impl CollectorConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = read_config(path)?;
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
        if let Some((key, expected)) = config.detector.problem() {
            return Err(ConfigError::at(path, &text, None, key, expected.into()));
        }
        if config.detector.min_probes.is_some() {
            tracing::warn!(
                file = %path.display(),
                "detector.min_probes is ignored since detection v2: small samples are weighed \
                 by the exact test over windows of 1, 2, 4... probe rounds; remove the key."
            );
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
    use crate::detect::DetectorSettings;
    use crate::detect::decision::Params;
    use crate::detect::lifecycle::Hysteresis;

    fn load(text: &str) -> Result<CollectorConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("collector.toml");
        std::fs::write(&path, text).unwrap();
        CollectorConfig::load(&path)
    }

    #[test]
    fn the_example_config_loads_with_the_documented_detector_settings() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/collector.example.toml"
        ));
        let c = CollectorConfig::load(path).unwrap();
        let s = c.detector.settings();
        assert_eq!(s.params, Params::default());
        assert_eq!(s.hysteresis, Hysteresis::default());
        assert_eq!(s.default_round, DetectorSettings::default().default_round);
    }

    #[test]
    fn min_probes_is_accepted_and_ignored() {
        let c = load("[detector]\nmin_probes = 20\n").unwrap();
        assert_eq!(c.detector.min_probes, Some(20));
        assert_eq!(c.detector.settings().params, Params::default());
    }

    #[test]
    fn minimal_config_uses_defaults() {
        let c = load("grpc_listen = \"127.0.0.1:7400\"\n").unwrap();
        assert_eq!(c.detector.window, Duration::from_secs(300));
        assert!(c.sinks.is_empty());
    }

    #[test]
    fn rate_out_of_range_names_line_and_key() {
        let e = load("[detector]\nglobal_rate = 1.5\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("collector.toml:2:"), "{e}");
        assert!(e.contains("detector.global_rate"), "{e}");
        assert!(e.contains("between 0.0 and 1.0"), "{e}");
    }

    #[test]
    fn statuses_per_check_override_the_global_list() {
        let c = load(
            "[detector]\nstatuses = [502, 504]\n[[detector.check]]\nname = \"shop\"\nstatuses = [502, 520, 521]\n",
        )
        .unwrap();
        let s = c.detector.settings();
        assert_eq!(s.statuses, [502, 504]);
        assert_eq!(s.check_statuses["shop"], [502, 520, 521]);
    }

    #[test]
    fn nonsense_detector_settings_are_refused_by_key() {
        for (text, key) in [
            ("[detector]\nstatuses = [1502]\n", "detector.statuses"),
            ("[detector]\nstatuses = []\n", "detector.statuses"),
            (
                "[detector]\nmin_rate_difference = 0.0\n",
                "detector.min_rate_difference",
            ),
            (
                "[detector]\nmin_rate_ratio = 0.5\n",
                "detector.min_rate_ratio",
            ),
            ("[detector]\nalpha = 0.0\n", "detector.alpha"),
            ("[detector]\nopen_after = 0\n", "detector.open_after"),
            (
                "[detector]\negress_prefix_v4 = 33\n",
                "detector.egress_prefix_v4",
            ),
            (
                "[detector]\ninterval = \"10m\"\nwindow = \"1m\"\n",
                "detector.window",
            ),
        ] {
            let e = load(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn unknown_webhook_key_is_rejected() {
        let e = load("[[webhook]]\nurl = \"http://127.0.0.1:9/\"\nretries = 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains(":3:"), "{e}");
        assert!(e.contains("unknown field `retries`"), "{e}");
    }

    #[test]
    fn sink_errors_name_file_line_and_key() {
        for (text, at, key, what) in [
            (
                "[[sink]]\nkind = \"pagerduty\"\n",
                "collector.toml:2:",
                "sink[0].routing_key",
                "routing_key",
            ),
            (
                "[[sink]]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/\"\nsecrets = [\"hunter2\"]\n",
                "collector.toml:4:",
                "sink[0].secrets",
                "whsec_",
            ),
            (
                "[[sink]]\nkind = \"carrier-pigeon\"\n",
                "collector.toml:2:",
                "sink[0].kind",
                "unknown variant",
            ),
            (
                "[[sink]]\nkind = \"slack\"\nurl = \"file:///etc/passwd\"\n",
                "collector.toml:3:",
                "sink[0].url",
                "http:// or https://",
            ),
            (
                "[[sink]]\nname = \"a\"\nkind = \"slack\"\nurl = \"http://h/\"\n\
                 [[sink]]\nname = \"a\"\nkind = \"slack\"\nurl = \"http://h/\"\n",
                "collector.toml:6:",
                "sink[1].name",
                "no other sink",
            ),
            (
                "[[sink]]\nkind = \"slack\"\nurl = \"http://h/\"\nconcurrency = 0\n",
                "collector.toml:4:",
                "sink[0].concurrency",
                "between 1 and 256",
            ),
            (
                "[[webhook]]\nurl = \"ftp://h/\"\n",
                "collector.toml:2:",
                "webhook[0].url",
                "http:// or https://",
            ),
        ] {
            let e = load(text).unwrap_err().to_string();
            assert!(e.contains(at), "{text}: {e}");
            assert!(e.contains(key), "{text}: {e}");
            assert!(e.contains(what), "{text}: {e}");
        }
    }

    #[test]
    fn sinks_get_names_and_defaults_and_old_webhooks_keep_working() {
        let c = load(
            "[[webhook]]\nurl = \"http://127.0.0.1:9/hook\"\nattempts = 3\n\
             [[sink]]\nkind = \"alertmanager\"\nurl = \"http://127.0.0.1:9093\"\n\
             [[sink]]\nkind = \"pagerduty\"\nrouting_key = \"K\"\nseverity = \"critical\"\n",
        )
        .unwrap();
        let names: Vec<&str> = c.sinks.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["webhook-1", "alertmanager-1", "pagerduty-1"]);
        assert_eq!(c.sinks[0].kind, crate::alert::SinkKind::Webhook);
        assert!(c.sinks[0].secrets.is_empty());
        assert_eq!(c.sinks[1].repeat_interval, Some(Duration::from_secs(60)));
        assert_eq!(
            c.sinks[2].url.as_str(),
            "https://events.pagerduty.com/v2/enqueue"
        );
        assert_eq!(c.sinks[2].severity, "critical");
        assert_eq!(c.sinks[2].expire_after, Duration::from_secs(24 * 3600));
    }

    #[test]
    fn a_default_sink_name_never_takes_an_explicit_one() {
        let c = load(
            "[[webhook]]\nurl = \"http://127.0.0.1:9/a\"\n\
             [[sink]]\nname = \"webhook-1\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/b\"\n",
        )
        .unwrap();
        let names: Vec<&str> = c.sinks.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["webhook-2", "webhook-1"]);
    }
}
