//! Bytes per stored result: 10 M results (by default) shaped like real
//! probes (every field a probe over HTTPS fills: timings, TLS, certificate,
//! headers, body hash, resolver identity) of many agents, regions,
//! targets and resolvers, a few percent failing, stored by the ingest path
//! (`Store::insert_batch`: binary COPY) into one day (a day older than the
//! detector's window: the cells are the detect bench's to size).
//! Printed, in bytes per result on disk (table, TOAST and indexes, after
//! VACUUM): that day open (its `result_rows` partition, a heap with its
//! indexes, plus the result contexts its rows use), then the same day
//! closed (compacted as the upkeep does: columnar, zstd, where installed);
//! beside two references from the same run: the raw binary COPY of the
//! rows as `probe_results` reads them, and the same rows in a plain heap
//! table of `probe_results`' columns and no index. And the ingest's rate
//! beside a plain binary COPY of the same rows into a table of
//! `probe_results`' columns with the indexes it had before results were
//! split into contexts and rows.
//!
//! `DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo bench -p vantage-collector --bench storage`
//! Environment: `BENCH_RESULTS` (default 10000000), `BENCH_AGENTS`
//! (default 1000), `BENCH_TARGETS` (default 50).

#![allow(clippy::unwrap_used)]

use std::io::{Read as _, Seek as _, Write as _};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use futures_util::StreamExt as _;
use sqlx::postgres::PgPoolOptions;
use vantage_collector::store::{Store, StoredResult};
use vantage_collector::wire::stored_result;
use vantage_proto::v1 as pb;

mod common;

use common::{ScratchDatabase, env_or};

#[global_allocator]
static ALLOCATOR: vantage_collector::Allocator = mimalloc::MiMalloc;

/// Results per batch, as an agent sends them.
const BATCH: usize = 1000;

/// The result `seq` of agent `a`, started at `at`: agents four to a /24,
/// 12 regions, 4 resolvers; the four agents of one /24 get 502 from every
/// target, everyone else 2 % random failures.
fn result(a: usize, seq: u64, target: usize, at: DateTime<Utc>) -> pb::ProbeResult {
    let failing = a % 250 == 7 || rand::random::<f64>() < 0.02;
    let jitter = |base: u64| Some(base + rand::random::<u64>() % base);
    let ts = |t: DateTime<Utc>| prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    };
    let host = format!("site{target}.example.com");
    let ip = |i: usize| format!("203.0.{}.{}", target % 200, i);
    pb::ProbeResult {
        seq,
        started_at: Some(ts(at)),
        region: String::new(),
        check: format!("site-{target}-health"),
        url: format!("https://{host}/health"),
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
        http_version: "HTTP/2.0".into(),
        resolver: format!("udp://192.0.2.{}:53", a % 4 + 1),
        resolved: (1..=2)
            .map(|i| pb::ResolvedAddress {
                ip: ip(i),
                ttl_seconds: 300 - (seq % 300) as u32,
            })
            .collect(),
        dialed_addr: format!("{}:443", ip(1 + (seq % 2) as usize)),
        local_ip: format!("10.{}.{}.{}", a % 250, a / 250, 10),
        egress_ip: format!("198.18.{}.{}", a % 250, a / 250 + 1),
        timings: Some(pb::Timings {
            dns_us: jitter(800),
            connect_us: jitter(10_000),
            tls_us: jitter(20_000),
            ttfb_us: jitter(45_000),
            total_us: jitter(80_000),
            proxy_us: None,
            transfer_us: jitter(500),
        }),
        headers: [
            ("server".to_owned(), "nginx/1.22.1".to_owned()),
            (
                "content-type".to_owned(),
                "text/html; charset=utf-8".to_owned(),
            ),
            ("content-length".to_owned(), (1000 + target).to_string()),
        ]
        .into_iter()
        .chain(
            target
                .is_multiple_of(3)
                .then(|| ("x-cache".to_owned(), "HIT".to_owned())),
        )
        .collect(),
        vantage: "direct".into(),
        proxy: String::new(),
        proxy_status: None,
        dns_rcode: "NOERROR".into(),
        resolver_egress_ip: format!("192.0.2.{}", a % 4 + 101),
        resolver_nsid: String::new(),
        resolver_identity_error: String::new(),
        echo_ip: String::new(),
        tls: Some(pb::Tls {
            version: "TLSv1_3".into(),
            alpn: "h2".into(),
            cipher: "TLS13_AES_256_GCM_SHA384".into(),
            cert_subject: format!("CN={host}"),
            cert_issuer: "CN=R11, O=Let's Encrypt, C=US".into(),
            // A certificate per target, valid until a fixed day.
            cert_not_after: Some(ts(DateTime::from_timestamp(
                1_800_000_000 + target as i64 * 86_400,
                0,
            )
            .unwrap())),
        }),
        body_bytes: Some(1000 + target as u64),
        body_sha256: format!("{:064x}", target * 7 + usize::from(failing)),
        body_truncated: false,
        gateway: if failing {
            "nginx".into()
        } else {
            String::new()
        },
        edge_location: String::new(),
        hops: vec![],
        interval_ms: 30_000,
        proxy_ip: String::new(),
        check_version: 3,
        request_id: 0,
        tls_insecure: false,
        path: None,
    }
}

