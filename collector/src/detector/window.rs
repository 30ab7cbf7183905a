//! The detector's window, kept between passes: the window's probes counted
//! per cell and time slot (a quarter of their round), updated each pass
//! with only the cells committed since the last read, so that a pass
//! costs what arrived since the last one, not what the window holds, and
//! the same whichever collector ingested it (the ingest writes the cells
//! in each batch's transaction: [`crate::store::cells`]).
//!
//! Rebuilt from the whole window when there is nothing to continue from:
//! at the collector's first pass, and when the window's shape changes. A
//! collector standing by keeps its window up to date too, so that taking
//! the lease over needs no whole read. The read itself is
//! [`Store::window_cells`]; the age buckets the decision needs are
//! computed here for each pass's `now`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::detect::cells::{CellCounts, CellKey, WindowCell};
use crate::detect::decision::bucket_of;
#[cfg(test)]
use crate::store::SlotRow;
use crate::store::{CellRow, Store, StoreError, cells};

/// What the kept window was read with: a pass asking for another shape
/// starts over.
#[derive(Debug, Clone, PartialEq)]
struct Shape {
    sources: Vec<&'static str>,
    window: Duration,
}

/// The window's probes per cell and slot, and where the next read
/// continues from.
#[derive(Debug)]
pub struct KeptWindow {
    shape: Shape,
    /// The snapshot of the last read: what it saw is counted here.
    snapshot: String,
    cells: HashMap<Arc<CellKey>, BTreeMap<i64, CellCounts>>,
    /// The keys of the cell rows read, by id.
    keys: HashMap<i64, Arc<CellKey>>,
}

/// How a pass brought the window up to date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresh {
    /// Read the whole window.
    Rebuilt,
    /// Read only what was committed since the last pass.
    Updated,
}

impl Refresh {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rebuilt => "rebuilt",
            Self::Updated => "updated",
        }
    }
}

/// What one refresh read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RefreshSummary {
    pub refresh: Refresh,
    /// Probes read from the database (new ones, for an update).
    pub probes: u64,
    /// Cell rows read.
    pub rows: u64,
    /// Cell slots kept after it.
    pub slots: usize,
}

