//! A transaction snapshot as PostgreSQL prints it (`pg_current_snapshot()`):
//! which transactions a read saw committed.

use std::collections::HashSet;

/// A `pg_snapshot`: `xmin:xmax:xip,...`.
pub(super) struct Snapshot {
    xmin: i64,
    xmax: i64,
    in_progress: HashSet<i64>,
}

impl Snapshot {
    pub(super) fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split(':');
        let xmin = parts.next()?.parse().ok()?;
        let xmax = parts.next()?.parse().ok()?;
        let in_progress = match parts.next()? {
            "" => HashSet::new(),
            list => list
                .split(',')
                .map(|x| x.parse().ok())
                .collect::<Option<_>>()?,
        };
        Some(Self {
            xmin,
            xmax,
            in_progress,
        })
    }

    /// Whether a transaction that committed is visible (as
    /// `pg_visible_in_snapshot`).
    pub(super) fn shows(&self, xid: i64) -> bool {
        xid < self.xmin || (xid < self.xmax && !self.in_progress.contains(&xid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_shows_what_committed_before_it() {
        let s = Snapshot::parse("100:105:101,103").unwrap();
        assert!(s.shows(99));
        assert!(s.shows(100));
        assert!(!s.shows(101));
        assert!(s.shows(102));
        assert!(!s.shows(103));
        assert!(!s.shows(105));
        assert!(Snapshot::parse("7:7:").unwrap().shows(6));
        assert!(Snapshot::parse("7:x:").is_none());
    }
}
