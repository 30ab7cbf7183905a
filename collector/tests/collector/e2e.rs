//! End to end: real agents on two source addresses, a target failing for
//! one of them, detection, and webhooks for opening and resolution.

use std::time::Duration;

use serde_json::Value;
use sqlx::PgPool;
use vantage_demo::{AgentSpec, Scenario, ScenarioTiming};

/// Two agents per region on the region's /24, and a third us-east agent
/// on another /24 (the demo's layout).
fn agents() -> Vec<AgentSpec> {
    vantage_demo::demo_agents()
}

fn events<'a>(bodies: &'a [Value], event: &str, dimension: &str, value: &str) -> Vec<&'a Value> {
    bodies
        .iter()
        .filter(|b| b["event"] == event && b["dimension"] == dimension && b["value"] == value)
        .collect()
}

/// vantage, gateway, dns_rcode, resolver egress, resolver NSID, phases
/// and body hash present.
type StoredPath = (
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    bool,
);

#[sqlx::test(migrations = false)]
async fn failing_prefix_opens_one_incident_and_resolves_once(pool: PgPool) {
    failing_prefix_opens_one_incident_and_resolves_once_on(pool).await;
}

/// [`failing_prefix_opens_one_incident_and_resolves_once`] on the database of `pool` (also a Citus coordinator).
pub async fn failing_prefix_opens_one_incident_and_resolves_once_on(pool: PgPool) {
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
    assert_eq!(opened["pattern"], "status");
    // Two agents fail, 127.0.2.1 and .2: the narrowest prefix covering both.
    assert_eq!(opened["narrowed_value"], "127.0.2.0/30");
    let explanation = opened["explanation"].as_str().unwrap();
    // (Whether region us-east is already significant enough to be listed
    // as correlated evidence at the moment of opening depends on how many
    // rounds the busy machine delivered; the detection tests pin that.)
    assert!(
        explanation.contains("from egress prefix 127.0.2.0/24 got 502")
            && explanation.contains("produced by nginx"),
        "{explanation}"
    );
    let seg_502 = opened["counts"]["segment"]["status_502"].as_u64().unwrap();
    let seg_probes = opened["counts"]["segment"]["probes"].as_u64().unwrap();
    assert!(seg_502 >= 2 && seg_502 == seg_probes, "{opened}");
    assert_eq!(opened["counts"]["rest"]["status_502"], 0);
    assert!(opened["counts"]["rest"]["probes"].as_u64().unwrap() >= 2);
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
    // The region is evidence of the prefix's incident, not an incident of
    // its own.
    assert_eq!(rows, vec![("egress_prefix".into(), failing.into(), true)]);

    // The real agents' path identity arrived in its columns.
    let stored: Vec<StoredPath> = sqlx::query_as(
        "SELECT vantage, gateway, dns_rcode, host(resolver_egress_ip), resolver_nsid,
                    connect_us IS NOT NULL AND ttfb_us IS NOT NULL AND transfer_us IS NOT NULL
                    AND body_sha256 IS NOT NULL
             FROM probe_results WHERE http_status = 502",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(!stored.is_empty());
    for row in stored {
        // The resolver saw the failing agent's own source address.
        let resolver_egress = row.3.clone().unwrap_or_default();
        assert!(
            ["127.0.2.1", "127.0.2.2"].contains(&resolver_egress.as_str()),
            "{row:?}"
        );
        assert_eq!(
            row,
            (
                "direct".into(),
                Some("nginx".into()),
                Some("NOERROR".into()),
                Some(resolver_egress),
                Some(vantage_testkit::NSID.into()),
                true
            )
        );
    }
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

/// Polls `probe` every 50 ms until it returns true or `timeout` passes.
async fn eventually<F, Fut>(timeout: Duration, mut probe: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if probe().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[sqlx::test(migrations = false)]
async fn agent_queues_while_collector_is_down_then_delivers_everything_once(pool: PgPool) {
    use std::net::{IpAddr, Ipv4Addr};
    use vantage_testkit::{DnsServer, Target};

    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let target = Target::start(loopback, None).await.unwrap();
    let dns = DnsServer::start(loopback, &[("shop.test", target.addr().ip())])
        .await
        .unwrap();
    // An address nobody listens on yet; the collector will take it later.
    let grpc_addr = std::net::TcpListener::bind((loopback, 0))
        .unwrap()
        .local_addr()
        .unwrap();
    let store = vantage_collector::store::Store::new(pool.clone());
    store.migrate().await.unwrap();
    let token = vantage_collector::enrol::enrol(&store, "late", "eu-west")
        .await
        .unwrap();
    let spool_dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "agent_id = \"late\"\nregion = \"eu-west\"\nsource_ip = \"127.0.4.1\"\n\
         [collector]\nendpoint = \"http://{grpc_addr}\"\ntoken = \"{token}\"\nbatch_size = 5\n\
         [spool]\npath = \"{}\"\nsync_interval = \"50ms\"\n\
         [dns]\nresolvers = [\"udp://{}\"]\n\
         [[check]]\nname = \"shop\"\nurl = \"http://shop.test:{}/\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\n",
        spool_dir.path().join("spool.redb").display(),
        dns.addr(),
        target.addr().port()
    );
    let config =
        vantage_agent::AgentConfig::parse(std::path::Path::new("late.toml"), &toml).unwrap();
    let agent = vantage_agent::App::build(config).unwrap();
    let queue = agent.queue();
    let stop_agent = tokio_util::sync::CancellationToken::new();
    let agent_task = tokio::spawn(agent.run(stop_agent.clone()));

    assert!(
        eventually(Duration::from_secs(20), || async { queue.len() >= 10 }).await,
        "the agent keeps probing and queues while the collector is down"
    );

    let config = vantage_collector::CollectorConfig {
        grpc_listen: grpc_addr,
        ..vantage_collector::CollectorConfig::default()
    };
    let app = vantage_collector::Application::build(config, pool.clone())
        .await
        .unwrap();
    let stop_collector = tokio_util::sync::CancellationToken::new();
    let collector_task = tokio::spawn(app.run(stop_collector.clone()));

    let count = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM probe_results")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    assert!(
        eventually(Duration::from_secs(30), || async { count().await >= 10 }).await,
        "the backlog reaches the database after the collector starts"
    );
    stop_agent.cancel();
    agent_task.await.unwrap().unwrap();
    assert_eq!(
        queue.len(),
        0,
        "everything queued was delivered on shutdown"
    );

    let seqs: Vec<i64> = sqlx::query_scalar("SELECT seq FROM probe_results ORDER BY seq")
        .fetch_all(&pool)
        .await
        .unwrap();
    let first = seqs[0];
    let expected: Vec<i64> = (first..first + seqs.len() as i64).collect();
    assert_eq!(seqs, expected, "no gaps, no duplicates");
    let egress: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT host(egress_ip) FROM probe_results")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        egress,
        vec!["127.0.4.1"],
        "the collector saw the agent's source address"
    );
    stop_collector.cancel();
    collector_task.await.unwrap().unwrap();
}

