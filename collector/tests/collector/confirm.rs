//! Confirmation probes, with real processes: when the detector first
//! suspects a segment it asks the vantages inside it and a matched set
//! outside it to probe again now, through the agents' streams; the
//! incident's evidence lists what they found.

use sqlx::PgPool;

use crate::rig::Fleet;

#[sqlx::test(migrations = false)]
async fn the_detector_asks_inside_and_outside_a_suspect_and_lists_them_in_the_evidence(
    pool: PgPool,
) {
    // Rounds four times as long as the detector's interval, as by default
    // (30 s checks, 15 s passes) compressed. The failing /24 spans two
    // regions: only the prefix explains it.
    let (fleet, _agents) = Fleet::prefix_incident(
        pool,
        "[detector]\ninterval = \"1s\"\nwindow = \"60s\"\nresolve_quiet = \"5s\"\n",
        "4s",
        "2s",
    )
    .await;
    // Asked through the agents' streams, answered, stored as one-offs of
    // the check the failing probes ran.
    let asked: Vec<(i64, Option<String>, serde_json::Value)> = sqlx::query_as(
        "SELECT id, check_name, selector FROM probe_requests WHERE purpose = 'confirmation'
         ORDER BY id",
    )
    .fetch_all(&fleet.pool)
    .await
    .unwrap();
    assert!(!asked.is_empty());
    assert!(
        asked
            .iter()
            .all(|(_, check, _)| check.as_deref() == Some("shop"))
    );
    let first = &asked[0].2["pairs"];
    assert!(
        first
            .as_array()
            .unwrap()
            .contains(&serde_json::json!(["east", "v1"])),
        "{first}"
    );
    let answered: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM probe_request_agents WHERE done_at IS NOT NULL AND results > 0",
    )
    .fetch_one(&fleet.pool)
    .await
    .unwrap();
    assert!(answered >= 2, "{answered}");

    // The incident names the /24 and lists the confirmation probes: all
    // failed inside, none outside.
    let (dimension, value, evidence): (String, String, serde_json::Value) =
        sqlx::query_as("SELECT dimension, value, evidence FROM incidents ORDER BY id LIMIT 1")
            .fetch_one(&fleet.pool)
            .await
            .unwrap();
    assert_eq!(
        (dimension.as_str(), value.as_str()),
        ("egress_prefix", "127.0.2.0/24")
    );
    let confirmations = evidence["confirmation_probes"]
        .as_array()
        .unwrap_or_else(|| panic!("no confirmation_probes in {evidence:#}"));
    let stored = confirmations
        .iter()
        .find(|c| c["inside"]["probes"].as_i64() > Some(0))
        .unwrap_or_else(|| panic!("no confirmation with results: {evidence:#}"));
    assert_eq!(
        stored["inside"]["failures"], stored["inside"]["probes"],
        "{stored}"
    );
    assert_eq!(stored["outside"]["failures"], 0, "{stored}");
    assert!(stored["outside"]["probes"].as_i64() > Some(0), "{stored}");
    let inside: Vec<&serde_json::Value> = stored["inside"]["vantages"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    assert!(
        inside
            .iter()
            .all(|v| **v == serde_json::json!(["east", "v1"])
                || **v == serde_json::json!(["west", "v1"])),
        "{stored}"
    );
}
