//! The README's first command, as a new user runs it: the real
//! `vantage-demo` binary, with no `DATABASE_URL` (it starts its own
//! PostgreSQL), tells the whole story and exits 0.

use std::process::Command;

#[test]
fn the_demo_tells_the_story_from_a_private_cluster_and_exits_zero() {
    let out = Command::new(env!("CARGO_BIN_EXE_vantage-demo"))
        .env_remove("DATABASE_URL")
        .output()
        .expect("the demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{stderr}",
        out.status
    );
    for line in [
        "Incident opened after",
        "\"dimension\": \"egress_prefix\"",
        "\"value\": \"127.0.2.0/24\"",
        "re-explained",
        "Incident resolved",
        "Webhooks in all: 1 opened, 1 updated, 1 resolved",
    ] {
        assert!(stdout.contains(line), "{line:?} not in:\n{stdout}");
    }
    // Every page links the collector's incident page.
    assert!(
        stdout.contains("\"incident_url\": \"http://127.0.0.1:")
            && stdout.contains("/incidents/1\""),
        "{stdout}"
    );
    // Only errors are logged, and there were none.
    assert!(stderr.trim().is_empty(), "{stderr}");
}
