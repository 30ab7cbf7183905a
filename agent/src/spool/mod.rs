//! The on-disk spool: every result is kept here, durably, from the moment
//! the probe completes until the collector acknowledges a committed batch
//! holding it. Also the owner of the record of what was lost (gaps) and of
//! the sequence-number lease that keeps numbers unique across restarts.
//!
//! Storage is [redb](https://www.redb.org): an embedded, pure-Rust,
//! copy-on-write B-tree store with ACID transactions and crash-safe commits.
//! A result is one entry keyed by its sequence number, so reading the next
//! batch is a range scan (the backlog is streamed, never loaded whole), an
//! acknowledgement is a range delete, and a torn write after a crash is
//! rolled back by redb rather than by a hand-written file format.
//!
//! Group commit: completed results wait in memory (`unsynced`) and are
//! written in one transaction with an fsync every `sync_interval`
//! (default 500 ms). Only results on disk are handed to the reporter.
//!
//! The probes never wait on the disk. What they call ([`Spool::lease`],
//! [`Spool::push`]) touches only memory: the lease and the disk's state are
//! mirrored in atomics, the sync extends the lease in its own transaction
//! well before it runs out, and results the memory ring drops are recorded
//! as a gap by the next sync. The disk itself (the `disk` lock, every redb
//! transaction) belongs to the sync, the reporter's reads and acks, all on
//! blocking threads.
//!
//! Failure modes, none of which stops the agent:
//! - a record whose checksum does not match is skipped, deleted, counted and
//!   recorded as a `spool_corrupt` gap;
//! - a file redb cannot open or read is moved aside (`*.unreadable-<time>`),
//!   a fresh one is started and a `spool_unreadable` gap covers what may
//!   have been in it;
//! - a failing write (disk full, read-only disk) degrades the spool to an
//!   in-memory ring with a loud warning; results are then sent from memory,
//!   the ring drops its oldest beyond `memory_capacity` (`memory_full` gaps),
//!   and every later sync retries the disk.
//! - after a crash (no clean close), a `agent_crash` range covers the
//!   numbers that were leased and not known to be on disk.
//!
//! Here: the spool, its lease and its sync. The file itself in [`file`],
//! the record formats in [`record`], gaps in [`gaps`], the reporter's reads,
//! acks and quarantine in [`read`].

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use vantage_proto::v1 as pb;

mod file;
mod gaps;
mod read;
mod record;

use file::{open_db, write_lease};
pub use record::{Gap, Record};

const RESULTS: TableDefinition<u64, &[u8]> = TableDefinition::new("results");
const GAPS: TableDefinition<u64, &[u8]> = TableDefinition::new("gaps");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Batches the collector refused as invalid, kept for an operator to look
/// at (newest `QUARANTINE_KEEP` results).
const QUARANTINE: TableDefinition<u64, &[u8]> = TableDefinition::new("quarantine");
const QUARANTINE_KEEP: u64 = 10_000;

/// Highest sequence number this spool may hand out without another lease.
const META_LEASED_THROUGH: &str = "leased_through";
/// Every sequence number below this is on disk, acknowledged or abandoned.
const META_COMPLETE_BELOW: &str = "complete_below";
/// 1 while the agent runs; 0 after a clean close.
const META_OPEN: &str = "open";
const META_NEXT_GAP: &str = "next_gap_id";

/// Sequence numbers leased per durable write of the lease.
pub(crate) const LEASE: u64 = 10_000;

/// Bytes of a record before the encoded result: CRC-32 of the rest, then
/// the probe's start time in Unix microseconds (for the age bound).
const HEADER: usize = 4 + 8;

/// How often the degraded spool repeats its warning.
const DEGRADED_WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// The spool's bounds and timing (`[spool]` in the agent's config).
#[derive(Debug, Clone)]
pub struct SpoolSettings {
    /// The redb file; `None` keeps everything in memory (lost on restart).
    pub path: Option<PathBuf>,
    /// Bytes of results kept on disk at most; beyond, the oldest go.
    pub max_bytes: u64,
    /// Results older than this are dropped unsent.
    pub max_age: Duration,
    /// Longest a completed result waits in memory before it is synced.
    pub sync_interval: Duration,
    /// Results held in memory when the disk cannot be written.
    pub memory_capacity: usize,
}

