//! The detector's cells, written by the ingest in each batch's own
//! transaction (`store::cells`): they are, value for value, what the
//! dimension table's SQL sources give over the stored rows (which the
//! views and the evidence queries read); a pass counts every stored result
//! once whichever collector stored it, a resent batch's rows once, a
//! confirmation probe and never a person's one-off probe; and the window
//! a pass keeps is the one a whole read sees.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};
use tokio::sync::Notify;
use vantage_collector::detect::cells::{CellCounts, CellKey};
use vantage_collector::detect::{DetectorSettings, dimensions};
use vantage_collector::detector::Detector;
use vantage_collector::store::{SlotRow, Store, StoredResult, cells};
use vantage_collector::wire::stored_result;
use vantage_proto::v1 as pb;

const WINDOW: Duration = Duration::from_secs(300);
const DEFAULT_ROUND_MS: i32 = 30_000;

/// A store (see `window::store`) with agents a to d enrolled.
async fn store(pool: &PgPool) -> Arc<Store> {
    let store = crate::window::store(pool).await;
    for agent in ["a", "b", "c", "d"] {
        store
            .enrol_agent(agent, "eu", &format!("token-of-{agent}"))
            .await
            .unwrap();
    }
    store
}

fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap(),
    }
}

/// Results as varied as agents send them: addresses of both families,
/// private and public local addresses, proxies with and without an
/// address, echoed addresses, missing values, odd intervals, start times
/// with sub-microsecond parts and on half milliseconds.
fn varied(first_seq: u64, n: u64, end: DateTime<Utc>) -> Vec<StoredResult> {
    const LOCAL: [&str; 12] = [
        "10.1.2.3",
        "172.20.0.1",
        "172.32.0.1",
        "100.64.1.1",
        "100.128.0.1",
        "192.168.1.1",
        "169.254.3.3",
        "127.0.2.1",
        "fd00::1",
        "fe80::1",
        "2001:db8::5",
        "",
    ];
    const DIALLED: [&str; 6] = [
        "203.0.113.5:443",
        "[2001:db8::1]:443",
        "[2001:db8:0:0:1:0:0:1]:8443",
        // Printed with a dotted tail by PostgreSQL.
        "[::ffff:198.51.100.1]:443",
        "[::1.2.3.4]:443",
        "",
    ];
    (first_seq..first_seq + n)
        .map(|seq| {
            let i = seq as usize;
            // Half of them exactly on a half millisecond (a tie the cast
            // rounds to even), the rest with nanoseconds PostgreSQL drops.
            let micros = if i.is_multiple_of(2) {
                i64::try_from(seq).unwrap() * 1_000_003 % 90_000_000 / 1000 * 1000 + 500
            } else {
                i64::try_from(seq).unwrap() * 7_777_777 % 90_000_000
            };
            let mut at = end - chrono::Duration::microseconds(micros);
            if i % 2 == 1 {
                at += chrono::Duration::nanoseconds(i64::try_from(seq % 1000).unwrap());
            }
            let failed = i.is_multiple_of(5);
            let proxied = i.is_multiple_of(7);
            let r = pb::ProbeResult {
                seq,
                started_at: Some(timestamp(at)),
                check: format!("check-{}", i % 3),
                url: format!("https://site{}.test/", i % 3),
                method: "GET".into(),
                outcome: if failed {
                    pb::Outcome::Http as i32
                } else {
                    pb::Outcome::Ok as i32
                },
                http_status: if proxied && failed {
                    None
                } else {
                    Some(if failed { 502 } else { 200 })
                },
                proxy_status: (proxied && failed).then_some(502),
                http_version: ["HTTP/1.1", "HTTP/2.0", ""][i % 3].into(),
                resolver: ["udp://127.0.0.53:53", ""][i % 2].into(),
                resolver_egress_ip: ["198.51.100.7", "", "2001:db8::53"][i % 3].into(),
                dialed_addr: DIALLED[i % DIALLED.len()].into(),
                local_ip: LOCAL[i % LOCAL.len()].into(),
                egress_ip: ["", "198.51.100.9"][i % 2].into(),
                echo_ip: if i.is_multiple_of(11) {
                    "192.0.2.44".into()
                } else {
                    String::new()
                },
                proxy: if proxied {
                    "http://proxy.test:3128".into()
                } else {
                    String::new()
                },
                proxy_ip: if proxied && i.is_multiple_of(2) {
                    "192.0.2.80".into()
                } else {
                    String::new()
                },
                region: ["", "ap-south"][i % 2].into(),
                vantage: ["", "vpn-1", "proxy"][i % 3].into(),
                gateway: if failed {
                    "nginx".into()
                } else {
                    String::new()
                },
                edge_location: ["", "FRA"][i % 2].into(),
                interval_ms: [0, 10_000, 15_000, 333, 100][i % 5],
                ..Default::default()
            };
            stored_result(r, IpAddr::from([127, 0, 0, 9])).unwrap()
        })
        .collect()
}

