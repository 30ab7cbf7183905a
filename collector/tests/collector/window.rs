//! The detector's kept window: a pass reads only the cells committed since
//! the last one, whatever order transactions commit in, and counts every
//! result once; the window it keeps equals a rebuild from the whole table;
//! a collector standing by keeps its own, so taking over reads no more.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::Notify;
use vantage_collector::detect::DetectorSettings;
use vantage_collector::detector::window::Refresh;
use vantage_collector::detector::{Detector, PassSummary};
use vantage_collector::store::Store;

/// The detector's cells of `n` results of agent `agent` (seq from
/// `first_seq`), spread over the 100 s before `end`, a fifth of them 502,
/// as the ingest writes them (one row per result: each in a slot of its
/// own), with their keys; on `conn`.
async fn write(
    conn: &mut sqlx::PgConnection,
    agent: &str,
    first_seq: i64,
    n: i64,
    end: DateTime<Utc>,
) {
    let names = vantage_collector::detect::dimensions::sources();
    let values: Vec<Option<&str>> = names
        .iter()
        .map(|n| (*n == "region").then_some("eu"))
        .collect();
    sqlx::query(
        "WITH k AS (
             INSERT INTO detector_cell_keys (agent_id, vantage, target, check_name, outcome,
                 status, interval_ms, confirmation, source_names, sources)
             VALUES ($1, 'direct', 'http://shop.test/', 'shop', 'ok', 200, 10000, false, $5, $6),
                    ($1, 'direct', 'http://shop.test/', 'shop', 'http', 502, 10000, false, $5, $6)
             RETURNING id, status)
         INSERT INTO detector_cells (key_id, slot, probes, first_at, last_at, last_seq)
         SELECT (SELECT id FROM k WHERE status = CASE WHEN g % 5 = 0 THEN 502 ELSE 200 END),
                (extract(epoch FROM t) * 1000)::int8 / 2500, 1, t, t, g
         FROM generate_series($2::int8, $2::int8 + $3::int8 - 1) g,
              LATERAL (SELECT $4::timestamptz - (g % 100) * interval '1 second' AS t) at",
    )
    .bind(agent)
    .bind(first_seq)
    .bind(n)
    .bind(end)
    .bind(&names)
    .bind(&values)
    .execute(conn)
    .await
    .unwrap();
}

/// A migrated store with today's partitions, and the cells' for the
/// hours around now.
pub(crate) async fn store(pool: &PgPool) -> Arc<Store> {
    let store = Arc::new(Store::new(pool.clone()));
    store.migrate().await.unwrap();
    store
        .ensure_partitions_around(Utc::now(), 1, 1)
        .await
        .unwrap();
    store
        .ensure_cell_partitions_ahead(Utc::now() - chrono::Duration::hours(2), 4)
        .await
        .unwrap();
    store
}

async fn detector(store: &Arc<Store>) -> Detector {
    let settings = DetectorSettings {
        window: Duration::from_secs(300),
        ..DetectorSettings::default()
    };
    Detector::new(store.clone(), settings, Arc::new(Notify::new()))
}

fn read(summary: &PassSummary) -> (Option<&'static str>, u64, u64) {
    (
        summary.refresh.map(Refresh::as_str),
        summary.read_probes,
        summary.probes,
    )
}

#[sqlx::test(migrations = false)]
async fn a_pass_reads_what_was_committed_since_the_last_once(pool: PgPool) {
    let store = store(&pool).await;
    let now = Utc::now();
    let d = detector(&store).await;
    let mut conn = pool.acquire().await.unwrap();

    write(&mut conn, "a", 1, 500, now).await;
    let first = d.evaluate_at(now).await.unwrap();
    assert_eq!(read(&first), (Some("rebuilt"), 500, 500));

    // A batch that began before the next pass and commits after it, and
    // one that commits before it.
    let mut slow = pool.begin().await.unwrap();
    write(&mut slow, "b", 1, 200, now).await;
    write(&mut conn, "c", 1, 300, now).await;
    let second = d.evaluate_at(now).await.unwrap();
    assert_eq!(read(&second), (Some("updated"), 300, 800));

    slow.commit().await.unwrap();
    let third = d.evaluate_at(now).await.unwrap();
    assert_eq!(read(&third), (Some("updated"), 200, 1000));
    let fourth = d.evaluate_at(now).await.unwrap();
    assert_eq!(read(&fourth), (Some("updated"), 0, 1000));

    // A rolled-back batch is never counted.
    let mut aborted = pool.begin().await.unwrap();
    write(&mut aborted, "d", 1, 50, now).await;
    aborted.rollback().await.unwrap();
    // The window moves on: what left it is forgotten.
    let later = now + chrono::Duration::seconds(250);
    let fifth = d.evaluate_at(later).await.unwrap();
    assert_eq!(fifth.refresh, Some(Refresh::Updated));
    assert_eq!(fifth.read_probes, 0);

    // What it kept is what a detector reading the whole window sees: the
    // same cells and counts, and so the same decision.
    d.release_lease().await;
    let fresh = detector(&store).await;
    let rebuilt = fresh.evaluate_at(later).await.unwrap();
    assert_eq!(rebuilt.refresh, Some(Refresh::Rebuilt));
    assert_eq!(
        (rebuilt.probes, rebuilt.cells, rebuilt.segments),
        (fifth.probes, fifth.cells, fifth.segments)
    );
    assert!(fifth.probes > 0 && fifth.probes < 1000, "{fifth:?}");
}

#[sqlx::test(migrations = false)]
async fn a_standby_keeps_its_window_up_to_date_and_takes_over_without_a_whole_read(pool: PgPool) {
    let store = store(&pool).await;
    let now = Utc::now();
    let mut conn = pool.acquire().await.unwrap();
    let a = detector(&store).await;
    let b = detector(&store).await;
    write(&mut conn, "a", 1, 100, now).await;
    assert_eq!(
        read(&a.evaluate_at(now).await.unwrap()),
        (Some("rebuilt"), 100, 100)
    );
    // B stands by while A leads, reading what arrives as A does.
    assert!(!b.evaluate_at(now).await.unwrap().ran);
    write(&mut conn, "b", 1, 40, now).await;
    assert_eq!(
        read(&a.evaluate_at(now).await.unwrap()),
        (Some("updated"), 40, 140)
    );
    assert!(!b.evaluate_at(now).await.unwrap().ran);
    write(&mut conn, "c", 1, 7, now).await;
    // A stops; B takes over with only the last 7 to read, and counts all.
    a.release_lease().await;
    assert_eq!(
        read(&b.evaluate_at(now).await.unwrap()),
        (Some("updated"), 7, 147)
    );
}
