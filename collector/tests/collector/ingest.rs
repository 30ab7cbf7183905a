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
    let mut stream = open_stream(&collector, "agent-a", "eu-west").await;
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
                headers->>'server' AS server, vantage, dns_rcode,
                host(resolver_egress_ip) AS resolver_egress_ip, resolver_nsid, transfer_us,
                body_bytes, body_sha256, body_truncated, gateway, proxy, hops::text AS hops
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
    assert_eq!(row.get::<Option<i64>, _>("transfer_us"), Some(80));
    assert_eq!(row.get::<String, _>("vantage"), "direct");
    assert_eq!(
        row.get::<Option<String>, _>("dns_rcode").as_deref(),
        Some("NOERROR")
    );
    assert_eq!(
        row.get::<Option<String>, _>("resolver_egress_ip")
            .as_deref(),
        Some("127.0.0.53")
    );
    assert_eq!(
        row.get::<Option<String>, _>("resolver_nsid").as_deref(),
        Some("ns1.test")
    );
    assert_eq!(row.get::<Option<i64>, _>("body_bytes"), Some(157));
    assert_eq!(
        row.get::<Option<String>, _>("body_sha256"),
        Some("ab".repeat(32))
    );
    assert!(!row.get::<bool, _>("body_truncated"));
    assert_eq!(
        row.get::<Option<String>, _>("gateway").as_deref(),
        Some("nginx")
    );
    assert_eq!(row.get::<Option<String>, _>("proxy"), None);
    assert_eq!(row.get::<String, _>("hops"), "[]");
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
    let mut stream = open_stream(&collector, "agent-a", "eu-west").await;
    let batch = vec![result(10, 200), result(11, 502)];
    stream.send_batch(1, batch.clone()).await;
    stream.next_ack(Duration::from_secs(10)).await.unwrap();
    stream.send_batch(2, batch.clone()).await;
    let ack = stream.next_ack(Duration::from_secs(10)).await.unwrap();
    assert_eq!((ack.inserted, ack.duplicates), (0, 2));
    assert_eq!(count(&pool).await, 2);

    // And over a new stream, as after a reconnect.
    drop(stream);
    let mut again = open_stream(&collector, "agent-a", "eu-west").await;
    assert_eq!(again.welcome.last_committed_seq, 11);
    again.send_batch(1, batch).await;
    let ack = again.next_ack(Duration::from_secs(10)).await.unwrap();
    assert_eq!((ack.inserted, ack.duplicates), (0, 2));
    assert_eq!(count(&pool).await, 2);
    drop(again);
    collector.stop().await;
}

/// A batch holding a row already stored goes in by the insert that skips
/// it, and stores its new rows exactly as the binary COPY of a fresh batch
/// does: every column of the two equal but the key.
#[sqlx::test(migrations = false)]
async fn a_partly_stored_batch_stores_its_new_rows_as_a_fresh_one(pool: PgPool) {
    use vantage_proto::v1 as pb;
    let collector = spawn_collector(pool.clone()).await;
    let mut stream = open_stream(&collector, "agent-a", "eu-west").await;
    // One start time for both sends (`result` takes the clock's second,
    // which may tick between them): the resend is the same row.
    let started_at = result(7, 502).started_at;
    let full = |seq: u64| {
        let mut r = result(seq, 502);
        r.started_at = started_at;
        r.vantage = "vpn-ams".into();
        r.region = "eu-north".into();
        r.proxy = "http://127.0.0.9:3128".into();
        r.tls = Some(pb::Tls {
            version: "TLSv1.3".into(),
            alpn: "h2".into(),
            cipher: "TLS13_AES_128_GCM_SHA256".into(),
            cert_subject: "CN=shop.test".into(),
            cert_issuer: "CN=Vantage Test CA".into(),
            cert_not_after: Some(prost_types::Timestamp {
                seconds: 1_900_000_000,
                nanos: 0,
            }),
        });
        r.hops = vec![pb::Hop {
            url: "http://shop.test/".into(),
            status: Some(301),
            dialed_addr: "[::1]:80".into(),
            timings: Some(pb::Timings {
                connect_us: Some(300),
                ..Default::default()
            }),
        }];
        r
    };
    stream.send_batch(1, vec![full(7)]).await;
    let ack = stream.next_ack(Duration::from_secs(10)).await.unwrap();
    assert_eq!((ack.inserted, ack.duplicates), (1, 0));
    stream.send_batch(2, vec![full(7), full(8)]).await;
    let ack = stream.next_ack(Duration::from_secs(10)).await.unwrap();
    assert_eq!((ack.inserted, ack.duplicates), (1, 1));
    assert_eq!(count(&pool).await, 2);
    let rows: Vec<serde_json::Value> = sqlx::query_scalar(
        "SELECT to_jsonb(r) - 'seq' - 'received_at'
         FROM probe_results r ORDER BY seq",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows[0], rows[1]);
    // Every column the agent sent is set, so the comparison covers them.
    let unset: Vec<&String> = rows[0]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, v)| v.is_null())
        .map(|(k, _)| k)
        .collect();
    assert!(unset.len() <= 12, "{unset:?}");
    drop(stream);
    collector.stop().await;
}

