//! Mutated configurations fed to both parsers (the agent's and the
//! collector's): each must give an error that names the file, a line that
//! exists and a key, or a configuration that passes start-up's own checks
//! ([`crate::app::preflight`], [`vantage_agent::App::check`]) and whose
//! run-time arithmetic cannot overflow; never a panic or a hang.
//!
//! `VANTAGE_FUZZ_CASES` sets the number of cases per parser (CI: 256;
//! `bench/fuzz-config.sh` runs a longer campaign).

use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;
use vantage_agent::AgentConfig;
use vantage_service::config::ConfigError;

use super::CollectorConfig;

const AGENT: &str = r#"agent_id = "fra-1"
region = "eu-central"
labels = { provider = "lab" }
source_ip = "127.0.2.1"
max_concurrent_probes = 32
probe_header = true
[collector]
endpoint = "http://127.0.0.1:7400"
token = "vantage_test"
batch_size = 500
window = 4
[spool]
max_bytes = 268435456
max_age = "7days"
sync_interval = "500ms"
memory_capacity = 100000
[dns]
resolvers = ["udp://127.0.0.1:5353", "tcp://127.0.0.1:5353"]
timeout = "5s"
identity_interval = "5m"
[[vantage]]
name = "direct"
ip_echo_url = "http://127.0.0.1:8080/ip"
ip_echo_interval = "5m"
[[check]]
name = "shop"
url = "https://shop.test/health"
interval = "30s"
timeout = "5s"
method = "GET"
expected_status = [200, 204]
follow_redirects = 3
body_hash_bytes = 65536
cert_expiry_threshold = "7days"
http_version = "auto"
dial = "each"
ip_family = "any"
headers = { "x-probe" = "1" }
"#;

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

/// Values that have broken parsers and run-time arithmetic before.
const VALUES: &[&str] = &[
    "0",
    "-1",
    "1",
    "255",
    "256",
    "65536",
    "4294967296",
    "9223372036854775807",
    "-9223372036854775808",
    "18446744073709551615",
    "1e308",
    "nan",
    "inf",
    "-0.0",
    "0.5",
    "\"0s\"",
    "\"1ns\"",
    "\"1ms\"",
    "\"100000000years\"",
    "\"584942417355years\"",
    "\"1s\"",
    "\"\"",
    "\" \"",
    "\"x\"",
    "\"file:///etc/passwd\"",
    "\"http://\"",
    "\"postgres://u:p@h:99999/d\"",
    "\"whsec_\"",
    "true",
    "[]",
    "[0]",
    "{}",
    "1979-05-27T07:32:00Z",
];

#[derive(Debug, Clone)]
enum Mutation {
    /// The value of line `line` (mod the line count) becomes `VALUES[v]`.
    Value {
        line: usize,
        v: usize,
    },
    DeleteLine(usize),
    DuplicateLine(usize),
    /// Byte `at` (mod the length) becomes `byte` (often not UTF-8).
    Byte {
        at: usize,
        byte: u8,
    },
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        6 => (any::<usize>(), 0..VALUES.len()).prop_map(|(line, v)| Mutation::Value { line, v }),
        1 => any::<usize>().prop_map(Mutation::DeleteLine),
        1 => any::<usize>().prop_map(Mutation::DuplicateLine),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Byte { at, byte }),
        1 => any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn apply(base: &str, mutations: &[Mutation]) -> Vec<u8> {
    let mut lines: Vec<String> = base.lines().map(str::to_owned).collect();
    let mut bytes = None;
    for m in mutations {
        let n = lines.len().max(1);
        match *m {
            Mutation::Value { line, v } => {
                if let Some(l) = lines.get_mut(line % n)
                    && let Some((key, _)) = l.split_once(" = ")
                {
                    *l = format!("{key} = {}", VALUES[v]);
                }
            }
            Mutation::DeleteLine(i) if !lines.is_empty() => {
                lines.remove(i % n);
            }
            Mutation::DuplicateLine(i) if !lines.is_empty() => {
                let l = lines[i % n].clone();
                lines.insert(i % n, l);
            }
            Mutation::Byte { at, byte } => {
                let mut b = bytes
                    .take()
                    .unwrap_or_else(|| lines.join("\n").into_bytes());
                if !b.is_empty() {
                    let i = at % b.len();
                    b[i] = byte;
                }
                bytes = Some(b);
            }
            Mutation::Truncate(at) => {
                let mut b = bytes
                    .take()
                    .unwrap_or_else(|| lines.join("\n").into_bytes());
                b.truncate(at % (b.len() + 1));
                bytes = Some(b);
            }
            _ => {}
        }
    }
    bytes.unwrap_or_else(|| (lines.join("\n") + "\n").into_bytes())
}

/// An error must say where: the file, a line the file has, and a key.
fn assert_located(error: &ConfigError, path: &Path, text: &[u8]) {
    let lines = text.iter().filter(|&&b| b == b'\n').count() + 1;
    match error {
        ConfigError::Read { .. } => panic!("the file was written: {error}"),
        ConfigError::NotUtf8 { line, .. } => assert!(*line <= lines, "{error}"),
        ConfigError::Invalid {
            path: p,
            line,
            key,
            message,
            ..
        } => {
            assert_eq!(p, path);
            assert!((1..=lines).contains(line), "{error}");
            assert!(!key.is_empty() && !message.is_empty(), "{error}");
        }
    }
}

fn cases() -> u32 {
    std::env::var("VANTAGE_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(256)
}

/// A duration the run-time arithmetic (chrono from std, now minus it)
/// must survive.
fn arithmetic_survives(d: Duration) {
    let d = chrono::Duration::from_std(d).expect("a validated duration converts");
    let now = chrono::Utc::now();
    assert!(now.checked_sub_signed(d).is_some() && now.checked_add_signed(d).is_some());
}

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
                    && let Err(e) = crate::app::preflight(&config)
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

    #[test]
    fn mutated_agent_configs_are_refused_with_a_location_or_start(
        mutations in proptest::collection::vec(mutation(), 1..4)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        let text = apply(AGENT, &mutations);
        std::fs::write(&path, &text).unwrap();
        match AgentConfig::load(&path) {
            Err(e) => assert_located(&e, &path, &text),
            Ok(config) => {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                // Start-up's checks short of the spool; an error is fine
                // (a file that is not there), a panic is not.
                let _ = runtime.block_on(async { vantage_agent::App::check(&config) });
                for d in [config.dns.identity_interval, config.dns.timeout,
                          config.spool.sync_interval, config.spool.max_age] {
                    prop_assert!(!d.is_zero());
                    arithmetic_survives(d);
                }
                for check in &config.checks {
                    prop_assert!(!check.interval.is_zero() && !check.timeout.is_zero());
                }
            }
        }
    }
}

#[test]
fn the_base_configs_load() {
    let dir = tempfile::tempdir().unwrap();
    let agent = dir.path().join("agent.toml");
    std::fs::write(&agent, AGENT).unwrap();
    AgentConfig::load(&agent).unwrap();
    let collector = dir.path().join("collector.toml");
    std::fs::write(&collector, COLLECTOR).unwrap();
    CollectorConfig::load(&collector).unwrap();
}
