//! Detection passes over a large window: 1 M and 10 M results (by
//! default) written server-side into today's partition; a first pass
//! (which reads the whole window: a collector starting); then 15 s of new
//! results (the window's rate: 5 % of it) stored by this collector's own
//! ingest (`Store::insert_batch_registering`, handing them to the
//! detector's feed as the gRPC ingest does) and a pass, which counts them
//! without reading them (the pass every interval runs); then as many
//! written server-side (as another collector's would be) and a pass,
//! which reads them; then a pass with nothing new. Each pass is a real
//! one (read, decision, state and segment-rate writes). The plans of both
//! reads (`EXPLAIN (ANALYZE, BUFFERS)`) are summarised. Reference: a pass
//! over 10 M results in the window within 1 s.
//!
//! `DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo bench -p vantage-collector --bench detect`
//! Environment: `BENCH_SIZES` (comma-separated result counts, default
//! `1000000,10000000`), `BENCH_AGENTS` (default 1000), `BENCH_TARGETS`
//! (default 10).

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::StreamExt as _;
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::Notify;
use vantage_collector::detect::{DetectorSettings, dimensions};
use vantage_collector::detector::feed::{Feed, Ticket};
use vantage_collector::detector::{Detector, PassSummary};
use vantage_collector::store::{Store, StoredResult};
use vantage_collector::wire::stored_result;
use vantage_proto::v1 as pb;

mod common;

use common::{ScratchDatabase, env_or};

/// The collector binary's allocator, as this process runs its detector
/// and ingest path.
#[global_allocator]
static ALLOCATOR: vantage_collector::Allocator = mimalloc::MiMalloc;

/// Plan nodes worth printing: type, relation or index, estimated total
/// cost, actual time and rows.
fn walk_plan(node: &Value, depth: usize, out: &mut Vec<String>) {
    let kind = node["Node Type"].as_str().unwrap_or("?");
    let on = node["Index Name"]
        .as_str()
        .map(|i| format!(" using {i}"))
        .or_else(|| node["Relation Name"].as_str().map(|r| format!(" on {r}")))
        .unwrap_or_default();
    let strategy = node["Strategy"]
        .as_str()
        .map(|s| format!(" ({s})"))
        .unwrap_or_default();
    out.push(format!(
        "{:indent$}{kind}{strategy}{on}: cost {:.0}, actual {:.0} ms, {} rows{}",
        "",
        node["Total Cost"].as_f64().unwrap_or(0.0),
        node["Actual Total Time"].as_f64().unwrap_or(0.0),
        node["Actual Rows"].as_f64().unwrap_or(0.0),
        node["Subplans Removed"]
            .as_u64()
            .map(|n| format!(", {n} partitions pruned"))
            .unwrap_or_default(),
        indent = depth * 2
    ));
    if let Some(children) = node["Plans"].as_array() {
        for c in children {
            walk_plan(c, depth + 1, out);
        }
    }
}

/// Results `first..first + rows` (their seq), started over the `spread`
/// seconds before `end`.
struct Fill {
    first: usize,
    rows: usize,
    spread: f64,
    end: chrono::DateTime<Utc>,
}

async fn fill(pool: &sqlx::PgPool, agents: usize, targets: usize, f: Fill) -> Duration {
    let started = Instant::now();
    // Agents four to a /24 in 198.18.0.0/16 (250 /24s), 12 regions, 4
    // resolvers, 3 records per target; the four agents of 198.18.7.0/24
    // get 502, everyone else 1% random 502s.
    let chunk = 1_000_000usize;
    let mut done = 0usize;
    while done < f.rows {
        let n = chunk.min(f.rows - done);
        sqlx::query(
            "INSERT INTO probe_results (agent_id, seq, started_at, region, check_name, url, method,
                                        outcome, http_status, http_version, resolver,
                                        resolver_egress_ip, resolved_ips, dialed_ip, local_ip,
                                        vantage, gateway, total_us)
             SELECT 'agent-' || a, g, $5::timestamptz - (random() * $6) * interval '1 second',
                    'region-' || (a % 12), 'site-' || (g % $3), 'https://site' || (g % $3) || '.example/',
                    'GET', CASE WHEN bad THEN 'http' ELSE 'ok' END,
                    CASE WHEN bad THEN 502 ELSE 200 END, 'HTTP/2.0',
                    'udp://192.0.2.' || (a % 4 + 1) || ':53',
                    ('192.0.2.' || (a % 4 + 101))::inet,
                    ARRAY['203.0.113.1'::inet, '203.0.113.2'::inet, '203.0.113.3'::inet],
                    ('203.0.113.' || (g % 3 + 1))::inet,
                    ('198.18.' || (a % 250) || '.' || (a / 250 + 1))::inet,
                    'direct', CASE WHEN bad THEN 'nginx' END, 40000
             FROM (SELECT g, g % $4 AS a,
                          (g % $4) % 250 = 7 OR random() < 0.01 AS bad
                   FROM generate_series($1::int8, $2::int8) g) s",
        )
        .bind((f.first + done) as i64)
        .bind((f.first + done + n - 1) as i64)
        .bind(targets as i64)
        .bind(agents as i64)
        .bind(f.end)
        .bind(f.spread)
        .execute(pool)
        .await
        .unwrap();
        done += n;
    }
    sqlx::query("ANALYZE probe_results")
        .execute(pool)
        .await
        .unwrap();
    started.elapsed()
}

