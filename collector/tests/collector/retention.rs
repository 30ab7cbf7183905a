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
         JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'result_rows'
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
    // One row on each of those days, each of its own target (its own
    // result context).
    for n in [10, 4, 3, 2, 0] {
        sqlx::query(
            "INSERT INTO probe_results (agent_id, region, seq, started_at, check_name, url,
                                        method, outcome, message)
             VALUES ('a', 'eu', $1, $2::date + time '12:00', 'c', 'http://x/' || ($1 - 1), 'GET',
                     'ok', '')",
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
    let name = |d: chrono::NaiveDate| format!("result_rows_p{}", d.format("%Y%m%d"));
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
    // The contexts only the dropped days used went with them.
    let contexts: Vec<String> = sqlx::query_scalar("SELECT url FROM result_contexts ORDER BY url")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(contexts, ["http://x/0", "http://x/2", "http://x/3"]);
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

/// Every field of every result, as JSON, in a stable order.
pub(crate) async fn every_field(pool: &PgPool) -> Vec<serde_json::Value> {
    sqlx::query_scalar("SELECT to_jsonb(r) FROM probe_results r ORDER BY agent_id, seq")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// A partition's access method and its indexes' names.
async fn layout(pool: &PgPool, partition: &str) -> (String, Vec<String>) {
    sqlx::query_as(
        "SELECT am.amname::text,
                ARRAY(SELECT i.relname::text FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
                      WHERE x.indrelid = c.oid ORDER BY 1)
         FROM pg_class c JOIN pg_am am ON am.oid = c.relam WHERE c.relname = $1",
    )
    .bind(partition)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// A day the ingest can no longer receive results for (it ended before
/// `ingest.max_result_age`) is compacted by a running collector: columnar
/// with zstd, its secondary indexes dropped, every field of every row
/// read back as before through the table and the views; the roll-up and
/// retention work on it as on any day. Today's day is left as it was.
#[sqlx::test(migrations = false)]
async fn closed_days_are_compacted_columnar_and_read_as_before(pool: PgPool) {
    // The columnar access method comes with Citus, built from the vendored
    // source where missing, as for the Citus tests.
    let bin =
        vantage_testkit::cluster::find_server_binaries().expect("PostgreSQL's server binaries");
    vantage_testkit::citus::ensure_installed(&bin).expect("Citus installed");
    let store = Store::new(pool.clone());
    store.migrate().await.unwrap();
    let columnar: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_am WHERE amname = 'columnar')")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(
        columnar,
        "migrate installs the columnar access method where PostgreSQL has it"
    );
    let today = Utc::now().date_naive();
    let day = |n: u64| today.checked_sub_days(chrono::Days::new(n)).unwrap();
    store
        .ensure_partitions(&[day(3), day(2), today])
        .await
        .unwrap();
    // 600 results a day over six agents, every kind of column filled.
    for n in [3u64, 2, 0] {
        sqlx::query(
            "INSERT INTO probe_results (agent_id, seq, started_at, region, check_name, url, method,
               outcome, message, http_status, http_version, resolver, resolved_ips, resolved_ttls,
               dialed_ip, dialed_port, local_ip, egress_ip, dns_us, connect_us, tls_us, ttfb_us,
               total_us, headers, vantage, dns_rcode, resolver_egress_ip, transfer_us, tls_version,
               tls_alpn, tls_cipher, cert_subject, cert_issuer, cert_not_after, body_bytes,
               body_sha256, gateway, hops, interval_ms, check_version)
             SELECT 'agent-' || (g % 6), $2 * 1000 + g, $1::date + g * interval '1 minute',
               'region-' || (g % 3), 'site-' || (g % 4), 'https://site' || (g % 4) || '.test/',
               'GET', CASE WHEN g % 10 = 0 THEN 'http' ELSE 'ok' END,
               CASE WHEN g % 10 = 0 THEN 'unexpected status 502' ELSE '' END,
               CASE WHEN g % 10 = 0 THEN 502 ELSE 200 END, 'HTTP/2.0', 'udp://127.0.0.53:53',
               ARRAY['127.0.0.10'::inet, '::1'::inet], ARRAY[60, 60 - g % 60], '127.0.0.10', 443,
               ('127.0.2.' || (g % 6 + 1))::inet, ('127.0.2.' || (g % 6 + 1))::inet,
               g, g * 2, g * 3, g * 4, g * 5,
               jsonb_build_object('server', 'nginx', 'content-length', g::text), 'direct',
               'NOERROR', '127.0.0.53', g, 'TLSv1.3', 'h2', 'TLS13_AES_128_GCM_SHA256',
               'CN=site.test', 'CN=Test CA', $1::date + interval '90 days', g,
               encode(sha256(g::text::bytea), 'hex'), CASE WHEN g % 10 = 0 THEN 'nginx' END,
               '[]', 30000, 1
             FROM generate_series(1, 600) g",
        )
        .bind(day(n))
        .bind(i64::try_from(n).unwrap())
        .execute(&pool)
        .await
        .unwrap();
    }
    let rows_before = every_field(&pool).await;
    // The latest result per vantage (its age, measured from now, aside).
    let view = "SELECT jsonb_agg(to_jsonb(v) - 'age' ORDER BY v::text) FROM v_latest_by_vantage v";
    let view_before: serde_json::Value = sqlx::query_scalar(view).fetch_one(&pool).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let (mut collector, _) = crate::process::start_collector(
        &pool,
        dir.path(),
        "collector",
        "[ingest]\nmax_result_age = \"1day\"\n",
    );
    let name = |d: chrono::NaiveDate| format!("result_rows_p{}", d.format("%Y%m%d"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while layout(&pool, &name(day(2))).await.0 != "columnar" {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}\n{}",
            layout(&pool, &name(day(2))).await,
            std::fs::read_to_string(dir.path().join("collector.log")).unwrap_or_default()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    crate::process::terminate(&mut collector.0, std::time::Duration::from_secs(20));
    let log = std::fs::read_to_string(dir.path().join("collector.log")).unwrap();
    assert!(log.contains("Compacted a closed day of results."), "{log}");

    for n in [3, 2] {
        let (method, indexes) = layout(&pool, &name(day(n))).await;
        assert_eq!(method, "columnar", "{n} days ago");
        assert_eq!(
            indexes,
            [
                format!("{}_pkey", name(day(n))),
                format!("{}_request_id_idx", name(day(n)))
            ],
            "{n} days ago: only the primary key and the one-off probes' index stay"
        );
    }
    let (method, indexes) = layout(&pool, &name(today)).await;
    assert_eq!(method, "heap", "today stays open");
    assert!(
        indexes.contains(&format!("{}_context", name(today)))
            && indexes.contains(&format!("{}_started", name(today))),
        "{indexes:?}"
    );
    assert_eq!(
        every_field(&pool).await,
        rows_before,
        "every field reads back as stored"
    );
    let view_after: serde_json::Value = sqlx::query_scalar(view).fetch_one(&pool).await.unwrap();
    assert_eq!(view_after, view_before);
    // A second run finds nothing left to do.
    let cutoff = today.and_hms_opt(0, 0, 0).unwrap().and_utc() - chrono::Duration::days(1);
    assert_eq!(store.compact_days_before(cutoff).await.unwrap(), []);

    // The roll-up reads a compacted day, and retention drops it whole.
    let start = day(3).and_hms_opt(0, 0, 0).unwrap().and_utc();
    store
        .roll_up(start, start + chrono::Duration::days(1))
        .await
        .unwrap();
    let probes: i64 = sqlx::query_scalar(
        "SELECT sum(probes)::int8 FROM probe_rollups WHERE minute >= $1 AND minute < $1 + interval '1 day'",
    )
    .bind(start)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(probes, 600);
    let dropped = store.drop_partitions_before(cutoff).await.unwrap();
    assert_eq!(dropped, [name(day(3)), name(day(2))]);
}

/// Compacting a closed day never holds up the day's readers: the copy is
/// built beside it, and the swap, which needs the day to itself for a
/// moment, gives up after a few seconds behind a long reader (and is done
/// at the next run). Another collector's compaction in progress is left
/// alone.
#[sqlx::test(migrations = false)]
async fn compaction_yields_to_a_long_reader_and_to_another_compaction(pool: PgPool) {
    let bin =
        vantage_testkit::cluster::find_server_binaries().expect("PostgreSQL's server binaries");
    vantage_testkit::citus::ensure_installed(&bin).expect("Citus installed");
    let store = Store::new(pool.clone());
    store.migrate().await.unwrap();
    let today = Utc::now().date_naive();
    let closed = today.checked_sub_days(chrono::Days::new(3)).unwrap();
    store.ensure_partitions(&[closed, today]).await.unwrap();
    sqlx::query(
        "INSERT INTO probe_results (agent_id, region, seq, started_at, check_name, url, method,
                                    outcome, message)
         SELECT 'a', 'eu', g, $1::date + g * interval '1 minute', 'c', 'http://x/', 'GET', 'ok', ''
         FROM generate_series(1, 100) g",
    )
    .bind(closed)
    .execute(&pool)
    .await
    .unwrap();
    let name = format!("result_rows_p{}", closed.format("%Y%m%d"));
    let cutoff = today.and_hms_opt(0, 0, 0).unwrap().and_utc() - chrono::Duration::days(1);

    // Another collector compacting: left to it.
    let mut other = pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(hashtext('vantage.probe_results.compaction'))")
        .execute(&mut *other)
        .await
        .unwrap();
    assert_eq!(store.compact_days_before(cutoff).await.unwrap(), []);
    sqlx::query("SELECT pg_advisory_unlock(hashtext('vantage.probe_results.compaction'))")
        .execute(&mut *other)
        .await
        .unwrap();

    // A reader of the day in a long transaction: the swap waits for it a
    // few seconds, then gives up; the reader was never blocked, and the
    // day is as it was.
    let mut reader = sqlx::Connection::begin(&mut *other).await.unwrap();
    let read: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {name}")))
        .fetch_one(&mut *reader)
        .await
        .unwrap();
    assert_eq!(read, 100);
    assert_eq!(store.compact_days_before(cutoff).await.unwrap(), []);
    assert_eq!(layout(&pool, &name).await.0, "heap");
    let again: i64 =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {name}")))
            .fetch_one(&mut *reader)
            .await
            .unwrap();
    assert_eq!(again, 100);
    reader.commit().await.unwrap();

    // The next run does it; the copy left by the one that gave up is gone.
    assert_eq!(
        store.compact_days_before(cutoff).await.unwrap(),
        [(name.clone(), vantage_collector::store::Compaction::Columnar)]
    );
    assert_eq!(layout(&pool, &name).await.0, "columnar");
    let left: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
        .bind(format!("{name}_columnar"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, None);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM probe_results")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 100);
}
