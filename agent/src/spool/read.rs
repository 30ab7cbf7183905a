//! The reporter's side: reading the next batch in sequence order, deleting
//! what the collector committed, and quarantining what it refused.

use super::*;

impl Spool {
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

    pub(super) fn delete_one(&self, seq: u64) {
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

    pub(super) fn delete_through(&self, seq: u64) {
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
}