/// The results [`fill`] writes, made as the ingest receives them and
/// stored as it stores them, with `feed`: one batch per agent, four at a
/// time.
async fn ingest(
    store: &Arc<Store>,
    feed: &Arc<Feed>,
    agents: usize,
    targets: usize,
    f: Fill,
) -> Duration {
    let started = Instant::now();
    let mut per_agent: Vec<Vec<StoredResult>> = vec![Vec::new(); agents];
    for g in f.first..f.first + f.rows {
        let a = g % agents;
        let bad = a % 250 == 7 || rand::random::<f64>() < 0.01;
        let at =
            f.end - chrono::Duration::microseconds((rand::random::<f64>() * f.spread * 1e6) as i64);
        let r = pb::ProbeResult {
            seq: g as u64,
            started_at: Some(prost_types::Timestamp {
                seconds: at.timestamp(),
                nanos: at.timestamp_subsec_nanos() as i32,
            }),
            region: format!("region-{}", a % 12),
            check: format!("site-{}", g % targets),
            url: format!("https://site{}.example/", g % targets),
            method: "GET".into(),
            outcome: if bad {
                pb::Outcome::Http
            } else {
                pb::Outcome::Ok
            } as i32,
            http_status: Some(if bad { 502 } else { 200 }),
            http_version: "HTTP/2.0".into(),
            resolver: format!("udp://192.0.2.{}:53", a % 4 + 1),
            resolver_egress_ip: format!("192.0.2.{}", a % 4 + 101),
            resolved: (1..=3)
                .map(|i| pb::ResolvedAddress {
                    ip: format!("203.0.113.{i}"),
                    ..Default::default()
                })
                .collect(),
            dialed_addr: format!("203.0.113.{}:443", g % 3 + 1),
            local_ip: format!("198.18.{}.{}", a % 250, a / 250 + 1),
            vantage: "direct".into(),
            gateway: if bad { "nginx".into() } else { String::new() },
            timings: Some(pb::Timings {
                total_us: Some(40_000),
                ..Default::default()
            }),
            ..Default::default()
        };
        per_agent[a].push(stored_result(r, [127, 0, 0, 1].into()).unwrap());
    }
    let batches = per_agent
        .into_iter()
        .enumerate()
        .filter(|(_, b)| !b.is_empty());
    futures_util::stream::iter(batches)
        .for_each_concurrent(4, |(a, results)| {
            let (store, feed) = (store.clone(), feed.clone());
            async move {
                let agent = format!("agent-{a}");
                let last = results.last().map_or(0, |r| r.seq);
                let mut ticket = feed.prepare(&agent, "bench", &results);
                store
                    .insert_batch_registering(
                        &agent,
                        "bench",
                        &results,
                        &[],
                        last,
                        &mut Ticket::registrar(&mut ticket),
                    )
                    .await
                    .unwrap();
                if let Some(t) = ticket {
                    t.committed();
                }
            }
        })
        .await;
    started.elapsed()
}

