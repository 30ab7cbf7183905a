//! Agents: enrolment, revocation, the listing, the token lookup, and
//! what each said in its last Hello.

use std::collections::BTreeMap;
use std::net::IpAddr;

use chrono::{DateTime, Utc};

use super::{Store, StoreError};

/// What the agent said in its Hello, plus where it came from. Its identity
/// and region come from the credential ([`EnrolledAgent`]), not from here.
#[derive(Debug, Clone)]
pub struct AgentHello {
    pub agent_id: String,
    pub labels: BTreeMap<String, String>,
    pub version: String,
    pub observed_ip: IpAddr,
    /// What it can do beyond delivering results (`central_checks`,
    /// `probe_requests`).
    pub capabilities: Vec<String>,
    /// Its vantages and their regions.
    pub vantages: Vec<(String, String)>,
}

/// An agent as enrolled, found by its token's hash.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct EnrolledAgent {
    pub agent_id: String,
    pub region: String,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// One line of `vantage-collector agent list`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AgentListing {
    pub agent_id: String,
    pub region: String,
    pub enrolled_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_seen: DateTime<Utc>,
    pub last_seq: i64,
    pub version: String,
}

impl Store {
    /// Enrols `agent_id` in `region` with the token whose SHA-256 is
    /// `token_sha256`; re-enrolling replaces the token and lifts a
    /// revocation. Returns whether the agent was new.
    pub async fn enrol_agent(
        &self,
        agent_id: &str,
        region: &str,
        token_sha256: &str,
    ) -> Result<bool, StoreError> {
        let inserted: bool = sqlx::query_scalar(
            "INSERT INTO agents (agent_id, region, token_sha256, enrolled_at)
             VALUES ($1, $2, $3, now())
             ON CONFLICT (agent_id) DO UPDATE SET
                region = EXCLUDED.region, token_sha256 = EXCLUDED.token_sha256,
                enrolled_at = EXCLUDED.enrolled_at, revoked_at = NULL
             RETURNING (xmax = 0)",
        )
        .bind(agent_id)
        .bind(region)
        .bind(token_sha256)
        .fetch_one(&self.pool)
        .await?;
        Ok(inserted)
    }

    /// Revokes an agent's token; returns false if no such agent is enrolled.
    pub async fn revoke_agent(&self, agent_id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE agents SET revoked_at = now()
             WHERE agent_id = $1 AND token_sha256 IS NOT NULL AND revoked_at IS NULL",
        )
        .bind(agent_id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(done > 0)
    }

    /// Every agent the collector knows, enrolled or not.
    pub async fn list_agents(&self) -> Result<Vec<AgentListing>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT agent_id, region, enrolled_at, revoked_at, last_seen, last_seq, version
             FROM agents ORDER BY agent_id",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// The agent holding the token with this SHA-256, if any.
    pub async fn agent_by_token(
        &self,
        token_sha256: &str,
    ) -> Result<Option<EnrolledAgent>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT agent_id, region, revoked_at FROM agents WHERE token_sha256 = $1",
        )
        .bind(token_sha256)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Records an enrolled agent's Hello; returns its last committed seq,
    /// never above `ceiling`: a progress row a forged result pushed past it
    /// (before the ceiling was enforced) is repaired from what is stored.
    pub async fn record_hello(&self, hello: &AgentHello, ceiling: i64) -> Result<u64, StoreError> {
        let labels = serde_json::to_value(&hello.labels).unwrap_or_default();
        let last_seq: i64 = sqlx::query_scalar(
            "UPDATE agents SET labels = $2, version = $3, observed_ip = $4::text::inet,
                               last_seen = now(), capabilities = $5, vantages = $6
             WHERE agent_id = $1
             RETURNING last_seq",
        )
        .bind(&hello.agent_id)
        .bind(labels)
        .bind(&hello.version)
        .bind(hello.observed_ip.to_string())
        .bind(&hello.capabilities)
        .bind(serde_json::json!(
            hello
                .vantages
                .iter()
                .map(|(name, region)| serde_json::json!({"name": name, "region": region}))
                .collect::<Vec<_>>()
        ))
        .fetch_one(&self.pool)
        .await?;
        if last_seq <= ceiling {
            return Ok(u64::try_from(last_seq).unwrap_or(0));
        }
        let repaired: i64 = sqlx::query_scalar(
            "UPDATE agents SET last_seq = GREATEST(
                 (SELECT max(seq) FROM probe_results WHERE agent_id = $1 AND seq <= $2),
                 (SELECT max(last_seq) FROM delivery_gaps WHERE agent_id = $1 AND last_seq <= $2),
                 0)
             WHERE agent_id = $1
             RETURNING last_seq",
        )
        .bind(&hello.agent_id)
        .bind(ceiling)
        .fetch_one(&self.pool)
        .await?;
        tracing::warn!(
            agent_id = %hello.agent_id, stored = last_seq, repaired,
            "The agent's progress was beyond any plausible sequence number (a forged result \
             stored before such results were refused); repaired from its stored results."
        );
        Ok(u64::try_from(repaired).unwrap_or(0))
    }
}
