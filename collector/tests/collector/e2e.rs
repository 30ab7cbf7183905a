//! End to end: real agents on two source addresses, a target failing for
//! one of them, detection, and webhooks for opening and resolution.

use std::time::Duration;

use serde_json::Value;
use sqlx::PgPool;
use vantage_collector::demo::{AgentSpec, Scenario, ScenarioTiming};

fn agents() -> Vec<AgentSpec> {
    vec![
        AgentSpec {
            agent_id: "a-healthy".into(),
            region: "eu-west".into(),
            source_ip: "127.0.1.1".parse().unwrap(),
        },
        AgentSpec {
            agent_id: "b-failing".into(),
            region: "us-east".into(),
            source_ip: "127.0.2.1".parse().unwrap(),
        },
    ]
}

fn events<'a>(bodies: &'a [Value], event: &str, dimension: &str, value: &str) -> Vec<&'a Value> {
    bodies
        .iter()
        .filter(|b| b["event"] == event && b["dimension"] == dimension && b["value"] == value)
        .collect()
}

#[sqlx::test(migrations = false)]
async fn failing_prefix_opens_one_incident_and_resolves_once(pool: PgPool) {
    let timing = ScenarioTiming::default();
    let failing = "127.0.2.0/24";
    let scenario = Scenario::start(
        pool.clone(),
        agents(),
        Some(failing.parse().unwrap()),
        &timing,
    )
    .await
    .unwrap();
    let wait = Duration::from_secs(60);

    let opened = scenario
        .wait_for_webhook("incident.opened", "egress_prefix", failing, wait)
        .await
        .expect("an incident opens for the failing prefix");
    assert_eq!(opened["target"], scenario.target_url);
    assert_eq!(opened["kind"], "segment");
    let seg_502 = opened["counts"]["segment"]["status_502"].as_u64().unwrap();
    let seg_probes = opened["counts"]["segment"]["probes"].as_u64().unwrap();
    assert!(
        seg_502 >= timing.min_probes && seg_502 == seg_probes,
        "{opened}"
    );
    assert_eq!(opened["counts"]["rest"]["status_502"], 0);
    assert!(opened["counts"]["rest"]["probes"].as_u64().unwrap() >= timing.min_probes);
    assert_eq!(opened["window_seconds"], timing.window.as_secs());

    scenario.target.set_failing(None);
    scenario
        .wait_for_webhook("incident.resolved", "egress_prefix", failing, wait)
        .await
        .expect("the incident resolves after the failure stops");
    // Let the detector run a few more times: nothing more may arrive.
    tokio::time::sleep(timing.detector_interval * 4).await;
    let bodies = scenario.webhook.received();
    scenario.stop().await.unwrap();

    assert_eq!(
        events(&bodies, "incident.opened", "egress_prefix", failing).len(),
        1,
        "{bodies:#?}"
    );
    assert_eq!(
        events(&bodies, "incident.resolved", "egress_prefix", failing).len(),
        1,
        "{bodies:#?}"
    );
    assert!(events(&bodies, "incident.opened", "egress_prefix", "127.0.1.0/24").is_empty());
    assert!(events(&bodies, "incident.opened", "global", "*").is_empty());

    let rows: Vec<(String, String, bool)> = sqlx::query_as(
        "SELECT dimension, value, resolved_at IS NOT NULL FROM incidents ORDER BY dimension",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![
            ("egress_prefix".into(), failing.into(), true),
            ("region".into(), "us-east".into(), true),
        ]
    );
}

#[sqlx::test(migrations = false)]
async fn failing_everywhere_is_a_global_incident_not_a_segment(pool: PgPool) {
    let timing = ScenarioTiming::default();
    let scenario = Scenario::start(
        pool.clone(),
        agents(),
        Some("127.0.0.0/8".parse().unwrap()),
        &timing,
    )
    .await
    .unwrap();
    let opened = scenario
        .wait_for_webhook("incident.opened", "global", "*", Duration::from_secs(60))
        .await
        .expect("a global incident opens");
    assert_eq!(opened["kind"], "global");
    let bodies = scenario.webhook.received();
    scenario.stop().await.unwrap();
    assert!(
        bodies.iter().all(|b| b["kind"] == "global"),
        "no segment may be blamed for a global outage: {bodies:#?}"
    );
}
