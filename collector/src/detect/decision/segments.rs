//! One round of testing: every value of every dimension among the groups
//! in play, against the rest of them (gates, the exact test, the weighted
//! Holm correction, each segment's evidence and explanation windows).

use std::collections::{BTreeMap, HashSet};

// The family of tests hashes each segment's list of groups: foldhash.
use foldhash::{HashMap, HashMapExt as _};

use super::{
    Counts, DimensionInfo, Group, Judgement, Params, SegmentStat, Window, WindowStat,
    holm_weighted, judge,
};
use crate::detect::dimensions::Role;

/// The counts of the probes in play (`active` groups), per window, and
/// every value of every dimension among them, tested against the rest.
pub(super) struct Tested {
    pub totals: Vec<Counts>,
    pub total: Counts,
    pub failing_witnesses: usize,
    pub tests: usize,
    pub segments: Vec<SegmentStat>,
}

/// Tests every value of every dimension among the `active` groups against
/// the rest of them. `aside`: groups explained by earlier findings, whose
/// counts each segment notes as set aside.
pub(super) fn test_segments(
    groups: &[Group],
    active: &[bool],
    dimensions: &[DimensionInfo],
    windows: &[Window],
    p: &Params,
    aside: &[usize],
) -> Tested {
    let full = windows.last().copied().unwrap_or(Window {
        buckets: usize::MAX,
        rounds: 1,
    });
    let in_play = |g: usize| active.get(g).copied().unwrap_or(false);
    let mut totals = vec![Counts::default(); windows.len()];
    let mut failing_witnesses = HashSet::new();
    let mut total = Counts::default();
    for (gi, g) in groups.iter().enumerate() {
        if !in_play(gi) {
            continue;
        }
        for (w, t) in windows.iter().zip(totals.iter_mut()) {
            t.add(g.counts(*w));
        }
        let c = g.counts(full);
        total.add(c);
        if c.failures > 0 {
            failing_witnesses.insert(g.witness);
        }
    }
    let mut set_aside = vec![Counts::default(); windows.len()];
    for g in aside {
        for (w, t) in windows.iter().zip(set_aside.iter_mut()) {
            t.add(groups[*g].counts(*w));
        }
    }

    // Every value of every dimension: its groups in play.
    let by_value = groups_by_value(
        groups,
        (0..groups.len()).filter(|g| in_play(*g)),
        dimensions,
    );
    // The set-aside groups of every value: a witness failing there (for
    // the cause explained first) still witnesses this value failing. A
    // /24 of two vantages, one of them also behind a failing resolver,
    // has only one witness left once the resolver is explained, yet both
    // of its vantages fail.
    let aside_by_value = groups_by_value(groups, aside.iter().copied(), dimensions);
    let mut segments: Vec<SegmentStat> = Vec::with_capacity(by_value.len());
    let mut judgements: Vec<(usize, usize, Judgement)> = Vec::new();
    for ((d, value), members) in by_value {
        let si = segments.len();
        let mut stats = Vec::with_capacity(windows.len());
        // Per window: witnesses with probes, and with failures.
        let mut witnessed = Vec::with_capacity(windows.len());
        for (wi, w) in windows.iter().enumerate() {
            let mut counts = Counts::default();
            let mut witnesses = HashSet::new();
            let mut failing = HashSet::new();
            for g in &members {
                let c = groups[*g].counts(*w);
                counts.add(c);
                if c.probes > 0 {
                    witnesses.insert(groups[*g].witness);
                }
                if c.failures > 0 {
                    failing.insert(groups[*g].witness);
                }
            }
            // Witnesses of the value: those in play, and those whose
            // failures here an earlier finding explained (the counts,
            // the rate and the exact test stay the residual's).
            let residual_failing = failing.len();
            for g in aside_by_value.get(&(d, value)).into_iter().flatten() {
                let c = groups[*g].counts(*w);
                if c.failures > 0 {
                    witnesses.insert(groups[*g].witness);
                    failing.insert(groups[*g].witness);
                }
            }
            stats.push(WindowStat {
                segment: counts,
                rest: totals[wi].minus(counts),
                failing_vantages: residual_failing,
                p_value: None,
                flagged: false,
            });
            witnessed.push((witnesses.len(), failing.len()));
        }
        if dimensions[d].role == Role::Cause {
            // The rest's failure rate over the whole window (the last):
            // the background a short window's failures are also tested
            // against.
            let background = stats.last().map_or(0.0, |s| s.rest.rate());
            for (wi, (s, (witnesses, failing))) in stats.iter().zip(&witnessed).enumerate() {
                let j = judge(s.segment, s.rest, background, *witnesses, *failing, p);
                judgements.push((si, wi, j));
            }
        }
        let last = stats.last().copied().unwrap_or(WindowStat {
            segment: Counts::default(),
            rest: Counts::default(),
            failing_vantages: 0,
            p_value: None,
            flagged: false,
        });
        segments.push(SegmentStat {
            dimension: d,
            value: value.to_owned(),
            window: windows.len().saturating_sub(1),
            explain_window: windows.len().saturating_sub(1),
            segment: last.segment,
            rest: last.rest,
            failing_vantages: last.failing_vantages,
            p_value: None,
            flagged: false,
            groups: members,
            windows: stats,
            residual_totals: None,
            set_aside: Counts::default(),
        });
    }

    // Multiple testing: the family is every eligible (segment, window),
    // counting segments with the same probes once (agent "ap" and region
    // "ap" are one hypothesis when they hold the same vantages), weighted
    // towards short windows: a fault that began two rounds ago must be
    // found there, while noise accumulates in the long ones (which a
    // lasting fault makes overwhelmingly significant anyway).
    let mut canonical: HashMap<(usize, &[usize]), usize> = HashMap::new();
    let mut family = Vec::new();
    let mut twin_of = vec![None; judgements.len()];
    for (ji, (si, wi, j)) in judgements.iter().enumerate() {
        if !j.eligible {
            continue;
        }
        match canonical.get(&(*wi, segments[*si].groups.as_slice())) {
            Some(first) => twin_of[ji] = Some(*first),
            None => {
                canonical.insert((*wi, segments[*si].groups.as_slice()), ji);
                family.push(ji);
            }
        }
    }
    let weight = |ji: usize| 1.0 / f64::from(windows[judgements[ji].1].rounds.max(1));
    let family_weight: f64 = family.iter().map(|ji| weight(*ji)).sum();
    let tested: Vec<usize> = family
        .iter()
        .copied()
        .filter(|ji| judgements[*ji].2.raw_p.is_some())
        .collect();
    let raw: Vec<f64> = tested
        .iter()
        .map(|ji| judgements[*ji].2.raw_p.unwrap_or(1.0))
        .collect();
    let weights: Vec<f64> = tested.iter().map(|ji| weight(*ji)).collect();
    let mut adjusted = vec![None; judgements.len()];
    for (ji, a) in tested
        .iter()
        .zip(holm_weighted(&raw, &weights, family_weight))
    {
        adjusted[*ji] = Some(a);
    }
    for ji in 0..judgements.len() {
        let a = twin_of[ji].map_or(adjusted[ji], |first| adjusted[first]);
        if let Some(a) = a.filter(|_| judgements[ji].2.raw_p.is_some()) {
            let (si, wi, _) = judgements[ji];
            let stat = &mut segments[si].windows[wi];
            stat.p_value = Some(a);
            stat.flagged = a <= p.alpha;
        }
    }
    let tests = family.len();
    for s in &mut segments {
        // Evidence window: the most significant; the longest on ties.
        let best = s
            .windows
            .iter()
            .enumerate()
            .filter(|(_, w)| w.p_value.is_some())
            .min_by(|(ia, a), (ib, b)| {
                a.p_value
                    .unwrap_or(1.0)
                    .total_cmp(&b.p_value.unwrap_or(1.0))
                    .then(ib.cmp(ia))
            })
            .map(|(i, _)| i);
        if let Some(best) = best {
            let w = s.windows[best];
            if w.flagged {
                s.window = best;
                s.segment = w.segment;
                s.rest = w.rest;
                s.failing_vantages = w.failing_vantages;
            }
            s.p_value = w.p_value;
            s.flagged = w.flagged;
        }
        if let Some(shortest) = s.windows.iter().position(|w| w.flagged) {
            s.explain_window = shortest;
        }
        s.set_aside = set_aside.get(s.window).copied().unwrap_or_default();
    }
    Tested {
        totals,
        total,
        failing_witnesses: failing_witnesses.len(),
        tests,
        segments,
    }
}

/// Every value of every dimension among `members`: its groups, in order.
fn groups_by_value<'g>(
    groups: &'g [Group],
    members: impl Iterator<Item = usize>,
    dimensions: &[DimensionInfo],
) -> BTreeMap<(usize, &'g str), Vec<usize>> {
    let mut out: BTreeMap<(usize, &str), Vec<usize>> = BTreeMap::new();
    for gi in members {
        for (d, value) in groups[gi].values.iter().enumerate().take(dimensions.len()) {
            let Some(value) = value else { continue };
            out.entry((d, value.as_str())).or_default().push(gi);
        }
    }
    out
}