impl KeptWindow {
    /// Brings `kept` up to date for a window starting at `start`: a read of
    /// what was committed since its snapshot, or of the whole window when
    /// there is none or it was read with another shape. Slots that ended
    /// before `start` are dropped.
    pub async fn refresh(
        kept: &mut Option<KeptWindow>,
        store: &Store,
        start: DateTime<Utc>,
        sources: &[&'static str],
        window: Duration,
    ) -> Result<RefreshSummary, StoreError> {
        let shape = Shape {
            sources: sources.to_vec(),
            window,
        };
        let mut continuing = kept.take().filter(|k| k.shape == shape);
        let since = continuing.as_ref().map(|k| k.snapshot.clone());
        let refresh = if since.is_some() {
            Refresh::Updated
        } else {
            Refresh::Rebuilt
        };
        // A failed read leaves the kept window as it was.
        let read = match store.window_cells(start, since.as_deref()).await {
            Ok(read) => read,
            Err(error) => {
                *kept = continuing;
                return Err(error);
            }
        };
        let mut window = continuing.take().unwrap_or_else(|| KeptWindow {
            shape,
            snapshot: String::new(),
            cells: HashMap::new(),
            keys: HashMap::new(),
        });
        // On an error nothing is kept: the next pass reads the whole window.
        window.learn_keys(store, &read.rows, sources).await?;
        window.snapshot = read.snapshot;
        let probes = read
            .rows
            .iter()
            .map(|r| u64::try_from(r.counts.probes).unwrap_or(0))
            .sum();
        let rows = read.rows.len() as u64;
        window.add_rows(&read.rows);
        window.forget_before(start);
        let summary = RefreshSummary {
            refresh,
            probes,
            rows,
            slots: window.slots(),
        };
        *kept = Some(window);
        Ok(summary)
    }

    /// Reads the keys of `rows` not known yet.
    async fn learn_keys(
        &mut self,
        store: &Store,
        rows: &[CellRow],
        sources: &[&'static str],
    ) -> Result<(), StoreError> {
        let mut missing: Vec<i64> = rows
            .iter()
            .map(|r| r.key_id)
            .filter(|id| !self.keys.contains_key(id))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if missing.is_empty() {
            return Ok(());
        }
        for stored in store.cell_keys(&missing).await? {
            let id = stored.id;
            let key = cells::reorder(stored, sources);
            // One Arc per distinct key, whichever ids name it.
            let key = match self.cells.get_key_value(&key) {
                Some((known, _)) => Arc::clone(known),
                None => key,
            };
            self.keys.insert(id, key);
        }
        Ok(())
    }

    /// Counts cell rows in (rows whose key was not found are left out).
    fn add_rows(&mut self, rows: &[CellRow]) {
        for row in rows {
            let Some(key) = self.keys.get(&row.key_id) else {
                tracing::error!(key_id = row.key_id, "A cell's key is missing; not counted.");
                continue;
            };
            self.cells
                .entry(Arc::clone(key))
                .or_default()
                .entry(row.slot)
                .and_modify(|c| c.merge(&row.counts))
                .or_insert(row.counts);
        }
    }

    /// Counts `rows` in.
    #[cfg(test)]
    fn add(&mut self, rows: Vec<SlotRow>) {
        for row in rows {
            let slots = match self.cells.get_mut(&row.key) {
                Some(slots) => slots,
                None => self.cells.entry(Arc::new(row.key)).or_default(),
            };
            slots
                .entry(row.slot)
                .and_modify(|c| c.merge(&row.counts))
                .or_insert(row.counts);
        }
    }

    /// Drops the slots whose newest probe is not after `start`, and the
    /// keys no slot needs any more.
    fn forget_before(&mut self, start: DateTime<Utc>) {
        self.cells.retain(|_, slots| {
            slots.retain(|_, c| c.last_at > start);
            !slots.is_empty()
        });
        self.keys.retain(|_, key| self.cells.contains_key(key));
    }

    fn slots(&self) -> usize {
        self.cells.values().map(BTreeMap::len).sum()
    }

    /// The window `(start, now]` as the decision reads it: per cell and
    /// age bucket (the number of `thresholds` at or below the age, in
    /// rounds, of each slot's newest probe). Slots that began after `now`
    /// (clocks ahead of the collector's) wait for it.
    pub fn cells(
        &self,
        start: DateTime<Utc>,
        now: DateTime<Utc>,
        thresholds: &[u32],
    ) -> Vec<WindowCell> {
        let mut out = Vec::new();
        for (key, slots) in &self.cells {
            let round_ms = i64::from(key.interval_ms.max(1));
            let mut buckets: BTreeMap<i32, CellCounts> = BTreeMap::new();
            for c in slots.values() {
                if c.last_at <= start || c.first_at > now {
                    continue;
                }
                let age_ms = (now - c.last_at).num_milliseconds().max(0);
                let rounds = u32::try_from(age_ms / round_ms).unwrap_or(u32::MAX);
                let bucket = i32::try_from(bucket_of(rounds, thresholds)).unwrap_or(i32::MAX);
                buckets
                    .entry(bucket)
                    .and_modify(|b| b.merge(c))
                    .or_insert(*c);
            }
            for (bucket, counts) in buckets {
                out.push(WindowCell {
                    key: Arc::clone(key),
                    bucket,
                    counts,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_800_000_000_000 + ms).unwrap()
    }

    fn key(vantage: &str) -> CellKey {
        CellKey {
            target: "https://shop.test/".into(),
            check: "shop".into(),
            outcome: "http".into(),
            status: Some(502),
            agent_id: "a".into(),
            vantage: vantage.into(),
            interval_ms: 1000,
            confirmation: false,
            sources: vec![Some("eu".into())],
        }
    }

    fn row(vantage: &str, first: i64, last: i64, probes: i64, seq: i64) -> SlotRow {
        SlotRow {
            key: key(vantage),
            slot: first / 250,
            counts: CellCounts {
                probes,
                first_at: at(first),
                last_at: at(last),
                last_seq: seq,
            },
        }
    }

    fn kept(rows: Vec<SlotRow>) -> KeptWindow {
        let mut w = KeptWindow {
            shape: Shape {
                sources: vec!["region"],
                window: Duration::from_secs(10),
            },
            snapshot: String::new(),
            cells: HashMap::new(),
            keys: HashMap::new(),
        };
        w.add(rows);
        w
    }

    #[test]
    fn slots_fall_in_the_bucket_of_their_newest_probes_age_in_rounds() {
        // Rounds of 1 s; thresholds 1, 2, 4: buckets [0,1) [1,2) [2,4) [4,..).
        let w = kept(vec![
            row("v", 9_000, 9_100, 1, 10), // 0.9 s old: bucket 0
            row("v", 8_250, 8_400, 1, 9),  // 1.6 s: bucket 1
            row("v", 7_000, 7_200, 2, 8),  // 2.8 s: bucket 2
            row("v", 6_500, 6_700, 1, 7),  // 3.3 s: bucket 2
            row("v", 1_000, 1_100, 1, 1),  // 8.9 s: bucket 3
        ]);
        let mut cells = w.cells(at(0), at(10_000), &[1, 2, 4]);
        cells.sort_by_key(|c| c.bucket);
        let got: Vec<(i32, i64, i64)> = cells
            .iter()
            .map(|c| (c.bucket, c.counts.probes, c.counts.last_seq))
            .collect();
        assert_eq!(got, [(0, 1, 10), (1, 1, 9), (2, 3, 8), (3, 1, 1)]);
        let b2 = &cells[2];
        assert_eq!(
            (b2.counts.first_at, b2.counts.last_at),
            (at(6_500), at(7_200))
        );
    }

    #[test]
    fn an_update_adds_to_its_slot_and_old_slots_are_forgotten() {
        let mut w = kept(vec![
            row("v", 1_000, 1_100, 1, 1),
            row("v", 5_000, 5_050, 1, 2),
        ]);
        // The same slot again (a late result), and a new one.
        w.add(vec![
            row("v", 5_000, 5_200, 2, 4),
            row("w", 9_000, 9_000, 1, 3),
        ]);
        w.forget_before(at(2_000));
        assert_eq!(w.slots(), 2);
        let mut cells = w.cells(at(2_000), at(10_000), &[1, 2, 4]);
        cells.sort_by(|a, b| a.key.vantage.cmp(&b.key.vantage));
        assert_eq!(
            cells
                .iter()
                .map(|c| (c.key.vantage.as_str(), c.counts.probes, c.counts.last_seq))
                .collect::<Vec<_>>(),
            [("v", 3, 4), ("w", 1, 3)]
        );
        // A window that moved past a slot's newest probe leaves it out;
        // one that has not reached a slot's first probe waits for it.
        assert!(
            w.cells(at(5_200), at(10_000), &[1])
                .iter()
                .all(|c| c.key.vantage == "w")
        );
        assert!(
            w.cells(at(2_000), at(8_000), &[1])
                .iter()
                .all(|c| c.key.vantage == "v")
        );
    }
}
