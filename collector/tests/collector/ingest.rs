//! Ingest over real gRPC into a fresh database.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::Row;

use crate::{open_stream, result, spawn_collector};

async fn count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM probe_results")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrations = false)]
async fn stored_rows_equal_what_was_sent(pool: PgPool) {
    let collector = spawn_collector(pool.clone()).await;
    let mut stream = open_stream(collector.grpc_addr, "agent-a", "eu-west").await;
    assert_eq!(stream.welcome.observed_ip, "127.0.0.1");
    assert_eq!(stream.welcome.last_committed_seq, 0);

    stream
        .send_batch(1, vec![result(1, 200), result(2, 502), result(3, 200)])
        .await;
    let ack = stream.next_ack(Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        (ack.batch_id, ack.inserted, ack.duplicates, ack.max_seq),
        (1, 3, 0, 3)
    );

    let row = sqlx::query(
        "SELECT agent_id, region, seq, check_name, url, outcome, message, http_status,
                http_version, resolver, resolved_ips::text[] AS ips, resolved_ttls,
                host(dialed_ip) AS dialed_ip, dialed_port, host(local_ip) AS local_ip,
                host(egress_ip) AS egress_ip, dns_us, connect_us, tls_us, ttfb_us, total_us,
                headers->>'server' AS server
         FROM probe_results WHERE seq = 2",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(row.get::<String, _>("agent_id"), "agent-a");
    assert_eq!(row.get::<String, _>("region"), "eu-west");
    assert_eq!(row.get::<String, _>("check_name"), "shop");
    assert_eq!(row.get::<String, _>("url"), "http://shop.test/");
    assert_eq!(row.get::<String, _>("outcome"), "http");
    assert_eq!(row.get::<String, _>("message"), "unexpected status 502");
    assert_eq!(row.get::<Option<i16>, _>("http_status"), Some(502));
    assert_eq!(
        row.get::<Option<String>, _>("http_version").as_deref(),
        Some("HTTP/1.1")
    );
    assert_eq!(
        row.get::<Option<String>, _>("resolver").as_deref(),
        Some("udp://127.0.0.1:53")
    );
    assert_eq!(
        row.get::<Vec<String>, _>("ips"),
        vec!["127.0.0.1/32", "::1/128"]
    );
    assert_eq!(row.get::<Vec<i32>, _>("resolved_ttls"), vec![30, 60]);
    assert_eq!(
        row.get::<Option<String>, _>("dialed_ip").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(row.get::<Option<i32>, _>("dialed_port"), Some(8080));
    assert_eq!(
        row.get::<Option<String>, _>("local_ip").as_deref(),
        Some("127.0.2.1")
    );
    // Not sent by the agent: the stream's peer address stands in.
    assert_eq!(
        row.get::<Option<String>, _>("egress_ip").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(row.get::<Option<i64>, _>("dns_us"), Some(120));
    assert_eq!(row.get::<Option<i64>, _>("connect_us"), None);
    assert_eq!(row.get::<Option<i64>, _>("tls_us"), None);
    assert_eq!(row.get::<Option<i64>, _>("ttfb_us"), Some(900));
    assert_eq!(row.get::<Option<i64>, _>("total_us"), Some(1500));
    assert_eq!(
        row.get::<Option<String>, _>("server").as_deref(),
        Some("nginx")
    );

    let last_seq: i64 =
        sqlx::query_scalar("SELECT last_seq FROM agents WHERE agent_id = 'agent-a'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(last_seq, 3);
    drop(stream);
    collector.stop().await;
}

#[sqlx::test(migrations = false)]
async fn resent_batch_adds_no_rows(pool: PgPool) {
    let collector = spawn_collector(pool.clone()).await;
    let mut stream = open_stream(collector.grpc_addr, "agent-a", "eu-west").await;
    let batch = vec![result(10, 200), result(11, 502)];
    stream.send_batch(1, batch.clone()).await;
    stream.next_ack(Duration::from_secs(10)).await.unwrap();
    stream.send_batch(2, batch.clone()).await;
    let ack = stream.next_ack(Duration::from_secs(10)).await.unwrap();
    assert_eq!((ack.inserted, ack.duplicates), (0, 2));
    assert_eq!(count(&pool).await, 2);

    // And over a new stream, as after a reconnect.
    drop(stream);
    let mut again = open_stream(collector.grpc_addr, "agent-a", "eu-west").await;
    assert_eq!(again.welcome.last_committed_seq, 11);
    again.send_batch(1, batch).await;
    let ack = again.next_ack(Duration::from_secs(10)).await.unwrap();
    assert_eq!((ack.inserted, ack.duplicates), (0, 2));
    assert_eq!(count(&pool).await, 2);
    drop(again);
    collector.stop().await;
}

#[sqlx::test(migrations = false)]
async fn no_ack_before_commit(pool: PgPool) {
    let collector = spawn_collector(pool.clone()).await;
    let mut stream = open_stream(collector.grpc_addr, "agent-a", "eu-west").await;

    // Hold the agent's progress row: the ingest transaction updates it, so
    // it cannot commit until this transaction ends.
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM agents WHERE agent_id = 'agent-a' FOR UPDATE")
        .execute(&mut *blocker)
        .await
        .unwrap();

    stream
        .send_batch(1, vec![result(1, 200), result(2, 200)])
        .await;
    let early = tokio::time::timeout(Duration::from_secs(1), stream.inbound.message()).await;
    assert!(
        early.is_err(),
        "an ack arrived while the commit was blocked: {early:?}"
    );
    assert_eq!(
        count(&pool).await,
        0,
        "uncommitted rows must not be visible"
    );

    blocker.rollback().await.unwrap();
    let ack = stream.next_ack(Duration::from_secs(10)).await.unwrap();
    assert_eq!(ack.inserted, 2);
    assert_eq!(count(&pool).await, 2, "acked rows are committed");
    drop(stream);
    collector.stop().await;
}

#[sqlx::test(migrations = false)]
async fn invalid_result_is_rejected_naming_the_field(pool: PgPool) {
    let collector = spawn_collector(pool.clone()).await;
    let mut stream = open_stream(collector.grpc_addr, "agent-a", "eu-west").await;
    let mut bad = result(5, 200);
    bad.dialed_addr = "not-an-address".into();
    stream.send_batch(1, vec![result(4, 200), bad]).await;
    let status = stream.next_ack(Duration::from_secs(10)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("seq 5"), "{}", status.message());
    assert!(
        status.message().contains("dialed_addr"),
        "{}",
        status.message()
    );
    assert_eq!(count(&pool).await, 0, "a rejected batch stores nothing");
    drop(stream);
    collector.stop().await;
}

#[sqlx::test(migrations = false)]
async fn batch_spanning_days_lands_in_daily_partitions(pool: PgPool) {
    let collector = spawn_collector(pool.clone()).await;
    let mut stream = open_stream(collector.grpc_addr, "agent-a", "eu-west").await;
    let mut old = result(1, 200);
    // Ten days ago: no partition exists yet; the collector creates it.
    old.started_at.as_mut().unwrap().seconds -= 10 * 86_400;
    stream.send_batch(1, vec![old, result(2, 200)]).await;
    let ack = stream.next_ack(Duration::from_secs(10)).await.unwrap();
    assert_eq!(ack.inserted, 2);
    let partitions: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT tableoid::regclass::text FROM probe_results ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(partitions.len(), 2, "{partitions:?}");
    assert!(
        partitions.iter().all(|p| p.starts_with("probe_results_p")),
        "{partitions:?}"
    );
    drop(stream);
    collector.stop().await;
}
