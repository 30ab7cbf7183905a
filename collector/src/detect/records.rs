//! The plan's records: what a pass writes into an incident and into
//! `segment_rates`, and what it reads of the incidents already open.

use chrono::{DateTime, Utc};

vocabulary! {
    /// Whether an incident is tied to a segment or is global
    /// (`incidents.kind`).
    pub enum IncidentKind {
        /// Failures follow one value of one dimension.
        Segment = "segment",
        /// Every segment fails alike.
        Global = "global",
    }
}

vocabulary! {
    /// What an incident is about (`incidents.scope`): one target, or a path
    /// (a proxy, a network) failing on many targets.
    pub enum IncidentScope {
        Target = "target",
        Path = "path",
    }
}

vocabulary! {
    /// Where the fault lies (`incidents.fault_side`): at the site, for the
    /// vantages named, or on the vantages' own path.
    pub enum FaultSide {
        Site = "site",
        Path = "path",
    }
}

/// What a pass writes into an incident when it opens it, re-explains it,
/// or while it stays open.
#[derive(Debug, Clone, PartialEq)]
pub struct IncidentRecord {
    pub target: String,
    pub pattern: String,
    pub scope: IncidentScope,
    pub targets: Vec<String>,
    pub fault_side: FaultSide,
    pub kind: IncidentKind,
    pub dimension: String,
    pub value: String,
    pub narrowed_value: Option<String>,
    pub statuses: Vec<i16>,
    pub explanation: String,
    /// Segment failures, segment probes, rest failures, rest probes.
    pub counts: [i64; 4],
    pub p_value: Option<f64>,
    pub failing_vantages: i32,
    pub correlated: serde_json::Value,
    pub first_failure_at: Option<DateTime<Utc>>,
    pub last_failure_at: Option<DateTime<Utc>>,
    pub gateways: Vec<String>,
    pub edge_locations: Vec<String>,
    pub evidence: serde_json::Value,
    pub window_seconds: i32,
}

/// One row of `segment_rates`.
#[derive(Debug, Clone, PartialEq)]
pub struct RateRow {
    pub target: String,
    pub pattern: String,
    pub dimension: String,
    pub value: String,
    pub probes: i64,
    pub failures: i64,
    pub rest_probes: i64,
    pub rest_failures: i64,
    pub vantages: i32,
    pub p_value: Option<f64>,
    pub flagged: bool,
    /// The evidence window, in probe rounds.
    pub window_rounds: i32,
}

/// An open incident as a pass relates a new one to it (which came first).
#[derive(Debug, Clone, PartialEq)]
pub struct OpenIncident {
    pub id: i64,
    pub target: String,
    pub pattern: String,
    pub kind: IncidentKind,
    pub dimension: String,
    pub value: String,
    pub opened_at: DateTime<Utc>,
}
