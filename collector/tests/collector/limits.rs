//! What one agent may send: batch and message size, rate, timestamps; and
//! the stream protocol's window of batches and gaps.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tonic::Code;
use vantage_collector::CollectorConfig;
use vantage_collector::config::IngestConfig;
use vantage_proto::v1 as pb;

use crate::{open_stream, result, spawn_collector, spawn_collector_with};

fn limited(ingest: IngestConfig) -> CollectorConfig {
    CollectorConfig {
        ingest,
        ..CollectorConfig::default()
    }
}

#[sqlx::test(migrations = false)]
async fn window_of_batches_is_acked_in_order_after_commit(pool: PgPool) {
    let collector = spawn_collector(pool.clone()).await;
    let mut stream = open_stream(&collector, "agent-a", "eu-west").await;
    assert_eq!(stream.welcome.max_batch, 10_000);
    for batch in 0..8u64 {
        let results = (1..=50).map(|i| result(batch * 50 + i, 200)).collect();
        stream.send_batch(batch + 1, results).await;
    }
    for batch in 1..=8u64 {
        let ack = stream.next_ack(Duration::from_secs(10)).await.unwrap();
        assert_eq!(ack.batch_id, batch, "acks come in batch order");
        assert_eq!(ack.max_seq, batch * 50);
        let committed: i64 = sqlx::query_scalar("SELECT count(*) FROM probe_results")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert!(
            committed >= (batch * 50) as i64,
            "ack {batch} before its commit"
        );
    }
    collector.stop().await;
}

#[sqlx::test(migrations = false)]
async fn batch_over_the_limit_is_refused_naming_the_batch(pool: PgPool) {
    let collector = spawn_collector_with(
        pool.clone(),
        limited(IngestConfig {
            max_batch: 10,
            ..IngestConfig::default()
        }),
    )
    .await;
    let mut stream = open_stream(&collector, "agent-a", "eu-west").await;
    assert_eq!(
        stream.welcome.max_batch, 10,
        "agents learn the limit at hello"
    );
    stream
        .send_batch(1, (1..=5).map(|s| result(s, 200)).collect())
        .await;
    stream
        .send_batch(2, (6..=16).map(|s| result(s, 200)).collect())
        .await;
    assert_eq!(
        stream
            .next_ack(Duration::from_secs(10))
            .await
            .unwrap()
            .batch_id,
        1
    );
    let status = stream
        .next_ack(Duration::from_secs(10))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("batch 2: 11 results exceed the limit of 10"),
        "{status:?}"
    );
    assert_eq!(status.metadata().get("vantage-batch-id").unwrap(), "2");
    collector.stop().await;
}

#[sqlx::test(migrations = false)]
async fn oversize_message_is_refused_and_nothing_is_stored(pool: PgPool) {
    let collector = spawn_collector_with(
        pool.clone(),
        limited(IngestConfig {
            max_message_bytes: 64 * 1024,
            ..IngestConfig::default()
        }),
    )
    .await;
    let mut stream = open_stream(&collector, "agent-a", "eu-west").await;
    assert_eq!(stream.welcome.max_message_bytes, 64 * 1024);
    // About 500 bytes each: 1000 results are far above 64 KiB.
    stream
        .send_batch(1, (1..=1000).map(|s| result(s, 200)).collect())
        .await;
    let status = stream
        .next_ack(Duration::from_secs(10))
        .await
        .expect_err("refused");
    assert!(
        matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{status:?}"
    );
    assert!(
        status.message().contains("message length too large"),
        "{status:?}"
    );
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM probe_results")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, 0);
    collector.stop().await;
}

#[sqlx::test(migrations = false)]
async fn results_far_from_the_clock_are_refused_one_by_one_and_recorded(pool: PgPool) {
    let collector = spawn_collector(pool.clone()).await;
    let mut stream = open_stream(&collector, "agent-a", "eu-west").await;
    let mut ancient = result(2, 200);
    ancient.started_at.as_mut().unwrap().seconds -= 30 * 86_400;
    let mut future = result(3, 200);
    future.started_at.as_mut().unwrap().seconds += 3600;
    stream
        .send_batch(1, vec![result(1, 200), ancient, future, result(4, 200)])
        .await;
    let ack = stream.next_ack(Duration::from_secs(10)).await.unwrap();
    assert_eq!((ack.inserted, ack.refused, ack.max_seq), (2, 2, 4));
    let gaps: Vec<(i64, i64, Option<i64>, String)> = sqlx::query_as(
        "SELECT first_seq, last_seq, count, reason FROM delivery_gaps ORDER BY first_seq",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        gaps,
        // Consecutive results refused for one reason are one gap.
        vec![(2, 3, Some(2), "timestamp_skew".to_owned())]
    );
    collector.stop().await;
}

