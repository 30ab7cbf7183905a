//! The daily partitions of `probe_results`: created ahead and on demand,
//! dropped whole past the raw retention (each day rolled up first).

use chrono::{DateTime, Days, NaiveDate, Utc};

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
        let mut tx = self.pool.begin().await?;
        // Serialise partition DDL between collectors sharing a database;
        // concurrent CREATE ... IF NOT EXISTS can still collide on catalogs.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('vantage.probe_results.partitions'))")
            .execute(&mut *tx)
            .await?;
        for day in &missing {
            sqlx::query("SELECT ensure_probe_results_partition($1)")
                .bind(day)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.partitions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(missing);
        Ok(())
    }

    /// Drops the daily partitions of `probe_results` whose whole day ended
    /// before `cutoff` (whole tables: no row-by-row DELETE, no bloat),
    /// each rolled up whole into `probe_rollups` first, in the same
    /// transaction (its late results included); the names dropped, oldest
    /// first.
    pub async fn drop_partitions_before(
        &self,
        cutoff: DateTime<Utc>,
    ) -> Result<Vec<String>, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('vantage.probe_results.partitions'))")
            .execute(&mut *tx)
            .await?;
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT c.relname::text FROM pg_inherits i
             JOIN pg_class c ON c.oid = i.inhrelid
             JOIN pg_class p ON p.oid = i.inhparent
             WHERE p.relname = 'probe_results' AND c.relname ~ '^probe_results_p[0-9]{8}$'
             ORDER BY c.relname",
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut dropped = Vec::new();
        for name in names {
            let Ok(day) = NaiveDate::parse_from_str(&name["probe_results_p".len()..], "%Y%m%d")
            else {
                continue;
            };
            let day_end = day
                .succ_opt()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|t| t.and_utc());
            if day_end.is_none_or(|end| end > cutoff) {
                continue;
            }
            let day_start = day.and_hms_opt(0, 0, 0).map(|t| t.and_utc());
            if let (Some(start), Some(end)) = (day_start, day_end) {
                rollup::roll_up_in(&mut tx, start, end).await?;
            }
            // The name matched ^probe_results_p[0-9]{8}$: safe to splice.
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {name}")))
                .execute(&mut *tx)
                .await?;
            self.partitions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&day);
            dropped.push(name);
        }
        tx.commit().await?;
        Ok(dropped)
    }
}
