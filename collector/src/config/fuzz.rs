//! Mutated collector configurations: each must give an error that names
//! the file, a line that exists and a key, or a configuration that passes
//! start-up's own checks ([`crate::preflight::preflight`]) and whose
//! run-time arithmetic cannot overflow; never a panic or a hang. The
//! mutations are testkit's (`vantage_testkit::config_fuzz`), shared with
//! the agent's fuzz test.

use proptest::prelude::*;
use vantage_testkit::config_fuzz::{apply, arithmetic_survives, assert_located, cases, mutation};

use super::CollectorConfig;

const COLLECTOR: &str = r#"grpc_listen = "127.0.0.1:7400"
http_listen = "127.0.0.1:7401"
public_url = "https://vantage.example.net"
[database]
url = "postgres://vantage:pw@127.0.0.1:5432/vantage"
max_connections = 10
partitions_ahead_days = 3
[ingest]
max_batch = 10000
max_message_bytes = 16777216
max_results_per_second = 20000
max_result_age = "7days"
max_clock_ahead = "5m"
max_connections = 1024
max_streams_per_agent = 4
handshake_timeout = "10s"
message_stall_timeout = "30s"
[detector]
interval = "15s"
window = "5m"
statuses = [502]
min_vantages = 2
min_rate_difference = 0.2
min_rate_ratio = 2.0
alpha = 0.001
global_rate = 0.5
global_baseline = 0.1
open_after = 2
resolve_after = 3
resolve_quiet = "2m"
update_after = 2
default_round = "30s"
egress_prefix_v4 = 24
egress_prefix_v6 = 48
rates_retention = "1h"
[[detector.check]]
name = "shop"
statuses = [502, 504]
[[sink]]
name = "bridge"
kind = "webhook"
url = "https://oncall.example.com/hooks/vantage"
secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
timeout = "10s"
concurrency = 4
max_backoff = "5m"
expire_after = "24h"
repeat_interval = "4h"
[[webhook]]
url = "http://127.0.0.1:9/hook"
attempts = 3
"#;

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_collector_configs_are_refused_with_a_location_or_safe(
        mutations in proptest::collection::vec(mutation(), 1..4)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("collector.toml");
        let text = apply(COLLECTOR, &mutations);
        std::fs::write(&path, &text).unwrap();
        match CollectorConfig::load(&path) {
            Err(e) => assert_located(&e, &path, &text),
            Ok(config) => {
                // Start-up's own checks: an error must name its setting
                // (the environment's DATABASE_URL would take part).
                if std::env::var_os("DATABASE_URL").is_none()
                    && let Err(e) = crate::preflight::preflight(&config)
                {
                    let e = format!("{e:#}");
                    prop_assert!(e.contains("database.url") || e.contains("DATABASE_URL"), "{}", e);
                }
                let settings = config.detector.settings();
                for d in [settings.window, settings.rates_retention, settings.interval,
                          settings.hysteresis.resolve_quiet, settings.default_round] {
                    arithmetic_survives(d);
                }
                let limits = config.ingest.limits();
                prop_assert!(limits.max_batch >= 1 && limits.max_streams_per_agent >= 1);
                prop_assert!(config.ingest.max_connections >= 1);
                prop_assert!(!config.ingest.handshake_timeout.is_zero());
                prop_assert!(!config.ingest.message_stall_timeout.is_zero());
                prop_assert!(config.database.max_connections >= 1);
                for sink in &config.sinks {
                    prop_assert!(!sink.timeout.is_zero() && sink.concurrency >= 1);
                    arithmetic_survives(sink.expire_after);
                }
            }
        }
    }
}

#[test]
fn the_base_config_loads() {
    let dir = tempfile::tempdir().unwrap();
    let collector = dir.path().join("collector.toml");
    std::fs::write(&collector, COLLECTOR).unwrap();
    CollectorConfig::load(&collector).unwrap();
}