fn sorted(mut rows: Vec<SlotRow>) -> Vec<SlotRow> {
    rows.sort_by_cached_key(|r| format!("{:?}|{}", r.key, r.slot));
    rows
}

/// Every cell row stored, with its key, merged per key and slot.
async fn stored_cells(store: &Store, start: DateTime<Utc>) -> Vec<SlotRow> {
    let read = store.window_cells(start, None).await.unwrap();
    let ids: Vec<i64> = read.rows.iter().map(|r| r.key_id).collect();
    let keys: HashMap<i64, Arc<CellKey>> = store
        .cell_keys(&ids)
        .await
        .unwrap()
        .into_iter()
        .map(|k| (k.id, cells::reorder(k, &dimensions::sources())))
        .collect();
    let mut merged: HashMap<(Arc<CellKey>, i64), CellCounts> = HashMap::new();
    for row in read.rows {
        merged
            .entry((keys[&row.key_id].clone(), row.slot))
            .and_modify(|c| c.merge(&row.counts))
            .or_insert(row.counts);
    }
    sorted(
        merged
            .into_iter()
            .map(|((key, slot), counts)| SlotRow {
                key: (*key).clone(),
                slot,
                counts,
            })
            .collect(),
    )
}

/// The same cells computed by PostgreSQL from the stored rows with the
/// dimension table's SQL sources.
async fn cells_by_sql(pool: &PgPool) -> Vec<SlotRow> {
    let sources = dimensions::sources();
    let mut select = format!(
        "SELECT url, check_name, outcome, COALESCE(http_status, proxy_status), agent_id,
                vantage, COALESCE(interval_ms, {DEFAULT_ROUND_MS}),
                floor(extract(epoch FROM started_at) * 1000)::int8
                    / greatest(COALESCE(interval_ms, {DEFAULT_ROUND_MS}) / 4, 1)"
    );
    for s in &sources {
        select.push_str(&format!(", ({s})::text"));
    }
    let fixed = 8;
    let group: Vec<String> = (1..=fixed + sources.len()).map(|i| i.to_string()).collect();
    let sql = format!(
        "{select}, count(*), min(started_at), max(started_at), max(seq) FROM probe_results
         GROUP BY {}",
        group.join(", ")
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .fetch_all(pool)
        .await
        .unwrap();
    let n = fixed + sources.len();
    sorted(
        rows.iter()
            .map(|row| SlotRow {
                key: CellKey {
                    target: row.get(0),
                    check: row.get(1),
                    outcome: row.get(2),
                    status: row.get(3),
                    agent_id: row.get(4),
                    vantage: row.get(5),
                    interval_ms: row.get(6),
                    confirmation: false,
                    sources: (0..sources.len()).map(|i| row.get(fixed + i)).collect(),
                },
                slot: row.get(7),
                counts: CellCounts {
                    probes: row.get(n),
                    first_at: row.get(n + 1),
                    last_at: row.get(n + 2),
                    last_seq: row.get(n + 3),
                },
            })
            .collect(),
    )
}

#[sqlx::test(migrations = false)]
async fn the_ingests_cells_are_what_the_sql_sources_give_over_the_stored_rows(pool: PgPool) {
    let store = store(&pool).await;
    let end = Utc::now();
    let results = varied(1, 600, end);
    store
        .insert_batch("a", "eu", &results[..250], &[], 250)
        .await
        .unwrap();
    store
        .insert_batch("a", "eu", &results[250..], &[], 600)
        .await
        .unwrap();
    let written = stored_cells(&store, end - chrono::Duration::seconds(300)).await;
    let computed = cells_by_sql(&pool).await;
    assert_eq!(written.len(), computed.len());
    for (w, c) in written.iter().zip(&computed) {
        assert_eq!(w, c);
    }
    // The rows are varied enough to mean something: several cells per
    // source value and slots of several lengths.
    assert!(written.len() > 300, "{}", written.len());
    assert_eq!(
        written.iter().map(|r| r.counts.probes).sum::<i64>(),
        600,
        "every result is in the window"
    );
}

fn detector(store: &Arc<Store>) -> Detector {
    let settings = DetectorSettings {
        window: WINDOW,
        ..DetectorSettings::default()
    };
    Detector::new(store.clone(), settings, Arc::new(Notify::new()))
}

#[sqlx::test(migrations = false)]
async fn a_pass_counts_every_result_once_whoever_stored_it(pool: PgPool) {
    let one = store(&pool).await;
    // A second collector on the same database.
    let other = Arc::new(Store::new(pool.clone()));
    let now = Utc::now();
    let d = detector(&one);

    one.insert_batch("a", "eu", &varied(1, 100, now), &[], 100)
        .await
        .unwrap();
    let first = d.evaluate_at(now).await.unwrap();
    assert_eq!((first.read_probes, first.probes), (100, 100));

    // Both collectors' batches, read alike.
    one.insert_batch("a", "eu", &varied(101, 300, now), &[], 400)
        .await
        .unwrap();
    other
        .insert_batch("b", "eu", &varied(1, 50, now), &[], 50)
        .await
        .unwrap();
    let second = d.evaluate_at(now).await.unwrap();
    assert_eq!((second.read_probes, second.probes), (350, 450));

    // A batch resent whole (its ack was lost) adds nothing; one resent
    // with new results behind it adds only those.
    other
        .insert_batch("b", "eu", &varied(1, 50, now), &[], 50)
        .await
        .unwrap();
    let third = d.evaluate_at(now).await.unwrap();
    assert_eq!((third.read_probes, third.probes), (0, 450));
    one.insert_batch("b", "eu", &varied(31, 40, now), &[], 70)
        .await
        .unwrap();
    let fourth = d.evaluate_at(now).await.unwrap();
    assert_eq!((fourth.read_probes, fourth.probes), (20, 470));

    // Results from before the window are not the detector's.
    let mut old = varied(1001, 40, now);
    for r in &mut old {
        r.started_at -= chrono::Duration::seconds(250);
    }
    let inside = old
        .iter()
        .filter(|r| r.started_at > now - chrono::Duration::seconds(300))
        .count() as u64;
    assert!(inside > 0 && inside < 40, "{inside}");
    other
        .insert_batch("c", "eu", &old, &[], 1040)
        .await
        .unwrap();
    let fifth = d.evaluate_at(now).await.unwrap();
    assert_eq!(fifth.probes, 470 + inside);

    // The window kept is the one a detector reading everything sees.
    d.release_lease().await;
    let fresh = detector(&one);
    let rebuilt = fresh.evaluate_at(now).await.unwrap();
    assert_eq!(
        (rebuilt.probes, rebuilt.cells, rebuilt.segments),
        (fifth.probes, fifth.cells, fifth.segments)
    );
    assert_eq!(rebuilt.window_slots, fifth.window_slots);
}

#[sqlx::test(migrations = false)]
async fn confirmation_probes_are_counted_and_one_off_probes_are_not(pool: PgPool) {
    let store = store(&pool).await;
    let now = Utc::now();
    let mut ids = Vec::new();
    for purpose in ["confirmation", "manual"] {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO probe_requests (purpose, check_name) VALUES ($1, 'check-0') RETURNING id",
        )
        .bind(purpose)
        .fetch_one(&pool)
        .await
        .unwrap();
        ids.push(id);
    }
    let mut results = varied(1, 30, now);
    for (i, r) in results.iter_mut().enumerate() {
        r.request_id = [None, Some(ids[0]), Some(ids[1])][i % 3];
    }
    store
        .insert_batch("a", "eu", &results, &[], 30)
        .await
        .unwrap();
    let cells = stored_cells(&store, now - chrono::Duration::seconds(300)).await;
    let count = |confirmation: bool| -> i64 {
        cells
            .iter()
            .filter(|c| c.key.confirmation == confirmation)
            .map(|c| c.counts.probes)
            .sum()
    };
    assert_eq!((count(false), count(true)), (10, 10));
}
