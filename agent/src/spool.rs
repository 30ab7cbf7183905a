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

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use vantage_proto::v1 as pb;

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

/// A loss, as the spool records it before it is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// 0: unknown; the reporter replaces it with the collector's last
    /// committed sequence number + 1 (a spool lost whole).
    pub first_seq: u64,
    pub last_seq: u64,
    pub count: Option<u64>,
    pub reason: &'static str,
    pub detected_at_us: i64,
}

impl Gap {
    fn new(first_seq: u64, last_seq: u64, count: Option<u64>, reason: &'static str) -> Self {
        Self {
            first_seq,
            last_seq,
            count,
            reason,
            detected_at_us: now_us(),
        }
    }

    pub fn to_proto(&self) -> pb::Gap {
        pb::Gap {
            first_seq: self.first_seq,
            last_seq: self.last_seq,
            count: self.count,
            reason: self.reason.to_owned(),
            detected_at: Some(prost_types::Timestamp {
                seconds: self.detected_at_us.div_euclid(1_000_000),
                nanos: i32::try_from(self.detected_at_us.rem_euclid(1_000_000) * 1000).unwrap_or(0),
            }),
        }
    }

    fn encode(&self) -> Vec<u8> {
        self.to_proto().encode_to_vec()
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let g = pb::Gap::decode(bytes).ok()?;
        let reason = pb::GapReason::from_text(&g.reason)?.text();
        let at = g.detected_at.unwrap_or_default();
        Some(Self {
            first_seq: g.first_seq,
            last_seq: g.last_seq,
            count: g.count,
            reason,
            detected_at_us: at.seconds * 1_000_000 + i64::from(at.nanos / 1000),
        })
    }
}

/// One result as stored: its sequence number and its checked bytes.
#[derive(Debug, Clone)]
pub struct Record {
    pub seq: u64,
    bytes: Vec<u8>,
}

impl Record {
    /// Encodes a result for the spool.
    pub fn new(result: &pb::ProbeResult) -> Self {
        let started_us = result
            .started_at
            .map_or(0, |t| t.seconds * 1_000_000 + i64::from(t.nanos / 1000));
        let mut bytes = Vec::with_capacity(HEADER + result.encoded_len());
        bytes.extend_from_slice(&[0; 4]);
        bytes.extend_from_slice(&started_us.to_le_bytes());
        result.encode(&mut bytes).unwrap_or_default();
        let crc = crc32fast::hash(&bytes[4..]);
        bytes[..4].copy_from_slice(&crc.to_le_bytes());
        Self {
            seq: result.seq,
            bytes,
        }
    }

    fn started_us(bytes: &[u8]) -> i64 {
        bytes
            .get(4..HEADER)
            .and_then(|b| b.try_into().ok())
            .map_or(0, i64::from_le_bytes)
    }