#[tokio::main]
async fn main() {
    let sizes: Vec<usize> = std::env::var("BENCH_SIZES")
        .unwrap_or_else(|_| "1000000,10000000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let agents = env_or("BENCH_AGENTS", 1000);
    let targets = env_or("BENCH_TARGETS", 10);
    println!(
        "detection bench: {agents} agents, {targets} targets, {} dimensions, window 300 s",
        dimensions::DIMENSIONS.len()
    );
    for rows in sizes {
        let scratch = ScratchDatabase::create("vantage_bench_detect").await;
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(&scratch.url)
            .await
            .unwrap();
        let store = Arc::new(Store::new(pool.clone()));
        store.migrate().await.unwrap();
        store
            .ensure_partitions_around(Utc::now(), 1, 1)
            .await
            .unwrap();
        let end = Utc::now();
        // Over the 280 s before `end`, so that every row is in the window
        // however long the fill takes.
        let filled = fill(
            &pool,
            agents,
            targets,
            Fill {
                first: 1,
                rows,
                spread: 280.0,
                end,
            },
        )
        .await;
        println!(
            "\n{rows} results in the window: written in {:.1} s",
            filled.as_secs_f64()
        );

        let settings = DetectorSettings {
            window: Duration::from_secs(300),
            ..DetectorSettings::default()
        };
        for a in 0..agents {
            store
                .enrol_agent(&format!("agent-{a}"), "bench", &format!("token-{a}"))
                .await
                .unwrap();
        }
        let feed = Arc::new(Feed::default());
        let detector =
            Detector::new(store.clone(), settings, Arc::new(Notify::new())).with_feed(feed.clone());
        let pass = |n: u32, what: &str, elapsed: Duration, s: &PassSummary| {
            println!(
                "  pass {n} ({what}): {:.3} s total (read {:.3} s: {} {} probes read, {} fed; \
                 decision and writes {:.3} s, of which deciding {:.3} s); {} probes in the \
                 window in {} cells, {} segments, {} incidents opened",
                elapsed.as_secs_f64(),
                s.query_time.as_secs_f64(),
                s.refresh.map_or("-", |r| r.as_str()),
                s.read_probes,
                s.fed_probes,
                s.decide_time.as_secs_f64(),
                s.plan_time.as_secs_f64(),
                s.probes,
                s.cells,
                s.segments,
                s.opened.len()
            );
        };
        let started = Instant::now();
        let first = detector.evaluate_at(end).await.unwrap();
        pass(1, "start: the whole window", started.elapsed(), &first);

        // 15 s of results at the window's rate arrive through this
        // collector's ingest, then the next pass.
        let next = end + chrono::Duration::seconds(15);
        let new = rows / 20;
        let ingested = ingest(
            &store,
            &feed,
            agents,
            targets,
            Fill {
                first: rows + 1,
                rows: new,
                spread: 15.0,
                end: next,
            },
        )
        .await;
        println!(
            "  {new} new results ingested in {:.1} s ({:.0}/s)",
            ingested.as_secs_f64(),
            new as f64 / ingested.as_secs_f64()
        );
        let started = Instant::now();
        let second = detector.evaluate_at(next).await.unwrap();
        let steady = started.elapsed();
        pass(
            2,
            "15 s later: new results, this collector's",
            steady,
            &second,
        );

        // As many again stored by another collector: read.
        let before: String = sqlx::query_scalar("SELECT pg_current_snapshot()::text")
            .fetch_one(&pool)
            .await
            .unwrap();
        let later = next + chrono::Duration::seconds(15);
        fill(
            &pool,
            agents,
            targets,
            Fill {
                first: rows + new + 1,
                rows: new,
                spread: 15.0,
                end: later,
            },
        )
        .await;
        let started = Instant::now();
        let third = detector.evaluate_at(later).await.unwrap();
        let read_pass = started.elapsed();
        pass(
            3,
            "15 s later: new results, another collector's",
            read_pass,
            &third,
        );
        let started = Instant::now();
        let fourth = detector.evaluate_at(later).await.unwrap();
        pass(4, "nothing new", started.elapsed(), &fourth);
        println!(
            "  => a pass over {} results in the window with {new} new: {:.3} s from this \
             collector's ingest, {:.3} s from another's (reference: 1 s at 10 M); reading the \
             whole window: {:.3} s",
            second.probes,
            steady.as_secs_f64(),
            read_pass.as_secs_f64(),
            (first.query_time).as_secs_f64(),
        );

        let start = later - chrono::Duration::seconds(300);
        for (what, since) in [
            ("the new results' read", Some(before.as_str())),
            ("the whole window's read", None),
        ] {
            let plan = store
                .explain_window_slots(start, &dimensions::sources(), 30_000, since, true)
                .await
                .unwrap();
            let top = &plan[0];
            println!(
                "  plan of {what}: planning {:.1} ms, execution {:.0} ms",
                top["Planning Time"].as_f64().unwrap_or(0.0),
                top["Execution Time"].as_f64().unwrap_or(0.0)
            );
            let mut lines = Vec::new();
            walk_plan(&top["Plan"], 2, &mut lines);
            for l in lines {
                println!("{l}");
            }
        }
        let size: String = sqlx::query_scalar(
            "SELECT pg_size_pretty(sum(pg_total_relation_size(c.oid)))
             FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'probe_results'::regclass",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        println!("  probe_results on disk: {size}");
        pool.close().await;
        scratch.drop_now().await;
    }
}
