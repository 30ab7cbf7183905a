//! The detector's window query: one aggregate over the window's
//! partitions, grouped by every dimension's source and age bucket.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{Store, StoreError};

/// Probes of one target in the detection window that agree on every
/// dimension's source value, status, outcome, vantage and age bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowCell {
    pub target: String,
    pub check: String,
    pub outcome: String,
    /// The HTTP status, or the forward proxy's refusal status.
    pub status: Option<i16>,
    pub agent_id: String,
    pub vantage: String,
    /// One per source expression asked for.
    pub sources: Vec<Option<String>>,
    /// The check's interval (the default round when unknown), ms.
    pub interval_ms: i32,
    /// How old, in rounds: the `width_bucket` over the thresholds asked
    /// for (0: the last round).
    pub bucket: i32,
    pub probes: i64,
    pub first_at: DateTime<Utc>,
    pub last_at: DateTime<Utc>,
    /// The newest result's sequence number (a sample result id).
    pub last_seq: i64,
    /// Confirmation probes the detector asked for (not scheduled ones).
    pub confirmation: bool,
}

/// Planner settings for the window query's aggregate, local to its
/// transaction: the groups are few (thousands) but the planner multiplies
/// the distinct counts of 20 grouping columns, expects millions, and sorts
/// the whole window instead of hashing it (37 s instead of about 5 at 10 M
/// rows). Hashing is right whatever it estimates.
const WINDOW_PLANNER: &str = "SET LOCAL work_mem = '64MB'; SET LOCAL enable_sort = off";

/// Columns of the window query before the dimension sources.
const WINDOW_FIXED_COLUMNS: usize = 9;

/// The window query: one aggregate over the window's partitions (scheduled
/// probes and the detector's confirmation probes; a person's one-off
/// probes are not statistics), grouped
/// by target, check, outcome, status, vantage, round, age bucket, whether
/// they were confirmation probes, and every source. `$1`, `$2`: the window; `$3`: the round of results that do not
/// say theirs (ms); `$4`: the bucket thresholds (rounds).
fn window_sql(sources: &[&'static str]) -> String {
    // Byte-order collation: grouping needs equality, not language order,
    // and "C" compares text several times faster than a locale does.
    let mut select = String::from(
        "SELECT url COLLATE \"C\", check_name COLLATE \"C\", outcome COLLATE \"C\",
                COALESCE(http_status, proxy_status), agent_id COLLATE \"C\",
                vantage COLLATE \"C\", COALESCE(interval_ms, $3::int4),
                width_bucket(floor(extract(epoch FROM $2 - started_at) * 1000
                                   / COALESCE(interval_ms, $3::int4))::int4, $4::int4[]),
                request_id IS NOT NULL",
    );
    for s in sources {
        select.push_str(&format!(", ({s})::text COLLATE \"C\""));
    }
    let group: Vec<String> = (1..=WINDOW_FIXED_COLUMNS + sources.len())
        .map(|i| i.to_string())
        .collect();
    format!(
        "{select}, count(*), min(started_at), max(started_at), max(seq)
         FROM probe_results
         WHERE started_at > $1 AND started_at <= $2
           AND (request_id IS NULL OR request_id IN (
                  SELECT id FROM probe_requests WHERE purpose = 'confirmation'))
         GROUP BY {}",
        group.join(", ")
    )
}

impl Store {
    /// The probes of every target in `(start, end]`, grouped by the given
    /// SQL `sources` (text-valued expressions over `probe_results`, taken
    /// from the dimension table, never from input) plus target, check,
    /// outcome, status, vantage, round and age bucket. One scan of the
    /// window's partitions.
    pub async fn window_cells(
        &self,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        sources: &[&'static str],
        default_round_ms: i64,
        thresholds: &[u32],
    ) -> Result<Vec<WindowCell>, StoreError> {
        let fixed = WINDOW_FIXED_COLUMNS;
        let sql = window_sql(sources);
        let rows = self
            .window_query(sql, start, end, default_round_ms, thresholds)
            .await?;
        let mut cells = Vec::with_capacity(rows.len());
        for row in rows {
            let mut values = Vec::with_capacity(sources.len());
            for i in 0..sources.len() {
                values.push(row.try_get::<Option<String>, _>(fixed + i)?);
            }
            let n = fixed + sources.len();
            cells.push(WindowCell {
                target: row.try_get(0)?,
                check: row.try_get(1)?,
                outcome: row.try_get(2)?,
                status: row.try_get(3)?,
                agent_id: row.try_get(4)?,
                vantage: row.try_get(5)?,
                interval_ms: row.try_get(6)?,
                bucket: row.try_get(7)?,
                confirmation: row.try_get(8)?,
                sources: values,
                probes: row.try_get(n)?,
                first_at: row.try_get(n + 1)?,
                last_at: row.try_get(n + 2)?,
                last_seq: row.try_get(n + 3)?,
            });
        }
        Ok(cells)
    }

    /// The query plan of [`Self::window_cells`] (`EXPLAIN (FORMAT JSON)`,
    /// with `ANALYZE` if asked), for the benchmark.
    pub async fn explain_window_cells(
        &self,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        sources: &[&'static str],
        default_round_ms: i64,
        thresholds: &[u32],
        analyze: bool,
    ) -> Result<serde_json::Value, StoreError> {
        let options = if analyze {
            "ANALYZE, BUFFERS, FORMAT JSON"
        } else {
            "FORMAT JSON"
        };
        let sql = format!("EXPLAIN ({options}) {}", window_sql(sources));
        let rows = self
            .window_query(sql, start, end, default_round_ms, thresholds)
            .await?;
        match rows.first() {
            Some(row) => Ok(row.try_get(0)?),
            None => Ok(serde_json::Value::Null),
        }
    }

    /// Runs the window query `sql` (or its EXPLAIN) with its planner
    /// settings and parameters, in a transaction of its own.
    async fn window_query(
        &self,
        sql: String,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        default_round_ms: i64,
        thresholds: &[u32],
    ) -> Result<Vec<sqlx::postgres::PgRow>, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::raw_sql(WINDOW_PLANNER).execute(&mut *tx).await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(start)
            .bind(end)
            .bind(i32::try_from(default_round_ms).unwrap_or(i32::MAX))
            .bind(thresholds_param(thresholds))
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(rows)
    }
}

/// The thresholds as the `int4[]` parameter.
fn thresholds_param(thresholds: &[u32]) -> Vec<i32> {
    thresholds
        .iter()
        .map(|t| i32::try_from(*t).unwrap_or(i32::MAX))
        .collect()
}
