//! Detection passes over a large window: 1 M and 10 M results (by
//! default) written server-side into today's partition, with their
//! detector cells (computed server-side by the dimension table's SQL
//! sources, as the ingest computes them); a first pass (which reads the
//! whole window: a collector starting); then 15 s of new results (the
//! window's rate: 5 % of it) stored by this collector's ingest path
//! (`Store::insert_batch`, which writes the cells in each batch's
//! transaction) and a pass (the pass every interval runs); then as many
//! stored by another collector (another `Store`, its key cache cold) and a
//! pass; then a pass with nothing new. Each pass is a real one (read,
//! decision, state and segment-rate writes). Reference: the pass after
//! this collector's ingest, in the same run; target: both within 0.6 s
//! at 10 M.
//!
//! Then the same against a Citus coordinator and two workers started on
//! this machine (private clusters, Citus built from the vendored source
//! where missing), and the figures of both side by side.
//!
//! `DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo bench -p vantage-collector --bench detect`
//! Environment: `BENCH_SIZES` (comma-separated result counts, default
//! `1000000,10000000`), `BENCH_AGENTS` (default 1000), `BENCH_TARGETS`
//! (default 10), `BENCH_CITUS_SIZES` (default `1000000`),
//! `BENCH_CITUS_WORKERS` (default 2; 0 skips the Citus runs).

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::StreamExt as _;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::Notify;
use vantage_collector::detect::{DetectorSettings, dimensions};
use vantage_collector::detector::{Detector, PassSummary};
use vantage_collector::store::{Store, StoredResult};
use vantage_collector::wire::stored_result;
use vantage_proto::v1 as pb;

mod common;

use common::cells::{StoredRows, write_cells_of};
use common::{ScratchDatabase, env_or};

/// The collector binary's allocator, as this process runs its detector
/// and ingest path.
#[global_allocator]
static ALLOCATOR: vantage_collector::Allocator = mimalloc::MiMalloc;

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
    // Generated into a table of probe_results' columns, then stored set
    // by set as the view's trigger stores one row (contexts and rows).
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("CREATE TEMPORARY TABLE IF NOT EXISTS fill (LIKE probe_results)")
        .execute(&mut *conn)
        .await
        .unwrap();
    while done < f.rows {
        let n = chunk.min(f.rows - done);
        sqlx::query(
            "INSERT INTO fill (agent_id, seq, started_at, region, check_name, url, method,
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
        .execute(&mut *conn)
        .await
        .unwrap();
        sqlx::raw_sql(
            "SELECT store_probe_results('SELECT ROW(f.*)::probe_results AS r FROM fill f');
             TRUNCATE fill",
        )
        .execute(&mut *conn)
        .await
        .unwrap();
        done += n;
    }
    sqlx::raw_sql("ANALYZE result_rows; ANALYZE result_contexts")
        .execute(pool)
        .await
        .unwrap();
    started.elapsed()
}

