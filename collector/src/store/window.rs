//! The detector's window reads: the window's probes grouped by every
//! dimension's source and by time slot, either all of them (a rebuild) or
//! only those committed since an earlier read (an update), each with the
//! snapshot it saw. What the detector keeps of them is its own
//! ([`crate::detector::window`]).

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{Store, StoreError};
use crate::detect::cells::{CellCounts, CellKey};

/// One row of a window read: a cell's probes in one time slot (a
/// quarter of their round).
#[derive(Debug, Clone, PartialEq)]
pub struct SlotRow {
    pub key: CellKey,
    /// `started_at` in ms since the epoch, divided by the slot's length.
    pub slot: i64,
    pub counts: CellCounts,
}

/// A window read: its rows and the snapshot it saw (`pg_snapshot` text),
/// from which the next read continues.
#[derive(Debug, Clone)]
pub struct SlotRead {
    pub rows: Vec<SlotRow>,
    pub snapshot: String,
    /// The transactions read back whole ([`Excluded::read_back`]).
    pub read_back: Vec<i64>,
}

/// What an update read leaves out: transactions whose results the
/// detector counts from elsewhere (`detector::feed`); and transactions it
/// reads back whole, whatever the previous snapshot saw of them.
#[derive(Debug, Clone, Default)]
pub struct Excluded {
    /// Left out (`read_back` is among them).
    pub xids: Vec<i64>,
    pub read_back: Vec<i64>,
}

/// The time slot of a probe started at `at` in a round of `interval_ms`,
/// computed as the window read does (`date_part` is a double, the cast to
/// int8 rounds half to even, the division truncates).
pub fn slot_of(at: DateTime<Utc>, interval_ms: i32) -> i64 {
    let ms = (at.timestamp_micros() as f64 / 1_000_000.0 * 1000.0).round_ties_even() as i64;
    ms / i64::from((interval_ms / SLOTS_PER_ROUND).max(1))
}

/// Slots per round: a probe's age is known to a quarter of a round.
const SLOTS_PER_ROUND: i32 = 4;

/// Settings of a window read, local to its transaction:
/// - one snapshot for the read and the snapshot it reports;
/// - the groups are few (thousands) but the planner multiplies the
///   distinct counts of 20 grouping columns, expects millions, and sorts
///   the whole window instead of hashing it (37 s instead of about 5 at
///   10 M rows): hashing is right whatever it estimates;
/// - JIT compiling the expressions took 0.6-0.7 s of every large read and
///   saved nothing;
/// - a parallel scan computes the sources on every core (1.75 s instead
///   of 2.4 s for 1 M rows); the planner's default costs never chose it.
const WINDOW_PLANNER: &str = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY; \
     SET LOCAL work_mem = '64MB'; SET LOCAL enable_sort = off; SET LOCAL jit = off; \
     SET LOCAL parallel_setup_cost = 0; SET LOCAL parallel_tuple_cost = 0";

/// Summarises the BRIN ranges of `ingest_xid` written since the last time,
/// in the partitions from the window's start on, after every read, so
/// that the next read of new results skips every page this one could see
/// (a range not yet summarised is read whole). Autovacuum does it too, a
/// minute or so late. Gives up rather than wait behind a vacuum of the
/// same partition.
const SUMMARIZE_NEW: &str = "SELECT count(brin_summarize_new_values(x.indexrelid))
     FROM pg_inherits i
     JOIN pg_index x ON x.indexrelid = i.inhrelid
     JOIN pg_class t ON t.oid = x.indrelid
     WHERE i.inhparent = 'probe_results_ingest_xid'::regclass
       AND t.relname >= 'probe_results_p' || to_char($1 AT TIME ZONE 'UTC', 'YYYYMMDD')";

/// Which rows of the window a read takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Filter {
    /// All of them.
    Whole,
    /// Those committed after `$3` (a snapshot), but for the transactions
    /// in `$4`.
    Since,
    /// Those of the transactions in `$3`.
    ReadBack,
}

/// Columns of a window read before the dimension sources.
const FIXED_COLUMNS: usize = 9;

