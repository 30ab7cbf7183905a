//! The read queries behind the incident pages that nothing else needs: an
//! incident's failure rate per round, inside its segment and outside, and
//! the vantage list.

use chrono::{DateTime, Utc};

use super::{Store, StoreError};

/// Probes of an incident's targets in one round, inside its segment or
/// not (see [`Store::incident_rounds`]).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RoundCell {
    pub round_start: DateTime<Utc>,
    /// Whether the probes' source value is one of the segment's.
    pub inside: bool,
    pub probes: i64,
    pub failures: i64,
}

/// Which probes an incident's page reads: scheduled and confirmation
/// probes, as in the detector's window; a person's one-off probes not.
const INCIDENT_PROBES: &str = "url = ANY($1) AND started_at >= $2 AND started_at < $3
    AND (request_id IS NULL OR request_id IN (
           SELECT id FROM probe_requests WHERE purpose = 'confirmation'))";

/// Which failures an incident counts.
#[derive(Debug, Clone)]
pub enum FailureRule<'a> {
    /// A status among these (the check's own, or the proxy's refusal).
    Status(&'a [i16]),
    /// A connection-level outcome (and none of `statuses`, which form
    /// their own pattern).
    Connection {
        statuses: &'a [i16],
        outcomes: &'a [&'a str],
    },
}

/// One vantage as the vantage list shows it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct VantageRow {
    pub agent_id: String,
    pub vantage: Option<String>,
    pub region: String,
    /// The agent's stream last seen (hello or batch).
    pub last_seen: DateTime<Utc>,
    /// The newest result's probe time.
    pub last_result_at: Option<DateTime<Utc>>,
    /// How long the most recently received result waited between its
    /// probe and its arrival: the agent's spool backlog, in time.
    pub delivery_delay_s: Option<f64>,
    /// Scheduled probes in the last 5 minutes, and the failed ones.
    pub probes: i64,
    pub failures: i64,
    /// Checks whose latest result from this vantage failed, of those it
    /// ran in the last 15 minutes.
    pub failing_checks: i64,
    pub checks: i64,
    /// Results it reported lost in the last day (delivery gaps).
    pub lost_last_day: i64,
    /// Central checks its agent runs, refused, and why each was refused.
    pub central_running: i64,
    pub central_refused: i64,
    pub central_refusals: Option<String>,
}

/// The vantage list's query (see [`Store::vantage_rows`]); `$1` rows
/// from `$2`. Public for the test that checks its plan at scale.
pub const VANTAGE_ROWS_SQL: &str = "WITH recent AS (
                 SELECT agent_id, vantage, region, started_at, received_at,
                        outcome <> 'ok' AS failed,
                        row_number() OVER (PARTITION BY agent_id, vantage, check_name, url
                                           ORDER BY started_at DESC) = 1 AS latest
                 FROM probe_results
                 WHERE started_at > now() - interval '15 minutes' AND request_id IS NULL
             ), per_vantage AS (
                 SELECT agent_id, vantage, max(region) AS region,
                        max(started_at) AS last_result_at,
                        (array_agg(extract(epoch FROM received_at - started_at)::float8
                                   ORDER BY received_at DESC))[1] AS delivery_delay_s,
                        count(*) FILTER (WHERE started_at > now() - interval '5 minutes') AS probes,
                        count(*) FILTER (WHERE started_at > now() - interval '5 minutes'
                                           AND failed) AS failures,
                        count(*) FILTER (WHERE latest AND failed) AS failing_checks,
                        count(*) FILTER (WHERE latest) AS checks
                 FROM recent GROUP BY agent_id, vantage
             ), central AS (
                 SELECT agent_id,
                        count(*) FILTER (WHERE state = 'running') AS running,
                        count(*) FILTER (WHERE state = 'refused') AS refused,
                        string_agg(check_name || ': ' || reason, '; ' ORDER BY check_name)
                            FILTER (WHERE state = 'refused') AS refusals
                 FROM agent_checks GROUP BY agent_id
             ), lost AS (
                 SELECT agent_id, COALESCE(sum(count), 0)::int8 AS lost
                 FROM delivery_gaps WHERE received_at > now() - interval '1 day'
                 GROUP BY agent_id
             )
             SELECT count(*) OVER () AS total,
                    a.agent_id, v.vantage, COALESCE(v.region, a.region) AS region, a.last_seen,
                    v.last_result_at, v.delivery_delay_s,
                    COALESCE(v.probes, 0) AS probes, COALESCE(v.failures, 0) AS failures,
                    COALESCE(v.failing_checks, 0) AS failing_checks,
                    COALESCE(v.checks, 0) AS checks,
                    COALESCE(l.lost, 0) AS lost_last_day,
                    COALESCE(ac.running, 0) AS central_running,
                    COALESCE(ac.refused, 0) AS central_refused,
                    ac.refusals AS central_refusals
             FROM agents a
             LEFT JOIN per_vantage v USING (agent_id)
             LEFT JOIN lost l USING (agent_id)
             LEFT JOIN central ac USING (agent_id)
             WHERE a.revoked_at IS NULL
             ORDER BY COALESCE(v.failing_checks, 0) DESC, a.agent_id, v.vantage
             LIMIT $1 OFFSET $2";

