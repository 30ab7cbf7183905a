//! Confirmation probes: which candidates a pass asks to be probed again
//! now (a suspect segment, or a candidate first held), and from which
//! vantages inside and outside it. Asking for them, and listing them in
//! an incident's evidence, is the actor's ([`crate::detector`]).

use std::collections::{BTreeSet, HashMap};

use super::PassInput;
use crate::detect::decision::{Assessment, SegmentStat};
use crate::detect::dimensions::DIMENSIONS;
use crate::detect::population::{Names, Population};
use crate::detect::track::{self, CandidateKey, Tracked};

/// Probes the detector asks for now, to test a candidate it holds for the
/// first time: the vantages whose probes failed, and a matched set of
/// vantages of the same target outside the segment. For resolver and
/// address segments the failing vantages' own round covers the other
/// resolvers and (dialling each) addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirm {
    pub key: CandidateKey,
    /// The check the probes ran; agents run it again by name.
    pub check: String,
    /// (agent, vantage) pairs.
    pub inside: Vec<(String, String)>,
    pub outside: Vec<(String, String)>,
    pub dial_each: bool,
    /// Rounds each vantage runs, one after the other.
    pub rounds: u32,
}

/// Rounds a confirmation asks of each vantage: one more observation per
/// vantage is rarely enough for the family-wise test; two, one after the
/// other, are what the scheduled rounds would give a round later.
pub const CONFIRM_ROUNDS: u32 = 2;

/// Vantages asked inside a segment at most (the largest failing sets are
/// confirmed by their size already).
const CONFIRM_INSIDE: usize = 8;
/// A segment that is not flagged but, in one of its windows, passes the
/// witness and rate gates with a (Holm-adjusted) p-value at most this is
/// a suspect: asking its vantages again now gets the probes that would
/// otherwise take more rounds to accumulate.
const SUSPECT_P: f64 = 0.5;
/// Vantages asked outside at least (when the target has them).
const CONFIRM_OUTSIDE_MIN: usize = 2;

/// Whether confirmation probes were asked for `key` within the cooldown.
pub(super) fn asked_recently(input: &PassInput<'_>, key: &CandidateKey) -> bool {
    input
        .asked
        .get(key)
        .is_some_and(|at| (input.now - *at).num_milliseconds() < cooldown_ms(input))
}

/// How long after asking for a candidate it is not asked for again: half
/// a detector interval, so a suspect is asked once per pass while it
/// stays one (the probes of one ask are in the next pass).
fn cooldown_ms(input: &PassInput<'_>) -> i64 {
    i64::try_from(input.settings.interval.as_millis()).unwrap_or(i64::MAX) / 2
}

/// Confirmation probes for suspects: per target and pattern without a
/// tracked failure, its most significant segment that passes the witness
/// and rate gates but is not (yet) flagged.
pub(super) fn suspects(
    populations: &[Population],
    assessments: &[Assessment],
    tracked: &[Tracked],
    names: &Names,
    input: &PassInput<'_>,
    already: &[Confirm],
) -> Vec<Confirm> {
    let params = &input.settings.params;
    let mut out = Vec::new();
    for (p, a) in populations.iter().zip(assessments) {
        if p.target == track::PATH_TARGET
            || tracked
                .iter()
                .any(|t| t.key.target == p.target && t.key.pattern == p.pattern)
        {
            continue;
        }
        // Per segment: its most suspicious window.
        let suspicious = |s: &SegmentStat| -> Option<(usize, f64)> {
            if s.flagged {
                return None;
            }
            s.windows
                .iter()
                .enumerate()
                .filter(|(_, w)| {
                    w.failing_vantages >= params.min_vantages
                        && w.segment.rate() >= w.rest.rate() + params.min_rate_difference
                        && w.segment.rate() >= w.rest.rate() * params.min_rate_ratio
                })
                .filter_map(|(i, w)| w.p_value.filter(|pv| *pv <= SUSPECT_P).map(|pv| (i, pv)))
                .min_by(|x, y| x.1.total_cmp(&y.1))
        };
        let best = a
            .segments
            .iter()
            .filter_map(|s| suspicious(s).map(|(w, pv)| (s, w, pv)))
            .min_by(|x, y| x.2.total_cmp(&y.2));
        let Some((stat, window, _)) = best else {
            continue;
        };
        let key = CandidateKey::new(
            &p.target,
            p.pattern,
            DIMENSIONS[stat.dimension].name,
            &stat.value,
        );
        if already.iter().any(|c| c.key == key) || asked_recently(input, &key) {
            continue;
        }
        let window = a.windows[window];
        let failing: Vec<usize> = stat
            .groups
            .iter()
            .copied()
            .filter(|g| p.groups[*g].counts(window).failures > 0)
            .collect();
        out.push(confirmation(p, &failing, names, &key));
    }
    out
}

/// The probes that test `key` of `p` again: the vantages of the `failing`
/// groups, and a matched set outside them.
pub(super) fn confirmation(
    p: &Population,
    failing: &[usize],
    names: &Names,
    key: &CandidateKey,
) -> Confirm {
    let failing: BTreeSet<usize> = failing.iter().map(|g| p.group_vantage[*g]).collect();
    let all: BTreeSet<usize> = p.group_vantage.iter().copied().collect();
    let inside: Vec<usize> = failing.iter().copied().take(CONFIRM_INSIDE).collect();
    let outside: Vec<usize> = all
        .difference(&failing)
        .copied()
        .take(inside.len().max(CONFIRM_OUTSIDE_MIN))
        .collect();
    let pairs = |v: Vec<usize>| {
        v.into_iter()
            .map(|i| names.vantage_pairs[i].clone())
            .collect()
    };
    Confirm {
        key: key.clone(),
        check: p.check.clone(),
        inside: pairs(inside),
        outside: pairs(outside),
        dial_each: matches!(
            key.dimension.as_str(),
            "address" | "address_prefix" | "ip_family"
        ),
        rounds: CONFIRM_ROUNDS,
    }
}

/// The confirmation of a path candidate: on the target with the most of
/// its failing groups, that target's check, from the path's failing
/// vantages there and a matched set outside.
pub(super) fn path_confirmation(
    targets: &[Population],
    path: &Population,
    failing: &[usize],
    names: &Names,
    key: &CandidateKey,
) -> Option<Confirm> {
    let mut per_target: HashMap<usize, Vec<usize>> = HashMap::new();
    for g in failing {
        per_target
            .entry(path.group_target[*g])
            .or_default()
            .push(*g);
    }
    let (target, groups) = per_target
        .into_iter()
        .max_by(|a, b| a.1.len().cmp(&b.1.len()).then(b.0.cmp(&a.0)))?;
    let check = targets
        .iter()
        .find(|p| p.pattern == path.pattern && p.target == names.targets[target])?
        .check
        .clone();
    Some(Confirm {
        check,
        ..confirmation(path, &groups, names, key)
    })
}
