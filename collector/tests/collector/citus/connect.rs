//! Reaching a Citus coordinator as a new user does: its default URL (no
//! `sslmode`), after `CREATE EXTENSION citus` turned TLS on with its
//! self-signed X.509 version 1 certificate (`citus-auto-ssl`).

use std::process::Command;

use sqlx::Connection;
use sqlx::postgres::PgConnection;

use super::citus_database;

#[tokio::test]
async fn migrate_runs_on_a_citus_coordinator_with_the_default_url() {
    let url = citus_database("connect_default_url").await;
    let mut db = PgConnection::connect(&url).await.unwrap();
    let (ssl, version): (bool, String) =
        sqlx::query_as("SELECT s.ssl, s.version FROM pg_stat_ssl s WHERE s.pid = pg_backend_pid()")
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert!(ssl, "Citus turned TLS on, and the default URL uses it");
    assert!(version.starts_with("TLS"), "{version}");

    let out = Command::new(env!("CARGO_BIN_EXE_vantage-collector"))
        .arg("migrate")
        .env("DATABASE_URL", &url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "migrate on the coordinator: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every migration the binary embeds, applied and successful: compared
    // by version, so a mismatch names the missing or extra ones.
    let mut applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(&mut db)
            .await
            .unwrap();
    applied.sort_unstable();
    let mut embedded: Vec<i64> = vantage_collector::store::MIGRATOR
        .iter()
        .map(|m| m.version)
        .collect();
    embedded.sort_unstable();
    assert_eq!(
        applied,
        embedded,
        "migrations applied on the coordinator; migrate printed: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