/// A window read: one aggregate over the window's partitions (scheduled
/// probes and the detector's confirmation probes; a person's one-off
/// probes are not statistics), grouped by target, check, outcome, status,
/// vantage, round, whether they were confirmation probes, time slot and
/// every source. `$1`: the window's start; `$2`: the round of results
/// that do not say theirs (ms); then as [`Filter`] says. The window's end
/// is the pass's business: a read takes everything committed.
fn slots_sql(sources: &[&'static str], filter: Filter) -> String {
    // Byte-order collation: grouping needs equality, not language order,
    // and "C" compares text several times faster than a locale does.
    let mut select = format!(
        "SELECT url COLLATE \"C\", check_name COLLATE \"C\", outcome COLLATE \"C\",
                COALESCE(http_status, proxy_status), agent_id COLLATE \"C\",
                vantage COLLATE \"C\", COALESCE(interval_ms, $2::int4),
                request_id IS NOT NULL,
                (date_part('epoch', started_at) * 1000)::int8
                    / greatest(COALESCE(interval_ms, $2::int4) / {SLOTS_PER_ROUND}, 1)",
    );
    for s in sources {
        select.push_str(&format!(", ({s})::text COLLATE \"C\""));
    }
    let group: Vec<String> = (1..=FIXED_COLUMNS + sources.len())
        .map(|i| i.to_string())
        .collect();
    let new = match filter {
        Filter::Whole => "",
        // New since the previous read: stored by a transaction that read
        // did not see (whatever order transactions committed in); the
        // lower bound lets the BRIN index skip everything older.
        Filter::Since => {
            "AND ingest_xid >= pg_snapshot_xmin($3::text::pg_snapshot)::text::int8
           AND NOT pg_visible_in_snapshot(ingest_xid::text::xid8, $3::text::pg_snapshot)
           AND ingest_xid <> ALL ($4::int8[])"
        }
        Filter::ReadBack => "AND ingest_xid = ANY ($3::int8[])",
    };
    format!(
        "{select}, count(*), min(started_at), max(started_at), max(seq)
         FROM probe_results
         WHERE started_at > $1 {new}
           AND (request_id IS NULL OR request_id = ANY (ARRAY(
                  SELECT id FROM probe_requests WHERE purpose = 'confirmation')))
         GROUP BY {}",
        group.join(", ")
    )
}

impl Store {
    /// The window's probes started after `start`, grouped by the given SQL
    /// `sources` (text-valued expressions over `probe_results`, taken from
    /// the dimension table, never from input), the cell's identity and
    /// time slot: all of them, or with `since` (a previous read's
    /// snapshot) only those committed after it, but for the transactions
    /// `excluding` names once the read's snapshot is taken (and with those
    /// it names to read back). One scan of the window's partitions, or of
    /// the pages written since.
    pub async fn window_slots(
        &self,
        start: DateTime<Utc>,
        sources: &[&'static str],
        default_round_ms: i64,
        since: Option<&str>,
        excluding: &(dyn Fn() -> Excluded + Sync),
    ) -> Result<SlotRead, StoreError> {
        let mut tx = self.window_transaction().await?;
        let snapshot: String = sqlx::query_scalar("SELECT pg_current_snapshot()::text")
            .fetch_one(&mut *tx)
            .await?;
        let (rows, read_back) = match since {
            None => {
                let rows = read(&mut tx, sources, start, default_round_ms, Bind::Whole).await?;
                (rows, Vec::new())
            }
            Some(since) => {
                let excluded = excluding();
                let bind = Bind::Since(since, &excluded.xids);
                let mut rows = read(&mut tx, sources, start, default_round_ms, bind).await?;
                if !excluded.read_back.is_empty() {
                    let bind = Bind::ReadBack(&excluded.read_back);
                    rows.extend(read(&mut tx, sources, start, default_round_ms, bind).await?);
                }
                (rows, excluded.read_back)
            }
        };
        tx.commit().await?;
        // Off the pass's path: the next update read then skips the pages
        // this one read. (Summarised before the read, as until 2026-12-02,
        // it cost that read as much again: the new pages are read whole
        // either way.)
        tokio::spawn(summarize_new_ranges(self.pool.clone(), start));
        let fixed = FIXED_COLUMNS;
        let n = fixed + sources.len();
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let mut values = Vec::with_capacity(sources.len());
            for i in 0..sources.len() {
                values.push(row.try_get::<Option<String>, _>(fixed + i)?);
            }
            out.push(SlotRow {
                key: CellKey {
                    target: row.try_get(0)?,
                    check: row.try_get(1)?,
                    outcome: row.try_get(2)?,
                    status: row.try_get(3)?,
                    agent_id: row.try_get(4)?,
                    vantage: row.try_get(5)?,
                    interval_ms: row.try_get(6)?,
                    confirmation: row.try_get(7)?,
                    sources: values,
                },
                slot: row.try_get(8)?,
                counts: CellCounts {
                    probes: row.try_get(n)?,
                    first_at: row.try_get(n + 1)?,
                    last_at: row.try_get(n + 2)?,
                    last_seq: row.try_get(n + 3)?,
                },
            });
        }
        Ok(SlotRead {
            rows: out,
            snapshot,
            read_back,
        })
    }

    /// The query plan of [`Self::window_slots`] (`EXPLAIN (FORMAT JSON)`,
    /// with `ANALYZE` if asked), for the benchmark; an update read leaves
    /// nothing out.
    pub async fn explain_window_slots(
        &self,
        start: DateTime<Utc>,
        sources: &[&'static str],
        default_round_ms: i64,
        since: Option<&str>,
        analyze: bool,
    ) -> Result<serde_json::Value, StoreError> {
        let options = if analyze {
            "ANALYZE, BUFFERS, FORMAT JSON"
        } else {
            "FORMAT JSON"
        };
        let bind = match since {
            Some(since) => Bind::Since(since, &[]),
            None => Bind::Whole,
        };
        let sql = format!("EXPLAIN ({options}) {}", slots_sql(sources, bind.filter()));
        let mut tx = self.window_transaction().await?;
        let rows = run(&mut tx, sql, start, default_round_ms, bind).await?;
        tx.commit().await?;
        match rows.first() {
            Some(row) => Ok(row.try_get(0)?),
            None => Ok(serde_json::Value::Null),
        }
    }

    /// A transaction for a window read: one snapshot for the read and the
    /// snapshot it reports, and the aggregate's planner settings.
    async fn window_transaction(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::raw_sql(WINDOW_PLANNER).execute(&mut *tx).await?;
        Ok(tx)
    }
}

/// See [`SUMMARIZE_NEW`]; a failure only makes the next read slower.
async fn summarize_new_ranges(pool: sqlx::PgPool, start: DateTime<Utc>) {
    let summarized = async {
        let mut tx = pool.begin().await?;
        sqlx::raw_sql("SET LOCAL lock_timeout = '100ms'")
            .execute(&mut *tx)
            .await?;
        sqlx::query(SUMMARIZE_NEW)
            .bind(start)
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    };
    if let Err(error) = summarized.await {
        tracing::debug!(%error, "Cannot summarise the new BRIN ranges; the read scans them.");
    }
}

/// A read's parameters after the window's start and default round.
#[derive(Clone, Copy)]
enum Bind<'a> {
    Whole,
    /// The previous read's snapshot; transactions left out.
    Since(&'a str, &'a [i64]),
    /// Transactions read back.
    ReadBack(&'a [i64]),
}

impl Bind<'_> {
    fn filter(self) -> Filter {
        match self {
            Self::Whole => Filter::Whole,
            Self::Since(..) => Filter::Since,
            Self::ReadBack(_) => Filter::ReadBack,
        }
    }
}

/// Runs the window read of `sources` with `bind` in `tx`.
async fn read(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    sources: &[&'static str],
    start: DateTime<Utc>,
    default_round_ms: i64,
    bind: Bind<'_>,
) -> Result<Vec<sqlx::postgres::PgRow>, StoreError> {
    let sql = slots_sql(sources, bind.filter());
    run(tx, sql, start, default_round_ms, bind).await
}

/// Runs a window read's `sql` (or its EXPLAIN) with its parameters (see
/// [`slots_sql`]) in `tx`.
async fn run(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    sql: String,
    start: DateTime<Utc>,
    default_round_ms: i64,
    bind: Bind<'_>,
) -> Result<Vec<sqlx::postgres::PgRow>, StoreError> {
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(start)
        .bind(i32::try_from(default_round_ms).unwrap_or(i32::MAX));
    query = match bind {
        Bind::Whole => query,
        Bind::Since(since, left_out) => query.bind(since).bind(left_out),
        Bind::ReadBack(xids) => query.bind(xids),
    };
    Ok(query.fetch_all(&mut **tx).await?)
}
