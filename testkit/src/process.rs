//! Processes a test or benchmark starts: ready once they listen, stopped
//! the way an operator stops them (SIGTERM).

use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// Waits (blocking, polling every 50 ms) until something accepts TCP
/// connections at `addr`: a process just started is ready. False if
/// nothing did within `within`; the caller says why (its log).
pub fn wait_until_listening(addr: SocketAddr, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while std::net::TcpStream::connect(addr).is_err() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// Sends SIGTERM (graceful stop) and waits for the exit; panics if the
/// process is still running after `within`.
pub fn terminate(child: &mut Child, within: Duration) -> ExitStatus {
    // The shell's builtin: no dependency on a kill binary.
    let _ = Command::new("sh")
        .args(["-c", &format!("kill -TERM {}", child.id())])
        .status();
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("the child can be waited for") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "process did not stop within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
