//! The centrally defined checks and the set's version.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::requests::{ControlNotice, notify};
use super::{Store, StoreError};
use crate::checks::{CentralCheck, Change, Fleet, Selector, diff};

/// One stored check.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredCheck {
    pub name: String,
    pub definition: serde_json::Value,
    pub selector: serde_json::Value,
    pub version: i64,
    pub updated_at: DateTime<Utc>,
}

impl Store {
    /// The stored checks, by name, and the set's version.
    pub async fn central_checks(&self) -> Result<(i64, Vec<StoredCheck>), StoreError> {
        let version = sqlx::query_scalar("SELECT version FROM central_check_set")
            .fetch_one(&self.pool)
            .await?;
        let checks = sqlx::query_as(
            "SELECT name, definition, selector, version, updated_at
             FROM central_checks ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok((version, checks))
    }

    /// What selectors may name: the enrolled, unrevoked agents, their
    /// regions and label keys.
    pub async fn fleet(&self) -> Result<Fleet, StoreError> {
        let rows: Vec<(String, String, serde_json::Value)> =
            sqlx::query_as("SELECT agent_id, region, labels FROM agents WHERE revoked_at IS NULL")
                .fetch_all(&self.pool)
                .await?;
        let mut fleet = Fleet::default();
        for (agent, region, labels) in rows {
            fleet.agents.insert(agent);
            fleet.regions.insert(region);
            if let Some(labels) = labels.as_object() {
                fleet.label_keys.extend(labels.keys().cloned());
            }
        }
        Ok(fleet)
    }

    /// Makes `checks` the whole stored set, in one transaction (two
    /// applies at once are serialised); the changes made and the set's
    /// version after them (unchanged when nothing changed). `dry_run`:
    /// only the changes.
    pub async fn apply_checks(
        &self,
        checks: &[CentralCheck],
        dry_run: bool,
    ) -> Result<(i64, Vec<Change>), StoreError> {
        let mut tx = self.pool.begin().await?;
        let version: i64 = sqlx::query_scalar("SELECT version FROM central_check_set FOR UPDATE")
            .fetch_one(&mut *tx)
            .await?;
        let rows: Vec<(String, serde_json::Value, serde_json::Value)> =
            sqlx::query_as("SELECT name, definition, selector FROM central_checks")
                .fetch_all(&mut *tx)
                .await?;
        let stored: BTreeMap<String, (serde_json::Value, Selector)> = rows
            .into_iter()
            .map(|(name, definition, selector)| {
                let selector = serde_json::from_value(selector).unwrap_or_default();
                (name, (definition, selector))
            })
            .collect();
        let changes = diff(&stored, checks);
        if changes.is_empty() || dry_run {
            tx.rollback().await?;
            return Ok((version, changes));
        }
        let version = version + 1;
        for change in &changes {
            match change {
                Change::Removed(name) => {
                    sqlx::query("DELETE FROM central_checks WHERE name = $1")
                        .bind(name)
                        .execute(&mut *tx)
                        .await?;
                }
                Change::Added(name) | Change::Changed(name, _) => {
                    let Some(check) = checks.iter().find(|c| &c.name == name) else {
                        continue;
                    };
                    sqlx::query(
                        "INSERT INTO central_checks (name, definition, selector, version)
                         VALUES ($1, $2, $3, $4)
                         ON CONFLICT (name) DO UPDATE
                         SET definition = $2, selector = $3, version = $4, updated_at = now()",
                    )
                    .bind(name)
                    .bind(&check.definition)
                    .bind(serde_json::to_value(&check.selector).unwrap_or_default())
                    .bind(version)
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        sqlx::query("UPDATE central_check_set SET version = $1, updated_at = now()")
            .bind(version)
            .execute(&mut *tx)
            .await?;
        notify(&mut tx, ControlNotice::Checks).await?;
        tx.commit().await?;
        Ok((version, changes))
    }

    /// Deletes the check `name`; the set's new version, or `None` when
    /// there was no such check.
    pub async fn delete_check(&self, name: &str) -> Result<Option<i64>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let version: i64 = sqlx::query_scalar("SELECT version FROM central_check_set FOR UPDATE")
            .fetch_one(&mut *tx)
            .await?;
        let deleted = sqlx::query("DELETE FROM central_checks WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            tx.rollback().await?;
            return Ok(None);
        }
        sqlx::query("UPDATE central_check_set SET version = $1, updated_at = now()")
            .bind(version + 1)
            .execute(&mut *tx)
            .await?;
        notify(&mut tx, ControlNotice::Checks).await?;
        tx.commit().await?;
        Ok(Some(version + 1))
    }
}
