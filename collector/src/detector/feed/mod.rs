//! The results this collector ingests, handed to its own detector after
//! COMMIT, counted per cell and time slot, so that a pass need not read
//! them back from the database: a pass then reads only what other
//! collectors stored (and the few batches the feed cannot mirror).
//!
//! Why no result is counted twice or missed:
//! - the ingest registers its transaction's id (xid) here before COMMIT
//!   ([`Ticket::register`]), and hands the batch's cells over after it
//!   ([`Ticket::committed`]);
//! - the detector's update read leaves out the rows of every registered
//!   xid, whatever its snapshot says of them, and counts a registered
//!   xid's cells from here at the first pass whose snapshot shows it
//!   committed ([`Feed::take_visible`]);
//! - a transaction whose COMMIT failed may have committed all the same:
//!   its xid is read back from the database by `ingest_xid`;
//! - a batch the feed cannot mirror exactly (requested probes, an address
//!   PostgreSQL would print otherwise) is not registered: it is read from
//!   the database, as another collector's results are;
//! - a read takes only results started within the window, and a fed
//!   batch's cells cannot be split: a batch with results on both sides of
//!   the window's start when it is counted (an agent's backlog) is read
//!   back instead, and one wholly before it is not counted;
//! - the feed registers nothing until the detector's whole read of the
//!   window ([`Feed::start`]), and starting again forgets everything.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};

mod snapshot;
pub mod sources;

use crate::detect::cells::{CellCounts, CellKey};
use crate::store::{Excluded, SlotRow, StoredResult, slot_of};
use snapshot::Snapshot;
use sources::{SourceFn, Value, source_fn};

/// One result as the collector received it, with its stream's identity.
pub struct FedRow<'a> {
    pub agent_id: &'a str,
    /// The stream's region (a result may name its vantage's own).
    pub region: &'a str,
    pub result: &'a StoredResult,
}

impl<'a> FedRow<'a> {
    /// The `region` column as stored.
    pub fn region(&self) -> &'a str {
        self.result.region.as_deref().unwrap_or(self.region)
    }
}

/// A cell of one batch (whose results share the agent), by what its
/// results lend: compared by the fields of a [`CellKey`] only.
struct CellOf<'r> {
    result: &'r StoredResult,
    status: Option<i16>,
    interval_ms: i32,
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
            (self.status, self.interval_ms, self.slot),
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

/// What the detector's window is read with, mirrored here.
struct Shape {
    sources: Vec<SourceFn>,
    default_round_ms: i32,
}

/// A committed batch's cells and the span of its results' start times.
struct Delivered {
    rows: Vec<SlotRow>,
    earliest: DateTime<Utc>,
    latest: DateTime<Utc>,
}

#[derive(Default)]
struct State {
    /// `None`: inactive (no detector window, or a source without a mirror).
    shape: Option<Arc<Shape>>,
    /// Bumped at every start and stop: a ticket from before is ignored.
    epoch: u64,
    /// Transactions whose rows the detector's reads leave out.
    registered: HashSet<i64>,
    /// Their cells, once committed.
    delivered: HashMap<i64, Delivered>,
    /// Registered transactions whose COMMIT failed: read back.
    unknown: Vec<i64>,
}

/// Shared by the ingest and the detector of one collector.
#[derive(Default)]
pub struct Feed {
    state: Mutex<State>,
}

/// One batch on its way into the database.
pub struct Ticket {
    feed: Arc<Feed>,
    epoch: u64,
    rows: Vec<SlotRow>,
    earliest: DateTime<Utc>,
    latest: DateTime<Utc>,
    xid: Option<i64>,
    committed: bool,
}

