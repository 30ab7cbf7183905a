//! One detection pass as a pure plan (no I/O, no clock): the window's
//! cells are grouped per target and failure pattern ([`population`]),
//! assessed over several
//! windows ([`decision`]), assessed once more across targets for path
//! failures, matched to the failures tracked so far ([`track`]), run
//! through the hysteresis ([`lifecycle`]), and turned into the incident
//! records to open, re-explain, refresh and resolve. The detector applies
//! the plan in one transaction.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};

mod assess;
pub mod confirm;
mod own;
mod seen;
mod transitions;

use super::asn::AsnTable;
use super::cells::WindowCell;
use super::lifecycle;
use super::population::Names;
use super::records::{IncidentRecord, OpenIncident, RateRow};
use super::settings::DetectorSettings;
use super::track::{self, CandidateKey, Seen, Tracked};
use assess::{Assessed, assess};
use confirm::{Confirm, suspects};
use seen::{findings, rate_rows};
use transitions::Pass;

/// Everything a pass reads.
pub struct PassInput<'a> {
    pub cells: &'a [WindowCell],
    /// The failures tracked by the previous pass.
    pub tracked: Vec<Tracked>,
    /// Open incidents (for how a new one relates to them).
    pub open: &'a [OpenIncident],
    pub settings: &'a DetectorSettings,
    pub asn: &'a AsnTable,
    /// The boundaries of the cells' age buckets, in rounds.
    pub thresholds: &'a [u32],
    pub now: DateTime<Utc>,
    /// When confirmation probes were last asked for each key: not again
    /// within half a detector interval.
    pub asked: &'a HashMap<CandidateKey, DateTime<Utc>>,
    /// Incidents resolved within `reopen_within`: their id, key and when.
    pub resolved: &'a [(i64, CandidateKey, DateTime<Utc>)],
}

/// What a pass decided.
#[derive(Debug, Default)]
pub struct Plan {
    /// Incidents to open: the index of their tracked failure (which gets
    /// the new id) and the record.
    pub opens: Vec<(usize, IncidentRecord)>,
    /// Resolved incidents whose failure came back within `reopen_within`:
    /// the index of their tracked failure, the incident and the record.
    pub reopens: Vec<(usize, i64, IncidentRecord)>,
    /// Open incidents re-explained: a new explanation replaces the old.
    pub updates: Vec<(i64, IncidentRecord)>,
    /// Open incidents still explained the same way, with fresh evidence.
    pub refreshes: Vec<(i64, IncidentRecord)>,
    /// Open incidents still failing while another explanation is pending:
    /// only their last-seen time moves.
    pub touches: Vec<i64>,
    pub resolves: Vec<(i64, CandidateKey)>,
    /// Every tracked failure after this pass (idle ones dropped).
    pub tracked: Vec<Tracked>,
    pub rates: Vec<RateRow>,
    pub probes: u64,
    pub segments: usize,
    /// Confirmation probes to ask for (candidates first held this pass).
    pub confirmations: Vec<Confirm>,
}

/// A finding of one population, with what is needed to build its record.
struct Found {
    population: usize,
    finding: usize,
    seen: Seen,
}

/// Plans one pass.
pub fn plan(mut input: PassInput<'_>) -> Plan {
    let settings = input.settings;
    let tracked = std::mem::take(&mut input.tracked);
    let Assessed {
        populations,
        assessments,
        names,
        targets,
    } = assess(&input);
    let mut plan = Plan {
        probes: input
            .cells
            .iter()
            .map(|c| u64::try_from(c.counts.probes).unwrap_or(0))
            .sum(),
        ..Plan::default()
    };
    for (p, a) in populations.iter().zip(&assessments) {
        plan.segments += a.base_segments;
        plan.rates.extend(rate_rows(&p.target, p.pattern, a));
    }
    let found = findings(&populations, &assessments, &names);
    let (mut tracked, seen_of) = track_found(tracked, &found);
    let pass = Pass {
        input: &input,
        populations: &populations,
        assessments: &assessments,
        names: &names,
        found: &found,
        targets,
    };
    pass.step_all(&mut tracked, &seen_of, &mut plan);
    if settings.confirmation_probes {
        plan.confirmations.extend(suspects(
            &populations,
            &assessments,
            &tracked,
            &names,
            &input,
            &plan.confirmations,
        ));
    }
    keep_tracked(&mut plan, tracked);
    plan
}

/// Matches this pass's findings to the failures tracked so far; a recent
/// finding nothing tracks is tracked from now. Returns the tracked
/// failures and, for each, the index of its finding this pass.
fn track_found(mut tracked: Vec<Tracked>, found: &[Found]) -> (Vec<Tracked>, Vec<Option<usize>>) {
    let seen: Vec<&Seen> = found.iter().map(|f| &f.seen).collect();
    let matches = track::match_seen(&tracked, &seen);
    let mut seen_of: Vec<Option<usize>> = vec![None; tracked.len()];
    for (si, m) in matches.iter().enumerate() {
        match m {
            Some(ti) => seen_of[*ti] = Some(si),
            None if seen[si].timing.recent => {
                tracked.push(Tracked {
                    key: seen[si].key.clone(),
                    state: lifecycle::KeyState::default(),
                    footprint: seen[si].footprint.clone(),
                    pending: None,
                });
                seen_of.push(Some(si));
            }
            None => {}
        }
    }
    (tracked, seen_of)
}

/// The tracked failures kept for the next pass: idle ones are forgotten,
/// the opens keep pointing at theirs.
fn keep_tracked(plan: &mut Plan, tracked: Vec<Tracked>) {
    // A key
    // is tracked once (the state's primary key): matching pairs a finding
    // with the failure of the same key first, so a second one would be a
    // bug, and must not stop every later pass.
    let opening: HashSet<usize> = plan.opens.iter().map(|o| o.0).collect();
    let mut new_index = vec![None; tracked.len()];
    let mut kept = Vec::with_capacity(tracked.len());
    let mut keys = HashSet::new();
    for (i, t) in tracked.into_iter().enumerate() {
        if (!t.state.is_idle() || opening.contains(&i)) && keys.insert(t.key.clone()) {
            new_index[i] = Some(kept.len());
            kept.push(t);
        }
    }
    for open in &mut plan.opens {
        open.0 = new_index[open.0].unwrap_or(usize::MAX);
    }
    for reopen in &mut plan.reopens {
        reopen.0 = new_index[reopen.0].unwrap_or(usize::MAX);
    }
    plan.tracked = kept;
}
