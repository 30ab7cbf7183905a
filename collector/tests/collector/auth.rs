//! Only enrolled agents get in, each only as itself.

use std::process::Command;
use std::time::Duration;

use sqlx::PgPool;
use tonic::Code;
use vantage_collector::store::Store;

use crate::{
    database_url, open_stream, result, spawn_collector, try_open_stream, try_open_stream_authorized,
};

async fn rows_of(pool: &PgPool, agent: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM probe_results WHERE agent_id = $1")
        .bind(agent)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrations = false)]
async fn wrong_or_missing_token_is_unauthenticated(pool: PgPool) {
    let collector = spawn_collector(pool.clone()).await;
    collector.enrol("agent-a", "eu-west").await;
    let status = try_open_stream(collector.grpc_addr, "vantage_not-a-token", "agent-a")
        .await
        .err()
        .expect("refused");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("unknown token"), "{status:?}");

    let status = try_open_stream(collector.grpc_addr, "", "agent-a")
        .await
        .err()
        .expect("refused");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    collector.stop().await;
}

/// The scheme is case-insensitive (RFC 9110); the token is not.
#[sqlx::test(migrations = false)]
async fn the_bearer_scheme_is_accepted_in_any_case(pool: PgPool) {
    let collector = spawn_collector(pool.clone()).await;
    let token = collector.enrol("agent-a", "eu-west").await;
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let mut stream = try_open_stream_authorized(
            collector.grpc_addr,
            &format!("{scheme} {token}"),
            "agent-a",
        )
        .await
        .unwrap_or_else(|s| panic!("{scheme}: {s:?}"));
        stream.send_batch(1, vec![result(1, 200)]).await;
        stream.next_ack(Duration::from_secs(10)).await.unwrap();
    }
    let status = try_open_stream_authorized(
        collector.grpc_addr,
        &format!("bearer {}", token.to_uppercase()),
        "agent-a",
    )
    .await
    .err()
    .expect("a token differing in case is another token");
    assert_eq!(status.code(), Code::Unauthenticated);
    collector.stop().await;
}

#[sqlx::test(migrations = false)]
async fn spoofed_agent_id_is_permission_denied(pool: PgPool) {
    let collector = spawn_collector(pool.clone()).await;
    let token_a = collector.enrol("agent-a", "eu-west").await;
    collector.enrol("agent-b", "us-east").await;
    let status = try_open_stream(collector.grpc_addr, &token_a, "agent-b")
        .await
        .err()
        .expect("refused");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains("belongs to agent \"agent-a\"")
            && status.message().contains("claims \"agent-b\""),
        "{status:?}"
    );
    assert_eq!(rows_of(&pool, "agent-b").await, 0);
    collector.stop().await;
}

#[sqlx::test(migrations = false)]
async fn revoked_token_is_refused_also_on_an_open_stream(pool: PgPool) {
    let collector = spawn_collector(pool.clone()).await;
    let mut stream = open_stream(&collector, "agent-a", "eu-west").await;
    stream.send_batch(1, vec![result(1, 200)]).await;
    stream.next_ack(Duration::from_secs(10)).await.unwrap();

    let store = Store::new(pool.clone());
    assert!(store.revoke_agent("agent-a").await.unwrap());
    stream.send_batch(2, vec![result(2, 200)]).await;
    let status = stream
        .next_ack(Duration::from_secs(10))
        .await
        .expect_err("the open stream is refused at its next batch");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("revoked"), "{status:?}");
    assert_eq!(
        rows_of(&pool, "agent-a").await,
        1,
        "the batch after revocation is rolled back"
    );

    // Its token no longer opens a stream; re-enrolling issues a new one.
    let token = collector.enrol("agent-a", "eu-west").await;
    store.revoke_agent("agent-a").await.unwrap();
    let status = try_open_stream(collector.grpc_addr, &token, "agent-a")
        .await
        .err()
        .expect("refused");
    assert_eq!(status.code(), Code::Unauthenticated);
    collector.stop().await;
}

