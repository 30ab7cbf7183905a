//! The collector configuration's parsing and validation, by example.

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
fn reopen_within_defaults_to_twice_resolve_quiet() {
    let c = load("[detector]\nresolve_quiet = \"10s\"\n").unwrap();
    assert_eq!(
        c.detector.settings().hysteresis.reopen_within,
        Duration::from_secs(20)
    );
    let c = load("[detector]\nresolve_quiet = \"10s\"\nreopen_within = \"0s\"\n").unwrap();
    assert_eq!(
        c.detector.settings().hysteresis.reopen_within,
        Duration::ZERO
    );
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

/// Each config a hostile operator found accepted and then crashing,
/// hanging or doing nonsense: refused, at the key's line.
#[test]
fn values_outside_their_range_are_refused_at_the_key_line() {
    for (text, at, key) in [
        (
            "[detector]\nwindow = \"100000000years\"\n",
            ":2:",
            "detector.window",
        ),
        (
            "[detector]\nrates_retention = \"100000000years\"\n",
            ":2:",
            "detector.rates_retention",
        ),
        (
            "[database]\nmax_connections = 0\n",
            ":2:",
            "database.max_connections",
        ),
        (
            "[database]\npartitions_ahead_days = 100000\n",
            ":2:",
            "database.partitions_ahead_days",
        ),
        (
            "[detector]\negress_prefix_v4 = 0\n",
            ":2:",
            "detector.egress_prefix_v4",
        ),
        (
            "[detector]\negress_prefix_v6 = 129\n",
            ":2:",
            "detector.egress_prefix_v6",
        ),
        (
            "[[webhook]]\nurl = \"http://127.0.0.1:9/\"\nattempts = 0\n",
            ":3:",
            "webhook[0].attempts",
        ),
        (
            "[[webhook]]\nurl = \"file:///etc/passwd\"\n",
            ":2:",
            "webhook[0].url",
        ),
        (
            "[[webhook]]\nurl = \"http://127.0.0.1:9/\"\ntimeout = \"0s\"\n",
            ":3:",
            "webhook[0].timeout",
        ),
        (
            "[[sink]]\nkind = \"slack\"\nurl = \"http://h/\"\n\nexpire_after = \"1s\"\n",
            ":5:",
            "sink[0].expire_after",
        ),
        ("[ingest]\nmax_batch = 0\n", ":2:", "ingest.max_batch"),
        (
            "[ingest]\nmax_message_bytes = 10\n",
            ":2:",
            "ingest.max_message_bytes",
        ),
        (
            "grpc_listen = \"127.0.0.1:7400\"\n[detector]\ninterval = \"0s\"\n",
            ":3:",
            "detector.interval",
        ),
        (
            "[detector]\n\nopen_after = 0\n",
            ":3:",
            "detector.open_after",
        ),
        (
            "public_url = \"http://x/\"\n[detector]\n[[detector.check]]\nname = \"a\"\nstatuses = []\n",
            ":5:",
            "detector.check[0].statuses",
        ),
    ] {
        let e = load(text).unwrap_err().to_string();
        assert!(e.contains(&format!("collector.toml{at}")), "{text}: {e}");
        assert!(e.contains(key), "{text}: {e}");
        assert!(
            e.contains("expected"),
            "{text}: the error says what was expected: {e}"
        );
    }
}

#[test]
fn a_key_left_at_its_default_points_at_its_table() {
    let e = load("grpc_listen = \"127.0.0.1:7400\"\n\n[detector]\ninterval = \"1h\"\n")
        .unwrap_err()
        .to_string();
    // The default window (5m) is shorter than the interval.
    assert!(e.contains("collector.toml:3:"), "{e}");
    assert!(e.contains("detector.window"), "{e}");
}

#[test]
fn a_bad_database_url_names_the_key_and_hides_the_password() {
    for url in [
        "mysql://u:s3cret@h/db",
        "postgres://u:s3cret@h:notaport/db",
        "not a url s3cret",
    ] {
        let e = load(&format!("[database]\nurl = \"{url}\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("collector.toml:2:"), "{url}: {e}");
        assert!(e.contains("database.url"), "{url}: {e}");
        assert!(e.contains("postgres://USER"), "{url}: {e}");
        assert!(!e.contains("s3cret"), "{url}: the password leaked: {e}");
    }
}

#[test]
fn raw_retention_must_outlast_the_oldest_result_still_accepted() {
    assert_eq!(
        load("").unwrap().retention.raw,
        Duration::from_secs(14 * 86_400)
    );
    let e = load("[retention]\nraw = \"5days\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("retention.raw"), "{e}");
    assert!(e.contains(":2:"), "at its line: {e}");
    load("[ingest]\nmax_result_age = \"1day\"\n[retention]\nraw = \"2days\"\n").unwrap();
    let e = load("[retention]\nrow = \"5days\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("row"), "{e}");
}

#[test]
fn no_database_names_the_file_and_the_key() {
    let path = Path::new("/etc/vantage/collector.toml");
    let config = CollectorConfig::parse(path, "").unwrap();
    let e = config.database_with(None).unwrap_err();
    assert!(
        e.starts_with(
            "/etc/vantage/collector.toml: database.url: not set, and neither is DATABASE_URL"
        ),
        "{e}"
    );
    let e = CollectorConfig::parse(path, "[database]\nurl = \"mysql://x\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("/etc/vantage/collector.toml:2:1: database.url: unsupported scheme"),
        "{e}"
    );
    assert!(
        CollectorConfig::parse(path, "")
            .unwrap()
            .database_with(Some("postgres://u@127.0.0.1/db".into()))
            .is_ok()
    );
}
