//! What was lost: dropped results become gaps, kept on disk until the
//! collector acknowledges them.

use super::*;

impl Spool {
    /// Counts and records dropped results as one gap per contiguous run.
    pub(super) fn dropped(&self, seqs: &[u64], reason: &'static str) {
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
}
