//! Two collector processes on one database, and an agent given both
//! (`endpoints`): when its collector is killed mid-stream it moves to the
//! other, and every result it produced is stored exactly once.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use sqlx::PgPool;

use crate::process::{start_collector_at, terminate};
use crate::rig::Fleet;

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
    let mut agent = fleet.start_agent_to("mover", &check, &[fleet.grpc, grpc_b]);
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
    let status = terminate(&mut agent.child, Duration::from_secs(30));
    assert!(status.success(), "{}", fleet.read_log("mover.log"));

    let produced = fleet.target.probe_seqs("mover");
    let seqs: Vec<i64> =
        sqlx::query_scalar("SELECT seq FROM probe_results WHERE agent_id = 'mover' ORDER BY seq")
            .fetch_all(&fleet.pool)
            .await
            .unwrap();
    let distinct: std::collections::BTreeSet<u64> = seqs.iter().map(|s| *s as u64).collect();
    assert_eq!(seqs.len(), distinct.len(), "a result was stored twice");
    let missing: Vec<&u64> = produced.difference(&distinct).collect();
    assert!(
        missing.is_empty(),
        "{} of {} produced results are not stored: {missing:?}\n{}",
        missing.len(),
        produced.len(),
        fleet.read_log("mover.log")
    );
    let gaps: i64 = sqlx::query_scalar("SELECT count(*) FROM delivery_gaps")
        .fetch_one(&fleet.pool)
        .await
        .unwrap();
    assert_eq!(gaps, 0);
}
