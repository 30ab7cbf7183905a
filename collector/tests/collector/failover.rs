//! Two collector processes on one database, and an agent given both
//! (`endpoints`): when its collector is killed mid-stream it moves to the
//! other, and every result it produced is stored exactly once; when the
//! killed one held the detector, the other takes the detector over within
//! two intervals and pages the incident's events: one incident, one page
//! per event, where a page the killed collector sent but had not recorded
//! is sent again with its `webhook-id`, never lost and never a new one.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use vantage_testkit::WebhookReceiver;

use crate::delivery::{assert_exactly_once, audit};
use crate::process::{start_collector_at, terminate_off_runtime};
use crate::rig::{AgentProcess, Fleet};

/// Stops the agent (it drains) and checks that every result it produced
/// is stored once and nothing was recorded lost.
async fn assert_stored_exactly_once(fleet: &Fleet, id: &str, agent: AgentProcess) {
    let status = terminate_off_runtime(agent, Duration::from_secs(30)).await;
    assert!(status.success(), "{}", fleet.read_log(&format!("{id}.log")));
    let audit = audit(&fleet.pool, &fleet.target, id).await;
    assert_exactly_once(&audit, id);
    assert!(audit.gaps.is_empty(), "{:?}", audit.gaps);
}

#[sqlx::test(migrations = false)]
async fn an_agent_moves_to_the_other_collector_and_loses_nothing(pool: PgPool) {
    let mut fleet = Fleet::start(pool, &[("mover", "eu")], "").await;
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let grpc_b = SocketAddr::new(loopback, vantage_testkit::free_port(loopback).unwrap());
    let (_b, _) = start_collector_at(
        &fleet.pool,
        fleet.dir.path(),
        "collector-b",
        grpc_b,
        "",
        &[],
    );
    let check = format!(
        "[[check]]\nname = \"shop\"\nurl = \"{}\"\ninterval = \"200ms\"\ntimeout = \"150ms\"\n",
        fleet.url("/")
    );
    let agent = fleet.start_agent_to("mover", &check, &[fleet.grpc, grpc_b]);
    let stored = "SELECT count(*) FROM probe_results WHERE agent_id = 'mover'";
    fleet
        .wait_for(
            "results through the first collector",
            stored,
            20,
            Duration::from_secs(30),
        )
        .await;
    // Killed mid-stream: batches in flight are not acknowledged.
    fleet.kill_collector();
    let before = fleet
        .wait_for("the count", stored, 0, Duration::from_secs(1))
        .await;
    fleet
        .wait_for(
            "results through the second collector",
            stored,
            before + 20,
            Duration::from_secs(30),
        )
        .await;
    let b_log = fleet.read_log("collector-b.log");
    assert!(
        b_log.contains("Agent connected. agent_id=mover"),
        "the agent never reached the second collector:\n{b_log}"
    );
    assert_stored_exactly_once(&fleet, "mover", agent).await;
}

