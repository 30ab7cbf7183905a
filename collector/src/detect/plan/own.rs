//! An open incident's own segment: its groups on its target, and whether
//! it still fails (judged on its own failures, whatever explains the
//! window best).

use std::collections::HashSet;

use crate::detect::decision::{self, Assessment, SegmentStat};
use crate::detect::dimensions::DIMENSIONS;
use crate::detect::population::Population;
use crate::detect::track::CandidateKey;

/// The population of `key` (one target's) and the groups of its segment
/// there.
pub(super) fn segment_groups(
    key: &CandidateKey,
    populations: &[Population],
    assessments: &[Assessment],
) -> Option<(usize, HashSet<usize>)> {
    let pi = population_of(key, populations)?;
    let s = segment_of(key, &assessments[pi])?;
    Some((pi, s.groups.iter().copied().collect()))
}

/// The index of `key`'s population (its target and pattern).
fn population_of(key: &CandidateKey, populations: &[Population]) -> Option<usize> {
    populations
        .iter()
        .position(|p| p.target == key.target && p.pattern == key.pattern)
}

/// `key`'s segment as the whole population's test saw it.
fn segment_of<'a>(key: &CandidateKey, a: &'a Assessment) -> Option<&'a SegmentStat> {
    a.segments[..a.base_segments]
        .iter()
        .find(|s| DIMENSIONS[s.dimension].name == key.dimension && s.value == key.value)
}

/// Whether the failures of `key`'s own segment (its target's, or the
/// path's) still pass the gates in the last 2 probe rounds: failures
/// from `min_vantages` witnesses, the rate above the rest's by
/// `min_rate_difference` (not `min_rate_ratio`: another cause failing
/// beside it on the same target raises the rest, and must not make this
/// one look repaired), or masked by a target failing everywhere (see
/// [`masked`]). For a global key: the
/// target fails at half the global rate or more, from `min_vantages`
/// vantages. The gates, not the test: an incident already proved its
/// case, and only needs to show it is still there.
pub(super) fn still_failing(
    key: &CandidateKey,
    populations: &[Population],
    assessments: &[Assessment],
    params: &decision::Params,
) -> bool {
    let Some(pi) = population_of(key, populations) else {
        return false;
    };
    let (p, a) = (&populations[pi], &assessments[pi]);
    let recent = a.windows.len().min(RECENT_WINDOWS);
    if key.is_global() {
        return (0..recent).any(|wi| {
            let w = a.windows[wi];
            let failing: HashSet<usize> = p
                .groups
                .iter()
                .filter(|g| g.counts(w).failures > 0)
                .map(|g| g.witness)
                .collect();
            failing.len() >= params.min_vantages && a.totals[wi].rate() >= params.global_rate / 2.0
        });
    }
    segment_of(key, a).is_some_and(|s| {
        s.windows[..recent].iter().any(|w| {
            w.failing_vantages >= params.min_vantages
                && (w.segment.rate() - w.rest.rate() >= params.min_rate_difference
                    || masked(w.segment, w.rest, params))
        })
    })
}

/// Whether a segment that still fails at the global rate is masked by a
/// rest failing as much: the whole target fails (an outage, or other
/// causes covering everyone else), so nothing can tell whether this cause
/// is over. Its incident holds rather than resolving on no evidence, and
/// resolves once its own segment stops failing.
fn masked(segment: decision::Counts, rest: decision::Counts, params: &decision::Params) -> bool {
    segment.rate() >= params.global_rate && rest.rate() >= params.global_rate / 2.0
}

/// The windows an open incident's own failures are looked for in: the
/// last 2 rounds, as a finding's shortest recency lookback.
const RECENT_WINDOWS: usize = 1;
