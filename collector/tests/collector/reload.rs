//! SIGHUP re-reads the configuration of a running agent and collector,
//! with the real binaries: what can change live changes, what cannot is
//! named in the log, and a broken file changes nothing.

use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::process::hangup;
use crate::rig::Fleet;

/// Waits until `log` of the fleet contains `text` `times` times.
async fn wait_for_log(fleet: &Fleet, log: &str, text: &str, times: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let content = fleet.read_log(log);
        if content.matches(text).count() >= times {
            return content;
        }
        assert!(
            Instant::now() < deadline,
            "{text:?} not in {log}:\n{content}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// (check, vantage) pairs of the results started after `since`.
async fn ran_since(pool: &PgPool, since: chrono::DateTime<chrono::Utc>) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT DISTINCT check_name, vantage FROM probe_results WHERE started_at > $1 ORDER BY 1, 2",
    )
    .bind(since)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Check b, from both vantages, is all that ran in the last 1.5 s.
async fn assert_runs_b_from_both_vantages(fleet: &Fleet, when: &str) {
    let since = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    fleet
        .wait_for(
            when,
            &format!("SELECT count(*) FROM probe_results WHERE started_at > '{since}'"),
            4,
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(
        ran_since(&fleet.pool, since).await,
        [("b".into(), "direct".into()), ("b".into(), "vpn".into())],
        "{when}"
    );
}

fn check(fleet: &Fleet, name: &str) -> String {
    format!(
        "[[check]]\nname = \"{name}\"\nurl = \"{}\"\ninterval = \"300ms\"\ntimeout = \"250ms\"\n",
        fleet.url(&format!("/{name}"))
    )
}

#[sqlx::test(migrations = false)]
async fn sighup_reloads_the_agents_checks_and_vantages_and_refuses_a_broken_file(pool: PgPool) {
    let fleet = Fleet::start(pool, &[("fra-1", "eu-west")], "").await;
    let mut agent = fleet.start_agent("fra-1", "", &check(&fleet, "a"));
    fleet
        .wait_for(
            "first results",
            "SELECT count(*) FROM probe_results WHERE check_name = 'a'",
            2,
            Duration::from_secs(20),
        )
        .await;

    // Another check, a second vantage, and a label (which waits for a
    // restart: it travels in the Hello).
    fleet.write_agent_config(
        "fra-1",
        "[labels]\nteam = \"web\"\n\
         [[vantage]]\nname = \"direct\"\n\
         [[vantage]]\nname = \"vpn\"\nsource_ip = \"127.0.3.1\"\n",
        &check(&fleet, "b"),
    );
    hangup(&agent.child);
    let log = wait_for_log(&fleet, "fra-1.log", "Configuration reloaded.", 1).await;
    assert!(
        log.contains("take effect only at the next restart") && log.contains("labels"),
        "{log}"
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_runs_b_from_both_vantages(&fleet, "after the reload").await;

    // A broken file: refused with its line and key; b keeps running.
    let path = fleet.dir.path().join("fra-1.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace(
            "timeout = \"250ms\"",
            "timeout = \"250ms\"\ntimout = \"1s\"",
        ),
    )
    .unwrap();
    hangup(&agent.child);
    let log = wait_for_log(&fleet, "fra-1.log", "Configuration reload refused", 1).await;
    assert!(log.contains("timout"), "{log}");
    assert_runs_b_from_both_vantages(&fleet, "after the refused reload").await;
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "the agent never restarted"
    );
}

#[sqlx::test(migrations = false)]
async fn sighup_reloads_the_collectors_detector_settings_and_refuses_a_broken_file(pool: PgPool) {
    let mut fleet = Fleet::start(pool, &[], "[detector]\ninterval = \"5m\"\n").await;
    let passes = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM detection_runs")
            .fetch_one(&fleet.pool)
            .await
            .unwrap()
    };
    // Five minutes apart: one pass at start, then none.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let before = passes().await;
    assert!(before <= 1, "{before}");
    let config = fleet.dir.path().join("collector.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let faster = text.replace("interval = \"5m\"", "interval = \"200ms\"");
    let moved = faster.replace("grpc_listen = \"127.0.0.1:", "grpc_listen = \"127.0.0.2:");
    std::fs::write(&config, &moved).unwrap();
    let collector = fleet.collector.take().unwrap();
    hangup(&collector.0);
    let log = wait_for_log(&fleet, "collector.log", "Configuration reloaded.", 1).await;
    assert!(
        log.contains("grpc_listen") && log.contains("next restart"),
        "{log}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = passes().await;
    assert!(
        after >= before + 4,
        "the detector runs at the new interval: {before} → {after}"
    );

    std::fs::write(
        &config,
        faster.replace("[detector]", "[detector]\nwindoww = \"5m\""),
    )
    .unwrap();
    hangup(&collector.0);
    let log = wait_for_log(&fleet, "collector.log", "Configuration reload refused", 1).await;
    assert!(log.contains("windoww"), "{log}");
    vantage_service::install_crypto_provider();
    let http = fleet.collector_http.unwrap();
    let health = reqwest::get(format!("http://{http}/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "still serving");
    fleet.collector = Some(collector);
}
