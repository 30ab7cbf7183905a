//! The real `vantage-agent` binary's handling of configuration files.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn run_check_config(text: impl AsRef<[u8]>) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, text.as_ref()).unwrap();
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

/// The example with its token file made real (start-up reads it; the
/// check runs what start-up runs) with `mode`.
fn example_with_token_file(dir: &Path, mode: u32) -> String {
    let token = dir.join("agent.token");
    std::fs::write(&token, "vantage_example\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(mode)).unwrap();
    EXAMPLE.replace("/etc/vantage/agent.token", &token.display().to_string())
}

#[test]
fn shipped_example_config_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = run_check_config(example_with_token_file(dir.path(), 0o600));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(": OK"), "{stdout}");
}

#[test]
fn a_token_file_others_may_read_fails_the_check_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, stderr) = run_check_config(example_with_token_file(dir.path(), 0o644));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("collector.token_file"), "{stderr}");
    assert!(stderr.contains("chmod 600"), "{stderr}");
}

/// Passed `--check-config` once, then panicked at run time.
#[test]
fn zero_intervals_fail_the_check_at_their_line() {
    for (extra, key) in [
        (
            "[dns]\nidentity_interval = \"0s\"\n",
            "dns.identity_interval",
        ),
        (
            "[[vantage]]\nname = \"v\"\nip_echo_interval = \"0s\"\n",
            "vantage[0].ip_echo_interval",
        ),
    ] {
        let text = format!("{MINIMAL}{extra}");
        let (code, _, stderr) = run_check_config(&text);
        assert_eq!(code, 2, "{stderr}");
        let line = text.lines().count();
        assert!(stderr.contains(&format!("agent.toml:{line}:")), "{stderr}");
        assert!(stderr.contains(key), "{stderr}");
    }
}

#[test]
fn invalid_utf8_names_the_line_and_byte() {
    let mut text = MINIMAL.as_bytes().to_vec();
    text.extend_from_slice(b"labels = { a = \"\xc3\x28\" }\n");
    let (code, _, stderr) = run_check_config(&text);
    assert_eq!(code, 2, "{stderr}");
    let line = MINIMAL.lines().count() + 1;
    let at = MINIMAL.len() + 16;
    assert!(
        stderr.contains(&format!("agent.toml:{line}: invalid UTF-8 at byte {at}")),
        "{stderr}"
    );
}

const MINIMAL: &str = "agent_id = \"a\"\nregion = \"r\"\n[collector]\nendpoint = \"http://127.0.0.1:7400\"\n\
                       token = \"t\"\n[[check]]\nname = \"c\"\nurl = \"http://a.test/\"\n";

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
