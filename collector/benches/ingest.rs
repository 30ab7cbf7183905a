//! Ingest throughput: several concurrent agent connections speaking the
//! real protocol (Hello, a window of batches, cumulative acks) into the
//! real `vantage-collector` binary, in its own process, and PostgreSQL;
//! then a plain `COPY` of the same rows into the same table for reference
//! (three runs; the ratio is to the fastest). The collector's CPU time per
//! result is read from `/proc`, so that its cost shows apart from the
//! clients' and the database's on a shared machine.
//!
//! Then the same against a Citus coordinator and two workers started on
//! this machine (private clusters, Citus built from the vendored source
//! where missing), and both runs' figures side by side.
//!
//! `DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo bench -p vantage-collector --bench ingest`
//! Environment: `BENCH_AGENTS` (default 4), `BENCH_RESULTS` per agent
//! (default 50000), `BENCH_BATCH` (default 1000), `BENCH_WINDOW` (default
//! 4), `BENCH_CITUS_WORKERS` (default 2; 0 skips the Citus run).

#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use vantage_collector::store::Store;
use vantage_proto::v1 as pb;

mod common;

use common::{ScratchDatabase, env_or};

/// A result shaped like a real probe's: every path-identity field set.
fn result(seq: u64, now: &prost_types::Timestamp) -> pb::ProbeResult {
    let failing = seq.is_multiple_of(50);
    pb::ProbeResult {
        seq,
        started_at: Some(*now),
        check: "shop-health".into(),
        url: "https://shop.example.com/health".into(),
        method: "GET".into(),
        outcome: if failing {
            pb::Outcome::Http
        } else {
            pb::Outcome::Ok
        } as i32,
        message: if failing {
            "unexpected status 502".into()
        } else {
            String::new()
        },
        http_status: Some(if failing { 502 } else { 200 }),
        http_version: "HTTP/2".into(),
        resolver: "udp://127.0.0.53:53".into(),
        resolved: vec![
            pb::ResolvedAddress {
                ip: "198.51.100.7".into(),
                ttl_seconds: 60,
            },
            pb::ResolvedAddress {
                ip: "198.51.100.8".into(),
                ttl_seconds: 60,
            },
        ],
        dialed_addr: "198.51.100.7:443".into(),
        local_ip: "10.0.0.12".into(),
        egress_ip: "203.0.113.10".into(),
        timings: Some(pb::Timings {
            dns_us: Some(850),
            connect_us: Some(11_200),
            tls_us: Some(23_400),
            ttfb_us: Some(48_000),
            total_us: Some(84_000),
            proxy_us: None,
            transfer_us: Some(600),
        }),
        headers: [
            ("server".to_owned(), "cloudflare".to_owned()),
            ("cf-ray".to_owned(), "8d3c1f2a4b5e6f70-FRA".to_owned()),
        ]
        .into(),
        vantage: "direct".into(),
        region: String::new(),
        proxy: String::new(),
        proxy_status: None,
        dns_rcode: "NOERROR".into(),
        resolver_egress_ip: "203.0.113.53".into(),
        resolver_nsid: "res-fra-3".into(),
        resolver_identity_error: String::new(),
        echo_ip: "203.0.113.10".into(),
        tls: Some(pb::Tls {
            version: "TLSv1_3".into(),
            alpn: "h2".into(),
            cipher: "TLS13_AES_128_GCM_SHA256".into(),
            cert_subject: "CN=shop.example.com".into(),
            cert_issuer: "CN=R11, O=Let's Encrypt, C=US".into(),
            cert_not_after: Some(prost_types::Timestamp {
                seconds: now.seconds + 60 * 86_400,
                nanos: 0,
            }),
        }),
        body_bytes: Some(157),
        body_sha256: "ab".repeat(32),
        body_truncated: false,
        gateway: if failing {
            "cloudflare".into()
        } else {
            String::new()
        },
        edge_location: "FRA".into(),
        hops: vec![],
        interval_ms: 10_000,
        proxy_ip: String::new(),
        // A central check's version, as most results will carry.
        check_version: 7,
        request_id: 0,
        tls_insecure: false,
        path: None,
    }
}

