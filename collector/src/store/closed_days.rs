//! Closed days of `probe_results`: days that ended longer ago than the
//! ingest accepts results for, so that no row can arrive for them any
//! more, compacted in place. Their secondary indexes are dropped (the
//! primary key stays, as the parent's) and, where the columnar access
//! method is installed, their rows are rewritten columnar with zstd
//! (migration `20261208000001_closed_days.sql`). The views, the roll-up
//! and retention read and drop a compacted day as any other.

use chrono::{DateTime, Utc};

use super::{Store, StoreError, partitions};

/// What compaction did to one closed day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compaction {
    /// Rewritten columnar (zstd); its secondary indexes dropped.
    Columnar,
    /// Its secondary indexes dropped; left a heap, since the database has
    /// no columnar access method.
    IndexesDropped,
}

impl Compaction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Columnar => "columnar",
            Self::IndexesDropped => "indexes_dropped",
        }
    }
}

/// The extension that brings the columnar access method without the rest
/// of Citus (Citus itself installs it too).
const COLUMNAR_EXTENSION: &str = "citus_columnar";

impl Store {
    /// Installs the columnar access method where PostgreSQL has it
    /// available but not installed. Whether it is there afterwards; a
    /// database user without the privilege gets a warning naming what to
    /// run, and closed days stay heaps.
    pub async fn ensure_columnar(&self) -> Result<bool, StoreError> {
        if self.has_columnar().await? {
            return Ok(true);
        }
        let available: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = $1)",
        )
        .bind(COLUMNAR_EXTENSION)
        .fetch_one(&self.pool)
        .await?;
        if !available {
            return Ok(false);
        }
        let created = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE EXTENSION IF NOT EXISTS {COLUMNAR_EXTENSION}"
        )))
        .execute(&self.pool)
        .await;
        if let Err(error) = created {
            tracing::warn!(
                %error,
                "Cannot install the columnar access method: closed days of results stay heaps \
                 (several times larger). A superuser can run CREATE EXTENSION {COLUMNAR_EXTENSION} \
                 in this database."
            );
            return Ok(false);
        }
        self.has_columnar().await
    }

    async fn has_columnar(&self) -> Result<bool, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_am WHERE amname = 'columnar')")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Compacts the days of `probe_results` that ended at or before
    /// `cutoff` and are not compacted yet, oldest first, each in its own
    /// transaction (a day's rewrite holds that day's partition only); the
    /// names compacted and how.
    pub async fn compact_days_before(
        &self,
        cutoff: DateTime<Utc>,
    ) -> Result<Vec<(String, Compaction)>, StoreError> {
        let columnar = self.has_columnar().await?;
        // A distributed partition is rewritten by Citus's own function,
        // which rewrites each shard.
        let citus: bool = sqlx::query_scalar("SELECT to_regclass('pg_dist_partition') IS NOT NULL")
            .fetch_one(&self.pool)
            .await?;
        let distributed = citus
            && sqlx::query_scalar::<_, bool>(
                "SELECT EXISTS (SELECT 1 FROM pg_dist_partition
                                WHERE logicalrelid = 'probe_results'::regclass)",
            )
            .fetch_one(&self.pool)
            .await?;
        let closed = {
            let mut tx = self.pool.begin().await?;
            let days = partitions::expired(&mut tx, "probe_results", partitions::day_range, cutoff)
                .await?;
            tx.commit().await?;
            days
        };
        let mut compacted = Vec::new();
        for (name, _, _) in closed {
            let mut tx = self.pool.begin().await?;
            sqlx::query(
                "SELECT pg_advisory_xact_lock(hashtext('vantage.probe_results.partitions'))",
            )
            .execute(&mut *tx)
            .await?;
            let state: Option<(String, bool)> = sqlx::query_as(
                "SELECT am.amname::text,
                        EXISTS (SELECT 1 FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
                                WHERE x.indrelid = c.oid
                                  AND i.relname IN (c.relname || '_url_started',
                                                    c.relname || '_started'))
                 FROM pg_class c JOIN pg_am am ON am.oid = c.relam
                 WHERE c.oid = to_regclass($1)",
            )
            .bind(&name)
            .fetch_optional(&mut *tx)
            .await?;
            // Gone meanwhile (retention), already columnar, or a heap with
            // nothing left to drop: nothing to do.
            let Some((access_method, indexed)) = state else {
                continue;
            };
            let rewrite = columnar && access_method == "heap";
            if !rewrite && !indexed {
                continue;
            }
            // `expired` names only `probe_results_p<digits>`: safe to
            // splice.
            // One DROP each: Citus drops one distributed index a command.
            for index in ["url_started", "started"] {
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "DROP INDEX IF EXISTS {name}_{index}"
                )))
                .execute(&mut *tx)
                .await?;
            }
            if rewrite {
                sqlx::query("SET LOCAL columnar.compression = 'zstd'")
                    .execute(&mut *tx)
                    .await?;
                if distributed {
                    sqlx::query("SELECT alter_table_set_access_method($1, 'columnar')")
                        .bind(&name)
                        .execute(&mut *tx)
                        .await?;
                } else {
                    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "ALTER TABLE {name} SET ACCESS METHOD columnar"
                    )))
                    .execute(&mut *tx)
                    .await?;
                }
            }
            tx.commit().await?;
            compacted.push((
                name,
                if rewrite {
                    Compaction::Columnar
                } else {
                    Compaction::IndexesDropped
                },
            ));
        }
        Ok(compacted)
    }
}