/// The results [`fill`] writes, made as the ingest receives them and
/// stored as it stores them (cells included): one batch per agent, four
/// at a time.
async fn ingest(store: &Arc<Store>, agents: usize, targets: usize, f: Fill) -> Duration {
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
            let store = store.clone();
            async move {
                let agent = format!("agent-{a}");
                let last = results.last().map_or(0, |r| r.seq);
                store
                    .insert_batch(&agent, "bench", &results, &[], last)
                    .await
                    .unwrap();
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
    let mut single = Vec::new();
    for &rows in &sizes {
        println!("\n== one PostgreSQL (DATABASE_URL)");
        let scratch = ScratchDatabase::create("vantage_bench_detect").await;
        single.push((rows, run(&scratch.url, rows, agents, targets).await));
        scratch.drop_now().await;
    }
    // The same on a Citus coordinator and its workers on this machine.
    let workers = env_or("BENCH_CITUS_WORKERS", 2);
    let citus_sizes: Vec<usize> = std::env::var("BENCH_CITUS_SIZES")
        .unwrap_or_else(|_| "1000000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    if workers == 0 || citus_sizes.is_empty() {
        return;
    }
    let cluster = tokio::task::spawn_blocking(move || {
        vantage_testkit::citus::CitusCluster::start(workers).unwrap()
    })
    .await
    .unwrap();
    let mut citus = Vec::new();
    for (i, &rows) in citus_sizes.iter().enumerate() {
        println!(
            "\n== Citus: a coordinator and {workers} workers, private clusters on this machine"
        );
        let url = cluster
            .database(&format!("vantage_bench_detect_{i}"))
            .await
            .unwrap();
        citus.push((rows, run(&url, rows, agents, targets).await));
    }
    cluster.stop().unwrap();
    println!(
        "\npasses after 5 % new results, one node beside Citus ({workers} workers, same run):"
    );
    for (rows, c) in &citus {
        let one = single.iter().find(|(r, _)| r == rows).map(|(_, f)| f);
        let show = |f: Option<&Passes>, pick: fn(&Passes) -> f64| {
            f.map_or("-".to_owned(), |f| format!("{:.3} s", pick(f)))
        };
        println!(
            "  {rows} results: after this collector's ingest {} vs {}; after another's {} vs {}; \
             whole window {} vs {}",
            show(one, |f| f.own),
            show(Some(c), |f| f.own),
            show(one, |f| f.other),
            show(Some(c), |f| f.other),
            show(one, |f| f.whole),
            show(Some(c), |f| f.whole),
        );
    }
}

/// One size's pass times (seconds).
struct Passes {
    own: f64,
    other: f64,
    whole: f64,
}

/// One size on the (empty) database at `url`.
async fn run(url: &str, rows: usize, agents: usize, targets: usize) -> Passes {
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(url)
        .await
        .unwrap();
    let store = Arc::new(Store::new(pool.clone()));
    store.migrate().await.unwrap();
    store
        .ensure_partitions_around(Utc::now(), 1, 1)
        .await
        .unwrap();
    store
        .ensure_cell_partitions_ahead(Utc::now() - chrono::Duration::hours(1), 3)
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
    let started = Instant::now();
    write_cells_of(&pool, StoredRows::Seqs(1, rows as i64)).await;
    sqlx::query("ANALYZE detector_cells")
        .execute(&pool)
        .await
        .unwrap();
    let celled = started.elapsed();
    println!(
        "\n{rows} results in the window: written in {:.1} s, their cells in {:.1} s",
        filled.as_secs_f64(),
        celled.as_secs_f64()
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
    let detector = Detector::new(store.clone(), settings, Arc::new(Notify::new()));
    let pass = |n: u32, what: &str, elapsed: Duration, s: &PassSummary| {
        println!(
            "  pass {n} ({what}): {:.3} s total (read {:.3} s: {} {} probes in {} cell rows; \
                 decision and writes {:.3} s, of which deciding {:.3} s); {} probes in the \
                 window in {} cells, {} segments, {} incidents opened",
            elapsed.as_secs_f64(),
            s.query_time.as_secs_f64(),
            s.refresh.map_or("-", |r| r.as_str()),
            s.read_probes,
            s.read_rows,
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
    // collector's ingest, then the next pass; then as many through
    // another collector's (its own store, key cache cold).
    let mut steps = Vec::new();
    let mut at = end;
    let other = Arc::new(Store::new(pool.clone()));
    let new = rows / 20;
    for (n, (who, ingester)) in [
        ("this collector's", &store),
        ("another collector's", &other),
    ]
    .into_iter()
    .enumerate()
    {
        at += chrono::Duration::seconds(15);
        let ingested = ingest(
            ingester,
            agents,
            targets,
            Fill {
                first: rows + n * new + 1,
                rows: new,
                spread: 15.0,
                end: at,
            },
        )
        .await;
        println!(
            "  {new} new results ingested by {who} in {:.1} s ({:.0}/s, cells included)",
            ingested.as_secs_f64(),
            new as f64 / ingested.as_secs_f64()
        );
        let started = Instant::now();
        let summary = detector.evaluate_at(at).await.unwrap();
        let took = started.elapsed();
        pass(
            n as u32 + 2,
            &format!("15 s later: new results, {who}"),
            took,
            &summary,
        );
        steps.push((took, summary));
    }
    let started = Instant::now();
    let fourth = detector.evaluate_at(at).await.unwrap();
    pass(4, "nothing new", started.elapsed(), &fourth);
    println!(
        "  => a pass over {} results in the window with {new} new: {:.3} s from this \
             collector's ingest (reference), {:.3} s from another's (target: both within \
             0.6 s at 10 M); reading the whole window: {:.3} s",
        steps[1].1.probes,
        steps[0].0.as_secs_f64(),
        steps[1].0.as_secs_f64(),
        (first.query_time).as_secs_f64(),
    );
    let on_disk = |parent: &'static str| {
        sqlx::query_scalar::<_, String>(
            "SELECT pg_size_pretty(sum(pg_total_relation_size(c.oid)))
                 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                 WHERE i.inhparent = $1::regclass",
        )
        .bind(parent)
        .fetch_one(&pool)
    };
    let size = on_disk("result_rows").await.unwrap();
    let cells = on_disk("detector_cells").await.unwrap();
    println!("  result_rows on disk: {size}; detector_cells: {cells}");
    pool.close().await;
    Passes {
        own: steps[0].0.as_secs_f64(),
        other: steps[1].0.as_secs_f64(),
        whole: first.query_time.as_secs_f64(),
    }
}