/// What the reporter sends next.
#[derive(Debug, Default)]
pub struct Batch {
    pub results: Vec<pb::ProbeResult>,
    /// Every sequence number up to here was read (sent, skipped as corrupt
    /// or dropped); the next read starts after it.
    pub through_seq: u64,
}

/// Counters for logs and metrics.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SpoolStats {
    pub disk_records: u64,
    pub disk_bytes: u64,
    pub unsynced: usize,
    pub degraded: bool,
    pub dropped: u64,
    pub corrupt: u64,
}

/// What opening the spool found.
#[derive(Debug, Clone)]
pub struct Opened {
    /// The first sequence number to hand out.
    pub next_seq: u64,
    /// Results waiting from an earlier run.
    pub backlog: u64,
}

/// The durable part: redb and what is known about its contents.
struct Disk {
    db: Option<Database>,
    path: Option<PathBuf>,
    records: u64,
    bytes: u64,
    leased_through: u64,
    next_gap_id: u64,
    degraded_since: Option<Instant>,
    last_warning: Option<Instant>,
}

/// The spool. Disk work is blocking: call it from `spawn_blocking`.
pub struct Spool {
    settings: SpoolSettings,
    /// Completed results not yet synced (the ring, when degraded).
    unsynced: Mutex<BTreeMap<u64, Record>>,
    disk: Mutex<Disk>,
    /// Gaps not yet acknowledged by the collector, by id.
    gaps: Mutex<BTreeMap<u64, Gap>>,
    stats: Mutex<(u64, u64)>,
    /// Mirrors of the disk's state for the probes, set whenever the `disk`
    /// lock is released: whether results live only in memory, and how far
    /// the lease on disk reaches.
    memory_only: AtomicBool,
    leased_through: AtomicU64,
    /// The highest sequence number handed out: the sync leases ahead of it.
    highest_leased: AtomicU64,
    /// Results the memory ring dropped, to be recorded by the next sync.
    overflowed: Mutex<Vec<u64>>,
}

/// The `disk` lock; releasing it publishes the disk's state to the atomics
/// the probes read.
struct DiskGuard<'a> {
    disk: MutexGuard<'a, Disk>,
    spool: &'a Spool,
}

impl std::ops::Deref for DiskGuard<'_> {
    type Target = Disk;
    fn deref(&self) -> &Disk {
        &self.disk
    }
}

impl std::ops::DerefMut for DiskGuard<'_> {
    fn deref_mut(&mut self) -> &mut Disk {
        &mut self.disk
    }
}

impl Drop for DiskGuard<'_> {
    fn drop(&mut self) {
        self.spool
            .memory_only
            .store(self.disk.memory_only(), Ordering::Release);
        self.spool
            .leased_through
            .store(self.disk.leased_through, Ordering::Release);
    }
}

impl Disk {
    fn memory_only(&self) -> bool {
        self.db.is_none() || self.degraded_since.is_some()
    }
}

/// The clock in Unix microseconds: where sequence numbers start.
pub(crate) fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// The spool file is held by another process.
#[derive(Debug, thiserror::Error)]
#[error("spool file {} is in use by another process (two agents with one [spool] path?)", .0.display())]
pub struct SpoolInUse(pub PathBuf);

/// Any failure of the embedded store, panics inside it included.
#[derive(Debug, thiserror::Error)]
enum DiskError {
    #[error(transparent)]
    Redb(#[from] redb::Error),
    #[error("the storage engine panicked: {0}")]
    Panicked(String),
}

impl DiskError {
    /// An I/O failure (disk full, read-only file system) as opposed to a
    /// file that cannot be trusted any more.
    fn is_io(&self) -> bool {
        matches!(
            self,
            Self::Redb(redb::Error::Io(_)) | Self::Redb(redb::Error::PreviousIo)
        )
    }
}

macro_rules! redb_err {
    ($($t:ty),*) => {$(impl From<$t> for DiskError {
        fn from(e: $t) -> Self { Self::Redb(e.into()) }
    })*};
}
redb_err!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// Runs `f`, turning a panic of the storage engine into an error.
fn guarded<T>(f: impl FnOnce() -> Result<T, DiskError>) -> Result<T, DiskError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default();
        Err(DiskError::Panicked(message))
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section leaves the data consistent, so a panic
    // elsewhere while holding the lock does not make it unusable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Spool {
    pub fn settings(&self) -> &SpoolSettings {
        &self.settings
    }

