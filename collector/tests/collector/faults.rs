//! Delivery under faults, with real processes: the `vantage-collector` and
//! `vantage-agent` binaries, real PostgreSQL, real sockets.
//!
//! Each test compares what the agent produced (the sequence numbers in the
//! `X-Vantage-Probe` headers the target saw) with what is in the database:
//! 0 missing outside recorded gaps, 0 duplicates.
//!
//! `VANTAGE_SOAK_CYCLES` sets how often the agent is killed in
//! `agent_killed_at_random_moments` (default 5; `bench/soak.sh` runs 1,000).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::database_url;
use crate::delivery::{assert_exactly_once, audit};
use crate::process::{agent_binary, kill9, terminate_off_runtime};
use vantage_testkit::{CuttingRelay, DnsServer, Target};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A target, a DNS server, a collector process and agent processes.
struct Rig {
    dir: tempfile::TempDir,
    database_url: String,
    target: Target,
    dns: DnsServer,
    grpc: SocketAddr,
    collector: Option<Child>,
    token: String,
}

impl Rig {
    async fn new(pool: &PgPool, database_url: String) -> Self {
        let store = vantage_collector::store::Store::new(pool.clone());
        store.migrate().await.unwrap();
        let token = vantage_collector::enrol::enrol(&store, "fault", "eu-west")
            .await
            .unwrap();
        let target = Target::start(LOOPBACK, None).await.unwrap();
        let dns = DnsServer::start(LOOPBACK, &[("shop.test", target.addr().ip())])
            .await
            .unwrap();
        Self {
            dir: tempfile::tempdir().unwrap(),
            database_url,
            target,
            dns,
            grpc: SocketAddr::new(LOOPBACK, vantage_testkit::free_port(LOOPBACK).unwrap()),
            collector: None,
            token,
        }
    }