async fn last_seq(pool: &PgPool, agent: &str) -> i64 {
    sqlx::query_scalar("SELECT last_seq FROM agents WHERE agent_id = $1")
        .bind(agent)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// A client holding an agent's token sends the extreme sequence numbers:
/// each is refused and recorded as a gap, the agent's progress does not
/// move, and the real numbering goes on being stored.
#[sqlx::test(migrations = false)]
async fn implausible_sequence_numbers_are_refused_and_cannot_poison_the_agent(pool: PgPool) {
    let collector = spawn_collector(pool.clone()).await;
    let mut forger = open_stream(&collector, "agent-a", "eu-west").await;
    let now_us = chrono::Utc::now().timestamp_micros() as u64;
    let top = i64::MAX as u64;
    forger
        .send_batch(
            1,
            vec![result(now_us, 200), result(top, 200), result(top - 1, 200)],
        )
        .await;
    let ack = forger.next_ack(Duration::from_secs(10)).await.unwrap();
    assert_eq!((ack.inserted, ack.refused), (1, 2));
    // A gap claiming the top of the range is stored, and moves nothing.
    forger
        .outbound
        .send(pb::AgentMessage {
            body: Some(pb::agent_message::Body::Batch(pb::ResultBatch {
                batch_id: 2,
                results: Vec::new(),
                gaps: vec![pb::Gap {
                    first_seq: top - 10,
                    last_seq: top,
                    count: Some(11),
                    reason: "spool_full".into(),
                    detected_at: Some(prost_types::Timestamp {
                        seconds: chrono::Utc::now().timestamp(),
                        nanos: 0,
                    }),
                }],
            })),
        })
        .await
        .unwrap();
    forger.next_ack(Duration::from_secs(10)).await.unwrap();
    let stored: Vec<i64> = sqlx::query_scalar("SELECT seq FROM probe_results")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(stored, [now_us as i64]);
    let gaps: Vec<(i64, String)> =
        sqlx::query_as("SELECT last_seq, reason FROM delivery_gaps ORDER BY first_seq")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        gaps,
        [
            (top as i64, "spool_full".to_owned()),
            (top as i64 - 1, "implausible_seq".to_owned()),
            (top as i64, "implausible_seq".to_owned()),
        ]
    );
    assert_eq!(last_seq(&pool, "agent-a").await, now_us as i64);

    // The real agent, connecting next, learns a plausible number and its
    // results above it are stored.
    let token = collector.enrol("agent-a", "eu-west").await;
    let mut agent = crate::try_open_stream(collector.grpc_addr, &token, "agent-a")
        .await
        .unwrap();
    assert_eq!(agent.welcome.last_committed_seq, now_us);
    agent
        .send_batch(1, vec![result(now_us + 1, 200), result(now_us + 2, 200)])
        .await;
    let ack = agent.next_ack(Duration::from_secs(10)).await.unwrap();
    assert_eq!((ack.inserted, ack.refused), (2, 0));
    collector.stop().await;
}

/// A progress row pushed to the top by a collector that stored forged
/// results (before they were refused) is repaired at the next hello.
#[sqlx::test(migrations = false)]
async fn a_poisoned_progress_row_is_repaired_at_hello(pool: PgPool) {
    let collector = spawn_collector(pool.clone()).await;
    let mut stream = open_stream(&collector, "agent-a", "eu-west").await;
    let now_us = chrono::Utc::now().timestamp_micros() as u64;
    stream.send_batch(1, vec![result(now_us, 200)]).await;
    stream.next_ack(Duration::from_secs(10)).await.unwrap();
    drop(stream);
    sqlx::query("UPDATE agents SET last_seq = $1 WHERE agent_id = 'agent-a'")
        .bind(i64::MAX)
        .execute(&pool)
        .await
        .unwrap();
    let token = collector.enrol("agent-a", "eu-west").await;
    let agent = crate::try_open_stream(collector.grpc_addr, &token, "agent-a")
        .await
        .unwrap();
    assert_eq!(agent.welcome.last_committed_seq, now_us);
    assert_eq!(last_seq(&pool, "agent-a").await, now_us as i64);
    collector.stop().await;
}

