//! From flagged segments to findings: the global finding, the greedy
//! explanation (a lead and its correlated evidence, then mostly new
//! failures), the prefix walk, and when a finding's failures happened.

use std::collections::HashSet;
use std::net::IpAddr;

use super::stats::binomial_greater;
use super::windows::bucket_width;
use super::{Counts, DimensionInfo, Group, Params, SegmentStat, Window, best_fit_first};
use crate::detect::dimensions::{Role, prefix};

/// A step of the prefix walk.
#[derive(Debug, Clone, PartialEq)]
pub struct WalkStep {
    pub prefix: String,
    pub segment: Counts,
}

/// The most specific prefix covering every failure of a prefix finding.
#[derive(Debug, Clone, PartialEq)]
pub struct Narrowed {
    pub value: String,
    pub segment: Counts,
    /// From the configured length to the narrowest prefix, one step per
    /// bit, the last step being the first where failures split (if any).
    pub walk: Vec<WalkStep>,
}

/// Another flagged segment sharing the finding's failing probes.
#[derive(Debug, Clone, PartialEq)]
pub struct Correlation {
    pub segment: usize,
    /// Failing probes in both, in the lead's explanation window...
    pub shared_failures: u64,
    /// ... out of the lead's failing probes there.
    pub of_failures: u64,
}

/// When the failures of a finding happened, in rounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Timing {
    /// Distinct age buckets (disjoint sets of rounds) with failures: a
    /// lower bound on the rounds the failure has been seen in.
    pub rounds_failing: usize,
    /// Failures within the last `recent_rounds` rounds: the failure is
    /// still there. The lookback is as long as it takes the failure, at
    /// its observed rate and number of vantages, to be expected to show
    /// at least three times (and at least two rounds), so that a partial
    /// failure does not look repaired whenever it skips a round.
    pub recent: bool,
    pub recent_rounds: u32,
}

/// A failure pattern the decision reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Finding {
    /// The target fails everywhere.
    Global {
        /// Index of the window it was found in.
        window: usize,
        /// Binomial p-value against `global_baseline`.
        p_value: f64,
        timing: Timing,
    },
    /// The target fails in one segment.
    Segment {
        /// Index into [`Assessment::segments`].
        segment: usize,
        correlated: Vec<Correlation>,
        narrowed: Option<Narrowed>,
        /// The segment's groups with failures in its evidence window.
        failing_groups: Vec<usize>,
        timing: Timing,
    },
}

impl Finding {
    pub fn timing(&self) -> Timing {
        match self {
            Self::Global { timing, .. } | Self::Segment { timing, .. } => *timing,
        }
    }
}

/// Most causes explained per target and pattern (or per path assessment).
pub(super) const MAX_FINDINGS: usize = 6;
/// A flagged segment is correlated evidence of a finding when at least this
/// share of the smaller one's failing probes lie in both.
const CORRELATED_SHARE: f64 = 0.8;
/// Failures a still-present failure is expected to show within the
/// recency lookback (see [`Timing::recent`]).
const RECENT_EXPECTED_FAILURES: f64 = 3.0;
/// The shortest recency lookback, in rounds: the newest round may still be
/// on its way from the agents (spool, batch, commit), so it alone never
/// says that a failure is over.
const MIN_RECENT_ROUNDS: f64 = 2.0;