/// Batch `b` of the run: one agent's next [`BATCH`] results, started
/// over the day `day_start` begins.
fn batch(
    b: usize,
    agents: usize,
    targets: usize,
    day_start: DateTime<Utc>,
) -> (String, Vec<StoredResult>) {
    let a = b % agents;
    let round = b / agents;
    let results = (0..BATCH)
        .map(|i| {
            let seq = (round * BATCH + i + 1) as u64;
            let at = day_start
                + chrono::Duration::milliseconds(((b * BATCH + i) as i64 * 7919) % 86_400_000);
            let r = result(a, seq, (seq as usize) % targets, at);
            stored_result(r, [127, 0, 0, 1].into()).unwrap()
        })
        .collect();
    (format!("agent-{a:04}"), results)
}

/// COPYs the binary rows of `file` into `table`; its seconds.
async fn copy_in(
    conn: &mut sqlx::PgConnection,
    file: &std::fs::File,
    table: &str,
    total: usize,
) -> f64 {
    let mut file = file.try_clone().unwrap();
    file.rewind().unwrap();
    let started = Instant::now();
    let mut copy = conn
        .copy_in_raw(&format!("COPY {table} FROM STDIN (FORMAT binary)"))
        .await
        .unwrap();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        copy.send(&buf[..n]).await.unwrap();
    }
    let rows = copy.finish().await.unwrap();
    assert_eq!(rows as usize, total);
    started.elapsed().as_secs_f64()
}

/// Bytes on disk of a table with its TOAST and indexes (and partitions).
async fn total_bytes(pool: &sqlx::PgPool, table: &str) -> i64 {
    sqlx::query_scalar(
        // pg_partition_tree lists nothing for a table that is not
        // partitioned.
        "SELECT COALESCE((SELECT sum(pg_total_relation_size(relid))
                          FROM pg_partition_tree($1::regclass)),
                         pg_total_relation_size($1::regclass))::int8",
    )
    .bind(table)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::main]
