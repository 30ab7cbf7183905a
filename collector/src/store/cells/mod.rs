//! The detector's cells (migration `20261207000001_detector_cells`): each
//! batch's results counted per cell and time slot by the ingest, written in
//! the batch's own transaction; the keys they refer to; the read of what
//! was committed since a snapshot; their hourly partitions.
//!
//! Why a pass counts every result once, whoever ingested it: a result's
//! cell row commits with the result (the same transaction), and a read
//! takes the rows whose transaction its snapshot shows committed and the
//! previous read's did not (`pg_visible_in_snapshot`), whatever order
//! transactions commit in. On Citus the cells stay on the coordinator, so
//! that is one node's snapshot.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use sqlx::{Postgres, Transaction};

pub mod sources;

use super::expiry::{drop_partition, expired};
use super::partitions;
use super::{Store, StoreError, StoredResult};
use crate::detect::cells::{CellCounts, CellKey};
use crate::detect::dimensions;
use sources::{FedRow, SourceFn, Value, source_fn};

/// The advisory lock under which cell partitions are created and dropped.
const CELL_PARTITIONS_LOCK: &str = "vantage.detector_cells.partitions";

/// Slots per round: a probe's age is known to a quarter of a round.
const SLOTS_PER_ROUND: i32 = 4;

/// How many cell keys a collector remembers the ids of before it starts
/// over (each costs a few hundred bytes; a key not remembered is looked up
/// once more).
const KEY_CACHE: usize = 1 << 20;

/// The time slot of a probe started at `at` in a round of `interval_ms`.
pub fn slot_of(at: DateTime<Utc>, interval_ms: i32) -> i64 {
    at.timestamp_millis() / i64::from((interval_ms / SLOTS_PER_ROUND).max(1))
}

/// One cell's probes in one time slot.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotRow {
    pub key: CellKey,
    /// `started_at` in ms since the epoch, divided by the slot's length.
    pub slot: i64,
    pub counts: CellCounts,
}

/// A cell row as read: its key's id, slot and counts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CellRow {
    pub key_id: i64,
    pub slot: i64,
    pub counts: CellCounts,
}

/// A read of cells, and the snapshot it saw (`pg_snapshot` text), from
/// which the next read continues.
#[derive(Debug, Clone)]
pub struct CellRead {
    pub rows: Vec<CellRow>,
    pub snapshot: String,
}

/// A cell row as the database gives it: key id, slot, probes, first and
/// last start, last seq.
type RawCell = (i64, i64, i32, DateTime<Utc>, DateTime<Utc>, i64);

/// A key as stored: its sources named by their SQL expressions.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredKey {
    pub id: i64,
    /// The key with the sources of the dimension table that wrote it.
    pub key: CellKey,
    pub source_names: Vec<String>,
}

/// How the ingest counts cells: the round of results that do not say
/// theirs, and how old a result may be and still be counted (older ones
/// are outside any detector window; their cells would never be read).
#[derive(Debug, Clone, Copy)]
pub struct CellSettings {
    pub default_round_ms: i32,
    pub max_age: TimeDelta,
}

impl Default for CellSettings {
    fn default() -> Self {
        let d = crate::detect::settings::DetectorSettings::default();
        Self::new(d.default_round, d.window)
    }
}

impl CellSettings {
    /// For a detector with `default_round` and `window`: results as old as
    /// the window and an hour more are counted.
    pub fn new(default_round: std::time::Duration, window: std::time::Duration) -> Self {
        Self {
            default_round_ms: i32::try_from(default_round.as_millis()).unwrap_or(i32::MAX),
            max_age: TimeDelta::from_std(window)
                .unwrap_or(TimeDelta::MAX)
                .checked_add(&TimeDelta::hours(1))
                .unwrap_or(TimeDelta::MAX),
        }
    }
}

/// What the store remembers about cells.
#[derive(Default)]
pub(super) struct CellState {
    settings: Mutex<CellSettings>,
    /// Ids of keys known to be stored.
    key_ids: Mutex<HashMap<CellKey, i64>>,
    /// Hours whose partition is known to exist.
    hours: Mutex<HashSet<DateTime<Utc>>>,
    /// Whether a probe request is a confirmation (counted) or a person's
    /// one-off probe (not statistics).
    confirmations: Mutex<HashMap<i64, bool>>,
}

