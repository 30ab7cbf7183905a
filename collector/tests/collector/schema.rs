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
         WHERE i.inhparent = 'result_rows'::regclass
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
         WHERE i.inhparent = 'result_rows'::regclass
           AND c.relname >= 'result_rows_p' || to_char(now() AT TIME ZONE 'UTC', 'YYYYMMDD')",
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
        allowed_by(&pool, "result_rows_outcome_check").await,
        declared
    );
}

/// Every vocabulary the collector declares (`vocabulary!`) against the
/// `CHECK` that holds its column: a value on one side only fails here, not
/// at an insert.
#[sqlx::test(migrations = false)]
async fn the_database_allows_exactly_the_declared_vocabularies(pool: PgPool) {
    use vantage_collector::detect::Pattern;
    use vantage_collector::detect::records::{FaultSide, IncidentKind, IncidentScope};
    use vantage_collector::store::{CheckState, DeliveryState, EventKind, PathProtocol, Purpose};
    fn texts<T: Copy>(all: &[T], text: fn(T) -> &'static str) -> Vec<&'static str> {
        let mut texts: Vec<&str> = all.iter().map(|v| text(*v)).collect();
        texts.sort_unstable();
        texts
    }
    let stored_events: Vec<EventKind> = EventKind::ALL
        .iter()
        .copied()
        .filter(|e| e.is_stored())
        .collect();
    let vocabularies = [
        (
            "incidents_kind_check",
            texts(IncidentKind::ALL, IncidentKind::as_str),
        ),
        (
            "incidents_scope_check",
            texts(IncidentScope::ALL, IncidentScope::as_str),
        ),
        (
            "incidents_fault_side_check",
            texts(FaultSide::ALL, FaultSide::as_str),
        ),
        (
            "incidents_pattern_check",
            texts(Pattern::ALL, Pattern::as_str),
        ),
        (
            "incident_events_event_check",
            texts(&stored_events, EventKind::as_str),
        ),
        (
            "notification_deliveries_state_check",
            texts(DeliveryState::ALL, DeliveryState::as_str),
        ),
        (
            "probe_requests_purpose_check",
            texts(Purpose::ALL, Purpose::as_str),
        ),
        (
            "agent_checks_state_check",
            texts(CheckState::ALL, CheckState::as_str),
        ),
        (
            "path_results_protocol_check",
            texts(PathProtocol::ALL, PathProtocol::as_str),
        ),
    ];
    for (constraint, declared) in vocabularies {
        assert_eq!(
            allowed_by(&pool, constraint).await,
            declared,
            "{constraint}"
        );
    }
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

/// The headers a result's context keeps (`store::CONTEXT_HEADERS`) are
/// those the database's `result_context_header_names()` names: the SQL
/// writer (the view's trigger) splits headers as the collector does.
#[sqlx::test(migrations = false)]
async fn the_context_headers_are_the_databases(pool: PgPool) {
    vantage_collector::store::Store::new(pool.clone())
        .migrate()
        .await
        .unwrap();
    let names: Vec<String> = sqlx::query_scalar("SELECT unnest(result_context_header_names())")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(names, vantage_collector::store::CONTEXT_HEADERS);
}

/// The migration that splits results into contexts and rows: results
/// stored before it read exactly the same through `probe_results` after
/// it (every column, every row, the operator views over them), the view
/// keeps the table's columns in their order, and a row inserted into the
/// view by SQL reads back as inserted.
#[sqlx::test(migrations = false)]
async fn results_stored_before_the_dictionary_read_the_same_after_it(pool: PgPool) {
    let migrator = &vantage_collector::store::MIGRATOR;
    migrator.run_to(20261208000001, &pool).await.unwrap();
    let before_columns = columns(&pool, "probe_results").await;
    sqlx::query(
        "SELECT ensure_probe_results_partition(current_date - d) FROM generate_series(0, 1) d",
    )
    .execute(&pool)
    .await
    .unwrap();
    // Every field filled on some rows, empty on others; two days; headers
    // of both kinds; a redirect; TTLs.
    sqlx::query(
        "INSERT INTO probe_results (agent_id, seq, started_at, region, check_name, url, method,
             outcome, message, http_status, http_version, resolver, resolved_ips, resolved_ttls,
             dialed_ip, dialed_port, local_ip, egress_ip, dns_us, connect_us, tls_us, ttfb_us,
             total_us, headers, vantage, proxy, proxy_status, dns_rcode, resolver_egress_ip,
             resolver_nsid, resolver_identity_error, echo_ip, proxy_us, transfer_us,
             tls_version, tls_alpn, tls_cipher, cert_subject, cert_issuer, cert_not_after,
             body_bytes, body_sha256, body_truncated, gateway, edge_location, hops,
             interval_ms, proxy_ip, check_version, request_id)
         SELECT 'agent-' || (n % 3), n, now() - (n % 2) * interval '1 day' - n * interval '1 s',
             'eu-' || (n % 2), 'check-' || (n % 4), 'https://t' || (n % 4) || '.test/',
             'GET', CASE WHEN n % 5 = 0 THEN 'http' ELSE 'ok' END,
             CASE WHEN n % 5 = 0 THEN 'unexpected status 502' ELSE '' END,
             CASE WHEN n % 7 = 0 THEN NULL WHEN n % 5 = 0 THEN 502 ELSE 200 END,
             'HTTP/1.1', 'udp://127.0.0.53:53', '{10.1.0.1,fd00::1}', ARRAY[300 - n, 60],
             '10.1.0.1', 443, '127.0.2.1', '127.0.2.1', n * 10, n * 20, NULL, n * 40,
             CASE WHEN n = 1 THEN 3000000000 ELSE n * 50 END,
             jsonb_build_object('server', 'nginx', 'cf-ray', 'ray-' || n, 'content-length',
                                n::text),
             CASE WHEN n % 2 = 0 THEN 'direct' ELSE 'proxy-a' END,
             CASE WHEN n % 2 = 0 THEN NULL ELSE 'http://127.0.0.9:3128' END,
             CASE WHEN n % 2 = 0 THEN NULL ELSE 200 END, 'NOERROR', '127.0.0.53', 'ns1',
             NULL, '127.0.2.1', n, n * 2, 'TLSv1_3', 'h2', 'TLS13_AES_128_GCM_SHA256',
             'CN=t.test', 'CN=CA', '2027-01-01T00:00:00Z', 1000 + n,
             CASE WHEN n % 3 = 0 THEN NULL ELSE md5(n::text) || md5(n::text) END, n % 9 = 0,
             CASE WHEN n % 5 = 0 THEN 'nginx' END, NULL,
             CASE WHEN n % 4 = 0 THEN '[{\"status\": 301, \"location\": \"/b\"}]'::jsonb
                  ELSE '[]' END,
             30000, NULL, CASE WHEN n % 2 = 0 THEN 7 END, NULLIF(n % 6, 0)
         FROM generate_series(1, 60) n",
    )
    .execute(&pool)
    .await
    .unwrap();
    let read = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, serde_json::Value>(sql)
                .fetch_all(&pool)
                .await
                .unwrap()
        }
    };
    const ALL: &str = "SELECT to_jsonb(p) - 'total_us' FROM probe_results p
                       ORDER BY agent_id, seq";
    let rows_before = read(ALL).await;
    let latest_before =
        read("SELECT to_jsonb(v) - 'age' FROM v_latest_by_vantage v ORDER BY 1::text").await;
    assert_eq!(rows_before.len(), 60);

    migrator.run_to(20261209000001, &pool).await.unwrap();
    assert_eq!(columns(&pool, "probe_results").await, before_columns);
    assert_eq!(read(ALL).await, rows_before);
    assert_eq!(
        read("SELECT to_jsonb(v) - 'age' FROM v_latest_by_vantage v ORDER BY 1::text").await,
        latest_before
    );
    // The one phase over 2^31-1 µs is kept at the most a row holds.
    let totals: Vec<i64> = sqlx::query_scalar(
        "SELECT total_us FROM probe_results WHERE seq <= 2 ORDER BY agent_id, seq",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(totals, [2_147_483_647, 100]);
    // Fewer contexts than results: what repeats is stored once.
    let contexts: i64 = sqlx::query_scalar("SELECT count(*) FROM result_contexts")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(contexts < 60, "{contexts} contexts for 60 results");

    // A row inserted into the view reads back as inserted.
    let inserted: serde_json::Value = sqlx::query_scalar(
        "INSERT INTO probe_results (agent_id, seq, started_at, region, check_name, url, method,
             outcome, headers, resolved_ips, resolved_ttls, body_sha256)
         VALUES ('agent-9', 1, now(), 'eu', 'c', 'https://x.test/', 'GET', 'ok',
                 '{\"server\": \"caddy\", \"x-request-id\": \"r1\"}', '{10.0.0.1}', '{30}',
                 'ab')
         RETURNING to_jsonb(probe_results.*) - 'received_at'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let stored: serde_json::Value = sqlx::query_scalar(
        "SELECT to_jsonb(p) - 'received_at' FROM probe_results p WHERE agent_id = 'agent-9'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        stored["headers"],
        serde_json::json!({"server": "caddy", "x-request-id": "r1"})
    );
    assert_eq!(stored["message"], "");
    assert_eq!(stored["hops"], serde_json::json!([]));
    assert_eq!(stored["vantage"], "direct");
    assert_eq!(stored["body_sha256"], "ab");
    assert_eq!(inserted["url"], stored["url"]);
}