async fn main() {
    let total = env_or("BENCH_RESULTS", 10_000_000).div_ceil(BATCH) * BATCH;
    let agents = env_or("BENCH_AGENTS", 1000);
    let targets = env_or("BENCH_TARGETS", 50);
    let scratch = ScratchDatabase::create("vantage_bench_storage").await;
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect(&scratch.url)
        .await
        .unwrap();
    let store = Arc::new(Store::new(pool.clone()));
    store.migrate().await.unwrap();
    let columnar: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_am WHERE amname = 'columnar')")
            .fetch_one(&pool)
            .await
            .unwrap();
    for a in 0..agents {
        store
            .enrol_agent(&format!("agent-{a:04}"), "bench", &format!("token-{a}"))
            .await
            .unwrap();
    }
    // A day long past: open until compacted below.
    let day = Utc::now().date_naive() - chrono::Days::new(10);
    let day_start = day.and_hms_opt(0, 0, 0).unwrap().and_utc();
    let partition = format!("result_rows_p{}", day.format("%Y%m%d"));
    println!(
        "storage: {total} results of {agents} agents, {targets} targets, into {partition} \
         (columnar access method {})",
        if columnar {
            "installed"
        } else {
            "NOT installed"
        }
    );

    // The ingest: batches of one agent each, four in flight, as four
    // collector connections store them.
    let started = Instant::now();
    futures_util::stream::iter(0..total / BATCH)
        .map(|b| {
            let store = store.clone();
            async move {
                let (agent, results) =
                    tokio::task::spawn_blocking(move || batch(b, agents, targets, day_start))
                        .await
                        .unwrap();
                let last = results.last().map_or(0, |r| r.seq);
                store
                    .insert_batch(&agent, "bench", &results, &[], last)
                    .await
                    .unwrap();
            }
        })
        .buffer_unordered(4)
        .collect::<Vec<()>>()
        .await;
    let ingest_s = started.elapsed().as_secs_f64();
    for table in ["result_rows", "result_contexts"] {
        sqlx::query(sqlx::AssertSqlSafe(format!("VACUUM ANALYZE {table}")))
            .execute(&pool)
            .await
            .unwrap();
    }
    let contexts = total_bytes(&pool, "result_contexts").await;
    let context_count: i64 = sqlx::query_scalar("SELECT count(*) FROM result_contexts")
        .fetch_one(&pool)
        .await
        .unwrap();
    let open = total_bytes(&pool, &partition).await + contexts;
    let open_heap: i64 = sqlx::query_scalar("SELECT pg_table_size($1::regclass)")
        .bind(&partition)
        .fetch_one(&pool)
        .await
        .unwrap();

    // Reference 1: the raw binary COPY of the rows (kept in a file for the
    // COPY runs below).
    let mut file = tempfile::tempfile().unwrap();
    let mut conn = pool.acquire().await.unwrap();
    {
        let mut out = conn
            .copy_out_raw(&format!(
                "COPY (SELECT * FROM probe_results WHERE started_at >= '{}' AND started_at < '{}') \
                 TO STDOUT (FORMAT binary)",
                day_start.to_rfc3339(),
                (day_start + chrono::Duration::days(1)).to_rfc3339()
            ))
            .await
            .unwrap();
        while let Some(chunk) = out.next().await {
            file.write_all(&chunk.unwrap()).unwrap();
        }
    }
    let copy_bytes = file.stream_position().unwrap();
    // Reference 2: the same rows in a plain heap of today's columns.
    sqlx::query("CREATE TABLE plain_heap (LIKE probe_results)")
        .execute(&mut *conn)
        .await
        .unwrap();
    copy_in(&mut conn, &file, "plain_heap", total).await;
    sqlx::query("VACUUM ANALYZE plain_heap")
        .execute(&mut *conn)
        .await
        .unwrap();
    let plain = total_bytes(&pool, "plain_heap").await;
    sqlx::query("DROP TABLE plain_heap")
        .execute(&mut *conn)
        .await
        .unwrap();

    // The day closed: compacted as the upkeep does it, while a reader of
    // the last minutes (the vantage list's kind of query) runs every
    // 100 ms: the slowest of its answers meanwhile.
    let reading = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let reader = {
        let (pool, reading) = (pool.clone(), reading.clone());
        tokio::spawn(async move {
            let mut slowest = 0f64;
            while reading.load(std::sync::atomic::Ordering::Relaxed) {
                let asked = Instant::now();
                sqlx::query("SELECT count(*) FROM probe_results WHERE started_at > now() - interval '15 minutes'")
                    .execute(&pool)
                    .await
                    .unwrap();
                slowest = slowest.max(asked.elapsed().as_secs_f64());
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            slowest
        })
    };
    let started = Instant::now();
    let compacted = store
        .compact_days_before(day_start + chrono::Duration::days(1))
        .await
        .unwrap();
    let compact_s = started.elapsed().as_secs_f64();
    reading.store(false, std::sync::atomic::Ordering::Relaxed);
    let slowest_read = reader.await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("VACUUM ANALYZE {partition}")))
        .execute(&mut *conn)
        .await
        .unwrap();
    let closed = total_bytes(&pool, &partition).await + contexts;
    // The roll-up reads the closed day.
    let started = Instant::now();
    store
        .roll_up(day_start, day_start + chrono::Duration::days(1))
        .await
        .unwrap();
    let rollup_s = started.elapsed().as_secs_f64();

    // The ingest's reference: a plain binary COPY of the same rows into a
    // table of probe_results' columns with the indexes it had as a table.
    common::create_copy_reference(&mut conn).await;
    let copy_s = copy_in(&mut conn, &file, "copy_reference", total).await;

    let per = |bytes: i64| bytes as f64 / total as f64;
    println!("bytes per result on disk:");
    println!(
        "  raw binary COPY (reference)             {:>7.1}",
        copy_bytes as f64 / total as f64
    );
    println!(
        "  plain heap, today's columns (reference) {:>7.1}",
        per(plain)
    );
    println!(
        "  open day: heap + TOAST + indexes        {:>7.1}   (rows' heap and TOAST {:.1}, \
         {context_count} contexts {:.1}; target <= 350)",
        per(open),
        per(open_heap),
        per(contexts)
    );
    println!(
        "  closed day: {:<27} {:>7.1}   (target <= 120)",
        compacted
            .first()
            .map_or("not compacted", |(_, how)| how.as_str()),
        per(closed)
    );
    println!(
        "ingest (insert_batch, 4 in flight): {:.0} results/s; plain binary COPY of the same rows \
         into a table of probe_results' columns and former indexes: {:.0} results/s; \
         ingest / COPY = {:.0}% (target >= 70%)",
        total as f64 / ingest_s,
        total as f64 / copy_s,
        100.0 * copy_s / ingest_s
    );
    println!(
        "compacting the day: {compact_s:.1} s (a query of the last 15 minutes meanwhile: slowest \
         {:.3} s); rolling the closed day up: {rollup_s:.1} s",
        slowest_read
    );
    drop(conn);
    pool.close().await;
    scratch.drop_now().await;
}
