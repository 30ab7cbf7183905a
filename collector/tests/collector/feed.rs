//! The collector's own results handed to its detector (`detector::feed`):
//! the cells the feed makes from a batch are, byte for byte, those the
//! database read makes from the stored rows; a pass counts fed batches
//! without reading them, reads what other collectors stored and what the
//! feed could not mirror, reads back a batch whose COMMIT outcome was
//! unknown, and keeps the window a whole read would see.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::Notify;
use vantage_collector::detect::{DetectorSettings, dimensions};
use vantage_collector::detector::Detector;
use vantage_collector::detector::feed::{Feed, Ticket};
use vantage_collector::store::{Excluded, SlotRow, Store, StoredResult};
use vantage_collector::wire::stored_result;
use vantage_proto::v1 as pb;

const WINDOW: Duration = Duration::from_secs(300);
const DEFAULT_ROUND_MS: i64 = 30_000;

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
    const DIALLED: [&str; 4] = [
        "203.0.113.5:443",
        "[2001:db8::1]:443",
        "[2001:db8:0:0:1:0:0:1]:8443",
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

/// Stores `results` as the ingest does, handing them to `feed`; `commit`
/// false plays a COMMIT whose outcome is unknown (it did commit).
async fn ingest(
    store: &Store,
    feed: &Arc<Feed>,
    agent: &str,
    results: &[StoredResult],
    commit: bool,
) {
    let mut ticket = feed.prepare(agent, "eu", results);
    let last = results.last().map_or(0, |r| r.seq);
    store
        .insert_batch_registering(
            agent,
            "eu",
            results,
            &[],
            last,
            &mut Ticket::registrar(&mut ticket),
        )
        .await
        .unwrap();
    assert!(ticket.is_some(), "the batch could not be fed");
    if commit {
        ticket.unwrap().committed();
    }
}

#[sqlx::test(migrations = false)]
async fn the_feeds_cells_are_those_the_database_read_makes(pool: PgPool) {
    let store = store(&pool).await;
    let end = Utc::now();
    let sources = dimensions::sources();
    let feed = Arc::new(Feed::default());
    feed.start(&sources, DEFAULT_ROUND_MS);
    let results = varied(1, 600, end);
    let ticket = feed.prepare("a", "eu", &results).expect("feedable");
    let fed = sorted(ticket.rows().to_vec());
    drop(ticket);
    store
        .insert_batch("a", "eu", &results, &[], 600)
        .await
        .unwrap();
    let start = end - chrono::Duration::seconds(300);
    let read = store
        .window_slots(start, &sources, DEFAULT_ROUND_MS, None, &Excluded::default)
        .await
        .unwrap();
    let read = sorted(read.rows);
    assert_eq!(fed.len(), read.len());
    for (f, r) in fed.iter().zip(&read) {
        assert_eq!(f, r);
    }
    // The rows are varied enough to mean something: several cells per
    // source value and slots of several lengths.
    assert!(read.len() > 300, "{}", read.len());
    assert_eq!(
        read.iter().map(|r| r.counts.probes).sum::<i64>(),
        600,
        "every result is in the window"
    );
}

#[sqlx::test(migrations = false)]
async fn what_the_feed_cannot_mirror_is_left_to_the_database(pool: PgPool) {
    let _store = store(&pool).await;
    let end = Utc::now();
    let feed = Arc::new(Feed::default());
    let results = varied(1, 10, end);
    assert!(
        feed.prepare("a", "eu", &results).is_none(),
        "inactive before the detector's first read"
    );
    let epoch = feed.start(&dimensions::sources(), DEFAULT_ROUND_MS);
    assert!(feed.prepare("a", "eu", &results).is_some());
    let with = |edit: &dyn Fn(&mut StoredResult)| {
        let mut batch = results.clone();
        edit(&mut batch[3]);
        feed.prepare("a", "eu", &batch).is_none()
    };
    // A requested probe, an address PostgreSQL prints with a dotted tail.
    assert!(with(&|r| r.request_id = Some(4)));
    assert!(with(
        &|r| r.dialed = Some("[::ffff:198.51.100.1]:443".parse().unwrap())
    ));
    assert!(with(
        &|r| r.resolver_egress_ip = Some("::1.2.3.4".parse().unwrap())
    ));
    // A newer start is not stopped by an older one's end.
    let newer = feed.start(&dimensions::sources(), DEFAULT_ROUND_MS);
    feed.stop(epoch);
    assert!(feed.prepare("a", "eu", &results).is_some());
    feed.stop(newer);
    assert!(feed.prepare("a", "eu", &results).is_none());
}

#[sqlx::test(migrations = false)]
async fn a_pass_counts_fed_batches_reads_the_rest_and_keeps_the_whole_windows_counts(pool: PgPool) {
    let store = store(&pool).await;
    let now = Utc::now();
    let feed = Arc::new(Feed::default());
    let settings = DetectorSettings {
        window: WINDOW,
        ..DetectorSettings::default()
    };
    let d = Detector::new(store.clone(), settings.clone(), Arc::new(Notify::new()))
        .with_feed(feed.clone());

    // Before the first whole read the feed is off: a batch is read.
    store
        .insert_batch("b", "eu", &varied(1, 100, now), &[], 100)
        .await
        .unwrap();
    let first = d.evaluate_at(now).await.unwrap();
    assert_eq!(
        (first.read_probes, first.fed_probes, first.probes),
        (100, 0, 100)
    );

    // This collector's batches are fed, another collector's are read.
    ingest(&store, &feed, "a", &varied(1, 300, now), true).await;
    store
        .insert_batch("b", "eu", &varied(101, 50, now), &[], 150)
        .await
        .unwrap();
    let second = d.evaluate_at(now).await.unwrap();
    assert_eq!(
        (second.read_probes, second.fed_probes, second.probes),
        (50, 300, 450)
    );
    assert_eq!(feed.pending(), 0);

    // A COMMIT whose outcome the ingest did not learn: read back whole.
    ingest(&store, &feed, "c", &varied(1, 70, now), false).await;
    ingest(&store, &feed, "d", &varied(1, 20, now), true).await;
    let third = d.evaluate_at(now).await.unwrap();
    assert_eq!(
        (third.read_probes, third.fed_probes, third.probes),
        (70, 20, 540)
    );
    // An agent's backlog across the window's start: its cells cannot be
    // split, so the next pass reads back the results inside the window.
    let mut backlog = varied(1001, 40, now);
    for r in &mut backlog {
        r.started_at -= chrono::Duration::seconds(250);
    }
    let inside = backlog
        .iter()
        .filter(|r| r.started_at > now - chrono::Duration::seconds(300))
        .count() as u64;
    assert!(inside > 0 && inside < 40, "{inside}");
    ingest(&store, &feed, "a", &backlog, true).await;
    let fourth = d.evaluate_at(now).await.unwrap();
    assert_eq!(
        (fourth.read_probes, fourth.fed_probes, fourth.probes),
        (0, 0, 540)
    );
    let fourth = d.evaluate_at(now).await.unwrap();
    assert_eq!(
        (fourth.read_probes, fourth.fed_probes, fourth.probes),
        (inside, 0, 540 + inside)
    );

    // The window kept is the one a detector reading everything sees.
    d.release_lease().await;
    let fresh = Detector::new(store.clone(), settings, Arc::new(Notify::new()));
    let rebuilt = fresh.evaluate_at(now).await.unwrap();
    assert_eq!(
        (rebuilt.probes, rebuilt.cells, rebuilt.segments),
        (fourth.probes, fourth.cells, fourth.segments)
    );
    assert_eq!(rebuilt.window_slots, fourth.window_slots);
}
