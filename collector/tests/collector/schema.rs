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

#[sqlx::test(migrations = false)]
async fn views_have_the_documented_columns(pool: PgPool) {
    let collector = spawn_collector(pool.clone()).await;
    assert_eq!(
        columns(&pool, "v_status_by_region").await,
        [
            "target",
            "region",
            "probes",
            "status_502",
            "pct_502",
            "failures",
            "last_probe_at"
        ]
    );
    assert_eq!(
        columns(&pool, "v_status_by_egress_prefix").await,
        [
            "target",
            "egress_prefix",
            "probes",
            "status_502",
            "pct_502",
            "failures",
            "last_probe_at"
        ]
    );
    assert_eq!(
        columns(&pool, "v_open_incidents").await,
        [
            "id",
            "target",
            "kind",
            "dimension",
            "value",
            "segment_502",
            "segment_probes",
            "rest_502",
            "rest_probes",
            "window_seconds",
            "opened_at",
            "last_seen_at"
        ]
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