/// A cell of one batch (whose results share the agent), by what its
/// results lend: compared by the fields of a [`CellKey`] only.
struct CellOf<'r> {
    result: &'r StoredResult,
    status: Option<i16>,
    interval_ms: i32,
    confirmation: bool,
    sources: Vec<Option<Value<'r>>>,
    slot: i64,
}

impl CellOf<'_> {
    fn identity(&self) -> impl Eq + Hash + '_ {
        let r = self.result;
        (
            (
                r.url.as_str(),
                r.check.as_str(),
                r.outcome,
                r.vantage.as_str(),
            ),
            (self.status, self.interval_ms, self.confirmation, self.slot),
            &self.sources,
        )
    }
}

impl PartialEq for CellOf<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.identity() == other.identity()
    }
}

impl Eq for CellOf<'_> {}

impl Hash for CellOf<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.identity().hash(state);
    }
}

/// The sources of the dimension table, as computed from a result.
fn source_fns() -> Vec<SourceFn> {
    dimensions::sources()
        .iter()
        .map(|s| source_fn(s).unwrap_or(|_| None))
        .collect()
}

/// `results` of one agent counted per cell and slot (with `only`, those of
/// these sequence numbers). `confirmation` says whether a requested
/// probe's request is a confirmation (counted) or not (left out); results
/// started before `oldest` are left out.
pub fn count(
    agent_id: &str,
    region: &str,
    results: &[StoredResult],
    only: Option<&HashSet<i64>>,
    settings: CellSettings,
    oldest: DateTime<Utc>,
    confirmation: &dyn Fn(i64) -> bool,
) -> Vec<SlotRow> {
    let fns = source_fns();
    // Grouped by what the results lend first: a cell's key is made once
    // per cell, not once per result.
    let mut cells: HashMap<CellOf<'_>, CellCounts, foldhash::fast::RandomState> =
        HashMap::default();
    for result in results {
        if only.is_some_and(|only| !only.contains(&result.seq)) {
            continue;
        }
        let confirming = match result.request_id {
            Some(id) if confirmation(id) => true,
            Some(_) => continue,
            None => false,
        };
        // As stored: PostgreSQL keeps microseconds.
        let Some(at) = DateTime::from_timestamp_micros(result.started_at.timestamp_micros()) else {
            continue;
        };
        if at < oldest {
            continue;
        }
        let row = FedRow {
            agent_id,
            region,
            result,
        };
        let interval_ms = result.interval_ms.unwrap_or(settings.default_round_ms);
        let cell = CellOf {
            result,
            status: result.http_status.or(result.proxy_status),
            interval_ms,
            confirmation: confirming,
            sources: fns.iter().map(|f| f(&row)).collect(),
            slot: slot_of(at, interval_ms),
        };
        let counts = CellCounts {
            probes: 1,
            first_at: at,
            last_at: at,
            last_seq: result.seq,
        };
        cells
            .entry(cell)
            .and_modify(|c| c.merge(&counts))
            .or_insert(counts);
    }
    cells
        .into_iter()
        .map(|(cell, counts)| SlotRow {
            key: CellKey {
                target: cell.result.url.clone(),
                check: cell.result.check.clone(),
                outcome: cell.result.outcome.to_owned(),
                status: cell.status,
                agent_id: agent_id.to_owned(),
                vantage: cell.result.vantage.clone(),
                interval_ms: cell.interval_ms,
                confirmation: cell.confirmation,
                sources: cell
                    .sources
                    .into_iter()
                    .map(|s| s.as_ref().map(Value::text))
                    .collect(),
            },
            slot: cell.slot,
            counts,
        })
        .collect()
}

/// How far before a window's start a read reaches: the longest slot. A
/// slot is in the window as a whole when its newest probe is (the kept
/// window forgets the others): its rows from before the start are read
/// too, so that a whole read and an update count the same.
const SLOT_MARGIN: &str = "SELECT make_interval(secs => coalesce(max(interval_ms), 0) / 4000.0)
     FROM detector_cell_keys";