    /// The result, if the bytes are intact.
    fn decode(bytes: &[u8]) -> Option<pb::ProbeResult> {
        let crc = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?);
        if bytes.len() < HEADER || crc32fast::hash(&bytes[4..]) != crc {
            return None;
        }
        pb::ProbeResult::decode(&bytes[HEADER..]).ok()
    }
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
    /// Opens (or creates) the spool. Fails only when another process holds
    /// the file (two agents configured with one spool); an unreadable file
    /// is moved aside, an unwritable location degrades to memory.
    pub fn open(settings: SpoolSettings) -> Result<(Self, Opened), SpoolInUse> {
        let mut gaps = Vec::new();
        let mut disk = Disk {
            db: None,
            path: settings.path.clone(),
            records: 0,
            bytes: 0,
            leased_through: 0,
            next_gap_id: 1,
            degraded_since: None,
            last_warning: None,
        };
        let mut loaded_gaps = BTreeMap::new();
        let mut complete_below = 0;
        let mut unclean = false;
        if let Some(path) = &settings.path {
            match guarded(|| open_db(path)) {
                Ok(state) => {
                    disk.records = state.records;
                    disk.bytes = state.bytes;
                    disk.leased_through = state.leased_through;
                    disk.next_gap_id = state.next_gap_id;
                    complete_below = state.complete_below;
                    unclean = state.was_open;
                    loaded_gaps = state.gaps;
                    disk.db = Some(state.db);
                }
                Err(DiskError::Redb(redb::Error::DatabaseAlreadyOpen)) => {
                    return Err(SpoolInUse(path.clone()));
                }
                Err(error) if error.is_io() => {
                    tracing::error!(path = %path.display(), %error, "Cannot open the spool; keeping results in memory only (lost on restart) and retrying the disk at every sync.");
                    disk.degraded_since = Some(Instant::now());
                }
                Err(error) => {
                    let aside = move_aside(path);
                    tracing::error!(path = %path.display(), moved_to = ?aside, %error, "Spool file unreadable; moved it aside and started a new one. What it held is recorded as a gap.");
                    gaps.push(Gap::new(0, 0, None, pb::GapReason::SpoolUnreadable.text()));
                    match guarded(|| open_db(path)) {
                        Ok(state) => disk.db = Some(state.db),
                        Err(error) => {
                            tracing::error!(path = %path.display(), %error, "Cannot create a new spool file; keeping results in memory only.");
                            disk.degraded_since = Some(Instant::now());
                        }
                    }
                }
            }
        }
        let next_seq = (disk.leased_through + 1).max(u64::try_from(now_us()).unwrap_or(1));
        if unclean && disk.leased_through >= complete_below && complete_below > 0 {
            tracing::warn!(
                first_seq = complete_below,
                last_seq = disk.leased_through,
                "The agent did not stop cleanly; results it had not yet synced are recorded as a possible gap."
            );
            gaps.push(Gap::new(
                complete_below,
                disk.leased_through,
                None,
                pb::GapReason::AgentCrash.text(),
            ));
        }
        // A gap whose start is unknown ends just below the new numbers.
        for gap in &mut gaps {
            if gap.reason == pb::GapReason::SpoolUnreadable.text() {
                gap.last_seq = next_seq - 1;
            }
        }
        let backlog = disk.records;
        let spool = Self {
            settings,
            unsynced: Mutex::new(BTreeMap::new()),
            memory_only: AtomicBool::new(disk.memory_only()),
            leased_through: AtomicU64::new(disk.leased_through),
            highest_leased: AtomicU64::new(0),
            overflowed: Mutex::new(Vec::new()),
            disk: Mutex::new(disk),
            gaps: Mutex::new(loaded_gaps),
            stats: Mutex::new((0, 0)),
        };
        for gap in gaps {
            spool.record_gap(gap);
        }
        spool.lease(next_seq);
        spool.mark_open(true);
        // Nothing of this run exists yet: a crash before the first sync
        // loses only numbers from here on.
        spool.sync(next_seq);
        Ok((spool, Opened { next_seq, backlog }))
    }

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

    /// Counts and records dropped results as one gap per contiguous run.
    fn dropped(&self, seqs: &[u64], reason: &'static str) {
        if seqs.is_empty() {
            return;
        }
        let (Some(&first), Some(&last)) = (seqs.first(), seqs.last()) else {
            return;
        };
        tracing::warn!(
            first_seq = first,
            last_seq = last,
            count = seqs.len(),
            reason,
            "Dropped unsent results; recorded as a gap."
        );
        metrics::counter!("vantage_agent_spool_dropped_total", "reason" => reason)
            .increment(seqs.len() as u64);
        let mut stats = lock(&self.stats);
        if reason == pb::GapReason::SpoolCorrupt.text() {
            stats.1 += seqs.len() as u64;
        } else {
            stats.0 += seqs.len() as u64;
        }
        drop(stats);
        self.record_gap(Gap::new(first, last, Some(seqs.len() as u64), reason));
    }

    /// Keeps a gap until the collector acknowledges it.
    pub fn record_gap(&self, gap: Gap) {
        let mut disk = self.disk();
        let id = disk.next_gap_id;
        disk.next_gap_id += 1;
        if let Some(db) = &disk.db {
            let encoded = gap.encode();
            let written = guarded(|| {
                let tx = db.begin_write()?;
                tx.open_table(GAPS)?.insert(id, encoded.as_slice())?;
                tx.open_table(META)?.insert(META_NEXT_GAP, id + 1)?;
                tx.commit()?;
                Ok(())
            });
            if let Err(error) = written {
                tracing::warn!(%error, "Cannot write a gap to the spool; it is kept in memory.");
            }
        }
        drop(disk);
        lock(&self.gaps).insert(id, gap);
    }

    /// Gaps waiting to be sent, with their ids.
    pub fn pending_gaps(&self) -> Vec<(u64, Gap)> {
        lock(&self.gaps)
            .iter()
            .map(|(id, g)| (*id, g.clone()))
            .collect()
    }

    /// Fills in the start of gaps whose start was unknown (a lost spool):
    /// right after what the collector last committed. Gaps left empty go.
    pub fn resolve_unknown_starts(&self, last_committed: u64) {
        let mut gaps = lock(&self.gaps);
        let mut empty = Vec::new();
        for (id, gap) in gaps.iter_mut() {
            if gap.first_seq == 0 {
                gap.first_seq = last_committed + 1;
                if gap.first_seq > gap.last_seq {
                    empty.push(*id);
                }
            }
        }
        drop(gaps);
        self.forget_gaps(&empty);
    }

    /// Removes gaps the collector has committed.
    pub fn forget_gaps(&self, ids: &[u64]) {
        if ids.is_empty() {
            return;
        }
        let mut gaps = lock(&self.gaps);
        for id in ids {
            gaps.remove(id);
        }
        drop(gaps);
        let disk = self.disk();
        if let Some(db) = &disk.db {
            let _ = guarded(|| {
                let mut tx = db.begin_write()?;
                tx.set_durability(redb::Durability::None)?;
                {
                    let mut table = tx.open_table(GAPS)?;
                    for id in ids {
                        table.remove(*id)?;
                    }
                }
                tx.commit()?;
                Ok(())
            });
        }
    }

    /// Up to `max` results with sequence numbers in `(after, below)`, at
    /// most `max_bytes` of them (at least one). Reads the disk, plus memory
    /// when degraded. Corrupt records are skipped and recorded.
    pub fn read(&self, after: u64, below: u64, max: usize, max_bytes: usize) -> Batch {
        let mut batch = Batch {
            results: Vec::new(),
            through_seq: after,
        };
        if after + 1 >= below || max == 0 {
            return batch;
        }
        let mut corrupt = Vec::new();
        let mut bytes = 0usize;
        let disk = self.disk();
        let mut failure = None;
        if let Some(db) = &disk.db {
            let read = guarded(|| {
                let tx = db.begin_read()?;
                let table = tx.open_table(RESULTS)?;
                for entry in table.range(after + 1..below)? {
                    let (seq, value) = entry?;
                    let (seq, value) = (seq.value(), value.value());
                    if batch.results.len() >= max
                        || (bytes + value.len() > max_bytes && !batch.results.is_empty())
                    {
                        break;
                    }
                    match Record::decode(value) {
                        Some(r) if r.seq == seq => {
                            bytes += value.len();
                            batch.results.push(r);
                        }
                        _ => corrupt.push(seq),
                    }
                    batch.through_seq = seq;
                }
                Ok(())
            });
            if let Err(error) = read {
                failure = Some(error);
            }
        }
        let memory_too = disk.db.is_none() || disk.degraded_since.is_some();
        drop(disk);
        if let Some(error) = failure {
            self.replace_unreadable(&error);
            return Batch {
                results: Vec::new(),
                through_seq: after,
            };
        }
        if memory_too {
            let unsynced = lock(&self.unsynced);
            let mut merged: Vec<pb::ProbeResult> = Vec::new();
            let mut from_disk = std::mem::take(&mut batch.results).into_iter().peekable();
            let mut from_memory = unsynced.range(after + 1..below).peekable();
            while merged.len() < max {
                let take_disk = match (from_disk.peek(), from_memory.peek()) {
                    (Some(d), Some((m, _))) => d.seq < **m,
                    (Some(_), None) => true,
                    (None, Some(_)) => false,
                    (None, None) => break,
                };
                let next = if take_disk {
                    from_disk.next()
                } else {
                    from_memory
                        .next()
                        .and_then(|(_, r)| Record::decode(&r.bytes))
                };
                if let Some(r) = next {
                    batch.through_seq = batch.through_seq.max(r.seq);
                    merged.push(r);
                }
            }
            batch.results = merged;
        }
        if !corrupt.is_empty() {
            for seq in &corrupt {
                self.delete_one(*seq);
            }
            self.dropped(&corrupt, pb::GapReason::SpoolCorrupt.text());
        }
        batch
    }

    fn delete_one(&self, seq: u64) {
        let mut disk = self.disk();
        if let Some(db) = &disk.db {
            let removed = guarded(|| {
                let tx = db.begin_write()?;
                let len = tx
                    .open_table(RESULTS)?
                    .remove(seq)?
                    .map(|v| v.value().len() as u64);
                tx.commit()?;
                Ok(len)
            });
            if let Ok(Some(len)) = removed {
                disk.records = disk.records.saturating_sub(1);
                disk.bytes = disk.bytes.saturating_sub(len);
            }
        }
    }

    /// Removes every result up to `seq`: the collector committed them.
    pub fn ack_through(&self, seq: u64) {
        lock(&self.unsynced).retain(|s, _| *s > seq);
        self.delete_through(seq);
    }

    fn delete_through(&self, seq: u64) {
        let mut disk = self.disk();
        let Some(db) = &disk.db else { return };
        let deleted = guarded(|| {
            let mut tx = db.begin_write()?;
            // A crash before the next durable commit resends these; the
            // collector ignores duplicates. No fsync needed.
            tx.set_durability(redb::Durability::None)?;
            let (mut n, mut bytes) = (0u64, 0u64);
            tx.open_table(RESULTS)?.retain_in(..=seq, |_, v| {
                n += 1;
                bytes += v.len() as u64;
                false
            })?;
            tx.commit()?;
            Ok((n, bytes))
        });
        match deleted {
            Ok((n, bytes)) => {
                disk.records = disk.records.saturating_sub(n);
                disk.bytes = disk.bytes.saturating_sub(bytes);
            }
            Err(error) => {
                tracing::warn!(%error, "Cannot delete acknowledged results from the spool; they will be resent and ignored as duplicates.")
            }
        }
    }

    /// Moves the results in `(after, through]` out of the way: the collector
    /// refused them as invalid, so they are never resent. Kept in the
    /// spool's quarantine table, recorded as a `rejected` gap.
    pub fn quarantine(&self, after: u64, through: u64) {
        if through <= after {
            return;
        }
        let mut moved = 0u64;
        {
            let mut unsynced = lock(&self.unsynced);
            let seqs: Vec<u64> = unsynced
                .range(after + 1..=through)
                .map(|(s, _)| *s)
                .collect();
            for seq in seqs {
                unsynced.remove(&seq);
                moved += 1;
            }
        }
        let mut disk = self.disk();
        if let Some(db) = &disk.db {
            let result = guarded(|| {
                let tx = db.begin_write()?;
                let (mut n, mut bytes) = (0u64, 0u64);
                {
                    let mut results = tx.open_table(RESULTS)?;
                    let mut quarantine = tx.open_table(QUARANTINE)?;
                    let mut taken = Vec::new();
                    for entry in results.range(after + 1..=through)? {
                        let (seq, value) = entry?;
                        taken.push((seq.value(), value.value().to_vec()));
                    }
                    for (seq, value) in &taken {
                        results.remove(*seq)?;
                        quarantine.insert(*seq, value.as_slice())?;
                        n += 1;
                        bytes += value.len() as u64;
                    }
                    let keep_from = quarantine
                        .last()?
                        .map_or(0, |(k, _)| k.value())
                        .saturating_sub(QUARANTINE_KEEP);
                    quarantine.retain_in(..keep_from, |_, _| false)?;
                }
                tx.commit()?;
                Ok((n, bytes))
            });
            match result {
                Ok((n, bytes)) => {
                    disk.records = disk.records.saturating_sub(n);
                    disk.bytes = disk.bytes.saturating_sub(bytes);
                    moved += n;
                }
                Err(error) => {
                    tracing::warn!(%error, "Cannot move a refused batch to the quarantine.")
                }
            }
        }
        drop(disk);
        metrics::counter!("vantage_agent_batches_quarantined_total").increment(1);
        if moved > 0 {
            self.record_gap(Gap::new(
                after + 1,
                through,
                Some(moved),
                pb::GapReason::Rejected.text(),
            ));
        }
    }

    /// The file cannot be trusted: move it aside, start a new one and
    /// record that whatever it held is lost.
    fn replace_unreadable(&self, error: &DiskError) {
        let mut disk = self.disk();
        let Some(path) = disk.path.clone() else {
            return;
        };
        disk.db = None;
        let aside = move_aside(&path);
        tracing::error!(path = %path.display(), moved_to = ?aside, %error, "Spool file unreadable; moved it aside and started a new one. What it held is recorded as a gap.");
        let lost = disk.records;
        disk.records = 0;
        disk.bytes = 0;
        match guarded(|| open_db(&path)) {
            Ok(state) => disk.db = Some(state.db),
            Err(error) => {
                tracing::error!(%error, "Cannot create a new spool file; keeping results in memory only.");
                disk.degraded_since = Some(Instant::now());
            }
        }
        // The new file starts with the lease already handed out.
        write_lease(&disk);
        let leased = disk.leased_through;
        drop(disk);
        self.mark_open(true);
        metrics::counter!("vantage_agent_spool_unreadable_total").increment(1);
        self.record_gap(Gap::new(
            0,
            leased,
            Some(lost).filter(|n| *n > 0),
            pb::GapReason::SpoolUnreadable.text(),
        ));
    }

    fn mark_open(&self, open: bool) {
        let disk = self.disk();
        if let Some(db) = &disk.db {
            let _ = guarded(|| {
                let tx = db.begin_write()?;
                tx.open_table(META)?.insert(META_OPEN, u64::from(open))?;
                tx.commit()?;
                Ok(())
            });
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

/// Records the sequence lease durably in the spool file, if there is one.
fn write_lease(disk: &Disk) {
    let Some(db) = &disk.db else { return };
    let written = guarded(|| {
        let tx = db.begin_write()?;
        tx.open_table(META)?
            .insert(META_LEASED_THROUGH, disk.leased_through)?;
        tx.commit()?;
        Ok(())
    });
    if let Err(error) = written {
        tracing::warn!(%error, "Cannot record the sequence lease; numbers stay unique only while the clock does not step back.");
    }
}

struct OpenState {
    db: Database,
    records: u64,
    bytes: u64,
    leased_through: u64,
    complete_below: u64,
    next_gap_id: u64,
    was_open: bool,
    gaps: BTreeMap<u64, Gap>,
}

fn open_db(path: &Path) -> Result<OpenState, DiskError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| DiskError::Redb(redb::Error::Io(e)))?;
    }
    let db = Database::builder()
        // The spool is read sequentially once; a small cache keeps the
        // agent's memory flat however large the backlog.
        .set_cache_size(4 * 1024 * 1024)
        .create(path)?;
    let tx = db.begin_write()?;
    let mut state = (0u64, 0u64, 0u64, 0u64, 1u64, false, BTreeMap::new());
    {
        let results = tx.open_table(RESULTS)?;
        for entry in results.iter()? {
            let (_, v) = entry?;
            state.0 += 1;
            state.1 += v.value().len() as u64;
        }
        let meta = tx.open_table(META)?;
        let get = |key| -> Result<u64, DiskError> { Ok(meta.get(key)?.map_or(0, |v| v.value())) };
        let last_seq = results.last()?.map_or(0, |(k, _)| k.value());
        state.2 = get(META_LEASED_THROUGH)?.max(last_seq);
        state.3 = get(META_COMPLETE_BELOW)?;
        state.4 = get(META_NEXT_GAP)?.max(1);
        state.5 = get(META_OPEN)? == 1;
        let gaps = tx.open_table(GAPS)?;
        for entry in gaps.iter()? {
            let (id, v) = entry?;
            if let Some(gap) = Gap::decode(v.value()) {
                state.6.insert(id.value(), gap);
            }
        }
    }
    tx.commit()?;
    let (records, bytes, leased_through, complete_below, next_gap_id, was_open, gaps) = state;
    Ok(OpenState {
        db,
        records,
        bytes,
        leased_through,
        complete_below,
        next_gap_id,
        was_open,
        gaps,
    })
}

/// Renames an untrustworthy spool file out of the way; returns where to.
fn move_aside(path: &Path) -> Option<PathBuf> {
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".unreadable-{}", now_us()));
    let aside = PathBuf::from(aside);
    std::fs::rename(path, &aside).ok().map(|()| aside)
}
