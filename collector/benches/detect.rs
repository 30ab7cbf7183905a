//! Detection pass over a large window: 1 M and 10 M results (by default)
//! written server-side into today's partition, then one real detection
//! pass (window query + decision + state and segment-rate writes) timed,
//! and the window query's plan (`EXPLAIN (ANALYZE, BUFFERS)`) summarised.
//!
//! `DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo bench -p vantage-collector --bench detect`
//! Environment: `BENCH_SIZES` (comma-separated result counts, default
//! `1000000,10000000`), `BENCH_AGENTS` (default 1000), `BENCH_TARGETS`
//! (default 10).

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::Notify;
use vantage_collector::detect::{Detector, DetectorSettings, decision, dimensions};
use vantage_collector::store::Store;

mod common;

use common::{ScratchDatabase, env_or};

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

async fn fill(
    pool: &sqlx::PgPool,
    rows: usize,
    agents: usize,
    targets: usize,
    end: chrono::DateTime<Utc>,
) -> Duration {
    let started = Instant::now();
    // Agents four to a /24 in 198.18.0.0/16 (250 /24s), 12 regions, 4
    // resolvers, 3 records per target; the four agents of 198.18.7.0/24
    // get 502, everyone else 1% random 502s. Spread over the 280 s before
    // `end`, so that every row is in the window however long the fill takes.
    let chunk = 1_000_000usize;
    let mut done = 0usize;
    while done < rows {
        let n = chunk.min(rows - done);
        sqlx::query(
            "INSERT INTO probe_results (agent_id, seq, started_at, region, check_name, url, method,
                                        outcome, http_status, http_version, resolver,
                                        resolver_egress_ip, resolved_ips, dialed_ip, local_ip,
                                        vantage, gateway, total_us)
             SELECT 'agent-' || a, g, $5::timestamptz - (random() * 280) * interval '1 second',
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
        .bind((done + 1) as i64)
        .bind((done + n) as i64)
        .bind(targets as i64)
        .bind(agents as i64)
        .bind(end)
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
        let filled = fill(&pool, rows, agents, targets, end).await;
        println!(
            "\n{rows} results in the window: written in {:.1} s",
            filled.as_secs_f64()
        );

        let settings = DetectorSettings {
            window: Duration::from_secs(300),
            ..DetectorSettings::default()
        };
        let detector = Detector::new(store.clone(), settings, Arc::new(Notify::new()));
        for pass in 1..=2 {
            // Consecutive passes 15 s apart over the same window.
            let now = end + chrono::Duration::seconds(15 * (pass - 1));
            let started = Instant::now();
            let summary = detector.evaluate_at(now).await.unwrap();
            println!(
                "  pass {pass}: {:.2} s total (window query {:.2} s, decision and writes {:.2} s); \
                 {} probes in {} cells, {} segments, {} incidents opened",
                started.elapsed().as_secs_f64(),
                summary.query_time.as_secs_f64(),
                summary.decide_time.as_secs_f64(),
                summary.probes,
                summary.cells,
                summary.segments,
                summary.opened.len()
            );
        }
        let now = end;
        let plan = store
            .explain_window_cells(
                now - chrono::Duration::seconds(300),
                now,
                &dimensions::sources(),
                30_000,
                &decision::bucket_thresholds(3000),
                true,
            )
            .await
            .unwrap();
        let top = &plan[0];
        println!(
            "  window query plan: planning {:.1} ms, execution {:.0} ms",
            top["Planning Time"].as_f64().unwrap_or(0.0),
            top["Execution Time"].as_f64().unwrap_or(0.0)
        );
        let mut lines = Vec::new();
        walk_plan(&top["Plan"], 2, &mut lines);
        for l in lines {
            println!("{l}");
        }
        // The same query over a window an hour back (no rows): partitions
        // and index chosen when the window is a small slice of the day.
        let plan = store
            .explain_window_cells(
                now - chrono::Duration::seconds(3900),
                now - chrono::Duration::seconds(3600),
                &dimensions::sources(),
                30_000,
                &decision::bucket_thresholds(3000),
                true,
            )
            .await
            .unwrap();
        let mut lines = Vec::new();
        walk_plan(&plan[0]["Plan"], 2, &mut lines);
        println!("  plan for a window an hour back (a small slice of the partition):");
        for l in lines {
            println!("{l}");
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
