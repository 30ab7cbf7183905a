//! Incidents as the alerter, the HTTP endpoint and the demo read them,
//! with their explanation history.

use chrono::{DateTime, Utc};

use super::{Store, StoreError};
use crate::detect::records::{FaultSide, IncidentKind, IncidentScope, OpenIncident};

/// An incident as stored (the columns the alerter and the demo read).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Incident {
    pub id: i64,
    pub target: String,
    pub pattern: String,
    #[sqlx(try_from = "String")]
    pub kind: IncidentKind,
    pub dimension: String,
    pub value: String,
    pub narrowed_value: Option<String>,
    pub explanation: String,
    pub statuses: Vec<i16>,
    pub segment_failures: i64,
    pub segment_probes: i64,
    pub rest_failures: i64,
    pub rest_probes: i64,
    pub p_value: Option<f64>,
    pub failing_vantages: i32,
    pub correlated: serde_json::Value,
    pub gateways: Vec<String>,
    pub edge_locations: Vec<String>,
    pub first_failure_at: Option<DateTime<Utc>>,
    pub last_failure_at: Option<DateTime<Utc>>,
    pub window_seconds: i32,
    pub opened_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    /// One target, or a path (several targets through one path).
    #[sqlx(try_from = "String")]
    pub scope: IncidentScope,
    pub targets: Vec<String>,
    /// The site, or the vantages' own path.
    #[sqlx(try_from = "String")]
    pub fault_side: FaultSide,
    /// 1 at opening, +1 per re-explanation.
    pub version: i32,
    /// Where the failing vantages' paths part from the healthy ones', as
    /// the confirmation probes traced them (`evidence.paths.summary`).
    pub path_summary: Option<String>,
}

impl From<&Incident> for OpenIncident {
    fn from(i: &Incident) -> Self {
        OpenIncident {
            id: i.id,
            target: i.target.clone(),
            pattern: i.pattern.clone(),
            kind: i.kind,
            dimension: i.dimension.clone(),
            value: i.value.clone(),
            opened_at: i.opened_at,
        }
    }
}

/// The columns of [`Incident`], for SELECTs.
const INCIDENT_COLUMNS: &str = "id, target, pattern, kind, dimension, value, narrowed_value, \
    explanation, statuses, segment_failures, segment_probes, rest_failures, rest_probes, p_value, \
    failing_vantages, correlated, gateways, edge_locations, first_failure_at, last_failure_at, \
    window_seconds, opened_at, last_seen_at, resolved_at, scope, targets, fault_side, version, \
    evidence->'paths'->>'summary' AS path_summary";

impl Store {
    /// Every incident not yet resolved.
    pub async fn open_incidents(&self) -> Result<Vec<Incident>, StoreError> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {INCIDENT_COLUMNS} FROM incidents WHERE resolved_at IS NULL ORDER BY id"
        )))
        .fetch_all(&self.pool)
        .await?)
    }

    /// The incidents open now or resolved after `since`, newest first, at
    /// most `limit`.
    pub async fn recent_incidents(
        &self,
        since: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<Incident>, StoreError> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {INCIDENT_COLUMNS} FROM incidents
             WHERE resolved_at IS NULL OR resolved_at > $1
             ORDER BY resolved_at IS NULL DESC, opened_at DESC LIMIT $2"
        )))
        .bind(since)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// An incident's evidence (the JSON its latest explanation carries:
    /// counts table, prefix walk, samples, rounds).
    pub async fn incident_evidence(&self, id: i64) -> Result<serde_json::Value, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT evidence FROM incidents WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?
                .unwrap_or(serde_json::Value::Null),
        )
    }

    /// One incident.
    pub async fn incident(&self, id: i64) -> Result<Option<Incident>, StoreError> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {INCIDENT_COLUMNS} FROM incidents WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// The explanation an update notification announces (its version of
    /// the history), as an incident, for the payload.
    pub async fn incident_as_of(
        &self,
        incident: &Incident,
        version: i32,
    ) -> Result<Incident, StoreError> {
        let row: Option<ExplanationRow> = sqlx::query_as(
            "SELECT scope, kind, dimension, value, narrowed_value, explanation, segment_failures,
                    segment_probes, rest_failures, rest_probes, p_value
             FROM incident_explanations WHERE incident_id = $1 AND version = $2",
        )
        .bind(incident.id)
        .bind(version)
        .fetch_optional(&self.pool)
        .await?;
        let mut out = incident.clone();
        if let Some(e) = row {
            out.scope = e.scope;
            out.kind = e.kind;
            out.dimension = e.dimension;
            out.value = e.value;
            out.narrowed_value = e.narrowed_value;
            out.explanation = e.explanation;
            out.segment_failures = e.segment_failures;
            out.segment_probes = e.segment_probes;
            out.rest_failures = e.rest_failures;
            out.rest_probes = e.rest_probes;
            out.p_value = e.p_value;
            out.version = version;
        }
        Ok(out)
    }

    /// An incident's explanations, oldest first (`v_incident_history`
    /// rows as JSON).
    pub async fn incident_history(&self, id: i64) -> Result<Vec<serde_json::Value>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT to_jsonb(h) FROM v_incident_history h WHERE incident_id = $1 ORDER BY version",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The explanation replaced by version `version`, if any.
    pub async fn previous_explanation(
        &self,
        id: i64,
        version: i32,
    ) -> Result<Option<(String, String, String)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT dimension, value, explanation FROM incident_explanations
             WHERE incident_id = $1 AND version = $2 - 1",
        )
        .bind(id)
        .bind(version)
        .fetch_optional(&self.pool)
        .await?)
    }
}

#[derive(sqlx::FromRow)]
struct ExplanationRow {
    #[sqlx(try_from = "String")]
    scope: IncidentScope,
    #[sqlx(try_from = "String")]
    kind: IncidentKind,
    dimension: String,
    value: String,
    narrowed_value: Option<String>,
    explanation: String,
    segment_failures: i64,
    segment_probes: i64,
    rest_failures: i64,
    rest_probes: i64,
    p_value: Option<f64>,
}
