//! Two collector processes on one database, and an agent given both
//! (`endpoints`): when its collector is killed mid-stream it moves to the
//! other, and every result it produced is stored exactly once.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use sqlx::PgPool;

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