#[sqlx::test(migrations = false)]
async fn gaps_reported_by_an_agent_are_stored_once(pool: PgPool) {
    let collector = spawn_collector(pool.clone()).await;
    let mut stream = open_stream(&collector, "agent-a", "eu-west").await;
    let gap = pb::Gap {
        first_seq: 10,
        last_seq: 19,
        count: Some(10),
        reason: "spool_full".into(),
        detected_at: Some(prost_types::Timestamp {
            seconds: chrono::Utc::now().timestamp(),
            nanos: 0,
        }),
    };
    for batch_id in 1..=2 {
        stream
            .outbound
            .send(pb::AgentMessage {
                body: Some(pb::agent_message::Body::Batch(pb::ResultBatch {
                    batch_id,
                    results: vec![result(20, 200)],
                    gaps: vec![gap.clone()],
                })),
            })
            .await
            .unwrap();
        stream.next_ack(Duration::from_secs(10)).await.unwrap();
    }
    let gaps: Vec<(String, i64, i64, Option<i64>, String)> =
        sqlx::query_as("SELECT agent_id, first_seq, last_seq, count, reason FROM v_delivery_gaps")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        gaps,
        vec![(
            "agent-a".to_owned(),
            10,
            19,
            Some(10),
            "spool_full".to_owned()
        )],
        "a resent gap is stored once"
    );
    let last_seq: i64 =
        sqlx::query_scalar("SELECT last_seq FROM agents WHERE agent_id = 'agent-a'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(last_seq, 20);

    let mut bad = gap.clone();
    bad.reason = "cosmic_rays".into();
    stream
        .outbound
        .send(pb::AgentMessage {
            body: Some(pb::agent_message::Body::Batch(pb::ResultBatch {
                batch_id: 3,
                results: vec![],
                gaps: vec![bad],
            })),
        })
        .await
        .unwrap();
    let status = stream
        .next_ack(Duration::from_secs(10))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("field `reason`"), "{status:?}");
    collector.stop().await;
}

/// A flooding agent is slowed down by its own rate limit; another agent's
/// batches are committed meanwhile.
#[sqlx::test(migrations = false)]
async fn a_flood_from_one_agent_does_not_starve_another(pool: PgPool) {
    let collector = spawn_collector_with(
        pool.clone(),
        limited(IngestConfig {
            max_batch: 100,
            max_results_per_second: NonZeroU32::new(200).unwrap(),
            ..IngestConfig::default()
        }),
    )
    .await;
    let mut flood = open_stream(&collector, "flood", "eu-west").await;
    let mut quiet = open_stream(&collector, "quiet", "us-east").await;
    // 3000 results at 200/s: about 15 s of throttling for the flood.
    for batch in 0..30u64 {
        let results = (1..=100).map(|i| result(batch * 100 + i, 502)).collect();
        flood.send_batch(batch + 1, results).await;
    }
    let started = Instant::now();
    for batch in 1..=5u64 {
        quiet.send_batch(batch, vec![result(batch, 200)]).await;
        let ack = quiet.next_ack(Duration::from_secs(10)).await.unwrap();
        assert_eq!(ack.batch_id, batch);
    }
    let quiet_done = started.elapsed();
    let flood_rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM probe_results WHERE agent_id = 'flood'")
            .fetch_one(&pool)
            .await
            .unwrap();
    println!(
        "quiet agent: 5 batches acked in {quiet_done:?}; flood committed so far: {flood_rows} of 3000"
    );
    assert!(
        flood_rows < 3000,
        "the quiet agent finished while the flood was still being throttled"
    );
    // The flood is throttled, not refused: its acks keep coming.
    let ack = flood.next_ack(Duration::from_secs(30)).await.unwrap();
    assert_eq!(ack.batch_id, 1);
    collector.stop().await;
}
