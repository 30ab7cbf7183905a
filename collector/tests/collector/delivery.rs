//! What reached the database, compared with what an agent produced (its
//! probes, as the target saw them): the delivery promise, audited.

use std::collections::BTreeSet;

use sqlx::PgPool;
use vantage_testkit::Target;

/// What reached the database, compared with what the agent produced.
#[derive(Debug)]
pub struct Audit {
    pub produced: usize,
    pub stored: usize,
    pub duplicates: i64,
    /// Produced, not stored, not inside any recorded gap.
    pub missing: Vec<u64>,
    /// Produced, not stored, inside a recorded gap.
    pub in_gaps: usize,
    pub gaps: Vec<(i64, i64, Option<i64>, String)>,
}

/// Agent `agent_id`'s results: produced (seen by `target`), stored, and
/// the gaps it recorded.
pub async fn audit(pool: &PgPool, target: &Target, agent_id: &str) -> Audit {
    let produced = target.probe_seqs(agent_id);
    let stored: Vec<i64> = sqlx::query_scalar("SELECT seq FROM probe_results WHERE agent_id = $1")
        .bind(agent_id)
        .fetch_all(pool)
        .await
        .unwrap();
    let distinct: BTreeSet<u64> = stored.iter().map(|s| *s as u64).collect();
    let gaps: Vec<(i64, i64, Option<i64>, String)> = sqlx::query_as(
        "SELECT first_seq, last_seq, count, reason FROM delivery_gaps
         WHERE agent_id = $1 ORDER BY first_seq",
    )
    .bind(agent_id)
    .fetch_all(pool)
    .await
    .unwrap();
    let in_gap = |seq: u64| {
        gaps.iter()
            .any(|(first, last, _, _)| (*first as u64..=*last as u64).contains(&seq))
    };
    let lost: Vec<u64> = produced.difference(&distinct).copied().collect();
    let missing: Vec<u64> = lost.iter().copied().filter(|s| !in_gap(*s)).collect();
    Audit {
        produced: produced.len(),
        stored: stored.len(),
        duplicates: stored.len() as i64 - distinct.len() as i64,
        in_gaps: lost.len() - missing.len(),
        missing,
        gaps,
    }
}

/// Every produced result stored once, or inside a gap the agent recorded.
pub fn assert_exactly_once(audit: &Audit, what: &str) {
    println!("{what}: {audit:?}");
    assert!(audit.produced > 0, "{what}: nothing produced");
    assert_eq!(audit.duplicates, 0, "{what}: duplicates");
    assert!(
        audit.missing.is_empty(),
        "{what}: {} results missing outside gaps: {:?}",
        audit.missing.len(),
        audit.missing
    );
}
