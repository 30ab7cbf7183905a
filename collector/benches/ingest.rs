//! Ingest throughput: several concurrent agent connections speaking the
//! real protocol (Hello, a window of batches, cumulative acks) into a real
//! collector and PostgreSQL, then a plain `COPY` of the same rows into the
//! same table for reference (three runs; the ratio is to the fastest).
//!
//! `DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo bench -p vantage-collector --bench ingest`
//! Environment: `BENCH_AGENTS` (default 4), `BENCH_RESULTS` per agent
//! (default 50000), `BENCH_BATCH` (default 1000), `BENCH_WINDOW` (default 4).

#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use vantage_collector::config::{DatabaseConfig, IngestConfig};
use vantage_collector::{Application, CollectorConfig};
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

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let agents = env_or("BENCH_AGENTS", 4);
    let per_agent = env_or("BENCH_RESULTS", 50_000);
    let batch = env_or("BENCH_BATCH", 1_000);
    let window = env_or("BENCH_WINDOW", 4);

    // A throwaway database on the server of DATABASE_URL.
    let scratch = ScratchDatabase::create("vantage_bench").await;
    let bench_url = scratch.url.clone();
    let pool = PgPoolOptions::new()
        .max_connections(20)
        .connect(&bench_url)
        .await
        .unwrap();
    let config = CollectorConfig {
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        database: DatabaseConfig {
            max_connections: 20,
            ..DatabaseConfig::default()
        },
        ingest: IngestConfig {
            max_results_per_second: NonZeroU32::new(10_000_000).unwrap(),
            ..IngestConfig::default()
        },
        ..CollectorConfig::default()
    };
    let app = Application::build(config, pool.clone()).await.unwrap();
    let addr = app.grpc_addr();
    let store = app.store();
    let shutdown = CancellationToken::new();
    let collector = tokio::spawn(app.run(shutdown.clone()));
    let mut tokens = Vec::new();
    for i in 0..agents {
        tokens.push(
            vantage_collector::enrol::enrol(&store, &format!("bench-{i}"), "bench")
                .await
                .unwrap(),
        );
    }

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
    shutdown.cancel();
    collector.await.unwrap().unwrap();

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
    // Three times, against the fastest: one COPY run varies by a third on
    // this machine (checkpoints, WAL), and the ratio should not flatter.
    let mut rates = Vec::new();
    for _ in 0..3 {
        sqlx::query("TRUNCATE probe_results")
            .execute(&mut *conn)
            .await
            .unwrap();
        let started = Instant::now();
        let mut copy = conn
            .copy_in_raw("COPY probe_results FROM STDIN (FORMAT binary)")
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
    scratch.drop_now().await;
}
