//! The systemd protocol of both binaries, against a real notification
//! socket as systemd would give them (`NOTIFY_SOCKET`, `WATCHDOG_USEC`):
//! READY=1 only once serving, WATCHDOG=1 pings, RELOADING=1 then READY=1
//! around a SIGHUP, STOPPING=1 at SIGTERM.

use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::net::UnixDatagram;

use crate::process::{hangup, start_collector_env, terminate};
use crate::rig::Fleet;

/// Every message received until `until` holds or 15 s pass.
async fn receive_until(
    socket: &UnixDatagram,
    seen: &mut Vec<String>,
    until: impl Fn(&[String]) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut buf = vec![0u8; 4096];
    while !until(seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "timed out; received {seen:?}");
        if let Ok(Ok(n)) = tokio::time::timeout(left, socket.recv(&mut buf)).await {
            seen.extend(
                String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .map(str::to_owned),
            );
        }
    }
}

fn count(seen: &[String], line: &str) -> usize {
    seen.iter().filter(|l| l.as_str() == line).count()
}

#[sqlx::test(migrations = false)]
async fn the_collector_tells_systemd_ready_watchdog_reloading_and_stopping(pool: PgPool) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    let env = [
        ("NOTIFY_SOCKET", path.to_str().unwrap()),
        ("WATCHDOG_USEC", "400000"),
    ];
    let (mut collector, http) = start_collector_env(&pool, dir.path(), "collector", "", &env);
    let mut seen = Vec::new();
    receive_until(&socket, &mut seen, |s| count(s, "READY=1") >= 1).await;
    // Ready means listening: the HTTP listener (and gRPC, bound before it)
    // accepts now.
    std::net::TcpStream::connect(http).unwrap();
    assert!(seen.iter().any(|l| l == "STATUS=serving"), "{seen:?}");
    receive_until(&socket, &mut seen, |s| count(s, "WATCHDOG=1") >= 3).await;
    hangup(&collector.0);
    receive_until(&socket, &mut seen, |s| count(s, "READY=1") >= 2).await;
    let reloading = seen
        .iter()
        .position(|l| l == "RELOADING=1")
        .expect("RELOADING=1");
    let ready_again = seen.iter().rposition(|l| l == "READY=1").unwrap();
    assert!(reloading < ready_again, "{seen:?}");
    assert!(
        seen.iter().any(|l| l.starts_with("MONOTONIC_USEC=")),
        "{seen:?}"
    );
    terminate(&mut collector.0, Duration::from_secs(20));
    receive_until(&socket, &mut seen, |s| count(s, "STOPPING=1") >= 1).await;
}

#[sqlx::test(migrations = false)]
async fn the_agent_tells_systemd_ready_once_probing_and_pings_the_watchdog(pool: PgPool) {
    let fleet = Fleet::start(pool, &[("fra-1", "eu-west")], "").await;
    let path = fleet.dir.path().join("agent-notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    let check = format!(
        "[[check]]\nname = \"a\"\nurl = \"{}\"\ninterval = \"1s\"\ntimeout = \"500ms\"\n",
        fleet.url("/a")
    );
    let mut agent = fleet.start_agent_env(
        "fra-1",
        "",
        &check,
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let mut seen = Vec::new();
    receive_until(&socket, &mut seen, |s| {
        count(s, "READY=1") >= 1 && count(s, "WATCHDOG=1") >= 3
    })
    .await;
    assert!(seen.iter().any(|l| l == "STATUS=probing"), "{seen:?}");
    terminate(&mut agent.child, Duration::from_secs(20));
    receive_until(&socket, &mut seen, |s| count(s, "STOPPING=1") >= 1).await;
}