/// Test builds: seconds the vantage list's query first spends in
/// PostgreSQL (`vantage-rows-pg-sleep=return(30)`), a page whose reader
/// leaves before it is done.
fn injected_pg_sleep() -> Option<String> {
    fail::fail_point!("vantage-rows-pg-sleep", |seconds| seconds);
    None
}

/// A row of a page of rows, with how many there are in all.
#[derive(sqlx::FromRow)]
struct Counted {
    total: i64,
    #[sqlx(flatten)]
    row: VantageRow,
}

impl Store {
    /// The distinct values of `source` (a text-valued SQL expression over
    /// `probe_results` taken from the dimension table, never from input)
    /// among the probes of `targets` in `[from, to)`: one row per value,
    /// for the page to tell which are the segment's.
    pub async fn incident_sources(
        &self,
        targets: &[String],
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        source: &'static str,
    ) -> Result<Vec<String>, StoreError> {
        let sql = format!(
            "SELECT DISTINCT ({source})::text FROM probe_results
             WHERE {INCIDENT_PROBES} AND ({source}) IS NOT NULL"
        );
        Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(targets)
            .bind(from)
            .bind(to)
            .fetch_all(&self.pool)
            .await?)
    }

    /// The probes of `targets` in `[from, to)` per round of `round_s`
    /// seconds (rounds start at `from`), inside the segment (`source`'s
    /// value among `inside`) or not: at most two rows a round, however
    /// many values the source has.
    #[allow(clippy::too_many_arguments)]
    pub async fn incident_rounds(
        &self,
        targets: &[String],
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        round_s: f64,
        source: &'static str,
        inside: &[String],
        rule: &FailureRule<'_>,
    ) -> Result<Vec<RoundCell>, StoreError> {
        let status = "COALESCE(http_status, proxy_status) = ANY($5)";
        let (failure, statuses, outcomes): (String, &[i16], &[&str]) = match rule {
            FailureRule::Status(statuses) => (status.to_owned(), statuses, &[]),
            FailureRule::Connection { statuses, outcomes } => (
                format!("NOT COALESCE({status}, false) AND outcome = ANY($6)"),
                statuses,
                outcomes,
            ),
        };
        let sql = format!(
            "SELECT date_bin(make_interval(secs => $4), started_at, $2) AS round_start,
                    COALESCE(({source})::text = ANY($7), false) AS inside,
                    count(*) AS probes,
                    count(*) FILTER (WHERE {failure}) AS failures
             FROM probe_results
             WHERE {INCIDENT_PROBES}
             GROUP BY 1, 2 ORDER BY 1"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(targets)
            .bind(from)
            .bind(to)
            .bind(round_s)
            .bind(statuses)
            .bind(outcomes)
            .bind(inside)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Every enrolled agent (not revoked) and each vantage it probed from
    /// in the last 15 minutes: last seen, delivery delay, recent failures;
    /// the failing first, `limit` rows from `offset`, and how many rows
    /// there are in all. One pass over the window's results grouped by
    /// vantage (the latest result per check marked by a window function,
    /// not joined back), then hash joins with the agents: the work grows
    /// with the window's results, never with the square of the vantages.
    pub async fn vantage_rows(
        &self,
        limit: i64,
        offset: i64,
    ) -> Result<(Vec<VantageRow>, i64), StoreError> {
        if let Some(seconds) = injected_pg_sleep() {
            sqlx::query("SELECT pg_sleep($1::float8)")
                .bind(seconds.parse::<f64>().unwrap_or(30.0))
                .execute(&self.pool)
                .await?;
        }
        let rows: Vec<Counted> = sqlx::query_as(VANTAGE_ROWS_SQL)
            .bind(limit)
            .bind(offset)
            .fetch_all(&self.pool)
            .await?;
        let total = rows.first().map_or(0, |r| r.total);
        Ok((rows.into_iter().map(|r| r.row).collect(), total))
    }
}
