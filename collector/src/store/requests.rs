//! One-off probe requests (`vantage-collector probe`, the detector's
//! confirmation probes): asking, who was asked, their answers and the
//! results; and the notices that tell every collector process that the
//! check set changed or a request is waiting.

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};

use super::results::{RESULT_PATH_COLUMNS, ResultPath};
use super::{Store, StoreError};

/// The PostgreSQL channel of control notices (`LISTEN vantage_control`).
pub const CONTROL_CHANNEL: &str = "vantage_control";

/// What a notice on [`CONTROL_CHANNEL`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlNotice {
    /// The central check set changed.
    Checks,
    /// The probe request with this id waits for its agents.
    Probe(i64),
}

impl ControlNotice {
    /// The notice's payload.
    pub fn payload(self) -> String {
        match self {
            Self::Checks => "checks".into(),
            Self::Probe(id) => format!("probe:{id}"),
        }
    }

    /// A payload read back; `None` for one this version does not know.
    pub fn parse(payload: &str) -> Option<Self> {
        match payload.split_once(':') {
            None if payload == "checks" => Some(Self::Checks),
            Some(("probe", id)) => id.parse().ok().map(Self::Probe),
            _ => None,
        }
    }
}

/// Sends `notice` when `tx` commits.
pub(super) async fn notify(
    tx: &mut Transaction<'_, Postgres>,
    notice: ControlNotice,
) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CONTROL_CHANNEL)
        .bind(notice.payload())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

vocabulary! {
    /// Why a probe is asked for (`probe_requests.purpose`).
    pub enum Purpose {
        /// A person, with `vantage-collector probe`.
        Manual = "manual",
        /// The detector, for a candidate segment.
        Confirmation = "confirmation",
    }
}

/// A probe request, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeRequest {
    pub id: i64,
    pub requested_at: DateTime<Utc>,
    pub ask: NewProbeRequest,
}

/// A request to make: what, from where, how.
#[derive(Debug, Clone, PartialEq)]
pub struct NewProbeRequest {
    pub purpose: Purpose,
    /// Run the check of this name the agents have…
    pub check_name: Option<String>,
    /// …or this one ([[check]] keys as JSON).
    pub definition: Option<serde_json::Value>,
    /// Who probes (see [`crate::control::Targets`]).
    pub selector: serde_json::Value,
    pub resolvers: Vec<String>,
    pub dial_each: bool,
    /// Rounds each vantage runs, one after the other.
    pub rounds: i32,
    /// Trace the path after each probe (agents that can).
    pub trace_path: bool,
    /// Confirmation probes: the candidate they test.
    pub candidate: Option<serde_json::Value>,
}

/// An agent's answer to a request (its ProbeDone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeAnswer {
    pub request_id: i64,
    pub results: i32,
    pub error: Option<String>,
}

/// One agent a request went to, and how far it got.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RequestAgent {
    pub agent_id: String,
    pub vantages: Vec<String>,
    pub done_at: Option<DateTime<Utc>>,
    /// Results it said it made.
    pub results: Option<i32>,
    pub error: Option<String>,
    /// Results of the request from it stored so far.
    pub stored: i64,
}

type RequestRow = (
    i64,
    String,
    Option<String>,
    Option<serde_json::Value>,
    serde_json::Value,
    Vec<String>,
    bool,
    i32,
    Option<serde_json::Value>,
    bool,
    DateTime<Utc>,
);

fn request(row: RequestRow) -> ProbeRequest {
    let (
        id,
        purpose,
        check_name,
        definition,
        selector,
        resolvers,
        dial_each,
        rounds,
        candidate,
        trace_path,
        at,
    ) = row;
    ProbeRequest {
        id,
        requested_at: at,
        ask: NewProbeRequest {
            purpose: Purpose::parse(&purpose).unwrap_or(Purpose::Manual),
            check_name,
            definition,
            selector,
            resolvers,
            dial_each,
            rounds,
            candidate,
            trace_path,
        },
    }
}

