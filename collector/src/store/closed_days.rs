//! Closed days of results (`result_rows`, the rows of `probe_results`):
//! days that ended longer ago than the ingest accepts results for, so that
//! no row can arrive for them any more, compacted. Their secondary
//! indexes are dropped (the primary key stays, as the parent's) and, where
//! the columnar access method is installed, their rows are rewritten
//! columnar with zstd: beside the day, which stays readable, then swapped
//! in a moment (on Citus, by Citus's own function, shard by shard).
//! Migrations `20261208000001_closed_days.sql` and
//! `20261209000001_result_contexts.sql`.
//! The views, the roll-up and retention read and drop a compacted day as
//! any other.

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

/// The session advisory lock a collector holds while it compacts: a second
/// collector leaves the compaction to it.
const COMPACTION_LOCK: &str = "vantage.probe_results.compaction";

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

    /// Compacts the days of `result_rows` that ended at or before
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
                                WHERE logicalrelid = 'result_rows'::regclass)",
            )
            .fetch_one(&self.pool)
            .await?;
        let closed = {
            let mut tx = self.pool.begin().await?;
            let days =
                super::expiry::expired(&mut tx, "result_rows", partitions::day_range, cutoff)
                    .await?;
            tx.commit().await?;
            days
        };
        let mut compacted = Vec::new();
        for (name, start, end) in closed {
            let state: Option<(String, bool)> = sqlx::query_as(
                "SELECT am.amname::text,
                        EXISTS (SELECT 1 FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
                                WHERE x.indrelid = c.oid
                                  AND i.relname IN (c.relname || '_context',
                                                    c.relname || '_started'))
                 FROM pg_class c JOIN pg_am am ON am.oid = c.relam
                 WHERE c.oid = to_regclass($1)",
            )
            .bind(&name)
            .fetch_optional(&self.pool)
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
            let done = if rewrite && !distributed {
                self.rewrite_beside(&name, start, end).await?
            } else {
                self.compact_in_place(&name, rewrite).await?;
                true
            };
            if done {
                compacted.push((
                    name,
                    if rewrite {
                        Compaction::Columnar
                    } else {
                        Compaction::IndexesDropped
                    },
                ));
            }
        }
        Ok(compacted)
    }

    /// Drops the day's secondary indexes and, for `rewrite` (a distributed
    /// day: Citus rewrites each shard), makes it columnar, in one
    /// transaction that holds the day's partition meanwhile.
    async fn compact_in_place(&self, name: &str, rewrite: bool) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        partitions::lock_result_days(&mut tx).await?;
        // A lock queued behind a long reader would hold up every later
        // query of the table: give up instead, and retry at the next run.
        sqlx::query("SET LOCAL lock_timeout = '2s'")
            .execute(&mut *tx)
            .await?;
        // `expired` names only `result_rows_p<digits>`: safe to splice.
        // One DROP each: Citus drops one distributed index a command.
        for index in ["context", "started"] {
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
            sqlx::query("SELECT alter_table_set_access_method($1, 'columnar')")
                .bind(name)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Rewrites the day columnar beside it and swaps the copy in: the
    /// copy is built while the day stays readable (a rewrite in place
    /// would lock it, and with it every query of the whole table that the
    /// planner cannot prune to other days, for as long as it runs), then a
    /// moment's swap (detach, attach, drop). No row can arrive for a
    /// closed day meanwhile. Whether it was done: another collector
    /// compacting, or a swap that could not get its lock in time, leaves
    /// it to the next run.
    async fn rewrite_beside(
        &self,
        name: &str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let staged = format!("{name}_columnar");
        let mut conn = self.pool.acquire().await?;
        let ours: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1))")
            .bind(COMPACTION_LOCK)
            .fetch_one(&mut *conn)
            .await?;
        if !ours {
            return Ok(false);
        }
        let result = async {
            // `name` is `result_rows_p<digits>` and `staged` made from
            // it: safe to splice. The rows keep their order (arrival:
            // about time, in runs of one agent's batch), which compresses
            // better than sorting by time (81 against 90 bytes a result in
            // the storage bench at 2 M results).
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            sqlx::query("SET LOCAL columnar.compression = 'zstd'")
                .execute(&mut *tx)
                .await?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP TABLE IF EXISTS {staged};
                 CREATE TABLE {staged} (LIKE {name} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
                     USING columnar;
                 INSERT INTO {staged} SELECT * FROM {name};
                 ALTER TABLE {staged} ADD CONSTRAINT {staged}_pkey
                     PRIMARY KEY (agent_id, seq, started_at);
                 CREATE INDEX {staged}_request_id_idx ON {staged} (request_id)
                     WHERE request_id IS NOT NULL"
            )))
            .execute(&mut *tx)
            .await?;
            // The day's bounds as a constraint: ATTACH then needs no scan.
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "ALTER TABLE {staged} ADD CONSTRAINT {staged}_day
                     CHECK (started_at >= '{start}' AND started_at < '{end}')",
                start = start.to_rfc3339(),
                end = end.to_rfc3339()
            )))
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;

            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            partitions::lock_result_days(&mut tx).await?;
            sqlx::query("SET LOCAL lock_timeout = '2s'")
                .execute(&mut *tx)
                .await?;
            let still_there: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
                .bind(name)
                .fetch_one(&mut *tx)
                .await?;
            if !still_there {
                // Dropped by retention meanwhile.
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP TABLE {staged}")))
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                return Ok::<bool, StoreError>(false);
            }
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "ALTER TABLE result_rows DETACH PARTITION {name};
                 ALTER TABLE result_rows ATTACH PARTITION {staged}
                     FOR VALUES FROM ('{start}') TO ('{end}');
                 DROP TABLE {name};
                 ALTER TABLE {staged} DROP CONSTRAINT {staged}_day;
                 ALTER TABLE {staged} RENAME TO {name};
                 ALTER INDEX {staged}_pkey RENAME TO {name}_pkey;
                 ALTER INDEX {staged}_request_id_idx RENAME TO {name}_request_id_idx",
                start = start.to_rfc3339(),
                end = end.to_rfc3339()
            )))
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(true)
        }
        .await;
        let unlocked = sqlx::query("SELECT pg_advisory_unlock(hashtext($1))")
            .bind(COMPACTION_LOCK)
            .execute(&mut *conn)
            .await;
        match result {
            // A swap that waited too long for its lock is tried again at
            // the next run (the copy is rebuilt).
            Err(StoreError::Database(e)) if is_lock_timeout(&e) => Ok(false),
            other => {
                unlocked?;
                other
            }
        }
    }
}

/// Whether `e` is PostgreSQL's lock timeout (55P03).
fn is_lock_timeout(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("55P03"))
}