impl Feed {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// (Re)starts the feed for a window read with `sources`, right after
    /// a whole read of it: everything from before is forgotten. Stays
    /// inactive if a source has no Rust mirror. Returns the start's
    /// epoch, for [`Feed::stop`].
    pub fn start(&self, sources: &[&'static str], default_round_ms: i64) -> u64 {
        let fns: Option<Vec<SourceFn>> = sources.iter().map(|s| source_fn(s)).collect();
        let mut state = self.lock();
        let epoch = state.epoch + 1;
        *state = State {
            epoch,
            shape: fns.map(|sources| {
                Arc::new(Shape {
                    sources,
                    default_round_ms: i32::try_from(default_round_ms).unwrap_or(i32::MAX),
                })
            }),
            ..State::default()
        };
        epoch
    }

    /// Stops the feed the start of `epoch` began (not a later one):
    /// nothing is registered until the next start.
    pub fn stop(&self, epoch: u64) {
        let mut state = self.lock();
        if state.epoch != epoch {
            return;
        }
        let epoch = state.epoch + 1;
        *state = State {
            epoch,
            ..State::default()
        };
    }

    /// The batch's cells, if the feed is active and can mirror every
    /// result of it exactly; `None` leaves the batch to the database read.
    pub fn prepare(
        self: &Arc<Self>,
        agent_id: &str,
        region: &str,
        results: &[StoredResult],
    ) -> Option<Ticket> {
        let (shape, epoch) = {
            let state = self.lock();
            (state.shape.clone()?, state.epoch)
        };
        // Grouped by what the results lend first: a cell's key is made
        // once per cell, not once per result.
        let mut cells: HashMap<CellOf<'_>, CellCounts, foldhash::fast::RandomState> =
            HashMap::default();
        let (mut earliest, mut latest) = (DateTime::<Utc>::MAX_UTC, DateTime::<Utc>::MIN_UTC);
        for result in results {
            // Requested probes need their request's purpose (a read).
            if result.request_id.is_some() {
                return None;
            }
            let row = FedRow {
                agent_id,
                region,
                result,
            };
            let sources = shape
                .sources
                .iter()
                .map(|f| f(&row).ok())
                .collect::<Option<Vec<_>>>()?;
            let interval_ms = result.interval_ms.unwrap_or(shape.default_round_ms);
            // As stored: PostgreSQL keeps microseconds.
            let at = DateTime::from_timestamp_micros(result.started_at.timestamp_micros())?;
            (earliest, latest) = (earliest.min(at), latest.max(at));
            let cell = CellOf {
                result,
                status: result.http_status.or(result.proxy_status),
                interval_ms,
                sources,
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
        let rows = cells
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
                    confirmation: false,
                    sources: cell
                        .sources
                        .into_iter()
                        .map(|s| s.as_ref().map(Value::text))
                        .collect(),
                },
                slot: cell.slot,
                counts,
            })
            .collect();
        Some(Ticket {
            feed: self.clone(),
            epoch,
            rows,
            earliest,
            latest,
            xid: None,
            committed: false,
        })
    }

    /// What an update read leaves out, and what it reads back: called
    /// after the read's snapshot was taken, so that every transaction
    /// that committed before it and registered is in it.
    pub fn excluded(&self) -> Excluded {
        let state = self.lock();
        let mut xids: Vec<i64> = state.registered.iter().copied().collect();
        xids.extend(&state.unknown);
        Excluded {
            xids,
            read_back: state.unknown.clone(),
        }
    }

    /// The cells of every registered transaction that `snapshot` (a
    /// `pg_snapshot` as text) shows committed, for a window from `start`;
    /// `read_back`: the unknown ones the read just read back.
    pub fn take_visible(
        &self,
        snapshot: &str,
        read_back: &[i64],
        start: DateTime<Utc>,
    ) -> Vec<SlotRow> {
        let Some(snapshot) = Snapshot::parse(snapshot) else {
            tracing::error!(snapshot, "Unreadable snapshot; the fed cells wait.");
            return Vec::new();
        };
        let mut state = self.lock();
        state.unknown.retain(|xid| !read_back.contains(xid));
        let visible: Vec<i64> = state
            .delivered
            .keys()
            .copied()
            .filter(|xid| snapshot.shows(*xid))
            .collect();
        let mut out = Vec::new();
        for xid in visible {
            let Some(batch) = state.delivered.remove(&xid) else {
                continue;
            };
            state.registered.remove(&xid);
            if batch.earliest > start {
                out.extend(batch.rows);
            } else if batch.latest > start {
                // Partly in the window: the next read takes its rows in it.
                state.unknown.push(xid);
            }
        }
        out
    }

    /// Transactions registered and not yet counted.
    pub fn pending(&self) -> usize {
        self.lock().registered.len()
    }
}

impl Ticket {
    /// The batch's cells, as the detector will count them.
    pub fn rows(&self) -> &[SlotRow] {
        &self.rows
    }

    /// What a batch's insert calls with its transaction id before COMMIT
    /// (`Store::insert_batch_registering`): registers it for `ticket`,
    /// if the batch has one.
    pub fn registrar(ticket: &mut Option<Ticket>) -> impl FnMut(i64) + Send + '_ {
        move |xid| {
            if let Some(ticket) = ticket.as_mut() {
                ticket.register(xid);
            }
        }
    }

    /// Registers the batch's transaction `xid`, before its COMMIT.
    pub fn register(&mut self, xid: i64) {
        let mut state = self.feed.lock();
        if state.epoch == self.epoch && state.shape.is_some() {
            state.registered.insert(xid);
            self.xid = Some(xid);
        }
    }

    /// The transaction committed: its cells are the detector's.
    pub fn committed(mut self) {
        self.committed = true;
        let Some(xid) = self.xid else { return };
        let mut state = self.feed.lock();
        if state.epoch == self.epoch && state.registered.contains(&xid) {
            let batch = Delivered {
                rows: std::mem::take(&mut self.rows),
                earliest: self.earliest,
                latest: self.latest,
            };
            state.delivered.insert(xid, batch);
        }
    }
}

impl Drop for Ticket {
    /// Not committed as far as the ingest knows (an error at COMMIT, or
    /// the task gone): the transaction is read back from the database.
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        let Some(xid) = self.xid else { return };
        let mut state = self.feed.lock();
        if state.epoch == self.epoch && state.registered.remove(&xid) {
            state.unknown.push(xid);
        }
    }
}

#[cfg(test)]
mod tests;
