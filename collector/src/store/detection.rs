//! The detector's tables: the tracked failures and one pass's transaction
//! (incidents, their explanation history and events, state, runs and
//! segment rates). The window query is in [`super::window`], the lease in
//! [`super::lease`].

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Row, Transaction};

use super::{EventKind, Incident, Store, StoreError};
use crate::detect::Pattern;
use crate::detect::lifecycle::KeyState;
use crate::detect::plan::Plan;
use crate::detect::records::IncidentRecord;
use crate::detect::track::{CandidateKey, Tracked};

/// A detection pass, for `detection_runs`.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    pub evaluated_at: DateTime<Utc>,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    pub probes: i64,
    pub duration_ms: f64,
}

/// What applying a pass created.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Applied {
    /// The ids of the incidents opened, in the plan's order.
    pub opened: Vec<i64>,
    /// The ids of the incidents reopened.
    pub reopened: Vec<i64>,
}

/// Binds an incident record as `$1`..`$24` (the columns' order in
/// `open`'s INSERT) and `at` as `$25`; statements use the ones they need.
fn bind_record<'q, O>(
    query: sqlx::query::QueryScalar<'q, Postgres, O, sqlx::postgres::PgArguments>,
    r: &'q IncidentRecord,
    at: DateTime<Utc>,
) -> sqlx::query::QueryScalar<'q, Postgres, O, sqlx::postgres::PgArguments> {
    query
        .bind(&r.target)
        .bind(&r.pattern)
        .bind(r.kind.as_str())
        .bind(&r.dimension)
        .bind(&r.value)
        .bind(&r.narrowed_value)
        .bind(&r.statuses)
        .bind(&r.explanation)
        .bind(r.counts[0])
        .bind(r.counts[1])
        .bind(r.counts[2])
        .bind(r.counts[3])
        .bind(r.p_value)
        .bind(r.failing_vantages)
        .bind(&r.correlated)
        .bind(r.first_failure_at)
        .bind(r.last_failure_at)
        .bind(&r.gateways)
        .bind(&r.edge_locations)
        .bind(&r.evidence)
        .bind(r.window_seconds)
        .bind(r.scope.as_str())
        .bind(&r.targets)
        .bind(r.fault_side.as_str())
        .bind(at)
}

/// The columns a new explanation sets (as [`bind_record`] binds them), the
/// version bumped: one list for re-explaining and reopening.
macro_rules! explanation_set {
    () => {
        "target = $1, kind = $3, dimension = $4, value = $5,
        narrowed_value = $6, explanation = $8, segment_failures = $9, segment_probes = $10,
        rest_failures = $11, rest_probes = $12, p_value = $13, failing_vantages = $14,
        correlated = $15, first_failure_at = LEAST(first_failure_at, $16),
        last_failure_at = GREATEST(last_failure_at, $17), gateways = $18,
        edge_locations = $19, evidence = $20, scope = $22, targets = $23, fault_side = $24,
        last_seen_at = $25, version = version + 1"
    };
}

/// Re-explains an open incident: a new key and explanation, the version
/// bumped. Binds as [`bind_record`], the id as `$26`.
const RE_EXPLAIN: &str = concat!(
    "UPDATE incidents SET ",
    explanation_set!(),
    " WHERE id = $26 AND resolved_at IS NULL RETURNING id"
);

/// Reopens a resolved incident with a new explanation record, the version
/// bumped (so its next resolution is an event of its own). Binds as
/// [`bind_record`], the id as `$26`.
const REOPEN: &str = concat!(
    "UPDATE incidents SET ",
    explanation_set!(),
    ", resolved_at = NULL WHERE id = $26 AND resolved_at IS NOT NULL RETURNING id"
);

/// Refreshes an open incident with the latest evidence of the same
/// explanation: the failure window only grows, layers seen accumulate.
const REFRESH: &str = "UPDATE incidents SET narrowed_value = $6, explanation = $8,
        segment_failures = $9, segment_probes = $10, rest_failures = $11, rest_probes = $12,
        p_value = $13, failing_vantages = $14, correlated = $15,
        first_failure_at = LEAST(first_failure_at, $16),
        last_failure_at = GREATEST(last_failure_at, $17),
        gateways = ARRAY(SELECT DISTINCT unnest(gateways || $18) ORDER BY 1),
        edge_locations = ARRAY(SELECT DISTINCT unnest(edge_locations || $19) ORDER BY 1),
        evidence = $20, targets = $23, last_seen_at = $25
    WHERE id = $26 AND resolved_at IS NULL
    RETURNING id";

