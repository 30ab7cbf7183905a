//! The real `vantage-collector` binary's handling of configuration files:
//! `check-config` runs start-up's own checks, and `serve` refuses what it
//! refuses, with the file, line and key (never a panic or a hang).

use std::process::{Command, Output};

fn run(args: &[&str], text: &str, database_url: Option<&str>) -> (Output, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("collector.toml");
    std::fs::write(&path, text).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_vantage-collector"));
    command.args(args).arg("--config").arg(&path);
    match database_url {
        Some(url) => command.env("DATABASE_URL", url),
        None => command.env_remove("DATABASE_URL"),
    };
    let out = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stderr)
}

const EXAMPLE: &str = include_str!("../../../deploy/collector.example.toml");

#[test]
fn check_config_passes_the_shipped_example() {
    let (out, stderr) = run(&["check-config"], EXAMPLE, None);
    assert!(out.status.success(), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("collector.toml: OK"));
}

/// Each was accepted once and then panicked (exit 101), hung at start or
/// killed the detector while `/healthz` said 200.
#[test]
fn check_config_and_serve_refuse_what_crashed_or_hung_at_the_key_line() {
    for (text, at, key) in [
        (
            "[detector]\nwindow = \"100000000years\"\n",
            ":2:",
            "detector.window",
        ),
        (
            "[detector]\n\nrates_retention = \"100000000years\"\n",
            ":3:",
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
            "[[webhook]]\nurl = \"file:///etc/passwd\"\n",
            ":2:",
            "webhook[0].url",
        ),
        (
            "[[webhook]]\nurl = \"http://127.0.0.1:9/\"\nattempts = 0\n",
            ":3:",
            "webhook[0].attempts",
        ),
        (
            "[detector]\negress_prefix_v4 = 0\n",
            ":2:",
            "detector.egress_prefix_v4",
        ),
    ] {
        for command in ["check-config", "serve"] {
            let (out, stderr) = run(&[command], text, Some("postgres://u@127.0.0.1:9/db"));
            assert_eq!(out.status.code(), Some(1), "{command} {text}: {stderr}");
            assert!(
                stderr.contains(&format!("collector.toml{at}")),
                "{command} {text}: {stderr}"
            );
            assert!(stderr.contains(key), "{command} {text}: {stderr}");
            assert!(!stderr.contains("panicked"), "{stderr}");
        }
    }
}

#[test]
fn a_bad_database_url_names_its_setting_and_hides_the_password() {
    let (out, stderr) = run(
        &["check-config"],
        "[database]\nurl = \"postgres://vantage:s3cret@db:port/vantage\"\n",
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("collector.toml:2:"), "{stderr}");
    assert!(stderr.contains("database.url"), "{stderr}");
    assert!(!stderr.contains("s3cret"), "{stderr}");

    let (out, stderr) = run(&["check-config"], "", Some("mysql://root:s3cret@db/x"));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("DATABASE_URL"), "{stderr}");
    assert!(!stderr.contains("s3cret"), "{stderr}");

    // A URL that parses but where nothing answers: `serve` says where it
    // tried and which setting said so.
    let (out, stderr) = run(
        &["serve"],
        "",
        Some("postgres://vantage:s3cret@127.0.0.1:9/vantage"),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("127.0.0.1:9/vantage as vantage (from DATABASE_URL)"),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret"), "{stderr}");
}

#[test]
fn check_config_loads_the_tls_files_as_serve_does() {
    let (out, stderr) = run(
        &["check-config"],
        "[tls]\ncert_file = \"/nonexistent/cert.pem\"\nkey_file = \"/nonexistent/key.pem\"\n",
        Some("postgres://u@127.0.0.1:9/db"),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("/nonexistent/cert.pem"), "{stderr}");
}

#[test]
fn invalid_utf8_names_the_line_and_byte_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("collector.toml");
    std::fs::write(&path, b"grpc_listen = \"127.0.0.1:7400\"\n# caf\xe9\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vantage-collector"))
        .arg("check-config")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("collector.toml:2: invalid UTF-8 at byte 36"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("UTF-8").count(), 2, "said once: {stderr}");
}
