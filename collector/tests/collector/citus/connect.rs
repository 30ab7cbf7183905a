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
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&mut db)
        .await
        .unwrap();
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations"))
        .unwrap()
        .count();
    assert_eq!(applied as usize, files);
}
