//! Real processes for the tests that need them: the `vantage-agent` binary
//! (built on demand), collector processes, graceful and hard stops.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use sqlx::PgPool;

use crate::database_url;

/// A collector process, killed if the test fails before stopping it.
pub struct Collector(pub Child);

impl Drop for Collector {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            kill9(&mut self.0);
        }
    }
}

/// Starts `vantage-collector serve` on the test's database with free gRPC
/// and HTTP ports and `extra` appended to its config (log in
/// `dir/<name>.log`); returns it once it listens, and its HTTP address.
pub fn start_collector(
    pool: &PgPool,
    dir: &Path,
    name: &str,
    extra: &str,
) -> (Collector, SocketAddr) {
    start_collector_env(pool, dir, name, extra, &[])
}

/// [`start_collector`] with extra environment variables (`FAILPOINTS`).
pub fn start_collector_env(
    pool: &PgPool,
    dir: &Path,
    name: &str,
    extra: &str,
    env: &[(&str, &str)],
) -> (Collector, SocketAddr) {
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let grpc = SocketAddr::new(loopback, vantage_testkit::free_port(loopback).unwrap());
    start_collector_at(pool, dir, name, grpc, extra, env)
}

/// [`start_collector_env`] with its gRPC listener on `grpc`.
pub fn start_collector_at(
    pool: &PgPool,
    dir: &Path,
    name: &str,
    grpc: SocketAddr,
    extra: &str,
    env: &[(&str, &str)],
) -> (Collector, SocketAddr) {
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let http = SocketAddr::new(loopback, vantage_testkit::free_port(loopback).unwrap());
    start_collector_listening(pool, dir, name, grpc, http, extra, env)
}

/// [`start_collector_at`] with its HTTP listener on `http_listen` (an
/// unspecified address, `[::]:port`, listens on every address; readiness
/// is awaited on loopback).
pub fn start_collector_listening(
    pool: &PgPool,
    dir: &Path,
    name: &str,
    grpc: SocketAddr,
    http_listen: SocketAddr,
    extra: &str,
    env: &[(&str, &str)],
) -> (Collector, SocketAddr) {
    let http = if http_listen.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), http_listen.port())
    } else {
        http_listen
    };
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!("grpc_listen = \"{grpc}\"\nhttp_listen = \"{http_listen}\"\n{extra}"),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let child = Collector(
        Command::new(env!("CARGO_BIN_EXE_vantage-collector"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("DATABASE_URL", database_url(pool))
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    assert!(
        vantage_testkit::wait_until_listening(http, Duration::from_secs(30)),
        "{name} did not listen"
    );
    (child, http)
}

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

pub use vantage_testkit::terminate;

/// [`terminate`], waited for off the test's runtime: that runtime serves
/// what the process may still talk to while it stops (a relay, the
/// target, DNS), and blocking it would stall them. `process` is the child
/// or what owns it.
pub async fn terminate_off_runtime<P>(mut process: P, within: Duration) -> std::process::ExitStatus
where
    P: std::borrow::BorrowMut<Child> + Send + 'static,
{
    tokio::task::spawn_blocking(move || terminate(process.borrow_mut(), within))
        .await
        .expect("the wait for the process's exit ran to completion")
}

/// Sends SIGHUP (reload the configuration).
pub fn hangup(child: &Child) {
    let status = Command::new("sh")
        .args(["-c", &format!("kill -HUP {}", child.id())])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Sends SIGKILL and reaps the process.
pub fn kill9(child: &mut Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}