/// The global finding, if some window shows one: the most significant.
pub(super) fn global_finding(
    groups: &[Group],
    active: &[bool],
    windows: &[Window],
    totals: &[Counts],
    segments: &[SegmentStat],
    dimensions: &[DimensionInfo],
    p: &Params,
) -> Option<Finding> {
    let level = p.alpha / windows.len().max(1) as f64;
    let mut best: Option<(usize, f64)> = None;
    // The fewest rounds a window looking global spans.
    let mut shortest_global: Option<u32> = None;
    for (wi, w) in windows.iter().enumerate() {
        let t = totals[wi];
        let witnesses: HashSet<usize> = groups
            .iter()
            .zip(active)
            .filter(|(g, a)| **a && g.counts(*w).failures > 0)
            .map(|(g, _)| g)
            .map(|g| g.witness)
            .collect();
        if t.rate() < p.global_rate || witnesses.len() < p.min_vantages {
            continue;
        }
        let spared = segments
            .iter()
            .filter(|s| dimensions[s.dimension].role == Role::Cause)
            .map(|s| s.windows[wi].segment)
            .any(|c| c.probes >= p.min_segment_probes && c.rate() < p.global_rate / 2.0);
        if spared {
            continue;
        }
        let pv = binomial_greater(t, p.global_baseline);
        if pv <= level {
            shortest_global = Some(shortest_global.map_or(w.rounds, |r| r.min(w.rounds)));
            if best.is_none_or(|(_, b)| pv <= b) {
                best = Some((wi, pv));
            }
        }
    }
    let (window, p_value) = best?;
    let all: Vec<usize> = (0..groups.len()).filter(|g| active[*g]).collect();
    let mut timing = timing_of(groups, &all, windows);
    // Still failing everywhere only if the recent rounds alone look
    // global: after an outage, the long windows still do, and a failure
    // of one path since (a proxy) would otherwise make them look recent.
    timing.recent &= shortest_global.is_some_and(|r| r <= timing.recent_rounds);
    Some(Finding::Global {
        window,
        p_value,
        timing,
    })
}

/// When the failures of `members` (group indexes) happened.
pub fn timing_of(groups: &[Group], members: &[usize], windows: &[Window]) -> Timing {
    // Per age bucket: the members' counts, and the units probing.
    let buckets = members
        .iter()
        .map(|g| groups[*g].buckets.len())
        .max()
        .unwrap_or(0);
    let mut per_bucket = vec![Counts::default(); buckets];
    for g in members {
        let group = &groups[*g];
        for (b, c) in group.buckets.iter().enumerate() {
            per_bucket[b].add(*c);
        }
    }
    // Failures per round while it failed: over the rounds of the buckets
    // it showed in, so that the healthy rounds before it began or after it
    // ended do not dilute it (and whatever the sampling: one vantage per
    // round or a rotation over several addresses).
    let full_rounds = windows.last().map_or(1, |w| w.rounds);
    let (mut failures, mut rounds) = (0u64, 0u64);
    for (b, c) in per_bucket
        .iter()
        .enumerate()
        .filter(|(_, c)| c.failures > 0)
    {
        failures += c.failures;
        rounds += u64::from(bucket_width(b, full_rounds));
    }
    let per_round = failures as f64 / rounds.max(1) as f64;
    // Rounds until RECENT_EXPECTED_FAILURES failures are expected.
    let needed = if per_round > 0.0 {
        (RECENT_EXPECTED_FAILURES / per_round)
            .ceil()
            .max(MIN_RECENT_ROUNDS)
    } else {
        f64::INFINITY
    };
    let lookback = windows
        .iter()
        .find(|w| f64::from(w.rounds) >= needed)
        .or(windows.last())
        .copied()
        .unwrap_or(Window {
            buckets: usize::MAX,
            rounds: 1,
        });
    // A failure the detector's confirmation probes reproduced (at least
    // half of them inside failed) was seen once more, after it was first
    // held: another round of evidence.
    let mut confirmed = Counts::default();
    for g in members {
        confirmed.add(groups[*g].confirmed);
    }
    let reproduced = confirmed.failures > 0 && confirmed.failures * 2 >= confirmed.probes;
    Timing {
        rounds_failing: per_bucket.iter().filter(|c| c.failures > 0).count()
            + usize::from(reproduced),
        recent: per_bucket
            .iter()
            .take(lookback.buckets)
            .any(|c| c.failures > 0),
        recent_rounds: lookback.rounds,
    }
}

