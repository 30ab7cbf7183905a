//! What `migrate` refuses on Citus, with the real binary: a coordinator
//! with no worker, and a registered worker that does not answer. Neither
//! gets a table: the cluster is checked before the first migration.

use std::process::{Command, Output};

use sqlx::Connection;
use sqlx::postgres::PgConnection;
use vantage_testkit::citus::{CitusCluster, create_database};

fn migrate(url: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vantage-collector"))
        .arg("migrate")
        .env("DATABASE_URL", url)
        .output()
        .unwrap()
}

/// Whether the database at `url` has a `probe_results` table.
async fn has_results_table(url: &str) -> bool {
    let mut db = PgConnection::connect(url).await.unwrap();
    sqlx::query_scalar("SELECT to_regclass('probe_results') IS NOT NULL")
        .fetch_one(&mut db)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_coordinator_without_workers_is_refused() {
    // The shared cluster's coordinator, with a database whose Citus knows
    // no worker.
    let coordinator = tokio::task::spawn_blocking(super::cluster_ports)
        .await
        .unwrap()[0];
    let url = create_database(&[coordinator], "refusal_no_worker")
        .await
        .unwrap();
    let out = migrate(&url);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "migrate succeeded without workers");
    assert!(
        stderr.contains("has no worker") && stderr.contains("citus_add_node"),
        "{stderr}"
    );
    assert!(!has_results_table(&url).await);
}

#[tokio::test]
async fn a_worker_that_does_not_answer_is_refused_by_name() {
    let mut cluster = tokio::task::spawn_blocking(|| CitusCluster::start(1))
        .await
        .unwrap()
        .unwrap();
    let url = cluster.database("refusal_worker_down").await.unwrap();
    let worker = cluster.workers.pop().unwrap();
    let port = worker.port();
    worker.stop().unwrap();
    let out = migrate(&url);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "migrate succeeded with its worker down"
    );
    assert!(
        stderr.contains("not answering") && stderr.contains(&format!("127.0.0.1:{port}")),
        "{stderr}"
    );
    assert!(!has_results_table(&url).await);
    cluster.stop().unwrap();
}