#[sqlx::test(migrations = false)]
async fn region_comes_from_enrolment_not_from_the_hello(pool: PgPool) {
    let collector = spawn_collector(pool.clone()).await;
    // try_open_stream's Hello claims region "ignored".
    let mut stream = open_stream(&collector, "agent-a", "eu-west").await;
    stream.send_batch(1, vec![result(1, 200)]).await;
    stream.next_ack(Duration::from_secs(10)).await.unwrap();
    let region: String = sqlx::query_scalar("SELECT region FROM probe_results")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(region, "eu-west");
    collector.stop().await;
}

/// `vantage-collector agent add|list|revoke` against the test's database.
#[sqlx::test(migrations = false)]
async fn agent_cli_enrols_lists_and_revokes(pool: PgPool) {
    let url = database_url(&pool);
    let cli = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_vantage-collector"))
            .args(args)
            .env("DATABASE_URL", &url)
            .output()
            .unwrap()
    };
    let added = cli(&["agent", "add", "fra-1", "--region", "eu-central"]);
    assert!(added.status.success(), "{added:?}");
    let token = String::from_utf8(added.stdout).unwrap().trim().to_owned();
    assert!(token.starts_with("vantage_"), "{token}");
    let stored: String =
        sqlx::query_scalar("SELECT token_sha256 FROM agents WHERE agent_id = 'fra-1'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_ne!(stored, token, "only the hash is stored");
    assert_eq!(stored, vantage_collector::auth::token_sha256(&token));

    let listed = String::from_utf8(cli(&["agent", "list"]).stdout).unwrap();
    assert!(
        listed.contains("fra-1") && listed.contains("eu-central") && listed.contains("enrolled"),
        "{listed}"
    );
    assert!(!listed.contains(&token), "list never shows the token");

    let bad = cli(&["agent", "add", "bad id!", "--region", "x"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("invalid agent id"),
        "{bad:?}"
    );

    assert!(cli(&["agent", "revoke", "fra-1"]).status.success());
    let listed = String::from_utf8(cli(&["agent", "list"]).stdout).unwrap();
    assert!(listed.contains("revoked"), "{listed}");
    let again = cli(&["agent", "revoke", "fra-1"]);
    assert!(!again.status.success(), "revoking twice is an error");
}

/// A command that prints a result prints only that on stdout: the token
/// alone, even with logging at info on an already migrated database (a
/// script reads it); logs go to stderr, uncoloured when it is not a
/// terminal, as JSON lines when asked.
#[sqlx::test(migrations = false)]
async fn stdout_carries_only_the_result_and_logs_go_to_stderr(pool: PgPool) {
    let url = database_url(&pool);
    let cli = |args: &[&str], format: &str| {
        Command::new(env!("CARGO_BIN_EXE_vantage-collector"))
            .args(args)
            .env("DATABASE_URL", &url)
            .env("RUST_LOG", "debug")
            .env("VANTAGE_LOG_FORMAT", format)
            .output()
            .unwrap()
    };
    for (i, format) in ["text", "json"].into_iter().enumerate() {
        let id = format!("agent-{i}");
        let added = cli(&["agent", "add", &id, "--region", "eu"], format);
        assert!(added.status.success(), "{added:?}");
        let stdout = String::from_utf8(added.stdout).unwrap();
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 1, "only the token: {stdout:?}");
        assert!(lines[0].starts_with("vantage_"), "{stdout:?}");
        let stderr = String::from_utf8(added.stderr).unwrap();
        assert!(
            !stderr.contains('\u{1b}'),
            "no colours off a terminal: {stderr:?}"
        );
        assert!(
            stderr.contains(&format!("Enrolled agent \"{id}\"")),
            "{stderr}"
        );
        if format == "json" {
            let logged: Vec<serde_json::Value> = stderr
                .lines()
                .filter(|l| l.starts_with('{'))
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            assert!(!logged.is_empty(), "debug logs as JSON: {stderr}");
            assert!(
                logged
                    .iter()
                    .all(|l| l["level"].is_string() && l["timestamp"].is_string())
            );
        }
    }
    let bad = cli(&["agent", "list", "--log-format", "yaml"], "text");
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("yaml"),
        "{bad:?}"
    );
}
