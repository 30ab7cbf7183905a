//! The real `vantage-agent` binary's handling of configuration files.

use std::process::Command;

fn run_check_config(text: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vantage-agent"))
        .arg("--config")
        .arg(&path)
        .arg("--check-config")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const EXAMPLE: &str = include_str!("../../../deploy/agent.example.toml");

#[test]
fn shipped_example_config_is_valid() {
    let (code, stdout, stderr) = run_check_config(EXAMPLE);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(": ok"));
}

#[test]
fn bad_interval_exits_2_naming_file_line_and_key() {
    let text = "agent_id = \"a\"\nregion = \"r\"\n[collector]\nendpoint = \"http://127.0.0.1:7400\"\ntoken = \"t\"\n\
                [[check]]\nname = \"c\"\nurl = \"http://a.test/\"\ninterval = \"soon\"\n";
    let (code, _, stderr) = run_check_config(text);
    assert_eq!(code, 2);
    assert!(stderr.contains("agent.toml:9:"), "{stderr}");
    assert!(stderr.contains("check[0].interval"), "{stderr}");
}

#[test]
fn missing_file_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_vantage-agent"))
        .args(["--config", "/nonexistent/agent.toml", "--check-config"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/nonexistent/agent.toml: cannot read"),
        "{stderr}"
    );
}
