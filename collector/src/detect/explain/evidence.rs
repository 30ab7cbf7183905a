//! What an incident's record shows of its finding: where it fails (the
//! segment, the evidence window, the failing groups), when, which probes,
//! the values the failing probes share, and the counts per target.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::super::decision::{Assessment, Correlation, Counts, Finding, Window};
use super::super::dimensions::DIMENSIONS;
use super::super::population::{Names, Population};

/// Where finding `finding` fails: its segment (none when global), the
/// index of its evidence window, and the groups with failures in it.
pub(super) fn where_it_fails(
    p: &Population,
    a: &Assessment,
    finding: &Finding,
) -> (Option<usize>, usize, Vec<usize>) {
    match finding {
        Finding::Global { window, .. } => {
            let w = a.windows[*window];
            (
                None,
                *window,
                (0..p.groups.len())
                    .filter(|g| p.groups[*g].counts(w).failures > 0)
                    .collect(),
            )
        }
        Finding::Segment {
            segment,
            failing_groups,
            ..
        } => (
            Some(*segment),
            a.segments[*segment].window,
            failing_groups.clone(),
        ),
    }
}

/// When the failing groups failed, and some of their failing probes.
pub(super) struct FailingEvidence {
    pub(super) first: Option<DateTime<Utc>>,
    pub(super) last: Option<DateTime<Utc>>,
    /// Agent, sequence number and start, latest first.
    pub(super) samples: Vec<(String, i64, DateTime<Utc>)>,
}

/// The first and last failure of `failing_groups`, and up to five of
/// their failing probes, latest first (agent, sequence number, start).
pub(super) fn failing_evidence(p: &Population, failing_groups: &[usize]) -> FailingEvidence {
    let mut first = None::<DateTime<Utc>>;
    let mut last = None::<DateTime<Utc>>;
    let mut samples = Vec::new();
    for g in failing_groups {
        let e = &p.evidence[*g];
        first = match (first, e.first_failure_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        last = match (last, e.last_failure_at) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        samples.extend(e.samples.iter().cloned());
    }
    samples.sort_by_key(|s| std::cmp::Reverse(s.2));
    samples.dedup_by(|x, y| x.0 == y.0 && x.1 == y.1);
    samples.truncate(5);
    FailingEvidence {
        first,
        last,
        samples,
    }
}

/// The values of dimension `name` the failing groups have, sorted.
pub(super) fn failing_values(p: &Population, failing_groups: &[usize], name: &str) -> Vec<String> {
    let d = DIMENSIONS.iter().position(|d| d.name == name);
    let mut set: BTreeSet<String> = BTreeSet::new();
    if let Some(d) = d {
        for g in failing_groups {
            if let Some(v) = &p.groups[*g].values[d] {
                set.insert(v.clone());
            }
        }
    }
    set.into_iter().collect()
}

/// Per target, the segment's counts in the evidence window (none for a
/// global finding), by target name.
pub(super) fn per_target(
    p: &Population,
    a: &Assessment,
    segment: Option<usize>,
    window: Window,
    names: &Names,
) -> Vec<(String, Counts)> {
    let mut per_target: std::collections::BTreeMap<usize, Counts> = Default::default();
    if let Some(s) = segment {
        for g in &a.segments[s].groups {
            per_target
                .entry(p.group_target[*g])
                .or_default()
                .add(p.groups[*g].counts(window));
        }
    }
    let mut targets: Vec<(String, Counts)> = per_target
        .iter()
        .filter(|(_, c)| c.probes > 0)
        .map(|(t, c)| (names.targets[*t].clone(), *c))
        .collect();
    targets.sort_by(|a, b| a.0.cmp(&b.0));
    targets
}

/// The segments that fail with the finding's, as the page lists them.
pub(super) fn correlated_json(a: &Assessment, correlated: &[Correlation]) -> Vec<Value> {
    correlated
        .iter()
        .map(|c| {
            let s = &a.segments[c.segment];
            json!({
                "dimension": DIMENSIONS[s.dimension].name,
                "value": s.value,
                "shared_failures": c.shared_failures,
                "failures": s.segment.failures,
                "probes": s.segment.probes,
            })
        })
        .collect()
}