/// A window read's settings, local to its transaction: one snapshot for
/// the read and the snapshot it reports.
const READ_TRANSACTION: &str = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY";

impl Store {
    /// How the ingest counts cells from now on.
    pub fn set_cell_settings(&self, settings: CellSettings) {
        *lock(&self.cells.settings) = settings;
    }

    /// A batch's cells, counted as [`count`] does (with `only`, of the
    /// results of these sequence numbers: those that went in).
    pub(super) async fn batch_cells(
        &self,
        agent_id: &str,
        region: &str,
        results: &[StoredResult],
        only: Option<&HashSet<i64>>,
    ) -> Result<Vec<SlotRow>, StoreError> {
        let settings = *lock(&self.cells.settings);
        let requests: Vec<i64> = results.iter().filter_map(|r| r.request_id).collect();
        self.learn_confirmations(&requests).await?;
        // The batch's own requests only: the map holds every request seen.
        let confirmations: HashMap<i64, bool> = {
            let known = lock(&self.cells.confirmations);
            requests
                .iter()
                .map(|id| (*id, known.get(id).copied().unwrap_or(false)))
                .collect()
        };
        let oldest = Utc::now()
            .checked_sub_signed(settings.max_age)
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        Ok(count(
            agent_id,
            region,
            results,
            only,
            settings,
            oldest,
            &|id| confirmations.get(&id).copied().unwrap_or(false),
        ))
    }

    /// Looks up the purpose of the requests in `ids` not known yet.
    async fn learn_confirmations(&self, ids: &[i64]) -> Result<(), StoreError> {
        let unknown: Vec<i64> = {
            let known = lock(&self.cells.confirmations);
            let mut unknown: Vec<i64> = ids
                .iter()
                .copied()
                .filter(|id| !known.contains_key(id))
                .collect();
            unknown.sort_unstable();
            unknown.dedup();
            unknown
        };
        if unknown.is_empty() {
            return Ok(());
        }
        let found: Vec<(i64, bool)> = sqlx::query_as(
            "SELECT id, purpose = 'confirmation' FROM probe_requests WHERE id = ANY ($1)",
        )
        .bind(&unknown)
        .fetch_all(&self.pool)
        .await?;
        let mut known = lock(&self.cells.confirmations);
        if known.len() > KEY_CACHE {
            known.clear();
        }
        // A request that is not there (deleted, or forged) is not counted.
        for id in unknown {
            known.insert(id, false);
        }
        known.extend(found);
        Ok(())
    }

    /// The ids of `rows`' keys, stored where missing. Each new key is
    /// committed at once, outside the batch's transaction, so that other
    /// collectors find it; one a failed batch leaves unused costs nothing.
    pub(super) async fn cell_key_ids(&self, rows: &[SlotRow]) -> Result<Vec<i64>, StoreError> {
        let mut ids = Vec::with_capacity(rows.len());
        let names: Vec<&str> = dimensions::sources();
        for row in rows {
            let known = lock(&self.cells.key_ids).get(&row.key).copied();
            let id = match known {
                Some(id) => id,
                None => {
                    let id = self.store_key(&row.key, &names).await?;
                    let mut cache = lock(&self.cells.key_ids);
                    if cache.len() >= KEY_CACHE {
                        cache.clear();
                    }
                    cache.insert(row.key.clone(), id);
                    id
                }
            };
            ids.push(id);
        }
        Ok(ids)
    }