    fn log(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(name))
            .unwrap()
    }

    fn read_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    /// Starts the collector process and waits until it accepts streams.
    fn start_collector(&mut self, failpoints: Option<&str>) {
        let config = self.dir.path().join("collector.toml");
        std::fs::write(&config, format!("grpc_listen = \"{}\"\n", self.grpc)).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_vantage-collector"));
        command
            .args(["serve", "--config"])
            .arg(&config)
            .env("DATABASE_URL", &self.database_url)
            .env("RUST_LOG", "info")
            .stdout(self.log("collector.log"))
            .stderr(self.log("collector.log"));
        if let Some(f) = failpoints {
            command.env("FAILPOINTS", f);
        }
        self.collector = Some(command.spawn().unwrap());
        assert!(
            vantage_testkit::wait_until_listening(self.grpc, Duration::from_secs(30)),
            "collector did not listen:\n{}",
            self.read_log("collector.log")
        );
    }

    fn kill_collector(&mut self) {
        if let Some(mut c) = self.collector.take() {
            kill9(&mut c);
        }
    }

    /// Starts an agent probing the target twice per 100 ms, sending to
    /// `endpoint` (default: the collector).
    fn start_agent(
        &self,
        endpoint: Option<SocketAddr>,
        spool: &str,
        failpoints: Option<&str>,
    ) -> Child {
        let config = self.dir.path().join("agent.toml");
        let text = format!(
            "agent_id = \"fault\"\nregion = \"eu-west\"\n\
             [collector]\nendpoint = \"http://{endpoint}\"\ntoken = \"{token}\"\nbatch_size = 20\nwindow = 4\n\
             [spool]\npath = \"{spool_path}\"\nsync_interval = \"100ms\"\n{spool}\n\
             [dns]\nresolvers = [\"udp://{dns}\"]\nidentity_queries = []\n\
             [[check]]\nname = \"a\"\nurl = \"http://shop.test:{port}/a\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\n\
             [[check]]\nname = \"b\"\nurl = \"http://shop.test:{port}/b\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\n",
            endpoint = endpoint.unwrap_or(self.grpc),
            token = self.token,
            spool_path = self.spool_path().display(),
            dns = self.dns.addr(),
            port = self.target.addr().port(),
        );
        std::fs::write(&config, text).unwrap();
        let mut command = Command::new(agent_binary());
        command
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(self.log("agent.log"))
            .stderr(self.log("agent.log"));
        if let Some(f) = failpoints {
            command.env("FAILPOINTS", f);
        }
        command.spawn().unwrap()
    }

    fn spool_path(&self) -> PathBuf {
        self.dir.path().join("spool").join("spool.redb")
    }

    /// Waits until the target has seen at least `n` more probes.
    async fn probes(&self, n: usize) {
        let start = self.target.probe_seqs("fault").len();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.target.probe_seqs("fault").len() < start + n {
            assert!(
                Instant::now() < deadline,
                "the agent is not probing:\n{}",
                self.read_log("agent.log")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the agent gracefully (it drains) and checks it exited cleanly.
    /// The wait runs off this test's runtime, which serves what the agent
    /// drains through (the cutting relay): blocking it would hold the last
    /// acks in the relay until the agent's drain times out.
    async fn stop_agent(&self, agent: Child) {
        let status = terminate_off_runtime(agent, Duration::from_secs(30)).await;
        assert!(
            status.success(),
            "agent exited with {status}:\n{}",
            self.read_log("agent.log")
        );
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.kill_collector();
    }
}

#[sqlx::test(migrations = false)]
async fn connection_cut_before_the_write(pool: PgPool) {
    let mut rig = Rig::new(&pool, database_url(&pool)).await;
    // Commits as slow as a loaded database's (45 ms), so that the last ack
    // is still on its way when the agent is asked to stop.
    rig.start_collector(Some("ingest-before-commit=sleep(45)"));
    let relay = CuttingRelay::start(rig.grpc).await.unwrap();
    let agent = rig.start_agent(Some(relay.addr()), "", None);
    let mut cut = 0;
    for _ in 0..8 {
        rig.probes(6).await;
        cut += relay.cut_all();
    }
    assert!(cut >= 4, "connections were cut while streaming ({cut})");
    rig.probes(6).await;
    rig.stop_agent(agent).await;
    assert_exactly_once(
        &audit(&pool, &rig.target, "fault").await,
        "cut before the write",
    );
}

#[sqlx::test(migrations = false)]
async fn connection_cut_after_commit_before_the_ack(pool: PgPool) {
    let mut rig = Rig::new(&pool, database_url(&pool)).await;
    rig.start_collector(Some(
        "ingest-after-commit=2*off->1*return->3*off->1*return->off",
    ));
    let agent = rig.start_agent(None, "", None);
    rig.probes(60).await;
    rig.stop_agent(agent).await;
    let log = rig.read_log("collector.log");
    assert_eq!(
        log.matches("fault injected: stream ended after commit, before the ack")
            .count(),
        2,
        "the fault fired twice:\n{log}"
    );
    assert_exactly_once(
        &audit(&pool, &rig.target, "fault").await,
        "cut after commit",
    );
}

#[sqlx::test(migrations = false)]
async fn connection_cut_after_the_ack_before_the_agent_reads_it(pool: PgPool) {
    let mut rig = Rig::new(&pool, database_url(&pool)).await;
    rig.start_collector(None);
    let agent = rig.start_agent(
        None,
        "",
        Some("report-drop-ack=2*off->1*return->3*off->1*return->off"),
    );
    rig.probes(60).await;
    rig.stop_agent(agent).await;
    let log = rig.read_log("agent.log");
    assert_eq!(
        log.matches("connection dropped with an ack unread").count(),
        2,
        "the fault fired twice:\n{log}"
    );
    assert_exactly_once(
        &audit(&pool, &rig.target, "fault").await,
        "cut after the ack",
    );
}

#[sqlx::test(migrations = false)]
async fn collector_killed_mid_stream(pool: PgPool) {
    collector_killed_mid_stream_on(pool).await;
}

/// [`collector_killed_mid_stream`] on the database of `pool` (also a Citus coordinator).
pub async fn collector_killed_mid_stream_on(pool: PgPool) {
    let mut rig = Rig::new(&pool, database_url(&pool)).await;
    rig.start_collector(None);
    let agent = rig.start_agent(None, "", None);
    for _ in 0..3 {
        rig.probes(20).await;
        rig.kill_collector();
        rig.probes(10).await;
        rig.start_collector(None);
    }
    rig.probes(10).await;
    rig.stop_agent(agent).await;
    assert_exactly_once(
        &audit(&pool, &rig.target, "fault").await,
        "collector kill -9",
    );
}

#[sqlx::test(migrations = false)]
async fn agent_killed_at_random_moments(pool: PgPool) {
    agent_killed_at_random_moments_on(pool).await;
}

/// [`agent_killed_at_random_moments`] on the database of `pool` (also a Citus coordinator).
pub async fn agent_killed_at_random_moments_on(pool: PgPool) {
    let cycles: usize = std::env::var("VANTAGE_SOAK_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let mut rig = Rig::new(&pool, database_url(&pool)).await;
    rig.start_collector(None);
    let started = Instant::now();
    for cycle in 0..cycles {
        let mut agent = rig.start_agent(None, "", None);
        rig.probes(1).await;
        let ms = rand_between(50, 600);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        kill9(&mut agent);
        if cycle % 100 == 99 {
            println!("{} cycles, {:?}", cycle + 1, started.elapsed());
        }
    }
    let agent = rig.start_agent(None, "", None);
    rig.probes(10).await;
    rig.stop_agent(agent).await;
    let a = audit(&pool, &rig.target, "fault").await;
    let crash_gaps = a.gaps.iter().filter(|g| g.3 == "agent_crash").count();
    println!(
        "soak: {cycles} kill -9 cycles in {:.1} s: {} produced, {} stored, {} duplicates, \
         {} missing outside gaps, {} lost inside {} recorded gaps ({} agent_crash)",
        started.elapsed().as_secs_f64(),
        a.produced,
        a.stored,
        a.duplicates,
        a.missing.len(),
        a.in_gaps,
        a.gaps.len(),
        crash_gaps
    );
    if !a.missing.is_empty() {
        println!("{}", rig.read_log("agent.log"));
    }
    assert_exactly_once(&a, "agent kill -9");
}

fn rand_between(low: u64, high: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    low + nanos % (high - low)
}

#[sqlx::test(migrations = false)]
async fn postgres_stopped_and_started(pool: PgPool) {
    use vantage_testkit::cluster::{PrivateCluster, find_server_binaries};
    let _ = pool;
    let Some(bin) = find_server_binaries() else {
        panic!("PostgreSQL server binaries not found under /usr/lib/postgresql");
    };
    let cluster = PrivateCluster::start(bin).unwrap();
    let private = PgPool::connect(&cluster.url()).await.unwrap();
    let mut rig = Rig::new(&private, cluster.url()).await;
    rig.start_collector(None);
    let agent = rig.start_agent(None, "", None);
    rig.probes(20).await;
    cluster.kill_server().unwrap();
    // The agent keeps probing and spooling; the collector answers
    // UNAVAILABLE, never an ack.
    rig.probes(30).await;
    cluster.restart_server().unwrap();
    rig.probes(20).await;
    rig.stop_agent(agent).await;
    let private = PgPool::connect(&cluster.url()).await.unwrap();
    assert_exactly_once(
        &audit(&private, &rig.target, "fault").await,
        "PostgreSQL stopped",
    );
    drop(rig);
    private.close().await;
    cluster.stop().unwrap();
}

/// A check loop that panics is logged at ERROR by name and made again;
/// the agent goes on probing, loses nothing and still stops on SIGTERM.
#[sqlx::test(migrations = false)]
async fn a_check_loop_that_panics_is_made_again(pool: PgPool) {
    let mut rig = Rig::new(&pool, database_url(&pool)).await;
    rig.start_collector(None);
    let agent = rig.start_agent(None, "", Some("check-round=2*panic(injected probe fault)"));
    // Two panics (1 s and 2 s of backoff), then rounds again.
    rig.probes(20).await;
    rig.stop_agent(agent).await;
    let log = rig.read_log("agent.log");
    let panics = log
        .lines()
        .filter(|l| {
            l.contains("ERROR")
                && l.contains("Component check:")
                && l.contains("panicked: injected probe fault")
        })
        .count();
    assert_eq!(panics, 2, "{log}");
    assert_exactly_once(
        &audit(&pool, &rig.target, "fault").await,
        "check loop panic",
    );
}

#[sqlx::test(migrations = false)]
async fn spool_full_drops_the_oldest_and_records_the_gap(pool: PgPool) {
    let mut rig = Rig::new(&pool, database_url(&pool)).await;
    // Collector down: everything piles up in a spool of about 30 results.
    let agent = rig.start_agent(None, "max_bytes = 20000", None);
    rig.probes(120).await;
    rig.start_collector(None);
    rig.probes(10).await;
    rig.stop_agent(agent).await;
    let a = audit(&pool, &rig.target, "fault").await;
    assert_exactly_once(&a, "spool full");
    assert!(a.gaps.iter().any(|g| g.3 == "spool_full"), "{:?}", a.gaps);
    assert!(
        a.in_gaps > 0,
        "results were dropped, and each is inside a gap"
    );
}

#[sqlx::test(migrations = false)]
async fn corrupted_spool_file_is_skipped_not_fatal(pool: PgPool) {
    let mut rig = Rig::new(&pool, database_url(&pool)).await;
    let agent = rig.start_agent(None, "", None);
    rig.probes(60).await;
    rig.stop_agent(agent).await;
    // Cut the file in half, as a crash of the disk might.
    let path = rig.spool_path();
    let len = std::fs::metadata(&path).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(len / 2).unwrap();
    drop(file);

    rig.start_collector(None);
    let agent = rig.start_agent(None, "", None);
    rig.probes(30).await;
    rig.stop_agent(agent).await;
    let a = audit(&pool, &rig.target, "fault").await;
    assert_exactly_once(&a, "spool corrupted");
    assert!(
        a.gaps
            .iter()
            .any(|g| g.3 == "spool_unreadable" || g.3 == "spool_corrupt"),
        "{:?}",
        a.gaps
    );
    assert!(
        a.stored >= 30,
        "the agent went on and delivered new results"
    );
}
