//! The redb file: opening and reading what it holds, moving an unreadable
//! one aside, the clean-close mark and the sequence lease.

use super::*;

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

    /// The file cannot be trusted: move it aside, start a new one and
    /// record that whatever it held is lost.
    pub(super) fn replace_unreadable(&self, error: &DiskError) {
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

    pub(super) fn mark_open(&self, open: bool) {
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
}

/// Records the sequence lease durably in the spool file, if there is one.
pub(super) fn write_lease(disk: &Disk) {
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

pub(super) struct OpenState {
    pub(super) db: Database,
    pub(super) records: u64,
    pub(super) bytes: u64,
    pub(super) leased_through: u64,
    pub(super) complete_below: u64,
    pub(super) next_gap_id: u64,
    pub(super) was_open: bool,
    pub(super) gaps: BTreeMap<u64, Gap>,
}

pub(super) fn open_db(path: &Path) -> Result<OpenState, DiskError> {
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
pub(super) fn move_aside(path: &Path) -> Option<PathBuf> {
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".unreadable-{}", now_us()));
    let aside = PathBuf::from(aside);
    std::fs::rename(path, &aside).ok().map(|()| aside)
}
