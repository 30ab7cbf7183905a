//! How a segment's failures spread over its witnesses (for a path: the
//! targets), and the choice of a lead in a scope: a path segment leads
//! only if it fails for most of the targets it probes.

use std::collections::{BTreeMap, HashSet};

use super::{Counts, Group, Params, Scope, SegmentStat, Window, best_fit_first};

/// The first flagged segment, best fit first, that is a finding in this
/// scope (for a path: failing for most of the targets it probes).
pub(super) fn pick_lead(
    groups: &[Group],
    active: &[bool],
    windows: &[Window],
    segments: &[SegmentStat],
    totals: &[Counts],
    p: &Params,
    scope: Scope<'_>,
) -> Option<usize> {
    let mut candidates: Vec<usize> = (0..segments.len())
        .filter(|i| segments[*i].flagged)
        .collect();
    best_fit_first(segments, totals, &mut candidates);
    match scope {
        // A segment holding a healthy part (a region with two failing /24s
        // and a healthy one) is two causes' union, not a cause: its parts
        // lead instead, each in turn. When every candidate holds one (a
        // fault in the intersection of two dimensions), the best fit leads.
        Scope::Target => candidates
            .iter()
            .copied()
            .find(|s| !holds_a_healthy_part(groups, windows, segments, *s, p))
            .or_else(|| candidates.first().copied()),
        Scope::Path(claims) => candidates.into_iter().find(|s| {
            let stat = &segments[*s];
            fails_for_most_witnesses(
                groups,
                active,
                claims,
                windows[stat.explain_window],
                stat,
                p,
            )
        }),
    }
}

/// Whether a segment fails for most of the witnesses (for a path: the
/// targets) it has probes from, in window `w`: on more than half of them,
/// and at least `min_vantages`, the segment fails more than the rest of
/// that witness's probes (by `min_rate_difference`), and the failures
/// spread over at least half of the segment's units there (so a target
/// where only a narrower part of the segment fails, e.g. one /24 of a
/// region, does not count for the region).
pub fn fails_for_most_witnesses(
    groups: &[Group],
    active: &[bool],
    claims: &[Option<(usize, String)>],
    w: Window,
    stat: &SegmentStat,
    p: &Params,
) -> bool {
    let per_witness = witness_counts(groups, active, claims, w, stat);
    let probed = per_witness.len();
    let failing = per_witness.values().filter(|x| x.fails(p)).count();
    failing >= p.min_vantages && failing * 2 > probed
}

/// One witness's view of a segment: its counts there, the rest of the
/// witness's probes, and the units probing and failing.
#[derive(Debug, Clone, Copy, Default)]
pub struct WitnessCounts {
    pub segment: Counts,
    pub rest: Counts,
    pub units: usize,
    pub failing_units: usize,
    /// Failures in the segment that the witness's own assessment explains
    /// by something else.
    pub claimed_failures: u64,
}

impl WitnessCounts {
    /// The segment fails for this witness: more than the rest there, and
    /// over at least half of its units.
    pub fn fails(&self, p: &Params) -> bool {
        self.segment.failures > 0
            && self.segment.rate() - self.rest.rate() >= p.min_rate_difference
            && self.failing_units * 2 >= self.units
            && self.claimed_failures * 2 < self.segment.failures
    }
}

/// Per witness with probes in the segment (window `w`): its counts.
pub fn witness_counts(
    groups: &[Group],
    active: &[bool],
    claims: &[Option<(usize, String)>],
    w: Window,
    stat: &SegmentStat,
) -> BTreeMap<usize, WitnessCounts> {
    let mut all: BTreeMap<usize, Counts> = BTreeMap::new();
    for (g, group) in groups.iter().enumerate() {
        if active.get(g).copied().unwrap_or(false) {
            all.entry(group.witness).or_default().add(group.counts(w));
        }
    }
    let mut units: BTreeMap<usize, (HashSet<usize>, HashSet<usize>)> = BTreeMap::new();
    let mut out: BTreeMap<usize, WitnessCounts> = BTreeMap::new();
    for g in &stat.groups {
        let group = &groups[*g];
        let c = group.counts(w);
        if c.probes == 0 {
            continue;
        }
        let x = out.entry(group.witness).or_default();
        x.segment.add(c);
        let claimed = claims.get(*g).and_then(Option::as_ref);
        if claimed.is_some_and(|(d, v)| (*d, v.as_str()) != (stat.dimension, stat.value.as_str())) {
            x.claimed_failures += c.failures;
        }
        let u = units.entry(group.witness).or_default();
        u.0.insert(group.unit);
        if c.failures > 0 {
            u.1.insert(group.unit);
        }
    }
    for (witness, x) in &mut out {
        x.rest = all
            .get(witness)
            .copied()
            .unwrap_or_default()
            .minus(x.segment);
        if let Some((probing, failing)) = units.get(witness) {
            x.units = probing.len();
            x.failing_units = failing.len();
        }
    }
    out
}

/// Whether segment `s` holds a healthy part in its explanation window:
/// another tested segment whose probes all lie in it, probed by at least
/// `min_vantages` witnesses, with at least `min_segment_probes` probes,
/// failing at less than half of `s`'s rate.
fn holds_a_healthy_part(
    groups: &[Group],
    windows: &[Window],
    segments: &[SegmentStat],
    s: usize,
    p: &Params,
) -> bool {
    let stat = &segments[s];
    let wi = stat.explain_window;
    let Some(rate) = stat.windows.get(wi).map(|w| w.segment.rate()) else {
        return false;
    };
    let inside: HashSet<usize> = stat.groups.iter().copied().collect();
    segments.iter().enumerate().any(|(t, part)| {
        if t == s || part.groups.len() >= stat.groups.len() {
            return false;
        }
        if !part.groups.iter().all(|g| inside.contains(g)) {
            return false;
        }
        let Some(counts) = part.windows.get(wi).map(|w| w.segment) else {
            return false;
        };
        let witnesses: HashSet<usize> = part
            .groups
            .iter()
            .filter(|g| groups[**g].counts(windows[wi]).probes > 0)
            .map(|g| groups[*g].witness)
            .collect();
        witnesses.len() >= p.min_vantages
            && counts.probes >= p.min_segment_probes
            && counts.rate() < rate / 2.0
    })
}
