//! Managing the fleet from the collector, with real processes: checks
//! applied centrally reach the agents their selectors name, change and
//! stop without an agent restart, and keep running from the agent's own
//! copy while the collector is gone; an agent from before the control
//! plane is sent nothing new.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use sqlx::PgPool;
use vantage_proto::v1 as pb;

use crate::process::terminate;
use crate::rig::{AgentProcess, Fleet};

/// The checks (name, url, version) agent `id` stored results of since
/// `since`.
async fn ran_since(
    pool: &PgPool,
    id: &str,
    since: chrono::DateTime<chrono::Utc>,
) -> BTreeSet<(String, String, Option<i64>)> {
    sqlx::query_as(
        "SELECT DISTINCT check_name, url, check_version FROM probe_results
         WHERE agent_id = $1 AND started_at > $2",
    )
    .bind(id)
    .bind(since)
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

fn set(items: &[(&str, &str, Option<i64>)]) -> BTreeSet<(String, String, Option<i64>)> {
    items
        .iter()
        .map(|(c, u, v)| (c.to_string(), u.to_string(), *v))
        .collect()
}

fn running(agent: &mut AgentProcess) -> bool {
    agent.child.try_wait().unwrap().is_none()
}

#[sqlx::test(migrations = false)]
async fn applied_checks_reach_the_selected_agents_change_live_and_survive_the_collector(
    pool: PgPool,
) {
    let mut fleet = Fleet::start(pool, &[("fra-1", "eu-west"), ("iad-1", "us-east")], "").await;
    let first = format!(
        "[[check]]\nname = \"home\"\nurl = \"{home}\"\ninterval = \"300ms\"\ntimeout = \"250ms\"\n\
         [check.select]\nregions = [\"eu-west\"]\n\
         [[check]]\nname = \"all\"\nurl = \"{all}\"\ninterval = \"300ms\"\ntimeout = \"250ms\"\n",
        home = fleet.url("/home"),
        all = fleet.url("/all"),
    );
    // Agents with no checks of their own: everything comes from the
    // collector.
    let mut fra = fleet.start_agent("fra-1", "[labels]\nteam = \"web\"", "");
    let mut iad = fleet.start_agent("iad-1", "", "");
    let out = fleet.apply(&first).await;
    assert!(out.contains("+ home") && out.contains("+ all"), "{out}");
    let applied_at = chrono::Utc::now();
    // Within one interval (and the time to connect): each agent runs what
    // its selector gives it, naming version 1.
    for id in ["fra-1", "iad-1"] {
        fleet
            .wait_for(
                id,
                &format!(
                    "SELECT count(DISTINCT check_name) FROM probe_results WHERE agent_id = '{id}'"
                ),
                if id == "fra-1" { 2 } else { 1 },
                Duration::from_secs(20),
            )
            .await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        ran_since(&fleet.pool, "fra-1", applied_at).await,
        set(&[
            ("all", &fleet.url("/all"), Some(1)),
            ("home", &fleet.url("/home"), Some(1))
        ])
    );
    assert_eq!(
        ran_since(&fleet.pool, "iad-1", applied_at).await,
        set(&[("all", &fleet.url("/all"), Some(1))])
    );
    let seq_before: i64 =
        sqlx::query_scalar("SELECT max(seq) FROM probe_results WHERE agent_id = 'fra-1'")
            .fetch_one(&fleet.pool)
            .await
            .unwrap();

    // Change one, delete one, add one for one agent by id: the agents
    // follow without a restart.
    let second = format!(
        "[[check]]\nname = \"home\"\nurl = \"{home}\"\ninterval = \"300ms\"\ntimeout = \"250ms\"\n\
         [check.select]\nregions = [\"eu-west\"]\n\
         [[check]]\nname = \"new\"\nurl = \"{new}\"\ninterval = \"300ms\"\ntimeout = \"250ms\"\n\
         [check.select]\nagents = [\"iad-1\"]\n",
        home = fleet.url("/home2"),
        new = fleet.url("/new"),
    );
    let out = fleet.apply(&second).await;
    assert!(
        out.contains("~ home (url)") && out.contains("+ new") && out.contains("- all"),
        "{out}"
    );
    // A round started before the change may still finish: look from a
    // little after it.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let changed_at = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    fleet
        .wait_for(
            "results after the change",
            &format!(
                "SELECT count(*) FROM probe_results WHERE agent_id = 'iad-1' AND started_at > '{changed_at}'"
            ),
            2,
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(
        ran_since(&fleet.pool, "fra-1", changed_at).await,
        set(&[("home", &fleet.url("/home2"), Some(2))])
    );
    assert_eq!(
        ran_since(&fleet.pool, "iad-1", changed_at).await,
        set(&[("new", &fleet.url("/new"), Some(2))])
    );
    assert!(running(&mut fra) && running(&mut iad), "no agent restarted");
    let seq_after: i64 = sqlx::query_scalar(
        "SELECT min(seq) FROM probe_results WHERE agent_id = 'fra-1' AND started_at > $1",
    )
    .bind(changed_at)
    .fetch_one(&fleet.pool)
    .await
    .unwrap();
    assert!(seq_after > seq_before, "sequence numbers go on");
    let gaps: i64 = sqlx::query_scalar("SELECT count(*) FROM delivery_gaps")
        .fetch_one(&fleet.pool)
        .await
        .unwrap();
    assert_eq!(gaps, 0, "nothing lost across the changes");

    // The collector goes away; the agent restarts without it and still
    // runs the set it last received, from its own copy.
    fleet.kill_collector();
    terminate(&mut fra.child, Duration::from_secs(20));
    let kept = std::fs::read_to_string(vantage_agent::central::file_beside(
        &fleet.spool_of("fra-1"),
    ))
    .unwrap();
    assert!(kept.contains("/home2"), "{kept}");
    let seen_before = fleet.target.probe_seqs("fra-1").len();
    let restarted_at = chrono::Utc::now();
    let _fra = fleet.start_agent("fra-1", "[labels]\nteam = \"web\"", "");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen_after = fleet.target.probe_seqs("fra-1").len();
    assert!(
        seen_after >= seen_before + 3,
        "the restarted agent probes without its collector ({seen_before} → {seen_after})\n{}",
        fleet.read_log("fra-1.log")
    );
    // Back again: what it probed meanwhile is delivered, and it was the
    // last set.
    fleet.start_collector("");
    fleet
        .wait_for(
            "results of the restarted agent",
            &format!(
                "SELECT count(*) FROM probe_results WHERE agent_id = 'fra-1' AND started_at > '{restarted_at}'"
            ),
            3,
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(
        ran_since(&fleet.pool, "fra-1", restarted_at).await,
        set(&[("home", &fleet.url("/home2"), Some(2))])
    );
    drop(iad);
}

#[sqlx::test(migrations = false)]
async fn local_checks_keep_working_and_win_a_name_collision(pool: PgPool) {
    let fleet = Fleet::start(pool, &[("fra-1", "eu-west")], "").await;
    let local = format!(
        "[[check]]\nname = \"mine\"\nurl = \"{}\"\ninterval = \"300ms\"\ntimeout = \"250ms\"\n",
        fleet.url("/local")
    );
    let _fra = fleet.start_agent("fra-1", "", &local);
    fleet.wait_for_central_agents(1).await;
    // The agent refuses the central one of the two "mine"s, and says why.
    let (code, out, _) = fleet
        .try_apply(&format!(
            "[[check]]\nname = \"mine\"\nurl = \"{}\"\ninterval = \"300ms\"\ntimeout = \"250ms\"\n\
             [[check]]\nname = \"theirs\"\nurl = \"{}\"\ninterval = \"300ms\"\ntimeout = \"250ms\"\n",
            fleet.url("/central-mine"),
            fleet.url("/theirs"),
        ))
        .await;
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("fra-1: runs theirs v1\n"), "{out}");
    assert!(
        out.contains("fra-1: REFUSED mine v1: a [[check]] of the agent's own config has this name"),
        "{out}"
    );
    fleet
        .wait_for(
            "the central check",
            "SELECT count(*) FROM probe_results WHERE check_name = 'theirs'",
            2,
            Duration::from_secs(20),
        )
        .await;
    let since = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(
        ran_since(&fleet.pool, "fra-1", since).await,
        set(&[
            ("mine", &fleet.url("/local"), None),
            ("theirs", &fleet.url("/theirs"), Some(1))
        ])
    );
    let log = fleet.read_log("fra-1.log");
    assert!(
        log.contains("whose name a [[check]] of this agent's config has"),
        "the collision is logged: {log}"
    );
}

/// Opens a raw stream for `agent_id` announcing `capabilities`.
async fn raw_stream(
    grpc: SocketAddr,
    token: &str,
    agent_id: &str,
    capabilities: Vec<i32>,
) -> (
    tokio::sync::mpsc::Sender<pb::AgentMessage>,
    tonic::Streaming<pb::CollectorMessage>,
) {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = vantage_proto::authenticated_client(channel, token).unwrap();
    let (outbound, rx) = tokio::sync::mpsc::channel(8);
    outbound
        .send(pb::AgentMessage {
            body: Some(pb::agent_message::Body::Hello(pb::Hello {
                agent_id: agent_id.into(),
                version: "0.1.0".into(),
                capabilities,
                ..Default::default()
            })),
        })
        .await
        .unwrap();
    let mut inbound = client
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = inbound.message().await.unwrap().and_then(|m| m.body);
    assert!(
        matches!(first, Some(pb::collector_message::Body::Welcome(_))),
        "{first:?}"
    );
    (outbound, inbound)
}

#[sqlx::test(migrations = false)]
async fn an_agent_that_does_not_announce_the_capability_gets_no_checks(pool: PgPool) {
    let fleet = Fleet::start(pool, &[("old-1", "eu-west"), ("new-1", "eu-west")], "").await;
    let token = |id: &str| {
        fleet
            .tokens
            .iter()
            .find(|(a, _)| a == id)
            .unwrap()
            .1
            .clone()
    };
    fleet
        .apply(&format!(
            "[[check]]\nname = \"home\"\nurl = \"{}\"\n",
            fleet.url("/home")
        ))
        .await;
    let (old_out, mut old_in) = raw_stream(fleet.grpc, &token("old-1"), "old-1", vec![]).await;
    let (_new_out, mut new_in) = raw_stream(
        fleet.grpc,
        &token("new-1"),
        "new-1",
        vec![pb::Capability::CentralChecks as i32],
    )
    .await;
    // The new agent gets its set at once: full first (it may be the set
    // before the apply, if the collector had not yet read the notice),
    // then the change.
    let mut first = true;
    loop {
        let pushed = tokio::time::timeout(Duration::from_secs(10), new_in.message())
            .await
            .expect("a check set within 10 s")
            .unwrap()
            .and_then(|m| m.body);
        let Some(pb::collector_message::Body::Checks(set)) = pushed else {
            panic!("expected a CheckSet, got {pushed:?}");
        };
        assert_eq!(set.full, first, "{set:?}");
        first = false;
        if set.version == 1 {
            assert_eq!(set.checks.len(), 1);
            assert!(set.checks[0].definition_toml.contains("/home"));
            break;
        }
    }
    // …the old one, nothing but the ack of what it sends, even after
    // another change.
    fleet
        .apply(&format!(
            "[[check]]\nname = \"home\"\nurl = \"{}\"\n",
            fleet.url("/home2")
        ))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut result = crate::result(1, 200);
    result.started_at = Some(prost_types::Timestamp {
        seconds: chrono::Utc::now().timestamp(),
        nanos: 0,
    });
    old_out
        .send(pb::AgentMessage {
            body: Some(pb::agent_message::Body::Batch(pb::ResultBatch {
                batch_id: 1,
                results: vec![result],
                gaps: vec![],
            })),
        })
        .await
        .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(10), old_in.message())
        .await
        .unwrap()
        .unwrap()
        .and_then(|m| m.body);
    assert!(
        matches!(reply, Some(pb::collector_message::Body::Ack(ref a)) if a.batch_id == 1 && a.inserted == 1),
        "{reply:?}"
    );
    // And the new one the change.
    let change = tokio::time::timeout(Duration::from_secs(10), new_in.message())
        .await
        .unwrap()
        .unwrap()
        .and_then(|m| m.body);
    assert!(
        matches!(change, Some(pb::collector_message::Body::Checks(ref s)) if !s.full && s.version == 2),
        "{change:?}"
    );
}

/// A central check every agent refuses (a CA file none can read) is
/// reported per agent: `check apply` prints each agent's refusal with its
/// reason and fails, `check list` and `/vantages` show it, and the checks
/// the agents can run run.
#[sqlx::test(migrations = false)]
async fn a_central_check_the_agents_refuse_is_reported_per_agent(pool: PgPool) {
    let fleet = Fleet::start(pool, &[("fra-1", "eu-west"), ("iad-1", "us-east")], "").await;
    let _fra = fleet.start_agent("fra-1", "", "");
    let _iad = fleet.start_agent("iad-1", "", "");
    fleet.wait_for_central_agents(2).await;
    let (code, out, err) = fleet
        .try_apply(&format!(
            "[[check]]\nname = \"fine\"\nurl = \"{fine}\"\ninterval = \"300ms\"\ntimeout = \"250ms\"\n\
             [[check]]\nname = \"internal\"\nurl = \"{internal}\"\ninterval = \"300ms\"\n\
             timeout = \"250ms\"\nca_file = \"/nonexistent/internal-ca.pem\"\n",
            fine = fleet.url("/fine"),
            internal = fleet.url("/internal"),
        ))
        .await;
    assert_ne!(code, 0, "a refused check fails the apply: {out}{err}");
    assert!(
        out.contains("Applied: check set version 1, 2 checks."),
        "{out}"
    );
    for id in ["fra-1", "iad-1"] {
        assert!(out.contains(&format!("{id}: runs fine v1\n")), "{out}");
        let refused = out
            .lines()
            .find(|l| l.starts_with(&format!("{id}: REFUSED internal v1: ")))
            .unwrap_or_else(|| panic!("{id}'s refusal: {out}"));
        assert!(
            refused.contains("/nonexistent/internal-ca.pem"),
            "{refused}"
        );
    }
    assert!(err.contains("agents refused 2 check(s)"), "{err}");

    let (code, list, _) = fleet.cli(&["check", "list"]).await;
    assert_eq!(code, 0);
    let line = |name: &str| {
        list.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name}: {list}"))
            .to_owned()
    };
    assert!(line("fine").contains("2 run, 0 refused"), "{list}");
    assert!(line("internal").contains("0 run, 2 refused"), "{list}");
    assert!(list.contains("refused: internal v1 by fra-1: "), "{list}");

    fleet
        .wait_for(
            "the check the agents can run",
            "SELECT count(DISTINCT agent_id) FROM probe_results WHERE check_name = 'fine'",
            2,
            Duration::from_secs(20),
        )
        .await;
    vantage_service::install_crypto_provider();
    let page = reqwest::get(format!("http://{}/vantages", fleet.collector_http.unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("1 refused"), "{page}");
    assert!(page.contains("internal: "), "{page}");
    let refusals: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM agent_checks WHERE state = 'refused' AND check_name = 'internal'",
    )
    .fetch_one(&fleet.pool)
    .await
    .unwrap();
    assert_eq!(refusals, 2);
}
