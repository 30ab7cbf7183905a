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

/// The demo started as a user starts it (no `DATABASE_URL`), with its
/// temporary files in a directory of the test's own, read line by line.
struct RunningDemo {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: String,
    tmp: tempfile::TempDir,
}

impl RunningDemo {
    fn start(args: &[&str]) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("temporary directory");
        // The private cluster runs as `postgres` when the tests run as root.
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod the temporary directory");
        let mut child = Command::new(env!("CARGO_BIN_EXE_vantage-demo"))
            .args(args)
            .env_remove("DATABASE_URL")
            .env("TMPDIR", tmp.path())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("the demo starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: String::new(),
            tmp,
        }
    }

    /// Reads stdout until a line holds `text`; returns that line.
    fn wait_for(&mut self, text: &str, within: std::time::Duration) -> String {
        let deadline = std::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push_str(&line);
                    self.seen.push('\n');
                    if line.contains(text) {
                        return line;
                    }
                }
                Err(_) => panic!("{text:?} not printed within {within:?}:\n{}", self.seen),
            }
        }
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("a pid"));
        nix::sys::signal::kill(pid, signal).expect("signal the demo");
    }

    /// Waits for the demo to exit; returns its status and the rest of its
    /// output.
    fn exit(&mut self, within: std::time::Duration) -> (std::process::ExitStatus, String) {
        let deadline = std::time::Instant::now() + within;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for the demo") {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the demo did not exit within {within:?}:\n{}", self.seen);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        while let Ok(line) = self.lines.recv_timeout(std::time::Duration::from_secs(5)) {
            self.seen.push_str(&line);
            self.seen.push('\n');
        }
        (status, self.seen.clone())
    }

    /// The processes whose command line names the demo's temporary
    /// directory (the private PostgreSQL's server and its workers).
    fn processes_left(&self) -> Vec<(i32, String)> {
        let dir = self.tmp.path().to_string_lossy().into_owned();
        let mut running = Vec::new();
        for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse().ok()) else {
                continue;
            };
            if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                if cmdline.contains(&dir) {
                    running.push((pid, cmdline));
                }
            }
        }
        running
    }

    /// Nothing of the demo is left: no file in its temporary directory, no
    /// process whose command line names that directory (the private
    /// PostgreSQL's server and its workers), nothing on the cluster's port.
    fn assert_nothing_left(&self, port: u16) {
        let left: Vec<_> = std::fs::read_dir(self.tmp.path())
            .expect("read the temporary directory")
            .map(|e| e.expect("entry").path())
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
        let running = self.processes_left();
        assert!(running.is_empty(), "still running: {running:?}");
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "something still listens on the cluster's port {port}"
        );
    }
}

impl Drop for RunningDemo {
    /// A failed test leaves nothing running either.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for (pid, _) in self.processes_left() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// The port of the line `PostgreSQL  private cluster from … on 127.0.0.1:PORT …`.
fn cluster_port(line: &str) -> u16 {
    line.split("127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"))
}

#[test]
fn sigterm_in_the_middle_of_the_story_leaves_no_postgres_and_no_files() {
    let mut demo = RunningDemo::start(&[]);
    let line = demo.wait_for("private cluster", std::time::Duration::from_secs(60));
    let port = cluster_port(&line);
    // The story is under way: agents probing, the detector waiting.
    demo.wait_for("collector", std::time::Duration::from_secs(60));
    demo.signal(nix::sys::signal::Signal::SIGTERM);
    let (status, out) = demo.exit(std::time::Duration::from_secs(60));
    assert!(!status.success(), "a story cut short is a failure:\n{out}");
    assert!(out.contains("Stopped by SIGTERM"), "{out}");
    demo.assert_nothing_left(port);
}

#[test]
fn sighup_ends_keep_and_leaves_no_postgres_and_no_files() {
    let mut demo = RunningDemo::start(&["--keep"]);
    let line = demo.wait_for("private cluster", std::time::Duration::from_secs(60));
    let port = cluster_port(&line);
    demo.wait_for("Still running", std::time::Duration::from_secs(180));
    demo.signal(nix::sys::signal::Signal::SIGHUP);
    let (status, out) = demo.exit(std::time::Duration::from_secs(60));
    assert!(
        status.success(),
        "--keep ended by a signal is its normal end:\n{out}"
    );
    assert!(out.contains("SIGHUP: stopping."), "{out}");
    demo.assert_nothing_left(port);
}
