//! A closed day compacted on Citus: its partition is distributed, so
//! Citus's own function rewrites each shard on the workers columnar.

use chrono::Utc;
use vantage_collector::store::{Compaction, Store};

use super::citus_pool;
use crate::retention::every_field;

#[tokio::test]
async fn a_closed_day_is_compacted_columnar_on_every_shard() {
    let pool = citus_pool("closed_days").await;
    let store = Store::new(pool.clone());
    store.migrate().await.unwrap();
    let today = Utc::now().date_naive();
    let closed = today.checked_sub_days(chrono::Days::new(3)).unwrap();
    store.ensure_partitions(&[closed, today]).await.unwrap();
    for (day, first) in [(closed, 0i64), (today, 1000)] {
        sqlx::query(
            "INSERT INTO probe_results (agent_id, seq, started_at, region, check_name, url, method,
                                        outcome, message, http_status, resolved_ips, headers,
                                        total_us)
             SELECT 'agent-' || (g % 6), $2 + g, $1::date + g * interval '1 minute', 'eu',
                    'site', 'https://site.test/', 'GET', 'ok', '', 200,
                    ARRAY['127.0.0.10'::inet], jsonb_build_object('server', 'nginx'), g
             FROM generate_series(1, 300) g",
        )
        .bind(day)
        .bind(first)
        .execute(&pool)
        .await
        .unwrap();
    }
    let before = every_field(&pool).await;
    let name = format!("result_rows_p{}", closed.format("%Y%m%d"));
    let cutoff = today.and_hms_opt(0, 0, 0).unwrap().and_utc() - chrono::Duration::days(1);
    assert_eq!(
        store.compact_days_before(cutoff).await.unwrap(),
        [(name.clone(), Compaction::Columnar)]
    );
    // Every shard of the closed day, on whichever worker, is columnar.
    let methods: Vec<String> = sqlx::query_scalar(
        "SELECT result FROM run_command_on_shards($1,
             $$SELECT am.amname FROM pg_class c JOIN pg_am am ON am.oid = c.relam
               WHERE c.oid = '%s'::regclass$$)",
    )
    .bind(&name)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(!methods.is_empty());
    assert!(methods.iter().all(|m| m == "columnar"), "{methods:?}");
    assert_eq!(every_field(&pool).await, before);
    assert_eq!(store.compact_days_before(cutoff).await.unwrap(), []);
}
