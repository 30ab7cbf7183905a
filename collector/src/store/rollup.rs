//! The per-minute roll-up of `probe_results` (`probe_rollups`): written
//! for a time range (recomputed whole: writing a range twice, or again
//! after late results arrived, gives the rows its raw results give), and
//! its monthly partitions dropped past `retention.rollup`.

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use sqlx::{Postgres, Transaction};

use super::expiry::{drop_partition, expired};
use super::{Store, StoreError};

/// The roll-up of the raw results started in `[$1, $2)`, upserted.
const ROLL_UP: &str = "
    INSERT INTO probe_rollups AS r (
        minute, url, check_name, agent_id, vantage, region, egress_ip, resolver, dialed_ip,
        http_version, outcome, status, gateway, probes,
        dns_us_sum, dns_us_count, connect_us_sum, connect_us_count, tls_us_sum, tls_us_count,
        ttfb_us_sum, ttfb_us_count, total_us_sum, total_us_count,
        total_us_p50, total_us_p95, total_us_max)
    SELECT date_trunc('minute', started_at), url, check_name, agent_id, vantage, region,
           COALESCE(host(egress_ip), ''), COALESCE(resolver, ''), COALESCE(host(dialed_ip), ''),
           COALESCE(http_version, ''), outcome, COALESCE(http_status, proxy_status, 0),
           COALESCE(gateway, ''), count(*),
           COALESCE(sum(dns_us), 0), count(dns_us), COALESCE(sum(connect_us), 0),
           count(connect_us), COALESCE(sum(tls_us), 0), count(tls_us),
           COALESCE(sum(ttfb_us), 0), count(ttfb_us), COALESCE(sum(total_us), 0),
           count(total_us),
           percentile_disc(0.5) WITHIN GROUP (ORDER BY total_us),
           percentile_disc(0.95) WITHIN GROUP (ORDER BY total_us),
           max(total_us)
    FROM probe_results
    WHERE started_at >= $1 AND started_at < $2 AND request_id IS NULL
    GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13
    ON CONFLICT (minute, url, check_name, agent_id, vantage, region, egress_ip, resolver,
                 dialed_ip, http_version, outcome, status, gateway)
    DO UPDATE SET probes = EXCLUDED.probes,
        dns_us_sum = EXCLUDED.dns_us_sum, dns_us_count = EXCLUDED.dns_us_count,
        connect_us_sum = EXCLUDED.connect_us_sum, connect_us_count = EXCLUDED.connect_us_count,
        tls_us_sum = EXCLUDED.tls_us_sum, tls_us_count = EXCLUDED.tls_us_count,
        ttfb_us_sum = EXCLUDED.ttfb_us_sum, ttfb_us_count = EXCLUDED.ttfb_us_count,
        total_us_sum = EXCLUDED.total_us_sum, total_us_count = EXCLUDED.total_us_count,
        total_us_p50 = EXCLUDED.total_us_p50, total_us_p95 = EXCLUDED.total_us_p95,
        total_us_max = EXCLUDED.total_us_max";

/// The first day of every month `[from, to)` touches.
fn months(from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<NaiveDate> {
    let first = |d: NaiveDate| d.with_day(1).unwrap_or(d);
    let mut month = first(from.date_naive());
    let last = first(to.date_naive());
    let mut out = Vec::new();
    while month <= last {
        out.push(month);
        month = month
            .checked_add_months(chrono::Months::new(1))
            .unwrap_or(NaiveDate::MAX);
    }
    out
}

/// Takes the roll-up's lock for the rest of `tx`: one writer of roll-ups
/// (and of their partitions: CREATE TABLE IF NOT EXISTS is not safe
/// against itself) at a time, across collectors.
async fn lock(tx: &mut Transaction<'_, Postgres>) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('vantage.probe_rollups'))")
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Rolls `[from, to)` up inside `tx` (taking the roll-up's lock); the
/// rows written.
pub(super) async fn roll_up_in(
    tx: &mut Transaction<'_, Postgres>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<u64, StoreError> {
    lock(tx).await?;
    for month in months(from, to) {
        sqlx::query("SELECT ensure_probe_rollups_partition($1)")
            .bind(month)
            .execute(&mut **tx)
            .await?;
    }
    Ok(sqlx::query(ROLL_UP)
        .bind(from)
        .bind(to)
        .execute(&mut **tx)
        .await?
        .rows_affected())
}

impl Store {
    /// Rolls the raw results started in `[from, to)` up into
    /// `probe_rollups` (replacing what those minutes had); the rows
    /// written.
    pub async fn roll_up(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let rows = roll_up_in(&mut tx, from, to).await?;
        tx.commit().await?;
        Ok(rows)
    }

    /// Drops the monthly roll-up partitions whose whole month ended before
    /// `cutoff`; the names dropped.
    pub async fn drop_rollup_partitions_before(
        &self,
        cutoff: DateTime<Utc>,
    ) -> Result<Vec<String>, StoreError> {
        let mut tx = self.pool.begin().await?;
        lock(&mut tx).await?;
        let month_range = |digits: &str| {
            let first = NaiveDate::parse_from_str(&format!("{digits}01"), "%Y%m%d").ok()?;
            let next = first.checked_add_months(chrono::Months::new(1))?;
            Some((
                first.and_hms_opt(0, 0, 0)?.and_utc(),
                next.and_hms_opt(0, 0, 0)?.and_utc(),
            ))
        };
        let mut dropped = Vec::new();
        for (name, _, _) in expired(&mut tx, "probe_rollups", month_range, cutoff).await? {
            drop_partition(&mut tx, &name).await?;
            dropped.push(name);
        }
        tx.commit().await?;
        Ok(dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_cover_the_range() {
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let day = |s: &str| s.parse::<NaiveDate>().unwrap();
        assert_eq!(
            months(at("2026-11-30T23:50:00Z"), at("2027-01-01T00:00:00Z")),
            [day("2026-11-01"), day("2026-12-01"), day("2027-01-01")]
        );
        assert_eq!(
            months(at("2026-11-30T23:50:00Z"), at("2026-11-30T23:59:00Z")),
            [day("2026-11-01")]
        );
    }
}
