//! Nothing dies silently, with real processes: a component that panics is
//! logged at ERROR by name, made again with backoff and reported by
//! `/healthz` and the metrics; `/healthz` answers within a health
//! checker's timeout even while PostgreSQL is down.

use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::PgPool;

use crate::process::{start_collector_env, terminate};

const DETECTOR: &str = "[detector]\ninterval = \"200ms\"\nwindow = \"10s\"\n";

/// `/healthz` as a health checker with a 3 s timeout sees it.
async fn healthz(http: std::net::SocketAddr) -> Result<(u16, Value), reqwest::Error> {
    vantage_service::install_crypto_provider();
    let response = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()?
        .get(format!("http://{http}/healthz"))
        .send()
        .await?;
    let code = response.status().as_u16();
    Ok((code, response.json().await?))
}

async fn wait_for_health(
    http: std::net::SocketAddr,
    what: &str,
    until: impl Fn(u16, &Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((code, body)) = healthz(http).await
            && until(code, &body)
        {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {:?}",
            healthz(http).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn passes(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM detection_runs")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test]
async fn a_panicking_detector_is_logged_restarted_and_reported(pool: PgPool) {
    let dir = tempfile::tempdir().unwrap();
    let (mut collector, http) = start_collector_env(
        &pool,
        dir.path(),
        "collector",
        DETECTOR,
        &[(
            "FAILPOINTS",
            "detector-pass=2*panic(injected detector fault)",
        )],
    );
    // Two panics (1 s and 2 s of backoff), then passes again.
    let body = wait_for_health(http, "healthy after two restarts", |code, body| {
        code == 200 && body["components"]["detector"]["restarts"] == 2
    })
    .await;
    let detector = &body["components"]["detector"];
    assert_eq!(detector["state"], "running");
    assert!(
        detector["last_error"]
            .as_str()
            .unwrap()
            .contains("panicked: injected detector fault"),
        "{body}"
    );
    for component in ["grpc", "http", "detector", "alerter", "partitions"] {
        assert_eq!(
            body["components"][component]["alive"], true,
            "{component}: {body}"
        );
    }
    assert_eq!(body["database"]["ok"], true);
    let deadline = Instant::now() + Duration::from_secs(10);
    while passes(&pool).await == 0 {
        assert!(
            Instant::now() < deadline,
            "the restarted detector ran no pass"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = reqwest::get(format!("http://{http}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("vantage_component_restarts_total{component=\"detector\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("vantage_component_last_success_timestamp_seconds{component=\"detector\"}")
    );
    assert!(terminate(&mut collector.0, Duration::from_secs(15)).success());
    let log = std::fs::read_to_string(dir.path().join("collector.log")).unwrap();
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("Component detector panicked"))
        .collect();
    assert_eq!(errors.len(), 2, "{log}");
}

#[sqlx::test]
async fn a_detector_that_keeps_failing_turns_healthz_503_naming_it(pool: PgPool) {
    let dir = tempfile::tempdir().unwrap();
    let (mut collector, http) = start_collector_env(
        &pool,
        dir.path(),
        "collector",
        DETECTOR,
        &[("FAILPOINTS", "detector-pass=panic(always)")],
    );
    let body = wait_for_health(http, "503 naming the detector", |code, body| {
        code == 503 && body["components"]["detector"]["restarts"].as_u64() >= Some(1)
    })
    .await;
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["components"]["detector"]["alive"], false, "{body}");
    assert_eq!(body["components"]["alerter"]["alive"], true, "{body}");
    assert_eq!(body["database"]["ok"], true, "{body}");
    assert_eq!(passes(&pool).await, 0);
    // The rest of the collector keeps serving and stops cleanly.
    assert!(terminate(&mut collector.0, Duration::from_secs(15)).success());
}

#[sqlx::test(migrations = false)]
async fn healthz_answers_503_within_a_checkers_timeout_while_postgres_is_down(pool: PgPool) {
    use vantage_testkit::cluster::{PrivateCluster, find_server_binaries};
    let _ = pool;
    let bin = find_server_binaries().expect("PostgreSQL server binaries");
    let cluster = PrivateCluster::start(bin).unwrap();
    let private = PgPool::connect(&cluster.url()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (mut collector, http) =
        start_collector_env(&private, dir.path(), "collector", DETECTOR, &[]);
    private.close().await;
    wait_for_health(http, "healthy", |code, _| code == 200).await;

    cluster.kill_server().unwrap();
    // Each answer comes within the checker's 3 s (the database check gives
    // up after 500 ms), says the database is the problem, and is a 503.
    for _ in 0..5 {
        let (code, body) = healthz(http).await.expect("an answer within 3 s");
        if code == 503 {
            assert_eq!(body["database"]["ok"], false, "{body}");
            assert!(body["database"]["error"].is_string(), "{body}");
        }
    }
    wait_for_health(http, "503 with PostgreSQL down", |code, body| {
        code == 503 && body["database"]["ok"] == false
    })
    .await;
    // Every pass fails meanwhile, and the detector says why.
    let body = wait_for_health(http, "the detector's failing passes", |_, body| {
        body["components"]["detector"]["last_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("detection pass failed: "))
    })
    .await;
    assert_eq!(body["components"]["detector"]["restarts"], 0, "{body}");

    cluster.restart_server().unwrap();
    wait_for_health(http, "healthy again", |code, _| code == 200).await;
    assert!(terminate(&mut collector.0, Duration::from_secs(15)).success());
    cluster.stop().unwrap();
}