/// One agent: streams `n` results in batches with a window; returns the
/// send→ack latency of every batch.
async fn agent(
    addr: std::net::SocketAddr,
    token: String,
    id: String,
    n: usize,
    batch: usize,
    window: usize,
) -> Vec<Duration> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = vantage_proto::authenticated_client(channel, &token)
        .unwrap()
        .max_encoding_message_size(64 << 20);
    let (tx, rx) = mpsc::channel(window + 1);
    tx.send(pb::AgentMessage {
        body: Some(pb::agent_message::Body::Hello(pb::Hello {
            agent_id: id,
            region: "bench".into(),
            labels: Default::default(),
            version: "bench".into(),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut inbound = client
        .stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    inbound.message().await.unwrap().unwrap();
    let now = {
        let t = chrono::Utc::now();
        prost_types::Timestamp {
            seconds: t.timestamp(),
            nanos: 0,
        }
    };
    let batches = n.div_ceil(batch);
    let mut in_flight = VecDeque::new();
    let mut latencies = Vec::with_capacity(batches);
    let mut next = 0usize;
    while next < batches || !in_flight.is_empty() {
        while next < batches && in_flight.len() < window {
            let first = (next * batch) as u64 + 1;
            let results = (first..first + batch as u64)
                .map(|s| result(s, &now))
                .collect();
            next += 1;
            in_flight.push_back(Instant::now());
            tx.send(pb::AgentMessage {
                body: Some(pb::agent_message::Body::Batch(pb::ResultBatch {
                    batch_id: next as u64,
                    results,
                    gaps: vec![],
                })),
            })
            .await
            .unwrap();
        }
        match inbound.message().await.unwrap().and_then(|m| m.body) {
            Some(pb::collector_message::Body::Ack(_)) => {
                latencies.push(in_flight.pop_front().unwrap().elapsed());
            }
            other => panic!("expected an ack, got {other:?}"),
        }
    }
    latencies
}

/// The collector binary, killed if the benchmark ends before stopping it.
struct Collector(Child);

impl Drop for Collector {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts `vantage-collector serve` on `database_url` with free ports and
/// no rate limit worth the name; returns it once it listens, with its gRPC
/// address. Its log is `dir/collector.log`.
fn start_collector(database_url: &str, dir: &std::path::Path) -> (Collector, SocketAddr) {
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let grpc = SocketAddr::new(loopback, vantage_testkit::free_port(loopback).unwrap());
    let http = SocketAddr::new(loopback, vantage_testkit::free_port(loopback).unwrap());
    let config = dir.join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "grpc_listen = \"{grpc}\"\nhttp_listen = \"{http}\"\n\
             [ingest]\nmax_results_per_second = 10000000\n\
             [database]\nmax_connections = 20\n"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("collector.log")).unwrap();
    let child = Collector(
        Command::new(env!("CARGO_BIN_EXE_vantage-collector"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("DATABASE_URL", database_url)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    assert!(
        vantage_testkit::wait_until_listening(http, Duration::from_secs(30)),
        "the collector did not listen (its log: {})",
        dir.join("collector.log").display()
    );
    (child, grpc)
}

/// User and system CPU time of process `pid` so far (`/proc/<pid>/stat`).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses and may hold
    // spaces: utime and stime are the 12th and 13th of them.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let ticks: u64 = rest
        .split(' ')
        .skip(11)
        .take(2)
        .map(|f| f.parse::<u64>().unwrap())
        .sum();
    // USER_HZ is 100 on every Linux this runs on.
    Duration::from_millis(ticks * 10)
}

/// Peak resident set of process `pid`, in KiB (`VmHWM`).
fn peak_rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// The run's shape.
#[derive(Clone, Copy)]
struct Shape {
    agents: usize,
    per_agent: usize,
    batch: usize,
    window: usize,
}

/// What one run on one database measured (results/s).
struct Figures {
    ingest_rate: f64,
    copy_rate: f64,
    collector_cpu_us: f64,
}

#[tokio::main]
async fn main() {
    let shape = Shape {
        agents: env_or("BENCH_AGENTS", 4),
        per_agent: env_or("BENCH_RESULTS", 50_000),
        batch: env_or("BENCH_BATCH", 1_000),
        window: env_or("BENCH_WINDOW", 4),
    };
    // A throwaway database on the server of DATABASE_URL.
    println!("== one PostgreSQL (DATABASE_URL)");
    let scratch = ScratchDatabase::create("vantage_bench").await;
    let single = run(&scratch.url, shape).await;
    scratch.drop_now().await;

    // The same on a Citus coordinator and its workers on this machine
    // (built from the vendored source where missing).
    let workers = env_or("BENCH_CITUS_WORKERS", 2);
    if workers == 0 {
        return;
    }
    println!("== Citus: a coordinator and {workers} workers, private clusters on this machine");
    let cluster = tokio::task::spawn_blocking(move || {
        vantage_testkit::citus::CitusCluster::start(workers).unwrap()
    })
    .await
    .unwrap();
    let url = cluster.database("vantage_bench").await.unwrap();
    let citus = run(&url, shape).await;
    cluster.stop().unwrap();
    println!(
        "one node beside Citus ({workers} workers, same machine, same run): ingest {:.0} vs \
         {:.0} results/s; plain COPY {:.0} vs {:.0} rows/s; collector CPU {:.1} vs {:.1} us per \
         result",
        single.ingest_rate,
        citus.ingest_rate,
        single.copy_rate,
        citus.copy_rate,
        single.collector_cpu_us,
        citus.collector_cpu_us
    );
}

/// One run on the (empty) database at `bench_url`: migrated and the agents
/// enrolled before the collector starts.
async fn run(bench_url: &str, shape: Shape) -> Figures {
    let Shape {
        agents,
        per_agent,
        batch,
        window,
    } = shape;
    let bench_url = bench_url.to_owned();
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&bench_url)
        .await
        .unwrap();
    let store = Store::new(pool.clone());
    store.migrate().await.unwrap();
    let mut tokens = Vec::new();
    for i in 0..agents {
        tokens.push(
            vantage_collector::enrol::enrol(&store, &format!("bench-{i}"), "bench")
                .await
                .unwrap(),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut collector, addr) = start_collector(&bench_url, dir.path());
    let collector_cpu = cpu_time(collector.0.id());
    let own_cpu = cpu_time(std::process::id());

    let started = Instant::now();
    let tasks: Vec<_> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, token)| {
            tokio::spawn(agent(
                addr,
                token,
                format!("bench-{i}"),
                per_agent,
                batch,
                window,
            ))
        })
        .collect();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed();
    let collector_cpu = cpu_time(collector.0.id()) - collector_cpu;
    let own_cpu = cpu_time(std::process::id()) - own_cpu;
    latencies.sort();
    let total = agents * per_agent;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM probe_results")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored as usize, total, "every result committed");
    let ingest_rate = total as f64 / elapsed.as_secs_f64();
    println!(
        "ingest: {agents} agents x {per_agent} results, batches of {batch}, window {window}: \
         {total} results committed and acked in {:.2} s = {ingest_rate:.0} results/s",
        elapsed.as_secs_f64()
    );
    println!(
        "batch ack latency (send -> ack after COMMIT): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} batches",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3,
        latencies.len()
    );
    println!(
        "CPU over the run: collector process {:.2} s = {:.0} us per result ({:.2} cores); \
         the agents' side (this process) {:.2} s",
        collector_cpu.as_secs_f64(),
        collector_cpu.as_secs_f64() * 1e6 / total as f64,
        collector_cpu.as_secs_f64() / elapsed.as_secs_f64(),
        own_cpu.as_secs_f64()
    );
    println!(
        "collector peak RSS: {:.1} MB",
        peak_rss_kb(collector.0.id()) as f64 / 1024.0
    );
    vantage_testkit::terminate(&mut collector.0, Duration::from_secs(30));

    // The same rows, exported and COPYed back into the emptied table.
    let mut conn = pool.acquire().await.unwrap();
    let mut data = Vec::new();
    {
        let mut out = conn
            .copy_out_raw("COPY (SELECT * FROM probe_results) TO STDOUT (FORMAT binary)")
            .await
            .unwrap();
        while let Some(chunk) = out.next().await {
            data.extend_from_slice(&chunk.unwrap());
        }
    }
    // Into a table of probe_results' columns with the indexes it had as a
    // table. Three times, against the fastest: one COPY run varies by a
    // third on this machine (checkpoints, WAL), and the ratio should not
    // flatter.
    common::create_copy_reference(&mut conn).await;
    let mut rates = Vec::new();
    for _ in 0..3 {
        sqlx::query("TRUNCATE copy_reference")
            .execute(&mut *conn)
            .await
            .unwrap();
        let started = Instant::now();
        let mut copy = conn
            .copy_in_raw("COPY copy_reference FROM STDIN (FORMAT binary)")
            .await
            .unwrap();
        for chunk in data.chunks(1 << 20) {
            copy.send(chunk).await.unwrap();
        }
        let copied = copy.finish().await.unwrap();
        rates.push(copied as f64 / started.elapsed().as_secs_f64());
        assert_eq!(copied as usize, total);
    }
    let copy_rate = rates.iter().copied().fold(0.0, f64::max);
    println!(
        "reference: plain COPY (binary) of the same {total} rows ({:.1} MB), 3 runs: {} rows/s",
        data.len() as f64 / 1e6,
        rates
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "end to end / fastest COPY = {:.0}% (target >= 50%)",
        100.0 * ingest_rate / copy_rate
    );
    drop(conn);
    pool.close().await;
    Figures {
        ingest_rate,
        copy_rate,
        collector_cpu_us: collector_cpu.as_secs_f64() * 1e6 / total as f64,
    }
}
