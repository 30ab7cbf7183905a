//! Keeping the disk bounded: raw results dropped a daily partition at a
//! time past `retention.raw`, rolled up per minute first; the roll-up
//! written every minute, recomputed whole, one-off probes left out.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use vantage_collector::store::Store;

/// A raw result of agent `a` at `at`.
async fn insert(
    pool: &PgPool,
    seq: i64,
    at: DateTime<Utc>,
    status: i16,
    total_us: i64,
    request: Option<i64>,
) {
    sqlx::query(
        "INSERT INTO probe_results (agent_id, region, seq, started_at, check_name, url, method,
                                    outcome, message, http_status, total_us, resolver,
                                    dialed_ip, dialed_port, request_id)
         VALUES ('a', 'eu', $1, $2, 'shop', 'http://shop.test/', 'GET',
                 CASE WHEN $3 = 200 THEN 'ok' ELSE 'http' END, '', $3, $4,
                 'udp://127.0.0.53:53', '127.0.0.10', 80, $5)",
    )
    .bind(seq)
    .bind(at)
    .bind(status)
    .bind(total_us)
    .bind(request)
    .execute(pool)
    .await
    .unwrap();
}

/// (minute, status, probes, total sum, p50, max) of every roll-up row.
async fn rollups(pool: &PgPool) -> Vec<(DateTime<Utc>, i16, i64, i64, Option<i64>, Option<i64>)> {
    sqlx::query_as(
        "SELECT minute, status, probes, total_us_sum, total_us_p50, total_us_max
         FROM probe_rollups ORDER BY minute, status",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrations = false)]
async fn the_roll_up_counts_each_minute_and_is_recomputed_whole(pool: PgPool) {
    let store = Store::new(pool.clone());
    store.migrate().await.unwrap();
    let minute = chrono::DurationRound::duration_trunc(Utc::now(), chrono::Duration::minutes(1))
        .unwrap()
        - chrono::Duration::minutes(5);
    let at = |s: i64| minute + chrono::Duration::seconds(s);
    store
        .ensure_partitions_around(Utc::now(), 1, 1)
        .await
        .unwrap();
    insert(&pool, 1, at(1), 200, 1_000, None).await;
    insert(&pool, 2, at(20), 200, 3_000, None).await;
    insert(&pool, 3, at(40), 502, 9_000, None).await;
    insert(&pool, 4, at(61), 200, 2_000, None).await;
    // A person's one-off probe is not a trend.
    sqlx::query("INSERT INTO probe_requests (id, purpose, definition) VALUES (7, 'manual', '{}')")
        .execute(&pool)
        .await
        .unwrap();
    insert(&pool, 5, at(30), 502, 5_000, Some(7)).await;

    store
        .roll_up(minute, minute + chrono::Duration::minutes(2))
        .await
        .unwrap();
    let first = rollups(&pool).await;
    assert_eq!(
        first,
        [
            (minute, 200, 2, 4_000, Some(1_000), Some(3_000)),
            (minute, 502, 1, 9_000, Some(9_000), Some(9_000)),
            (at(60), 200, 1, 2_000, Some(2_000), Some(2_000)),
        ]
    );
    // Again: the same rows. A late result of a rolled-up minute: counted.
    store
        .roll_up(minute, minute + chrono::Duration::minutes(2))
        .await
        .unwrap();
    assert_eq!(rollups(&pool).await, first);
    insert(&pool, 6, at(50), 200, 8_000, None).await;
    store
        .roll_up(minute, minute + chrono::Duration::minutes(2))
        .await
        .unwrap();
    let after = rollups(&pool).await;
    assert_eq!(after[0], (minute, 200, 3, 12_000, Some(3_000), Some(8_000)));
    // The dimensions a 502 follows are kept.
    let (resolver, dialed, region): (String, String, String) =
        sqlx::query_as("SELECT resolver, dialed_ip, region FROM probe_rollups WHERE status = 502")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        (resolver.as_str(), dialed.as_str(), region.as_str()),
        ("udp://127.0.0.53:53", "127.0.0.10", "eu")
    );
}

/// The partitions of `probe_results`, by name.
async fn partitions(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'probe_results'
         ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// `[retention] raw` bounds the disk: a running collector drops whole
/// daily partitions past it (no DELETE), and keeps the rest and their rows.
#[sqlx::test(migrations = false)]
async fn partitions_past_raw_retention_are_dropped_whole(pool: PgPool) {
    let store = vantage_collector::store::Store::new(pool.clone());
    store.migrate().await.unwrap();
    let today = chrono::Utc::now().date_naive();
    let day = |n: u64| today.checked_sub_days(chrono::Days::new(n)).unwrap();
    store
        .ensure_partitions(&[day(10), day(4), day(3), day(2), today])
        .await
        .unwrap();
    // One row on each of those days.
    for n in [10, 4, 3, 2, 0] {
        sqlx::query(
            "INSERT INTO probe_results (agent_id, region, seq, started_at, check_name, url,
                                        method, outcome, message)
             VALUES ('a', 'eu', $1, $2::date + time '12:00', 'c', 'http://x/', 'GET', 'ok', '')",
        )
        .bind(i64::try_from(n).unwrap() + 1)
        .bind(day(n))
        .execute(&pool)
        .await
        .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut collector, _) = crate::process::start_collector(
        &pool,
        dir.path(),
        "collector",
        "[ingest]\nmax_result_age = \"1day\"\n[retention]\nraw = \"3days\"\n",
    );
    let name = |d: chrono::NaiveDate| format!("probe_results_p{}", d.format("%Y%m%d"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while partitions(&pool).await.contains(&name(day(4))) {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}\n{}",
            partitions(&pool).await,
            std::fs::read_to_string(dir.path().join("collector.log")).unwrap_or_default()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let left = partitions(&pool).await;
    assert!(!left.contains(&name(day(10))), "{left:?}");
    // The day that ended less than 3 days ago stays, with its row.
    for n in [3, 2, 0] {
        assert!(left.contains(&name(day(n))), "{n} days ago: {left:?}");
    }
    let rows: Vec<i64> = sqlx::query_scalar("SELECT seq FROM probe_results ORDER BY seq")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(rows, [1, 3, 4]);
    // The dropped days were rolled up first: their trend survives.
    let rolled: Vec<(chrono::DateTime<chrono::Utc>, i64)> = sqlx::query_as(
        "SELECT minute, probes FROM probe_rollups WHERE minute < now() - interval '3 days'
         ORDER BY minute",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rolled.len(), 2, "{rolled:?}");
    assert_eq!(rolled[0].0.date_naive(), day(10));
    assert_eq!(rolled[1].0.date_naive(), day(4));
    assert!(rolled.iter().all(|(_, probes)| *probes == 1));
    crate::process::terminate(&mut collector.0, std::time::Duration::from_secs(20));
    let log = std::fs::read_to_string(dir.path().join("collector.log")).unwrap();
    assert!(
        log.contains("Dropped a partition past retention.raw"),
        "{log}"
    );
}