/// The finding `lead` leads in one round of explaining away: flagged
/// segments (of the same round) sharing its failures are its correlated
/// evidence.
pub(super) fn segment_finding(
    groups: &[Group],
    windows: &[Window],
    segments: &[SegmentStat],
    totals: &[Counts],
    lead: usize,
    dimensions: &[DimensionInfo],
) -> Finding {
    // Failures of `s` in `set`, in window `w`.
    let failures_in = |set: &HashSet<usize>, s: &SegmentStat, w: Window| -> u64 {
        s.groups
            .iter()
            .filter(|g| set.contains(g))
            .map(|g| groups[*g].counts(w).failures)
            .sum()
    };
    let lead_stat = &segments[lead];
    let lead_window = windows[lead_stat.explain_window];
    let lead_failures = lead_stat.windows[lead_stat.explain_window].segment.failures;
    let lead_failing: Vec<usize> = lead_stat
        .groups
        .iter()
        .copied()
        .filter(|g| groups[*g].counts(lead_window).failures > 0)
        .collect();
    let lead_set: HashSet<usize> = lead_failing.iter().copied().collect();
    let mut others: Vec<usize> = (0..segments.len())
        .filter(|i| *i != lead && segments[*i].flagged)
        .collect();
    best_fit_first(segments, totals, &mut others);
    // Correlation is judged in the lead's explanation window.
    let mut correlated = Vec::new();
    for other in others {
        let o = &segments[other];
        let shared = failures_in(&lead_set, o, lead_window);
        let all: HashSet<usize> = o.groups.iter().copied().collect();
        let smaller = failures_in(&all, o, lead_window).min(lead_failures);
        if shared > 0 && shared as f64 >= smaller as f64 * CORRELATED_SHARE {
            correlated.push(Correlation {
                segment: other,
                shared_failures: shared,
                of_failures: lead_failures,
            });
        }
    }
    let narrowed = if dimensions[lead_stat.dimension].prefix {
        narrow(groups, windows[lead_stat.window], lead_stat)
    } else {
        None
    };
    let mut timing = timing_of(groups, &lead_stat.groups, windows);
    // Still failing only if the recent rounds (up to twice the lookback)
    // make the case, as for a global finding: a fault over for a few
    // rounds still flags the long windows, and one noise failure since
    // must not make it look current (and open it again once it resolved).
    // Twice: a partial fault is flagged a little later than its lookback.
    timing.recent &= windows[lead_stat.explain_window].rounds <= 2 * timing.recent_rounds;
    Finding::Segment {
        segment: lead,
        correlated,
        narrowed,
        failing_groups: lead_failing,
        timing,
    }
}

/// The prefix walk: from the segment's prefix towards longer ones, one bit
/// at a time, while every failing probe stays inside one prefix. Returns
/// the narrowest such prefix, if narrower than the segment's own.
fn narrow(groups: &[Group], w: Window, stat: &SegmentStat) -> Option<Narrowed> {
    let d = stat.dimension;
    let start: ipnet::IpNet = stat.value.parse().ok()?;
    let members: Vec<(Counts, IpAddr)> = stat
        .groups
        .iter()
        .filter_map(|g| {
            groups[*g]
                .addresses
                .get(d)
                .copied()
                .flatten()
                .map(|a| (groups[*g].counts(w), a))
        })
        .collect();
    let failing: Vec<IpAddr> = members
        .iter()
        .filter(|(c, _)| c.failures > 0)
        .map(|(_, a)| *a)
        .collect();
    let first = *failing.first()?;
    let counts_in = |net: &ipnet::IpNet| {
        let mut c = Counts::default();
        for (gc, a) in &members {
            if net.contains(a) {
                c.add(*gc);
            }
        }
        c
    };
    let mut walk = vec![WalkStep {
        prefix: start.to_string(),
        segment: stat.segment,
    }];
    let mut best: Option<(ipnet::IpNet, Counts)> = None;
    for len in start.prefix_len() + 1..=start.max_prefix_len() {
        let net = prefix(first, len);
        let c = counts_in(&net);
        walk.push(WalkStep {
            prefix: net.to_string(),
            segment: c,
        });
        if failing.iter().all(|a| net.contains(a)) {
            best = Some((net, c));
        } else {
            break;
        }
    }
    let (net, segment) = best?;
    Some(Narrowed {
        value: net.to_string(),
        segment,
        walk,
    })
}