    async fn store_key(&self, key: &CellKey, names: &[&str]) -> Result<i64, StoreError> {
        const MATCH: &str = "agent_id = $1 AND vantage = $2 AND target = $3 AND check_name = $4
             AND outcome = $5 AND status IS NOT DISTINCT FROM $6 AND interval_ms = $7
             AND confirmation = $8 AND source_names = $9 AND sources = $10";
        let insert = format!(
            "WITH made AS (
                 INSERT INTO detector_cell_keys (agent_id, vantage, target, check_name, outcome,
                     status, interval_ms, confirmation, source_names, sources)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                 ON CONFLICT DO NOTHING RETURNING id)
             SELECT id FROM made
             UNION ALL SELECT id FROM detector_cell_keys WHERE {MATCH}
             LIMIT 1"
        );
        // The same key made by another collector at the same moment is not
        // in this statement's snapshot: the second query sees it.
        for sql in [
            insert,
            format!("SELECT id FROM detector_cell_keys WHERE {MATCH}"),
        ] {
            let id: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .bind(&key.agent_id)
                .bind(&key.vantage)
                .bind(&key.target)
                .bind(&key.check)
                .bind(&key.outcome)
                .bind(key.status)
                .bind(key.interval_ms)
                .bind(key.confirmation)
                .bind(names)
                .bind(&key.sources)
                .fetch_optional(&self.pool)
                .await?;
            if let Some(id) = id {
                return Ok(id);
            }
        }
        Err(StoreError::Encode {
            column: "detector_cell_keys".into(),
            reason: format!(
                "key of {}/{} neither stored nor found",
                key.agent_id, key.vantage
            ),
        })
    }

    /// Makes sure the hourly partitions for `hours` (any instant in each)
    /// exist.
    pub(super) async fn ensure_cell_partitions(
        &self,
        hours: impl IntoIterator<Item = DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        let mut missing: Vec<DateTime<Utc>> = {
            let known = lock(&self.cells.hours);
            hours
                .into_iter()
                .filter_map(|at| at.duration_trunc(TimeDelta::hours(1)).ok())
                .filter(|h| !known.contains(h))
                .collect()
        };
        missing.sort_unstable();
        missing.dedup();
        if missing.is_empty() {
            return Ok(());
        }
        partitions::create(
            &self.pool,
            CELL_PARTITIONS_LOCK,
            "ensure_detector_cells_partition",
            &missing,
        )
        .await?;
        lock(&self.cells.hours).extend(missing);
        Ok(())
    }

    /// The partitions for the hours from `now` to `hours_ahead` hours on.
    pub async fn ensure_cell_partitions_ahead(
        &self,
        now: DateTime<Utc>,
        hours_ahead: i64,
    ) -> Result<(), StoreError> {
        self.ensure_cell_partitions((0..=hours_ahead).map(|h| now + TimeDelta::hours(h)))
            .await
    }

    /// Drops the hourly partitions of cells whose hour ended before
    /// `cutoff`; the names dropped.
    pub async fn drop_cell_partitions_before(
        &self,
        cutoff: DateTime<Utc>,
    ) -> Result<Vec<String>, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(CELL_PARTITIONS_LOCK)
            .execute(&mut *tx)
            .await?;
        let hour_range = |digits: &str| {
            let hour =
                chrono::NaiveDateTime::parse_from_str(&format!("{digits}0000"), "%Y%m%d%H%M%S")
                    .ok()?
                    .and_utc();
            Some((hour, hour + TimeDelta::hours(1)))
        };
        let mut dropped = Vec::new();
        for (name, start, _) in expired(&mut tx, "detector_cells", hour_range, cutoff).await? {
            drop_partition(&mut tx, &name).await?;
            lock(&self.cells.hours).remove(&start);
            dropped.push(name);
        }
        tx.commit().await?;
        Ok(dropped)
    }

    /// The cells whose newest probe is after `start`: all of them, or with
    /// `since` (a previous read's snapshot) those committed after it.
    pub async fn window_cells(
        &self,
        start: DateTime<Utc>,
        since: Option<&str>,
    ) -> Result<CellRead, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::raw_sql(READ_TRANSACTION).execute(&mut *tx).await?;
        let snapshot: String = sqlx::query_scalar("SELECT pg_current_snapshot()::text")
            .fetch_one(&mut *tx)
            .await?;
        let rows: Vec<RawCell> = match since {
            None => {
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT key_id, slot, probes, first_at, last_at, last_seq
                     FROM detector_cells WHERE last_at > $1 - ({SLOT_MARGIN})"
                )))
                .bind(start)
                .fetch_all(&mut *tx)
                .await?
            }
            // Committed after the previous read, whatever order
            // transactions committed in; the lower bound lets the BRIN
            // index skip everything older.
            Some(since) => {
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT key_id, slot, probes, first_at, last_at, last_seq
                     FROM detector_cells
                     WHERE last_at > $1 - ({SLOT_MARGIN})
                       AND ingest_xid >= pg_snapshot_xmin($2::text::pg_snapshot)::text::int8
                       AND NOT pg_visible_in_snapshot(ingest_xid::text::xid8,
                                                      $2::text::pg_snapshot)"
                )))
                .bind(start)
                .bind(since)
                .fetch_all(&mut *tx)
                .await?
            }
        };
        tx.commit().await?;
        // Off the pass's path: the next update read then skips the pages
        // this one read (a BRIN range not yet summarised is read whole).
        tokio::spawn(summarize_new_ranges(self.pool.clone()));
        Ok(CellRead {
            rows: rows
                .into_iter()
                .map(
                    |(key_id, slot, probes, first_at, last_at, last_seq)| CellRow {
                        key_id,
                        slot,
                        counts: CellCounts {
                            probes: i64::from(probes),
                            first_at,
                            last_at,
                            last_seq,
                        },
                    },
                )
                .collect(),
            snapshot,
        })
    }

    /// The keys of `ids`.
    pub async fn cell_keys(&self, ids: &[i64]) -> Result<Vec<StoredKey>, StoreError> {
        type Row = (
            i64,
            String,
            String,
            String,
            Option<i16>,
            String,
            String,
            i32,
            bool,
            Vec<String>,
            Vec<Option<String>>,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, target, check_name, outcome, status, agent_id, vantage, interval_ms,
                    confirmation, source_names, sources
             FROM detector_cell_keys WHERE id = ANY ($1)",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| StoredKey {
                id: r.0,
                key: CellKey {
                    target: r.1,
                    check: r.2,
                    outcome: r.3,
                    status: r.4,
                    agent_id: r.5,
                    vantage: r.6,
                    interval_ms: r.7,
                    confirmation: r.8,
                    sources: r.10,
                },
                source_names: r.9,
            })
            .collect())
    }
}

