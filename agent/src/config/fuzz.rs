//! Mutated agent configurations: each must give an error that names the
//! file, a line that exists and a key, or a configuration that passes
//! start-up's checks short of the spool ([`crate::App::check`]) and whose
//! run-time arithmetic cannot overflow; never a panic or a hang. The
//! mutations are testkit's (`vantage_testkit::config_fuzz`), shared with
//! the collector's fuzz test.

use proptest::prelude::*;
use vantage_testkit::config_fuzz::{apply, arithmetic_survives, assert_located, cases, mutation};

use super::AgentConfig;

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

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

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
                let _ = runtime.block_on(async { crate::App::check(&config) });
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
fn the_base_config_loads() {
    let dir = tempfile::tempdir().unwrap();
    let agent = dir.path().join("agent.toml");
    std::fs::write(&agent, AGENT).unwrap();
    AgentConfig::load(&agent).unwrap();
}