impl Store {
    /// The stored results of request `id`, by agent, vantage, resolver.
    pub async fn request_results(&self, id: i64) -> Result<Vec<ResultPath>, StoreError> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            // The request's time by a subquery, not a join: Citus does not
            // join its distributed results with a table on the coordinator.
            "SELECT {RESULT_PATH_COLUMNS}
             FROM probe_results r
             WHERE r.request_id = $1
               AND r.started_at >= (SELECT requested_at FROM probe_requests WHERE id = $1)
                                   - interval '1 minute'
             ORDER BY r.agent_id, r.vantage, r.resolver, r.seq"
        )))
        .bind(id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Stores a request and tells every collector (at commit); its id.
    pub async fn create_probe_request(&self, new: &NewProbeRequest) -> Result<i64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO probe_requests (purpose, check_name, definition, selector, resolvers,
                                         dial_each, candidate, rounds, trace_path)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
        )
        .bind(new.purpose.as_str())
        .bind(&new.check_name)
        .bind(&new.definition)
        .bind(&new.selector)
        .bind(&new.resolvers)
        .bind(new.dial_each)
        .bind(&new.candidate)
        .bind(new.rounds)
        .bind(new.trace_path)
        .fetch_one(&mut *tx)
        .await?;
        notify(&mut tx, ControlNotice::Probe(id)).await?;
        tx.commit().await?;
        Ok(id)
    }

    /// The request `id`.
    pub async fn probe_request(&self, id: i64) -> Result<Option<ProbeRequest>, StoreError> {
        let row: Option<RequestRow> = sqlx::query_as(
            "SELECT id, purpose, check_name, definition, selector, resolvers, dial_each,
                    rounds, candidate, trace_path, requested_at
             FROM probe_requests WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(request))
    }

    /// Records that `agent_id` was asked, from `vantages`.
    pub async fn record_probe_sent(
        &self,
        request_id: i64,
        agent_id: &str,
        vantages: &[String],
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO probe_request_agents (request_id, agent_id, vantages)
             VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(request_id)
        .bind(agent_id)
        .bind(vantages)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records an agent's answer (one to a request it was not sent is
    /// ignored).
    pub async fn record_probe_answer(
        &self,
        agent_id: &str,
        answer: &ProbeAnswer,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE probe_request_agents SET done_at = now(), results = $3, error = $4
             WHERE request_id = $1 AND agent_id = $2",
        )
        .bind(answer.request_id)
        .bind(agent_id)
        .bind(answer.results)
        .bind(&answer.error)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The agents request `id` went to, with their answers and how many
    /// of their results are stored.
    pub async fn probe_request_agents(&self, id: i64) -> Result<Vec<RequestAgent>, StoreError> {
        Ok(sqlx::query_as(
            // The results counted per agent first, then joined: Citus runs
            // no subquery over its distributed results correlated with a
            // table on the coordinator.
            "WITH stored AS (
                 SELECT r.agent_id, count(*) AS stored FROM probe_results r
                 WHERE r.request_id = $1
                   AND r.started_at >= (SELECT requested_at FROM probe_requests WHERE id = $1)
                                       - interval '1 minute'
                 GROUP BY r.agent_id)
             SELECT a.agent_id, a.vantages, a.done_at, a.results, a.error,
                    COALESCE(s.stored, 0) AS stored
             FROM probe_request_agents a LEFT JOIN stored s ON s.agent_id = a.agent_id
             WHERE a.request_id = $1 ORDER BY a.agent_id",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?)
    }
}

impl Store {
    /// When confirmation probes were last asked for each candidate since
    /// `since`: (target, pattern, dimension, value) and the time.
    pub async fn recent_confirmations(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<(String, String, String, String, DateTime<Utc>)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT candidate->>'target', candidate->>'pattern', candidate->>'dimension',
                    candidate->>'value', max(requested_at)
             FROM probe_requests
             WHERE purpose = 'confirmation' AND requested_at > $1 AND candidate IS NOT NULL
             GROUP BY 1, 2, 3, 4",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The confirmation probes asked for the candidate (target, pattern,
    /// dimension, value) since `since`, each with the results stored from
    /// inside and outside the segment: (request id, asked at, candidate
    /// JSON, probes and failures inside, probes and failures outside),
    /// failures counted by the statuses `failing` (status pattern) or the
    /// `connection_outcomes` (connection pattern).
    pub async fn confirmations_of(
        &self,
        key: (&str, &str, &str, &str),
        since: DateTime<Utc>,
        failing: &[i16],
        connection_outcomes: &[&str],
    ) -> Result<Vec<ConfirmationRecord>, StoreError> {
        Ok(sqlx::query_as(
            // The requests first, then their results by request id: no
            // lateral join of the results with the requests (which Citus
            // cannot run with the results distributed).
            "WITH p AS (
                 SELECT id, requested_at, candidate FROM probe_requests
                 WHERE purpose = 'confirmation' AND requested_at > $5
                   AND candidate->>'target' = $1 AND candidate->>'pattern' = $2
                   AND candidate->>'dimension' = $3 AND candidate->>'value' = $4),
             r AS (
                 SELECT r.request_id, r.agent_id, r.vantage, r.started_at,
                        CASE WHEN $2 = 'connection' THEN r.outcome = ANY($7)
                             ELSE COALESCE(r.http_status, r.proxy_status) = ANY($6) END
                            AS failed
                 FROM probe_results r
                 WHERE r.request_id IN (SELECT id FROM p)
                   AND r.started_at >= (SELECT min(requested_at) FROM p) - interval '1 minute')
             SELECT p.id, p.requested_at, p.candidate,
                    count(r.request_id) FILTER (WHERE inside) AS inside_probes,
                    count(r.request_id) FILTER (WHERE inside AND failed) AS inside_failures,
                    count(r.request_id) FILTER (WHERE NOT inside) AS outside_probes,
                    count(r.request_id) FILTER (WHERE NOT inside AND failed) AS outside_failures
             FROM p
             LEFT JOIN r ON r.request_id = p.id
                        AND r.started_at >= p.requested_at - interval '1 minute'
             CROSS JOIN LATERAL (SELECT p.candidate->'inside' @> jsonb_build_array(
                            jsonb_build_array(r.agent_id, r.vantage)) AS inside) i
             GROUP BY p.id, p.requested_at, p.candidate ORDER BY p.id",
        )
        .bind(key.0)
        .bind(key.1)
        .bind(key.2)
        .bind(key.3)
        .bind(since)
        .bind(failing)
        .bind(connection_outcomes)
        .fetch_all(&self.pool)
        .await?)
    }
}

/// One confirmation request and what its probes found.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ConfirmationRecord {
    pub id: i64,
    pub requested_at: DateTime<Utc>,
    pub candidate: Option<serde_json::Value>,
    pub inside_probes: i64,
    pub inside_failures: i64,
    pub outside_probes: i64,
    pub outside_failures: i64,
}