/// Writes a batch's cells (`ids`: their keys') in its transaction.
pub(super) async fn insert(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[SlotRow],
    ids: &[i64],
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let probes: Vec<i32> = rows
        .iter()
        .map(|r| i32::try_from(r.counts.probes).unwrap_or(i32::MAX))
        .collect();
    sqlx::query(
        "INSERT INTO detector_cells (key_id, slot, probes, first_at, last_at, last_seq)
         SELECT * FROM UNNEST($1::int8[], $2::int8[], $3::int4[], $4::timestamptz[],
                              $5::timestamptz[], $6::int8[])",
    )
    .bind(ids)
    .bind(rows.iter().map(|r| r.slot).collect::<Vec<_>>())
    .bind(probes)
    .bind(rows.iter().map(|r| r.counts.first_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.counts.last_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.counts.last_seq).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Summarises the BRIN ranges of `ingest_xid` written since the last
/// time, in every cell partition; gives up rather than wait behind a
/// vacuum. A failure only makes the next read slower.
async fn summarize_new_ranges(pool: sqlx::PgPool) {
    let summarized = async {
        let mut tx = pool.begin().await?;
        sqlx::raw_sql("SET LOCAL lock_timeout = '100ms'")
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "SELECT count(brin_summarize_new_values(x.indexrelid))
             FROM pg_inherits i JOIN pg_index x ON x.indexrelid = i.inhrelid
             WHERE i.inhparent = 'detector_cells_ingest_xid'::regclass",
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    };
    if let Err(error) = summarized.await {
        tracing::debug!(%error, "Cannot summarise the new BRIN ranges; the read scans them.");
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Keys of this collector's dimension table from a stored key: its source
/// values reordered to `names` (a source the writer did not have is
/// `None`).
pub fn reorder(stored: StoredKey, names: &[&str]) -> Arc<CellKey> {
    let StoredKey {
        mut key,
        source_names,
        ..
    } = stored;
    if source_names
        .iter()
        .map(String::as_str)
        .eq(names.iter().copied())
    {
        return Arc::new(key);
    }
    let mut values: Vec<Option<String>> = std::mem::take(&mut key.sources);
    key.sources = names
        .iter()
        .map(|name| {
            source_names
                .iter()
                .position(|n| n == name)
                .and_then(|i| values.get_mut(i).and_then(Option::take))
        })
        .collect();
    Arc::new(key)
}
