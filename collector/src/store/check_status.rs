//! What each agent made of the central checks assigned to it: the report
//! it sends after every check set (running, or refused and why), kept per
//! agent and check, and read back for `check apply`, `check list` and the
//! vantage list.

use chrono::{DateTime, Utc};

use super::{Store, StoreError};

vocabulary! {
    /// Whether an agent runs an assigned check (`agent_checks.state`).
    pub enum CheckState {
        Running = "running",
        Refused = "refused",
    }
}

/// One check of an agent's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckStatus {
    pub name: String,
    pub version: i64,
    /// Why the agent cannot run it; `None`: it runs it.
    pub refused: Option<String>,
}

/// An agent's report on the check set it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChecksReport {
    pub set_version: i64,
    pub checks: Vec<CheckStatus>,
}

/// One agent's check, as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AgentCheck {
    pub agent_id: String,
    pub check_name: String,
    pub version: i64,
    pub state: String,
    pub reason: Option<String>,
    pub reported_at: DateTime<Utc>,
}

/// An agent that takes central checks, and the set version it last
/// reported on.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CheckReporter {
    pub agent_id: String,
    pub last_seen: DateTime<Utc>,
    pub checks_set_version: Option<i64>,
}

impl CheckReporter {
    /// Whether it has not reported on set `version` yet.
    pub fn behind(&self, version: i64) -> bool {
        self.checks_set_version
            .is_none_or(|reported| reported < version)
    }
}

impl Store {
    /// Replaces `agent_id`'s report with `report`.
    pub async fn record_checks_applied(
        &self,
        agent_id: &str,
        report: &ChecksReport,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM agent_checks WHERE agent_id = $1")
            .bind(agent_id)
            .execute(&mut *tx)
            .await?;
        let names: Vec<&str> = report.checks.iter().map(|c| c.name.as_str()).collect();
        let versions: Vec<i64> = report.checks.iter().map(|c| c.version).collect();
        let states: Vec<&str> = report
            .checks
            .iter()
            .map(|c| match c.refused {
                Some(_) => CheckState::Refused.as_str(),
                None => CheckState::Running.as_str(),
            })
            .collect();
        let reasons: Vec<Option<&str>> =
            report.checks.iter().map(|c| c.refused.as_deref()).collect();
        sqlx::query(
            "INSERT INTO agent_checks (agent_id, check_name, version, state, reason)
             SELECT $1, * FROM UNNEST($2::text[], $3::int8[], $4::text[], $5::text[])
             ON CONFLICT (agent_id, check_name) DO NOTHING",
        )
        .bind(agent_id)
        .bind(&names)
        .bind(&versions)
        .bind(&states)
        .bind(&reasons)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE agents SET checks_set_version = $2, checks_reported_at = now()
             WHERE agent_id = $1",
        )
        .bind(agent_id)
        .bind(report.set_version)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Every agent's check, by agent and check.
    pub async fn agent_checks(&self) -> Result<Vec<AgentCheck>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT agent_id, check_name, version, state, reason, reported_at
             FROM agent_checks ORDER BY agent_id, check_name",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// The unrevoked agents that take central checks and were seen since
    /// `since`, with the set version each last reported on.
    pub async fn check_reporters(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<CheckReporter>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT agent_id, last_seen, checks_set_version FROM agents
             WHERE revoked_at IS NULL AND last_seen >= $1
               AND 'central_checks' = ANY(capabilities)
             ORDER BY agent_id",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await?)
    }
}