/// Runs [`RE_EXPLAIN`] or [`REFRESH`] on incident `id`; false when it is no
/// longer open.
async fn update_incident(
    tx: &mut Transaction<'_, Postgres>,
    sql: &'static str,
    id: i64,
    r: &IncidentRecord,
    at: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let updated: Option<i64> = bind_record(sqlx::query_scalar(sql), r, at)
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(updated.is_some())
}

/// Appends the incident's current explanation to its history.
async fn record_explanation(
    tx: &mut Transaction<'_, Postgres>,
    id: i64,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO incident_explanations
             (incident_id, version, scope, kind, dimension, value, narrowed_value, explanation,
              segment_failures, segment_probes, rest_failures, rest_probes, p_value, explained_at)
         SELECT id, version, scope, kind, dimension, value, narrowed_value, explanation,
                segment_failures, segment_probes, rest_failures, rest_probes, p_value, $2
         FROM incidents WHERE id = $1",
    )
    .bind(id)
    .bind(at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Records that `event` happened to incident `id` (at its current
/// version): the outbox fans it out to the sinks.
async fn record_event(
    tx: &mut Transaction<'_, Postgres>,
    id: i64,
    event: EventKind,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO incident_events (incident_id, event, version, created_at)
         SELECT id, $2, version, $3 FROM incidents WHERE id = $1",
    )
    .bind(id)
    .bind(event.as_str())
    .bind(at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    /// Incidents resolved since `since`: their id, key and resolution
    /// time (a failure back with the same key reopens one).
    pub async fn resolved_since(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<(i64, CandidateKey, DateTime<Utc>)>, StoreError> {
        let rows: Vec<(i64, String, String, String, String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT id, target, pattern, dimension, value, resolved_at FROM incidents
             WHERE resolved_at >= $1 ORDER BY resolved_at",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, target, pattern, dimension, value, at)| {
                let pattern = Pattern::parse(&pattern)?;
                Some((
                    id,
                    CandidateKey::new(&target, pattern, &dimension, &value),
                    at,
                ))
            })
            .collect())
    }

    /// Every tracked failure, plus one for every open incident that has
    /// none (an incident opened by an older version).
    pub async fn tracked_failures(&self, open: &[Incident]) -> Result<Vec<Tracked>, StoreError> {
        let rows = sqlx::query(
            "SELECT target, pattern, dimension, value, held_streak, clear_streak, last_held_at,
                    incident_id, footprint, pending_target, pending_dimension, pending_value,
                    pending_streak
             FROM detector_state ORDER BY target, pattern, dimension, value",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let pattern: String = row.try_get(1)?;
            let Some(pattern) = Pattern::parse(&pattern) else {
                continue;
            };
            let key = CandidateKey::new(
                row.try_get::<&str, _>(0)?,
                pattern,
                row.try_get::<&str, _>(2)?,
                row.try_get::<&str, _>(3)?,
            );
            let pending_target: Option<String> = row.try_get(9)?;
            let pending_dimension: Option<String> = row.try_get(10)?;
            let pending_value: Option<String> = row.try_get(11)?;
            let pending = match (pending_target, pending_dimension, pending_value) {
                (Some(t), Some(d), Some(v)) => Some((
                    CandidateKey::new(&t, pattern, &d, &v),
                    u32::try_from(row.try_get::<i32, _>(12)?).unwrap_or(0),
                )),
                _ => None,
            };
            out.push(Tracked {
                key,
                state: KeyState {
                    held_streak: u32::try_from(row.try_get::<i32, _>(4)?).unwrap_or(0),
                    clear_streak: u32::try_from(row.try_get::<i32, _>(5)?).unwrap_or(0),
                    last_held_at: row.try_get(6)?,
                    incident: row.try_get(7)?,
                },
                footprint: row
                    .try_get::<Vec<String>, _>(8)?
                    .into_iter()
                    .collect::<BTreeSet<_>>(),
                pending,
            });
        }
        for i in open {
            if out.iter().any(|t| t.state.incident == Some(i.id)) {
                continue;
            }
            let Some(pattern) = Pattern::parse(&i.pattern) else {
                continue;
            };
            let key = CandidateKey::new(&i.target, pattern, &i.dimension, &i.value);
            // A state row for the same key without the incident: adopt it.
            if let Some(t) = out.iter_mut().find(|t| t.key == key) {
                t.state.incident = Some(i.id);
                t.state.last_held_at = t.state.last_held_at.or(Some(i.last_seen_at));
                continue;
            }
            out.push(Tracked {
                key,
                state: KeyState {
                    incident: Some(i.id),
                    last_held_at: Some(i.last_seen_at),
                    ..KeyState::default()
                },
                footprint: BTreeSet::new(),
                pending: None,
            });
        }
        Ok(out)
    }

    /// Applies a pass in one transaction, if `holder` still holds the
    /// lease (renewing it for `lease`, even if it ran out during a long
    /// pass) and no other collector recorded a pass since `since_run`
    /// (None otherwise: nothing was written, the plan being stale). Opens,
    /// re-explains (appending to the history), refreshes and resolves
    /// incidents, replaces the tracked state, and records the run and its
    /// rates (dropping runs older than `keep_since`).
    pub async fn apply_pass(
        &self,
        plan: &Plan,
        run: &RunRecord,
        keep_since: DateTime<Utc>,
        holder: &str,
        lease: chrono::Duration,
        since_run: Option<i64>,
    ) -> Result<Option<Applied>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let others: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM detection_runs
                            WHERE id > COALESCE($2, 0) AND runner IS DISTINCT FROM $1)",
        )
        .bind(holder)
        .bind(since_run)
        .fetch_one(&mut *tx)
        .await?;
        if others || !super::lease::renew_lease(&mut tx, holder, lease).await? {
            tx.rollback().await?;
            return Ok(None);
        }
        let at = run.evaluated_at;
        let (applied, incident_of) = apply_incidents(&mut tx, plan, at).await?;
        replace_tracked(&mut tx, &plan.tracked, &incident_of).await?;
        record_run(&mut tx, plan, run, holder, keep_since).await?;
        tx.commit().await?;
        Ok(Some(applied))
    }
}