/// The page that used to be lost: the receiver is down for half a minute
/// when the incident opens (the old alerter gave up after 5 quick tries).
/// Real agents, the real detector; the page arrives once, after the
/// receiver is back, and SQL shows the failed attempts.
#[sqlx::test(migrations = false)]
async fn a_receiver_down_for_half_a_minute_still_gets_the_page_once(pool: PgPool) {
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
    scenario.webhook.set_status(503);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let open: i64 = sqlx::query_scalar("SELECT count(*) FROM incidents")
            .fetch_one(&pool)
            .await
            .unwrap();
        if open > 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no incident opened");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(
        scenario.webhook.attempts() >= 4,
        "retried while down: {}",
        scenario.webhook.attempts()
    );
    assert!(scenario.webhook.received().is_empty());
    scenario.webhook.set_status(204);
    let opened = scenario
        .wait_for_webhook(
            "incident.opened",
            "egress_prefix",
            failing,
            Duration::from_secs(60),
        )
        .await
        .expect("the page arrives once the receiver is back");
    // The receiver answered; the outcome is recorded just after.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (attempts, state) = loop {
        let (attempts, state): (i32, String) = sqlx::query_as(
            "SELECT attempts, state FROM v_notifications WHERE event = 'incident.opened'
               AND incident_id = $1",
        )
        .bind(opened["incident_id"].as_i64().unwrap())
        .fetch_one(&pool)
        .await
        .unwrap();
        if state != "pending" || tokio::time::Instant::now() > deadline {
            break (attempts, state);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(state, "delivered");
    assert!(attempts >= 5, "{attempts} attempts");
    let bodies = scenario.webhook.received();
    assert_eq!(
        events(&bodies, "incident.opened", "egress_prefix", failing).len(),
        1
    );
    scenario.stop().await.unwrap();
}