#[sqlx::test(migrations = false)]
async fn no_ack_before_commit(pool: PgPool) {
    let collector = spawn_collector(pool.clone()).await;
    let mut stream = open_stream(&collector, "agent-a", "eu-west").await;

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
    let mut stream = open_stream(&collector, "agent-a", "eu-west").await;
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

/// The body's hash is stored as bytes: what is not hexadecimal is refused
/// by name, not stored as something else.
#[sqlx::test(migrations = false)]
async fn a_body_hash_that_is_not_hexadecimal_is_rejected_naming_the_field(pool: PgPool) {
    let collector = spawn_collector(pool.clone()).await;
    let mut stream = open_stream(&collector, "agent-a", "eu-west").await;
    let mut bad = result(1, 200);
    bad.body_sha256 = "not-a-hash".into();
    stream.send_batch(1, vec![bad]).await;
    let status = stream.next_ack(Duration::from_secs(10)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("body_sha256") && status.message().contains("hexadecimal"),
        "{}",
        status.message()
    );
    assert_eq!(count(&pool).await, 0);
    drop(stream);
    collector.stop().await;
}

#[sqlx::test(migrations = false)]
async fn a_probe_round_out_of_range_is_rejected_naming_the_field(pool: PgPool) {
    let collector = spawn_collector(pool.clone()).await;
    let mut stream = open_stream(&collector, "agent-a", "eu-west").await;
    let mut bad = result(1, 200);
    bad.interval_ms = 5;
    stream.send_batch(1, vec![bad]).await;
    let status = stream.next_ack(Duration::from_secs(10)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("interval_ms") && status.message().contains("100..=86400000"),
        "{}",
        status.message()
    );
    drop(stream);
    // A valid round and a proxy address are stored as sent.
    let mut stream = open_stream(&collector, "agent-a", "eu-west").await;
    let mut good = result(1, 200);
    good.interval_ms = 2_000;
    good.proxy = "http://127.0.0.61:3128".into();
    good.proxy_ip = "127.0.0.61".into();
    stream.send_batch(1, vec![good]).await;
    stream.next_ack(Duration::from_secs(10)).await.unwrap();
    let stored: (Option<i32>, Option<String>, Option<String>) = sqlx::query_as(
        "SELECT interval_ms, host(proxy_ip),
                host(probe_egress(echo_ip, local_ip, proxy, proxy_ip, egress_ip))
         FROM probe_results",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        stored,
        (
            Some(2_000),
            Some("127.0.0.61".into()),
            Some("127.0.0.61".into())
        ),
        "the proxy's address is the egress"
    );
    drop(stream);
    collector.stop().await;
}

#[sqlx::test(migrations = false)]
async fn batch_spanning_days_lands_in_daily_partitions(pool: PgPool) {
    let collector = spawn_collector(pool.clone()).await;
    let mut stream = open_stream(&collector, "agent-a", "eu-west").await;
    let mut old = result(1, 200);
    // Three days ago: no partition exists yet; the collector creates it.
    old.started_at.as_mut().unwrap().seconds -= 3 * 86_400;
    stream.send_batch(1, vec![old, result(2, 200)]).await;
    let ack = stream.next_ack(Duration::from_secs(10)).await.unwrap();
    assert_eq!(ack.inserted, 2);
    let partitions: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT tableoid::regclass::text FROM result_rows ORDER BY 1")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(partitions.len(), 2, "{partitions:?}");
    assert!(
        partitions.iter().all(|p| p.starts_with("result_rows_p")),
        "{partitions:?}"
    );
    drop(stream);
    collector.stop().await;
}

#[sqlx::test(migrations = false)]
async fn tls_hops_proxy_and_vantage_region_are_stored(pool: PgPool) {
    use vantage_proto::v1 as pb;
    let collector = spawn_collector(pool.clone()).await;
    let mut stream = open_stream(&collector, "agent-a", "eu-west").await;
    let mut r = result(7, 200);
    r.vantage = "vpn-ams".into();
    r.region = "eu-north".into();
    r.proxy = "socks5://127.0.0.9:1080".into();
    r.tls = Some(pb::Tls {
        version: "TLSv1.3".into(),
        alpn: "h2".into(),
        cipher: "TLS13_AES_128_GCM_SHA256".into(),
        cert_subject: "CN=shop.test".into(),
        cert_issuer: "CN=Vantage Test CA".into(),
        cert_not_after: Some(prost_types::Timestamp {
            seconds: 1_900_000_000,
            nanos: 0,
        }),
    });
    r.hops = vec![
        pb::Hop {
            url: "http://shop.test/".into(),
            status: Some(301),
            dialed_addr: "127.0.0.1:80".into(),
            timings: Some(pb::Timings {
                connect_us: Some(300),
                ..Default::default()
            }),
        },
        pb::Hop {
            url: "https://shop.test/".into(),
            status: Some(200),
            dialed_addr: "127.0.0.1:443".into(),
            timings: None,
        },
    ];
    stream.send_batch(1, vec![r]).await;
    stream.next_ack(Duration::from_secs(10)).await.unwrap();
    let row = sqlx::query(
        "SELECT region, vantage, proxy, tls_version, tls_alpn, tls_cipher, cert_subject,
                cert_issuer, extract(epoch FROM cert_not_after)::bigint AS not_after,
                jsonb_array_length(hops) AS hop_count, hops->0->>'status' AS first_status,
                (hops->0->>'connect_us')::bigint AS first_connect
         FROM probe_results WHERE seq = 7",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        row.get::<String, _>("region"),
        "eu-north",
        "the vantage's region wins"
    );
    assert_eq!(row.get::<String, _>("vantage"), "vpn-ams");
    assert_eq!(
        row.get::<Option<String>, _>("proxy").as_deref(),
        Some("socks5://127.0.0.9:1080")
    );
    assert_eq!(
        row.get::<Option<String>, _>("tls_version").as_deref(),
        Some("TLSv1.3")
    );
    assert_eq!(
        row.get::<Option<String>, _>("tls_alpn").as_deref(),
        Some("h2")
    );
    assert_eq!(
        row.get::<Option<String>, _>("tls_cipher").as_deref(),
        Some("TLS13_AES_128_GCM_SHA256")
    );
    assert_eq!(
        row.get::<Option<String>, _>("cert_subject").as_deref(),
        Some("CN=shop.test")
    );
    assert_eq!(
        row.get::<Option<String>, _>("cert_issuer").as_deref(),
        Some("CN=Vantage Test CA")
    );
    assert_eq!(row.get::<i64, _>("not_after"), 1_900_000_000);
    assert_eq!(row.get::<i32, _>("hop_count"), 2);
    assert_eq!(
        row.get::<Option<String>, _>("first_status").as_deref(),
        Some("301")
    );
    assert_eq!(row.get::<Option<i64>, _>("first_connect"), Some(300));

    let mut bad = result(8, 200);
    bad.hops = vec![pb::Hop {
        url: "http://x.test/".into(),
        status: Some(200),
        dialed_addr: "nowhere".into(),
        timings: None,
    }];
    stream.send_batch(2, vec![bad]).await;
    let status = stream.next_ack(Duration::from_secs(10)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("hops"), "{}", status.message());
    drop(stream);
    collector.stop().await;
}

/// A probe whose certificate went unverified is stored as such, apart
/// from the verified probes of the same check (its own context), and a
/// body-pattern failure is stored with its outcome.
#[sqlx::test(migrations = false)]
async fn an_unverified_handshake_and_a_body_match_are_stored(pool: PgPool) {
    use vantage_proto::v1 as pb;
    let collector = spawn_collector(pool.clone()).await;
    let mut stream = open_stream(&collector, "agent-a", "eu-west").await;
    let verified = result(1, 200);
    let mut insecure = result(2, 200);
    insecure.tls_insecure = true;
    let mut body = result(3, 200);
    body.outcome = pb::Outcome::BodyMatch as i32;
    body.message = "the body matched fail_if_body_matches \"down\" (in the 38 bytes read)".into();
    stream.send_batch(1, vec![verified, insecure, body]).await;
    let ack = stream.next_ack(Duration::from_secs(10)).await.unwrap();
    assert_eq!(ack.inserted, 3);
    let rows: Vec<(i64, bool, String)> =
        sqlx::query_as("SELECT seq, tls_insecure, outcome FROM probe_results ORDER BY seq")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        rows,
        [
            (1, false, "ok".to_owned()),
            (2, true, "ok".to_owned()),
            (3, false, "body_match".to_owned())
        ]
    );
    let contexts: i64 = sqlx::query_scalar("SELECT count(*) FROM result_contexts")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(contexts, 2, "the unverified probe has a context of its own");
}