/// Opens, reopens, re-explains, refreshes, touches and resolves the
/// plan's incidents, each change with its history and event; returns what
/// was applied and each tracked failure's incident (new ones included).
async fn apply_incidents(
    tx: &mut Transaction<'_, Postgres>,
    plan: &Plan,
    at: DateTime<Utc>,
) -> Result<(Applied, Vec<Option<i64>>), StoreError> {
    let mut applied = Applied::default();
    let mut incident_of: Vec<Option<i64>> = plan.tracked.iter().map(|t| t.state.incident).collect();
    for (ti, r) in &plan.opens {
        let id: Option<i64> = bind_record(
            sqlx::query_scalar(
                "INSERT INTO incidents (target, pattern, kind, dimension, value,
                                            narrowed_value, statuses, explanation,
                                            segment_failures, segment_probes, rest_failures,
                                            rest_probes, p_value, failing_vantages, correlated,
                                            first_failure_at, last_failure_at, gateways,
                                            edge_locations, evidence, window_seconds, scope,
                                            targets, fault_side, opened_at, last_seen_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,
                             $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $25)
                     ON CONFLICT (target, pattern, dimension, value) WHERE resolved_at IS NULL
                     DO NOTHING
                     RETURNING id",
            ),
            r,
            at,
        )
        .fetch_optional(&mut **tx)
        .await?;
        if let Some(id) = id {
            record_explanation(&mut *tx, id, at).await?;
            record_event(&mut *tx, id, EventKind::Opened, at).await?;
            applied.opened.push(id);
            if let Some(slot) = incident_of.get_mut(*ti) {
                *slot = Some(id);
            }
        }
    }
    for (_, id, r) in &plan.reopens {
        if update_incident(&mut *tx, REOPEN, *id, r, at).await? {
            record_explanation(&mut *tx, *id, at).await?;
            record_event(&mut *tx, *id, EventKind::Reopened, at).await?;
            applied.reopened.push(*id);
        }
    }
    for (id, r) in &plan.updates {
        if update_incident(&mut *tx, RE_EXPLAIN, *id, r, at).await? {
            record_explanation(&mut *tx, *id, at).await?;
            record_event(&mut *tx, *id, EventKind::Updated, at).await?;
        }
    }
    for (id, r) in &plan.refreshes {
        update_incident(&mut *tx, REFRESH, *id, r, at).await?;
    }
    sqlx::query("UPDATE incidents SET last_seen_at = $2 WHERE id = ANY($1)")
        .bind(&plan.touches)
        .bind(at)
        .execute(&mut **tx)
        .await?;
    let resolved: Vec<i64> = plan.resolves.iter().map(|r| r.0).collect();
    sqlx::query(
        "WITH resolved AS (
                 UPDATE incidents SET resolved_at = $2 WHERE id = ANY($1) AND resolved_at IS NULL
                 RETURNING id, version)
             INSERT INTO incident_events (incident_id, event, version, created_at)
             SELECT id, $3, version, $2 FROM resolved ORDER BY id",
    )
    .bind(&resolved)
    .bind(at)
    .bind(EventKind::Resolved.as_str())
    .execute(&mut **tx)
    .await?;
    Ok((applied, incident_of))
}

