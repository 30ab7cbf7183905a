//! The daily partitions of `result_rows` (the rows of `probe_results`):
//! created ahead and on demand, dropped whole past the raw retention (each
//! day rolled up first), with the result contexts no kept day uses.

use chrono::{DateTime, Days, NaiveDate, Utc};

use sqlx::{Postgres, Transaction};

use super::expiry::{drop_partition, expired};
use super::{Store, StoreError, rollup};

impl Store {
    /// Makes sure the daily partitions from `days_back` days ago to
    /// `days_ahead` days ahead exist.
    pub async fn ensure_partitions_around(
        &self,
        now: DateTime<Utc>,
        days_back: u64,
        days_ahead: u64,
    ) -> Result<(), StoreError> {
        let today = now.date_naive();
        let first = today
            .checked_sub_days(Days::new(days_back))
            .unwrap_or(today);
        let days: Vec<NaiveDate> = first
            .iter_days()
            .take(usize::try_from(days_back + days_ahead + 1).unwrap_or(1))
            .collect();
        self.ensure_partitions(&days).await
    }

    /// Creates the daily partitions for `days` that do not exist yet.
    pub async fn ensure_partitions(&self, days: &[NaiveDate]) -> Result<(), StoreError> {
        let missing: Vec<NaiveDate> = {
            let known = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
            days.iter()
                .filter(|d| !known.contains(d))
                .copied()
                .collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        create(
            &self.pool,
            RESULT_DAYS_LOCK,
            "ensure_result_rows_partition",
            &missing,
        )
        .await?;
        self.partitions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(missing);
        Ok(())
    }

    /// Drops the daily partitions of `result_rows` whose whole day ended
    /// before `cutoff` (whole tables: no row-by-row DELETE, no bloat),
    /// each rolled up whole into `probe_rollups` first, in the same
    /// transaction (its late results included); the names dropped, oldest
    /// first.
    pub async fn drop_partitions_before(
        &self,
        cutoff: DateTime<Utc>,
    ) -> Result<Vec<String>, StoreError> {
        let mut tx = self.pool.begin().await?;
        lock_result_days(&mut tx).await?;
        let mut dropped = Vec::new();
        for (name, start, end) in expired(&mut tx, "result_rows", day_range, cutoff).await? {
            rollup::roll_up_in(&mut tx, start, end).await?;
            drop_partition(&mut tx, &name).await?;
            self.partitions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&start.date_naive());
            dropped.push(name);
        }
        // The contexts only the dropped days used (a context's last_used
        // is the latest day a result of it started on).
        sqlx::query("DELETE FROM result_contexts WHERE last_used < $1::date")
            .bind(cutoff.date_naive())
            .execute(&mut *tx)
            .await?;
        // Path traces follow their results out (few rows: traces run on
        // request, for confirmations and on a check's path_interval).
        sqlx::query("DELETE FROM path_results WHERE started_at < $1")
            .bind(cutoff)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(dropped)
    }
}

/// The advisory lock under which the days of results are created,
/// compacted and dropped.
const RESULT_DAYS_LOCK: &str = "vantage.probe_results.partitions";

/// Takes [`RESULT_DAYS_LOCK`] for the rest of `tx`.
pub(super) async fn lock_result_days(tx: &mut Transaction<'_, Postgres>) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(RESULT_DAYS_LOCK)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The day a daily partition's digits (`YYYYMMDD`) name, as its range.
pub(super) fn day_range(digits: &str) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let day = NaiveDate::parse_from_str(digits, "%Y%m%d").ok()?;
    Some((
        day.and_hms_opt(0, 0, 0)?.and_utc(),
        day.succ_opt()?.and_hms_opt(0, 0, 0)?.and_utc(),
    ))
}

/// Creates one partition per value of `missing` (the SQL function
/// `ensure`, which creates it if missing, with the value), in one
/// transaction under the advisory lock `lock`: collectors sharing a
/// database serialise their partition DDL, since concurrent CREATE ... IF
/// NOT EXISTS can still collide on the catalogs.
pub(super) async fn create<T>(
    pool: &sqlx::PgPool,
    lock: &str,
    ensure: &'static str,
    missing: &[T],
) -> Result<(), StoreError>
where
    T: for<'q> sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres> + Sync,
{
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(lock)
        .execute(&mut *tx)
        .await?;
    let call = format!("SELECT {ensure}($1)");
    for value in missing {
        sqlx::query(sqlx::AssertSqlSafe(call.as_str()))
            .bind(value)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}
