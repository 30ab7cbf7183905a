//! The detector's input: the window's probes as cells (one per cell key
//! and age bucket), whatever read or fed them.

use std::sync::Arc;

use chrono::{DateTime, Utc};

/// Probes of one target in the detection window that agree on every
/// dimension's source value, status, outcome, vantage and age bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowCell {
    /// Shared with the detector's kept window: a pass makes one cell per
    /// cell key and age bucket, and need not copy the key's dozen strings
    /// for each.
    pub key: Arc<CellKey>,
    /// How old, in rounds: the number of bucket thresholds at or below
    /// the age of its newest probes (0: the last round).
    pub bucket: i32,
    pub counts: CellCounts,
}

/// What a window read groups by besides time: one cell's identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CellKey {
    pub target: String,
    pub check: String,
    pub outcome: String,
    /// The HTTP status, or the forward proxy's refusal status.
    pub status: Option<i16>,
    pub agent_id: String,
    pub vantage: String,
    /// The check's interval (the default round when unknown), ms.
    pub interval_ms: i32,
    /// Confirmation probes the detector asked for (not scheduled ones).
    pub confirmation: bool,
    /// One per source expression asked for.
    pub sources: Vec<Option<String>>,
}

/// How many probes of a cell, when, and a sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CellCounts {
    pub probes: i64,
    pub first_at: DateTime<Utc>,
    pub last_at: DateTime<Utc>,
    /// The newest result's sequence number (a sample result id).
    pub last_seq: i64,
}

impl CellCounts {
    /// Adds `more`.
    pub fn merge(&mut self, more: &CellCounts) {
        self.probes += more.probes;
        self.first_at = self.first_at.min(more.first_at);
        self.last_at = self.last_at.max(more.last_at);
        self.last_seq = self.last_seq.max(more.last_seq);
    }
}
