//! Page delivery through the outbox against PostgreSQL at `DATABASE_URL`
//! and local HTTP receivers:
//! - throughput: N events to one webhook sink (signed), beside the same
//!   number of POSTs sent directly with the same client and concurrency
//!   (the reference: what the receiver and client alone can do);
//! - the same sink while a second sink hangs on every request: a slow sink
//!   must not slow a fast one;
//! - latency from an event recorded (as the detector does) to its receipt,
//!   with the alerter running as in the collector.
//!
//! `DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo bench -p vantage-collector --bench pages`
//! Prints figures; asserts nothing.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use vantage_collector::alert::config::{Sink, decode_secret};
use vantage_collector::alert::{Alerter, client};
use vantage_collector::store::Store;
use vantage_testkit::WebhookReceiver;

mod common;

use common::{ScratchDatabase, env_or};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// `n` incidents opened, each with its `incident.opened` event.
async fn events(pool: &PgPool, n: usize, tag: &str) {
    sqlx::query(
        "WITH i AS (
             INSERT INTO incidents (target, kind, dimension, value, explanation,
                 segment_failures, segment_probes, rest_failures, rest_probes, window_seconds)
             SELECT 'http://site' || g || '.' || $2 || '.test/', 'segment', 'region', 'eu',
                    'bench', 5, 5, 0, 20, 300
             FROM generate_series(1, $1) g
             RETURNING id, version)
         INSERT INTO incident_events (incident_id, event, version, created_at)
         SELECT id, 'incident.opened', version, now() FROM i",
    )
    .bind(i64::try_from(n).unwrap())
    .bind(tag)
    .execute(pool)
    .await
    .unwrap();
}

fn sink(name: &str, receiver: &WebhookReceiver, concurrency: usize) -> Sink {
    let mut sink = Sink::webhook(name, receiver.url().parse().unwrap());
    sink.concurrency = concurrency;
    sink.secrets = vec![decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap()];
    sink
}

/// Delivers everything due with the alerter running; seconds until the
/// receiver had `n` requests.
async fn run_until(
    store: &Arc<Store>,
    sinks: Vec<Sink>,
    receiver: &WebhookReceiver,
    n: usize,
) -> f64 {
    let changed = Arc::new(Notify::new());
    let alerter = Alerter::new(store.clone(), sinks, None, changed.clone()).unwrap();
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(alerter.run(shutdown.clone()));
    changed.notify_one();
    assert!(
        receiver.wait_for_count(n, Duration::from_secs(600)).await,
        "not delivered"
    );
    let took = started.elapsed().as_secs_f64();
    shutdown.cancel();
    task.await.unwrap();
    took
}

#[tokio::main]
async fn main() {
    let n = env_or("BENCH_EVENTS", 2000);
    let concurrency = env_or("BENCH_CONCURRENCY", 4);
    println!("page delivery bench: {n} events, one signed webhook sink, concurrency {concurrency}");

    // Reference: the same POSTs, directly.
    let direct = WebhookReceiver::start(LOOPBACK).await.unwrap();
    let http = client().unwrap();
    let body = serde_json::to_vec(&serde_json::json!({"event": "incident.opened", "bench": true}))
        .unwrap();
    let started = Instant::now();
    futures_util::stream::iter(0..n)
        .map(|_| {
            let (http, url, body) = (http.clone(), direct.url(), body.clone());
            async move { http.post(url).body(body).send().await.unwrap() }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await;
    let reference = started.elapsed().as_secs_f64();
    println!(
        "  direct POSTs (reference):          {n} in {reference:.2} s = {:.0}/s",
        n as f64 / reference
    );

    let scratch = ScratchDatabase::create("vantage_bench_pages").await;
    let pool = PgPoolOptions::new()
        .max_connections(10)
        .connect(&scratch.url)
        .await
        .unwrap();
    let store = Arc::new(Store::new(pool.clone()));
    store.migrate().await.unwrap();

    let fast = WebhookReceiver::start(LOOPBACK).await.unwrap();
    events(&pool, n, "a").await;
    let alone = run_until(&store, vec![sink("fast", &fast, concurrency)], &fast, n).await;
    println!(
        "  through the outbox, sink alone:    {n} in {alone:.2} s = {:.0}/s ({:.1}x the reference time)",
        n as f64 / alone,
        alone / reference
    );

    let fast2 = WebhookReceiver::start(LOOPBACK).await.unwrap();
    let hanging = WebhookReceiver::start(LOOPBACK).await.unwrap();
    hanging.set_delay(Duration::from_secs(3600));
    events(&pool, n, "b").await;
    let mut slow = sink("hanging", &hanging, concurrency);
    slow.timeout = Duration::from_secs(30);
    let beside = run_until(
        &store,
        vec![sink("fast2", &fast2, concurrency), slow],
        &fast2,
        n,
    )
    .await;
    println!(
        "  same, beside a sink that hangs:    {n} in {beside:.2} s = {:.0}/s (hanging sink: {} attempts in flight, 0 answered)",
        n as f64 / beside,
        hanging.attempts()
    );

    // Latency: one event at a time, the alerter running and woken as the
    // detector wakes it.
    let receiver = WebhookReceiver::start(LOOPBACK).await.unwrap();
    let changed = Arc::new(Notify::new());
    let alerter = Alerter::new(
        store.clone(),
        vec![sink("latency", &receiver, concurrency)],
        None,
        changed.clone(),
    )
    .unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(alerter.run(shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let samples = env_or("BENCH_LATENCY_SAMPLES", 50);
    let mut latencies = Vec::new();
    for i in 0..samples {
        let started = Instant::now();
        events(&pool, 1, &format!("l{i}")).await;
        changed.notify_one();
        assert!(
            receiver
                .wait_for_count(i + 1, Duration::from_secs(30))
                .await
        );
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    shutdown.cancel();
    task.await.unwrap();
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    println!(
        "  event recorded -> received:        p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms ({samples} events)",
        at(0.5),
        at(0.95),
        at(1.0)
    );
    pool.close().await;
    scratch.drop_now().await;
}
