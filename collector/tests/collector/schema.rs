//! The SQL surface operators rely on: migrations and view columns.

use sqlx::PgPool;

use crate::spawn_collector;

async fn columns(pool: &PgPool, relation: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns
         WHERE table_name = $1 ORDER BY ordinal_position",
    )
    .bind(relation)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// The operator views' columns are a public interface (README, "SQL"):
/// renaming or removing one breaks saved queries and dashboards.
#[sqlx::test(migrations = false)]
async fn views_have_the_documented_columns(pool: PgPool) {
    let collector = spawn_collector(pool.clone()).await;
    assert_eq!(
        columns(&pool, "v_incidents").await,
        [
            "id",
            "target",
            "pattern",
            "kind",
            "dimension",
            "value",
            "narrowed_value",
            "state",
            "explanation",
            "segment_failures",
            "segment_probes",
            "rest_failures",
            "rest_probes",
            "p_value",
            "failing_vantages",
            "correlated",
            "gateways",
            "edge_locations",
            "first_failure_at",
            "last_failure_at",
            "opened_at",
            "last_seen_at",
            "resolved_at",
            "duration",
            "window_seconds",
            "statuses",
            "evidence",
            "scope",
            "targets",
            "fault_side",
            "version"
        ]
    );
    assert_eq!(
        columns(&pool, "v_incident_history").await,
        [
            "incident_id",
            "version",
            "scope",
            "kind",
            "dimension",
            "value",
            "narrowed_value",
            "explanation",
            "segment_failures",
            "segment_probes",
            "rest_failures",
            "rest_probes",
            "p_value",
            "explained_at",
            "replaced_at",
            "current"
        ]
    );
    assert_eq!(
        columns(&pool, "v_segment_rates").await,
        [
            "target",
            "pattern",
            "dimension",
            "value",
            "window_start",
            "window_end",
            "probes",
            "failures",
            "rate",
            "rest_probes",
            "rest_failures",
            "rest_rate",
            "vantages",
            "p_value",
            "flagged",
            "evaluated_at",
            "window_rounds"
        ]
    );
    assert_eq!(
        columns(&pool, "v_latest_by_vantage").await,
        [
            "check_name",
            "target",
            "agent_id",
            "vantage",
            "region",
            "started_at",
            "age",
            "outcome",
            "http_status",
            "gateway",
            "edge_location",
            "resolver",
            "dialed_ip",
            "egress_ip",
            "total_ms",
            "message",
            "seq"
        ]
    );
    assert_eq!(
        columns(&pool, "v_delivery_gaps").await,
        [
            "agent_id",
            "reason",
            "first_seq",
            "last_seq",
            "count",
            "detected_at",
            "received_at"
        ]
    );
    assert_eq!(
        columns(&pool, "v_notifications").await,
        [
            "id",
            "event_id",
            "incident_id",
            "event",
            "version",
            "sink",
            "sink_kind",
            "state",
            "attempts",
            "last_status",
            "last_error",
            "next_attempt_at",
            "last_attempt_at",
            "created_at",
            "delivered_at",
            "expired_at",
            "expires_at",
            "silenced_by",
            "reason"
        ]
    );
    assert_eq!(
        columns(&pool, "v_silences").await,
        [
            "id",
            "target",
            "dimension",
            "value",
            "starts_at",
            "ends_at",
            "expired_at",
            "comment",
            "created_by",
            "created_at",
            "active"
        ]
    );
    collector.stop().await;
}

/// The detection window's query is served by an index on every partition
/// (the partitioned index `probe_results_started` is inherited by each
/// daily partition, existing and future).
#[sqlx::test(migrations = false)]
async fn every_partition_has_the_window_index(pool: PgPool) {
    let collector = spawn_collector(pool.clone()).await;
    let missing: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'probe_results'::regclass
           AND NOT EXISTS (SELECT 1 FROM pg_index x JOIN pg_attribute a
                             ON a.attrelid = x.indrelid AND a.attnum = x.indkey[0]
                           WHERE x.indrelid = c.oid AND a.attname = 'started_at'
                             AND x.indnatts = 1)",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        missing.is_empty(),
        "partitions without a started_at index: {missing:?}"
    );
    collector.stop().await;
}

#[sqlx::test(migrations = false)]
async fn partitions_exist_ahead_of_today(pool: PgPool) {
    let collector = spawn_collector(pool.clone()).await;
    let ahead: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'probe_results'::regclass
           AND c.relname >= 'probe_results_p' || to_char(now() AT TIME ZONE 'UTC', 'YYYYMMDD')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    // Today plus the default three days ahead.
    assert_eq!(ahead, 4);
    collector.stop().await;
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
            "{:?}",
            partitions(&pool).await
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
    crate::process::terminate(&mut collector.0, std::time::Duration::from_secs(20));
    let log = std::fs::read_to_string(dir.path().join("collector.log")).unwrap();
    assert!(
        log.contains("Dropped a partition past retention.raw"),
        "{log}"
    );
}