#[sqlx::test(migrations = false)]
async fn the_detector_and_the_pages_move_with_the_collector_and_page_once(pool: PgPool) {
    vantage_service::install_crypto_provider();
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let receiver = WebhookReceiver::start(loopback).await.unwrap();
    let collector = format!(
        "[detector]\ninterval = \"500ms\"\nwindow = \"10s\"\nresolve_quiet = \"1s\"\n\
         [[sink]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\n\
         timeout = \"1s\"\n",
        receiver.url()
    );
    // The first collector's kill lands where it hurts pages most: after a
    // sink answered and before the answer was recorded (the failpoint
    // drops every record, as the kill would).
    let mut fleet = Fleet::start_env(
        pool,
        &[("mover", "eu")],
        &collector,
        &[("FAILPOINTS", "alert-before-record=return")],
    )
    .await;
    // The first collector leads before the second starts.
    let a_pid = fleet.collector.as_ref().unwrap().0.id();
    let runs_by = |pid: u32| {
        format!("SELECT count(*) FROM detection_runs WHERE split_part(runner, ':', 2) = '{pid}'")
    };
    fleet
        .wait_for(
            "a pass by the first collector",
            &runs_by(a_pid),
            1,
            Duration::from_secs(30),
        )
        .await;
    let grpc_b = SocketAddr::new(loopback, vantage_testkit::free_port(loopback).unwrap());
    let (b, _) = start_collector_at(
        &fleet.pool,
        fleet.dir.path(),
        "collector-b",
        grpc_b,
        &collector,
        &[],
    );
    let b_pid = b.0.id();

    // Two of the agent's four vantages are in the failing /24.
    fleet
        .target
        .set_failing(Some("127.0.2.0/24".parse().unwrap()));
    let vantages: String = [
        ("v1", "127.0.2.1"),
        ("v2", "127.0.2.2"),
        ("v3", "127.0.3.1"),
        ("v4", "127.0.5.1"),
    ]
    .iter()
    .map(|(name, ip)| format!("[[vantage]]\nname = \"{name}\"\nsource_ip = \"{ip}\"\n"))
    .collect();
    let check = format!(
        "{vantages}[[check]]\nname = \"shop\"\nurl = \"{}\"\ninterval = \"250ms\"\ntimeout = \"200ms\"\n",
        fleet.url("/")
    );
    let agent = fleet.start_agent_to("mover", &check, &[fleet.grpc, grpc_b]);
    let opened = receiver
        .wait_for(Duration::from_secs(60), |b| b["event"] == "incident.opened")
        .await
        .unwrap_or_else(|| panic!("no page:\n{}", fleet.read_log("collector.log")));
    assert_eq!(opened["value"], "127.0.2.0/24", "{opened}");

    // The collector the agent streams to, which also holds the detector,
    // is killed mid-stream.
    let holder: String = sqlx::query_scalar("SELECT holder FROM detector_lease")
        .fetch_one(&fleet.pool)
        .await
        .unwrap();
    assert_eq!(holder.split(':').nth(1), Some(a_pid.to_string().as_str()));
    fleet.kill_collector();
    let killed = Instant::now();
    fleet
        .wait_for(
            "a pass by the second collector",
            &runs_by(b_pid),
            1,
            Duration::from_secs(10),
        )
        .await;
    // The lease is two intervals (1 s) from the holder's last pass, and the
    // standby tries when it runs out; measured, not asserted to the
    // millisecond (a loaded machine delays passes): the deadline above
    // bounds it.
    let took_over = killed.elapsed();
    let gap: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM \
           (SELECT min(evaluated_at) FROM detection_runs WHERE split_part(runner, ':', 2) = $2) \
         - (SELECT max(evaluated_at) FROM detection_runs WHERE split_part(runner, ':', 2) = $1))::float8",
    )
    .bind(a_pid.to_string())
    .bind(b_pid.to_string())
    .fetch_one(&fleet.pool)
    .await
    .unwrap();

    // Repaired: the incident resolves, paged by the second collector.
    fleet.target.set_failing(None);
    receiver
        .wait_for(Duration::from_secs(60), |b| {
            b["event"] == "incident.resolved"
        })
        .await
        .unwrap_or_else(|| panic!("no resolution:\n{}", fleet.read_log("collector-b.log")));
    // Time for a doubled page to show up, if there were one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pages: Vec<(String, String, String)> = receiver
        .requests()
        .iter()
        .map(|r| {
            (
                r.body["event"].as_str().unwrap_or("?").to_owned(),
                r.body["incident_id"].to_string(),
                r.headers["webhook-id"].clone(),
            )
        })
        .collect();
    let shown = format!("{pages:#?}");
    // One incident throughout: the new leader continued the tracked
    // failure instead of opening another.
    let incidents: BTreeSet<&str> = pages.iter().map(|p| p.1.as_str()).collect();
    assert_eq!(incidents.len(), 1, "{shown}");
    // One page per event: every request of an event carries its one
    // webhook-id, so a receiver keyed on it (as Standard Webhooks asks)
    // sees each once.
    let mut ids: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (event, _, id) in &pages {
        ids.entry(event.as_str()).or_default().insert(id.as_str());
    }
    assert_eq!(ids.len(), 2, "{shown}");
    assert!(ids.values().all(|i| i.len() == 1), "{shown}");
    // The unrecorded page was sent again by the second collector, not
    // lost; the resolution it recorded went out once.
    let sent = |event: &str| pages.iter().filter(|p| p.0 == event).count();
    assert_eq!(sent("incident.opened"), 2, "{shown}");
    assert_eq!(sent("incident.resolved"), 1, "{shown}");
    let delivered: Vec<(String, String)> = sqlx::query_as(
        "SELECT e.event, d.state FROM notification_deliveries d \
         JOIN incident_events e ON e.id = d.event_id ORDER BY e.id",
    )
    .fetch_all(&fleet.pool)
    .await
    .unwrap();
    assert_eq!(
        delivered,
        [
            ("incident.opened".to_owned(), "delivered".to_owned()),
            ("incident.resolved".to_owned(), "delivered".to_owned())
        ],
        "{shown}"
    );
    println!(
        "the detector moved {:.2} s after its collector was killed; {gap:.2} s \
         (interval 0.5 s) between the two collectors' passes",
        took_over.as_secs_f64()
    );

    assert_stored_exactly_once(&fleet, "mover", agent).await;
}
