//! One detector per database, with real processes: two `vantage-collector`
//! processes on one database; one holds the detector lease and runs every
//! pass; when it is killed, the other takes over within two intervals.

use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::process::{Collector, kill9, terminate};

const INTERVAL: Duration = Duration::from_millis(500);

/// Starts a collector with this test's detector settings; returns it and
/// its metrics URL.
fn start_collector(pool: &PgPool, dir: &std::path::Path, name: &str) -> (Collector, String) {
    let extra = format!(
        "[detector]\ninterval = \"{}ms\"\nwindow = \"10s\"\n",
        INTERVAL.as_millis()
    );
    let (child, http) = crate::process::start_collector(pool, dir, name, &extra);
    (child, format!("http://{http}/metrics"))
}

/// The value of an unlabelled metric.
async fn metric(url: &str, name: &str) -> Option<f64> {
    vantage_service::install_crypto_provider();
    let text = reqwest::get(url).await.ok()?.text().await.ok()?;
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

/// The pid in a lease holder name (`host:pid:nonce`).
fn pid_of(runner: &str) -> Option<u32> {
    runner.split(':').nth(1)?.parse().ok()
}

/// The runners of the passes recorded after pass `after`.
async fn runners_since(pool: &PgPool, after: i64) -> Vec<(i64, String)> {
    sqlx::query_as("SELECT id, runner FROM detection_runs WHERE id > $1 ORDER BY id")
        .bind(after)
        .fetch_all(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrations = false)]
async fn two_collectors_run_one_detector_and_the_second_takes_over(pool: PgPool) {
    let store = vantage_collector::store::Store::new(pool.clone());
    store.migrate().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (mut first, first_metrics) = start_collector(&pool, dir.path(), "first");
    // The first collector runs passes before the second starts.
    let deadline = Instant::now() + Duration::from_secs(20);
    while runners_since(&pool, 0).await.is_empty() {
        assert!(Instant::now() < deadline, "no detection pass");
        tokio::time::sleep(INTERVAL).await;
    }
    let (mut second, second_metrics) = start_collector(&pool, dir.path(), "second");
    let before = runners_since(&pool, 0).await.last().unwrap().0;
    tokio::time::sleep(INTERVAL * 10).await;
    let both_up = runners_since(&pool, before).await;
    assert!(both_up.len() >= 4, "passes went on: {both_up:?}");
    assert!(
        both_up.iter().all(|(_, r)| pid_of(r) == Some(first.0.id())),
        "only the first collector ran passes while both were up: {both_up:?}"
    );
    // Operators see who leads in the metrics.
    assert_eq!(
        metric(&first_metrics, "vantage_detector_leader").await,
        Some(1.0)
    );
    assert_eq!(
        metric(&second_metrics, "vantage_detector_leader").await,
        Some(0.0)
    );
    assert!(
        metric(&first_metrics, "vantage_detector_passes_total")
            .await
            .is_some_and(|n| n >= 4.0)
    );

    // The lease holder dies without releasing: the second takes over once
    // the lease (two intervals) has expired.
    let last = both_up.last().unwrap().0;
    kill9(&mut first.0);
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(20);
    let taken_over = loop {
        let runs = runners_since(&pool, last).await;
        if let Some((_, runner)) = runs.iter().find(|(_, r)| pid_of(r) == Some(second.0.id())) {
            break (killed.elapsed(), runner.clone());
        }
        assert!(Instant::now() < deadline, "no takeover: {runs:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "the second collector ran its first pass {:.2} s after the first was killed \
         (lease = 2 intervals = {:?})",
        taken_over.0.as_secs_f64(),
        INTERVAL * 2
    );
    let holder: String = sqlx::query_scalar("SELECT holder FROM detector_lease")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(holder, taken_over.1);

    // A graceful stop releases the lease at once.
    let status = terminate(&mut second.0, Duration::from_secs(20));
    assert!(status.success(), "{status}");
    let lease: Option<String> = sqlx::query_scalar("SELECT holder FROM detector_lease")
        .fetch_optional(&pool)
        .await
        .unwrap();
    assert_eq!(lease, None, "released at shutdown");
}

#[sqlx::test(migrations = false)]
async fn a_pass_applies_only_under_its_lease_and_on_fresh_state(pool: PgPool) {
    use vantage_collector::detect::plan::Plan;
    use vantage_collector::store::{RunRecord, Store};
    let store = Store::new(pool.clone());
    store.migrate().await.unwrap();
    let now = chrono::Utc::now();
    let run = RunRecord {
        evaluated_at: now,
        window_start: now,
        window_end: now,
        probes: 0,
        duration_ms: 0.0,
    };
    let lease = chrono::Duration::seconds(30);
    let apply = |holder: &'static str, since: Option<i64>| {
        let (store, run) = (&store, &run);
        async move {
            store
                .apply_pass(&Plan::default(), run, now, holder, lease, since)
                .await
                .unwrap()
                .is_some()
        }
    };
    let expire = || async {
        sqlx::query("UPDATE detector_lease SET expires_at = now() - interval '1 second'")
            .execute(&pool)
            .await
            .unwrap();
    };
    // A pass that outlasted its lease still applies when nobody took over.
    assert!(store.renew_detector_lease("a", lease).await.unwrap());
    expire().await;
    assert!(
        apply("a", None).await,
        "an expired lease nobody took is renewed"
    );
    // Once another holder took the lease, the pass is discarded.
    expire().await;
    assert!(store.renew_detector_lease("b", lease).await.unwrap());
    let since = store.last_run_id().await.unwrap();
    assert!(!apply("a", since).await, "b holds the lease");
    // b runs a pass and stops; a's plan, made before, is stale.
    assert!(apply("b", since).await);
    store.release_detector_lease("b").await.unwrap();
    assert!(!apply("a", since).await, "b recorded a pass since a began");
    let after = store.last_run_id().await.unwrap();
    assert!(apply("a", after).await, "a fresh plan applies");
}