/// Replaces the tracked state as a whole.
async fn replace_tracked(
    tx: &mut Transaction<'_, Postgres>,
    t: &[Tracked],
    incident_of: &[Option<i64>],
) -> Result<(), StoreError> {
    // The tracked state: replaced as a whole.
    sqlx::query("DELETE FROM detector_state")
        .execute(&mut **tx)
        .await?;
    let text = |f: &dyn Fn(&Tracked) -> String| t.iter().map(f).collect::<Vec<_>>();
    let pending = |f: &dyn Fn(&CandidateKey) -> String| {
        t.iter()
            .map(|x| x.pending.as_ref().map(|(k, _)| f(k)))
            .collect::<Vec<_>>()
    };
    let footprints: Vec<String> = t
        .iter()
        .map(|x| {
            serde_json::Value::from(x.footprint.iter().cloned().collect::<Vec<_>>()).to_string()
        })
        .collect();
    let to_i32 = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
    sqlx::query(
        "INSERT INTO detector_state (target, pattern, dimension, value, held_streak,
                                         clear_streak, last_held_at, incident_id, footprint,
                                         pending_target, pending_dimension, pending_value,
                                         pending_streak)
             SELECT t, p, d, v, h, c, l, i,
                    ARRAY(SELECT jsonb_array_elements_text(f::jsonb)), pt, pd, pv, ps
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int4[],
                         $6::int4[], $7::timestamptz[], $8::int8[], $9::text[], $10::text[],
                         $11::text[], $12::text[], $13::int4[])
                  AS x(t, p, d, v, h, c, l, i, f, pt, pd, pv, ps)",
    )
    .bind(text(&|x| x.key.target.clone()))
    .bind(text(&|x| x.key.pattern.as_str().to_owned()))
    .bind(text(&|x| x.key.dimension.clone()))
    .bind(text(&|x| x.key.value.clone()))
    .bind(
        t.iter()
            .map(|x| to_i32(x.state.held_streak))
            .collect::<Vec<_>>(),
    )
    .bind(
        t.iter()
            .map(|x| to_i32(x.state.clear_streak))
            .collect::<Vec<_>>(),
    )
    .bind(t.iter().map(|x| x.state.last_held_at).collect::<Vec<_>>())
    .bind(incident_of)
    .bind(footprints)
    .bind(pending(&|k| k.target.clone()))
    .bind(pending(&|k| k.dimension.clone()))
    .bind(pending(&|k| k.value.clone()))
    .bind(
        t.iter()
            .map(|x| x.pending.as_ref().map_or(0, |(_, n)| to_i32(*n)))
            .collect::<Vec<_>>(),
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Records the run and its segment rates, dropping runs older than
/// `keep_since`.
async fn record_run(
    tx: &mut Transaction<'_, Postgres>,
    plan: &Plan,
    run: &RunRecord,
    holder: &str,
    keep_since: DateTime<Utc>,
) -> Result<(), StoreError> {
    let run_id: i64 = sqlx::query_scalar(
        "INSERT INTO detection_runs (evaluated_at, window_start, window_end, probes, duration_ms,
                                         runner)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
    )
    .bind(run.evaluated_at)
    .bind(run.window_start)
    .bind(run.window_end)
    .bind(run.probes)
    .bind(run.duration_ms)
    .bind(holder)
    .fetch_one(&mut **tx)
    .await?;
    let rates = &plan.rates;
    sqlx::query(
        "INSERT INTO segment_rates (run_id, target, pattern, dimension, value, probes, failures,
                                        rest_probes, rest_failures, vantages, p_value, flagged,
                                        window_rounds)
             SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::text[], $5::text[], $6::int8[],
                                      $7::int8[], $8::int8[], $9::int8[], $10::int4[],
                                      $11::float8[], $12::bool[], $13::int4[])",
    )
    .bind(run_id)
    .bind(rates.iter().map(|r| r.target.clone()).collect::<Vec<_>>())
    .bind(rates.iter().map(|r| r.pattern.clone()).collect::<Vec<_>>())
    .bind(
        rates
            .iter()
            .map(|r| r.dimension.clone())
            .collect::<Vec<_>>(),
    )
    .bind(rates.iter().map(|r| r.value.clone()).collect::<Vec<_>>())
    .bind(rates.iter().map(|r| r.probes).collect::<Vec<_>>())
    .bind(rates.iter().map(|r| r.failures).collect::<Vec<_>>())
    .bind(rates.iter().map(|r| r.rest_probes).collect::<Vec<_>>())
    .bind(rates.iter().map(|r| r.rest_failures).collect::<Vec<_>>())
    .bind(rates.iter().map(|r| r.vantages).collect::<Vec<_>>())
    .bind(rates.iter().map(|r| r.p_value).collect::<Vec<_>>())
    .bind(rates.iter().map(|r| r.flagged).collect::<Vec<_>>())
    .bind(rates.iter().map(|r| r.window_rounds).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    sqlx::query("DELETE FROM detection_runs WHERE evaluated_at < $1")
        .bind(keep_since)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