/// The probe options' migration appends `tls_insecure` to
/// `probe_results` (false for every result stored before it) and leaves
/// every other column where it was.
#[sqlx::test(migrations = false)]
async fn tls_insecure_is_appended_to_probe_results_false_for_earlier_results(pool: PgPool) {
    let migrator = &vantage_collector::store::MIGRATOR;
    migrator.run_to(20261209000001, &pool).await.unwrap();
    let before = columns(&pool, "probe_results").await;
    sqlx::query("SELECT ensure_result_rows_partition(current_date)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO probe_results (agent_id, seq, started_at, region, check_name, url, method,
             outcome)
         VALUES ('a', 1, now(), 'eu', 'c', 'https://t.test/', 'GET', 'ok')",
    )
    .execute(&pool)
    .await
    .unwrap();
    migrator.run(&pool).await.unwrap();
    let mut expected = before;
    expected.push("tls_insecure".to_owned());
    assert_eq!(columns(&pool, "probe_results").await, expected);
    let insecure: Vec<bool> = sqlx::query_scalar("SELECT tls_insecure FROM probe_results")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(insecure, [false]);
}

/// The collector's one declaration of each result column is the
/// database's: the columns a batch COPYs into `result_rows` (the table's
/// own default fills `received_at`), and those a context writes into
/// `result_contexts`.
#[sqlx::test(migrations = false)]
async fn the_collectors_result_columns_are_the_tables(pool: PgPool) {
    vantage_collector::store::Store::new(pool.clone())
        .migrate()
        .await
        .unwrap();
    let sorted = |mut v: Vec<String>| {
        v.sort_unstable();
        v
    };
    let mut rows = columns(&pool, "result_rows").await;
    rows.retain(|c| c != "received_at");
    let declared: Vec<String> = vantage_collector::store::RESULT_ROW_COLUMNS
        .iter()
        .map(|c| (*c).to_owned())
        .collect();
    assert_eq!(sorted(rows), sorted(declared));
    assert_eq!(
        sorted(columns(&pool, "result_contexts").await),
        sorted(vantage_collector::store::context_columns())
    );
}
