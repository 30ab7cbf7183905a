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
    assert_eq!(
        columns(&pool, "path_hop_summary").await,
        [
            "agent_id",
            "seq",
            "started_at",
            "ttl",
            "address",
            "best_rtt_us",
            "sent",
            "answered"
        ]
    );
    assert_eq!(
        columns(&pool, "path_divergence").await,
        [
            "request_id",
            "address",
            "ttl",
            "failing_through",
            "failing_traces",
            "healthy_through",
            "healthy_traces",
            "divergent"
        ]
    );
    collector.stop().await;
}

/// The time-range reads (the vantage list, the roll-up) are served by an
/// index on every open day's partition (each is made with its own; a
/// closed day loses it when compacted, see `retention`).
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

/// The texts a CHECK constraint allows, sorted.
async fn allowed_by(pool: &PgPool, constraint: &str) -> Vec<String> {
    vantage_collector::store::Store::new(pool.clone())
        .migrate()
        .await
        .unwrap();
    let check: String = sqlx::query_scalar(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = $1",
    )
    .bind(constraint)
    .fetch_one(pool)
    .await
    .unwrap();
    let mut allowed: Vec<String> = check
        .split('\'')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    allowed.sort_unstable();
    allowed
}

/// The gap reasons are declared once, in the wire contract
/// (`vantage.v1.GapReason`); the database's CHECK on
/// `delivery_gaps.reason` allows exactly their text forms.
#[sqlx::test(migrations = false)]
async fn the_database_allows_exactly_the_declared_gap_reasons(pool: PgPool) {
    let mut declared: Vec<&str> = vantage_proto::v1::GapReason::all()
        .map(|r| r.text())
        .collect();
    declared.sort_unstable();
    assert_eq!(
        allowed_by(&pool, "delivery_gaps_reason_check").await,
        declared
    );
}

/// The outcomes too (`vantage.v1.Outcome`): the CHECK on
/// `probe_results.outcome` allows exactly their text forms, so a new
/// outcome in the contract without a migration fails here, not at ingest.
#[sqlx::test(migrations = false)]
async fn the_database_allows_exactly_the_declared_outcomes(pool: PgPool) {
    let mut declared: Vec<&str> = vantage_proto::v1::Outcome::all()
        .map(|o| o.text())
        .collect();
    declared.sort_unstable();
    assert_eq!(
        allowed_by(&pool, "probe_results_outcome_check").await,
        declared
    );
}

/// An agent's check states (`store::CheckState`): the CHECK on
/// `agent_checks.state` allows exactly their text forms.
#[sqlx::test(migrations = false)]
async fn the_database_allows_exactly_the_declared_check_states(pool: PgPool) {
    let mut declared: Vec<&str> = vantage_collector::store::CheckState::ALL
        .iter()
        .map(|s| s.as_str())
        .collect();
    declared.sort_unstable();
    assert_eq!(
        allowed_by(&pool, "agent_checks_state_check").await,
        declared
    );
}

/// A path trace's end and its probes' replies (`vantage.v1.PathEnd`,
/// `vantage.v1.HopReply`): the CHECKs on `path_results.end_reason` and
/// `path_hops.reply` allow exactly their text forms.
#[sqlx::test(migrations = false)]
async fn the_database_allows_exactly_the_declared_path_ends_and_replies(pool: PgPool) {
    let mut ends: Vec<&str> = vantage_proto::v1::PathEnd::all()
        .map(|e| e.text())
        .collect();
    ends.sort_unstable();
    assert_eq!(
        allowed_by(&pool, "path_results_end_reason_check").await,
        ends
    );
    let mut replies: Vec<&str> = vantage_proto::v1::HopReply::all()
        .map(|r| r.text())
        .collect();
    replies.sort_unstable();
    assert_eq!(allowed_by(&pool, "path_hops_reply_check").await, replies);
}
