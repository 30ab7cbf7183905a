//! Real processes for the tests that need them: the `vantage-agent` binary
//! (built on demand), graceful and hard stops.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// The agent binary, built next to the collector's by `cargo test
/// --workspace`; built on demand otherwise.
pub fn agent_binary() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_vantage-collector")).with_file_name("vantage-agent");
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "vantage-agent", "--bin", "vantage-agent"])
            .status()
            .unwrap();
        assert!(status.success(), "building vantage-agent");
    }
    path
}

/// Sends SIGTERM (graceful stop) and waits for the exit.
pub fn terminate(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    // The shell's builtin: no dependency on a kill binary.
    let _ = Command::new("sh")
        .args(["-c", &format!("kill -TERM {}", child.id())])
        .status();
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "process did not stop within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends SIGKILL and reaps the process.
pub fn kill9(child: &mut Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}