    /// Whether something holds the disk (tests).
    #[cfg(test)]
    pub(crate) fn disk_busy(&self) -> bool {
        self.disk.try_lock().is_err()
    }

    /// The `disk` lock (blocking: never on a probe's path).
    fn disk(&self) -> DiskGuard<'_> {
        DiskGuard {
            disk: lock(&self.disk),
            spool: self,
        }
    }

    /// Makes sure sequence numbers up to `seq` are leased durably, so a
    /// restart never hands them out again. In memory: the sync keeps the
    /// lease on disk at least `LEASE / 2` ahead of the numbers handed out;
    /// only a burst of more numbers than that within one sync interval
    /// writes the lease here.
    pub fn lease(&self, seq: u64) {
        self.highest_leased.fetch_max(seq, Ordering::AcqRel);
        if seq <= self.leased_through.load(Ordering::Acquire) {
            return;
        }
        metrics::counter!("vantage_agent_spool_lease_waits_total").increment(1);
        let mut disk = self.disk();
        if seq <= disk.leased_through {
            return;
        }
        disk.leased_through = seq + LEASE;
        write_lease(&disk);
    }

    /// Adds a completed result; it is synced at the next [`Spool::sync`].
    /// In memory only.
    pub fn push(&self, record: Record) {
        let memory_only = self.memory_only();
        let mut unsynced = lock(&self.unsynced);
        unsynced.insert(record.seq, record);
        if memory_only && unsynced.len() > self.settings.memory_capacity {
            let excess = unsynced.len() - self.settings.memory_capacity;
            let dropped: Vec<u64> = unsynced.keys().take(excess).copied().collect();
            for seq in &dropped {
                unsynced.remove(seq);
            }
            drop(unsynced);
            lock(&self.overflowed).extend(dropped);
        }
    }

    /// Whether results are (also) held only in memory: no spool file, or
    /// the disk failed. The reporter then sends them from memory.
    pub fn memory_only(&self) -> bool {
        self.memory_only.load(Ordering::Acquire)
    }

    /// The lowest sequence number waiting in memory, if any.
    pub fn lowest_unsynced(&self) -> Option<u64> {
        lock(&self.unsynced).keys().next().copied()
    }

    /// Writes everything unsynced in one transaction with an fsync, then
    /// enforces the bounds. `complete_below`: every number below it is
    /// completed (or abandoned), which a crash recovery needs to know.
    pub fn sync(&self, complete_below: u64) {
        let overflowed = std::mem::take(&mut *lock(&self.overflowed));
        self.dropped(&overflowed, pb::GapReason::MemoryFull.text());
        let batch: Vec<(u64, Vec<u8>)> = lock(&self.unsynced)
            .values()
            .map(|r| (r.seq, r.bytes.clone()))
            .collect();
        let mut disk = self.disk();
        let Some(path) = disk.path.clone() else {
            return;
        };
        if disk.db.is_none() {
            // The file could not be opened: try again.
            if let Ok(state) = guarded(|| open_db(&path)) {
                tracing::warn!(path = %path.display(), "Spool file usable again.");
                disk.records = state.records;
                disk.bytes = state.bytes;
                disk.db = Some(state.db);
            } else {
                self.warn_degraded(&mut disk);
                return;
            }
        }
        // Lease ahead of the numbers handed out, in this transaction.
        let highest = self.highest_leased.load(Ordering::Acquire);
        let lease = if highest.saturating_add(LEASE / 2) > disk.leased_through {
            highest.saturating_add(LEASE)
        } else {
            disk.leased_through
        };
        let Some(db) = &disk.db else { return };
        let written = guarded(|| {
            let tx = db.begin_write()?;
            {
                let mut table = tx.open_table(RESULTS)?;
                for (seq, bytes) in &batch {
                    table.insert(*seq, bytes.as_slice())?;
                }
                let mut meta = tx.open_table(META)?;
                meta.insert(META_COMPLETE_BELOW, complete_below)?;
                meta.insert(META_LEASED_THROUGH, lease)?;
            }
            // Fault tests: a sync stuck on the disk (`pause`).
            fail::fail_point!("spool-sync-commit");
            tx.commit()?;
            Ok(())
        });
        match written {
            Ok(()) => {
                disk.leased_through = lease;
                disk.records += batch.len() as u64;
                disk.bytes += batch.iter().map(|(_, b)| b.len() as u64).sum::<u64>();
                if disk.degraded_since.take().is_some() {
                    tracing::warn!("Spool writes work again; results are on disk.");
                }
                drop(disk);
                let mut unsynced = lock(&self.unsynced);
                for (seq, _) in &batch {
                    unsynced.remove(seq);
                }
                drop(unsynced);
                self.enforce_bounds();
            }
            Err(error) => {
                if !error.is_io() {
                    drop(disk);
                    self.replace_unreadable(&error);
                    return;
                }
                if disk.degraded_since.is_none() {
                    disk.degraded_since = Some(Instant::now());
                    disk.last_warning = None;
                }
                tracing::error!(%error, "Cannot write the spool (disk full?).");
                self.warn_degraded(&mut disk);
            }
        }
    }

    fn warn_degraded(&self, disk: &mut Disk) {
        if disk
            .last_warning
            .is_some_and(|t| t.elapsed() < DEGRADED_WARNING_INTERVAL)
        {
            return;
        }
        disk.last_warning = Some(Instant::now());
        tracing::error!(
            held_in_memory = lock(&self.unsynced).len(),
            memory_capacity = self.settings.memory_capacity,
            "SPOOL DEGRADED: results are kept in memory only and are lost if the agent stops; beyond memory_capacity the oldest are dropped (recorded as gaps)."
        );
    }

    /// Drops the oldest results beyond `max_bytes` or older than `max_age`,
    /// recording the loss.
    fn enforce_bounds(&self) {
        let disk = self.disk();
        if disk.records == 0 {
            return;
        }
        let too_old =
            now_us() - i64::try_from(self.settings.max_age.as_micros()).unwrap_or(i64::MAX);
        let over = disk.bytes.saturating_sub(self.settings.max_bytes);
        let Some(db) = &disk.db else { return };
        // Free a tenth more than needed so a full spool does not drop one
        // result per sync.
        let target = if over > 0 {
            over + self.settings.max_bytes / 10
        } else {
            0
        };
        let mut full = Vec::new();
        let mut aged = Vec::new();
        let scanned = guarded(|| {
            let tx = db.begin_read()?;
            let table = tx.open_table(RESULTS)?;
            let mut freed = 0u64;
            for entry in table.iter()? {
                let (seq, bytes) = entry?;
                let (seq, bytes) = (seq.value(), bytes.value());
                if freed < target {
                    freed += bytes.len() as u64;
                    full.push((seq, bytes.len() as u64));
                } else if Record::started_us(bytes) < too_old {
                    aged.push((seq, bytes.len() as u64));
                } else {
                    break;
                }
            }
            Ok(())
        });
        drop(disk);
        if let Err(error) = scanned {
            tracing::warn!(%error, "Cannot scan the spool for its bounds.");
            return;
        }
        for (dropped, reason) in [
            (full, pb::GapReason::SpoolFull.text()),
            (aged, pb::GapReason::SpoolAge.text()),
        ] {
            if let Some(&(last, _)) = dropped.last() {
                self.delete_through(last);
                let seqs: Vec<u64> = dropped.iter().map(|(s, _)| *s).collect();
                self.dropped(&seqs, reason);
            }
        }
    }

    /// Syncs what is left and marks the spool cleanly closed.
    pub fn close(&self, complete_below: u64) {
        self.sync(complete_below);
        self.mark_open(false);
    }

    pub fn stats(&self) -> SpoolStats {
        let disk = self.disk();
        let (dropped, corrupt) = *lock(&self.stats);
        SpoolStats {
            disk_records: disk.records,
            disk_bytes: disk.bytes,
            unsynced: lock(&self.unsynced).len(),
            degraded: disk.db.is_none() || disk.degraded_since.is_some(),
            dropped,
            corrupt,
        }
    }
}
