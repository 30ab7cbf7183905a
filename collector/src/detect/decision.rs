//! The decision: from counts to findings, a pure function (no I/O, no
//! clock) so that its statistics can be property-tested.
//!
//! Input: the probes of one target and failure pattern (or, for path
//! findings, of every target at once), reduced to [`Group`]s: probes
//! sharing every dimension value and the same vantage, counted per age
//! bucket (the last probe round, the one before, the two before those...).
//! Evidence is weighed over several windows ending now ([`Window`]: the
//! last 1, 2, 4, ... rounds and the whole detection window), so that a
//! fault that began two rounds ago is not drowned by the healthy rounds
//! before it, and a fault that comes and goes still adds up.
//!
//! For every value of every dimension and every window, the segment
//! (probes with that value) is compared with the rest:
//!
//! 1. gates: failures from at least `min_vantages` distinct witnesses
//!    (vantages; targets for path findings), so one rogue vantage is never
//!    a segment; the segment's failure rate exceeds the rest's by at least
//!    `min_rate_difference` and by a factor of at least `min_rate_ratio`;
//! 2. significance: a one-sided Fisher exact test (is the segment's failure
//!    rate higher than the rest's?), Holm-corrected over every (segment,
//!    window) pair with enough witnesses to be tested, at family-wise level
//!    `alpha`. The exact test accounts for small samples by itself: two
//!    vantages failing in one round out of fifteen are not significant,
//!    the same two failing in two rounds are.
//!
//! A flagged segment's evidence is its most significant window. Flagged
//! segments are then grouped into findings: the segment that best explains
//! the failures of its window (the highest Jaccard index between the
//! segment and the failing probes) leads; other flagged segments sharing
//! its failing probes are its correlated evidence. Failures not explained
//! by the first finding can lead to a second one. A finding on an IP prefix
//! is narrowed to the most specific prefix covering every failure.
//!
//! Global: in some window, the target fails at `global_rate` or more, the
//! rate is significantly above `global_baseline` (binomial test), and no
//! segment of any dimension (with `min_segment_probes` probes) is spared,
//! i.e. fails at less than half of `global_rate`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use statrs::distribution::{Binomial, DiscreteCDF};
use statrs::stats_tests::Alternative;
use statrs::stats_tests::fisher::fishers_exact;

use super::dimensions::{Role, prefix};

/// Failures out of probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub failures: u64,
    pub probes: u64,
}

impl Counts {
    pub fn new(failures: u64, probes: u64) -> Self {
        Self { failures, probes }
    }

    pub fn rate(self) -> f64 {
        if self.probes == 0 {
            0.0
        } else {
            self.failures as f64 / self.probes as f64
        }
    }

    pub fn healthy(self) -> u64 {
        self.probes.saturating_sub(self.failures)
    }

    pub fn add(&mut self, other: Counts) {
        self.failures += other.failures;
        self.probes += other.probes;
    }

    fn minus(self, other: Counts) -> Counts {
        Counts {
            failures: self.failures.saturating_sub(other.failures),
            probes: self.probes.saturating_sub(other.probes),
        }
    }
}

/// The thresholds of the decision (`[detector]` in the configuration; the
/// README says why each default is what it is).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// Fewest distinct witnesses (vantages; targets for path findings) with
    /// failures in a segment.
    pub min_vantages: usize,
    /// Segment rate minus rest rate, at least.
    pub min_rate_difference: f64,
    /// Segment rate over rest rate, at least (any rate beats a rest of 0).
    pub min_rate_ratio: f64,
    /// Family-wise significance level over all (segment, window) pairs
    /// tested per target.
    pub alpha: f64,
    /// Overall failure rate from which a failure is global, provided no
    /// segment is spared.
    pub global_rate: f64,
    /// A global failure rate must be significantly above this background
    /// rate (one-sided binomial test at `alpha`, Bonferroni over windows):
    /// two failures out of three probes are not an outage.
    pub global_baseline: f64,
    /// A segment with at least this many probes and a failure rate below
    /// half of `global_rate` is spared, and rules a global finding out.
    pub min_segment_probes: u64,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            min_vantages: 2,
            min_rate_difference: 0.2,
            min_rate_ratio: 2.0,
            alpha: 0.001,
            global_rate: 0.5,
            global_baseline: 0.1,
            min_segment_probes: 2,
        }
    }
}

/// What the decision needs to know about a dimension.
#[derive(Debug, Clone, Copy)]
pub struct DimensionInfo {
    pub name: &'static str,
    pub role: Role,
    /// Values are IP prefixes; findings are narrowed with the prefix walk.
    pub prefix: bool,
}

/// One window ending now: the first `buckets` age buckets, covering the
/// last `rounds` probe rounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub buckets: usize,
    pub rounds: u32,
}

/// Probes sharing every dimension value and the same vantage.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// One per dimension; `None`: no value (e.g. no resolver for an IP URL).
    pub values: Vec<Option<String>>,
    /// One per dimension: the address a prefix dimension's value was
    /// derived from.
    pub addresses: Vec<Option<IpAddr>>,
    /// Who saw it, for the distinct-witness gate: the vantage, or for path
    /// findings the target.
    pub witness: usize,
    /// The (target, vantage) it belongs to: one probe per round each.
    pub unit: usize,
    /// Counts per age bucket, newest first.
    pub buckets: Vec<Counts>,
}

impl Group {
    /// Its counts over a window.
    pub fn counts(&self, w: Window) -> Counts {
        let mut c = Counts::default();
        for b in self.buckets.iter().take(w.buckets) {
            c.add(*b);
        }
        c
    }

    /// All its counts.
    pub fn total(&self) -> Counts {
        let mut c = Counts::default();
        for b in &self.buckets {
            c.add(*b);
        }
        c
    }
}

/// One value of one dimension in one window, compared with the rest.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowStat {
    pub segment: Counts,
    pub rest: Counts,
    /// Distinct witnesses with at least one failure in the segment.
    pub failing_vantages: usize,
    /// Holm-adjusted one-sided Fisher p-value; `None`: not tested.
    pub p_value: Option<f64>,
    pub flagged: bool,
}

/// One value of one dimension: its evidence window's figures (the most
/// significant window when flagged, else the whole window).
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentStat {
    /// Index into the dimensions.
    pub dimension: usize,
    pub value: String,
    /// Index of the evidence window.
    pub window: usize,
    /// Index of the shortest window in which it is flagged: where its fit
    /// to the failures is judged, so that explanations compete on what is
    /// failing now (a fault that spread from one /24 to its region is the
    /// region as soon as the region is significant).
    pub explain_window: usize,
    pub segment: Counts,
    pub rest: Counts,
    pub failing_vantages: usize,
    pub p_value: Option<f64>,
    pub flagged: bool,
    /// Indexes of the groups in the segment.
    pub groups: Vec<usize>,
    /// Per window.
    pub windows: Vec<WindowStat>,
}

impl SegmentStat {
    /// How well the segment explains the failures of its explanation
    /// window (`totals`: the population's, per window): failing probes in
    /// it over (all failing probes + healthy probes in it), the Jaccard
    /// index of the segment and the failing probes.
    pub fn score(&self, totals: &[Counts]) -> f64 {
        let w = self.explain_window;
        let (Some(total), Some(stat)) = (totals.get(w), self.windows.get(w)) else {
            return 0.0;
        };
        let denominator = total.failures + stat.segment.healthy();
        if denominator == 0 {
            0.0
        } else {
            stat.segment.failures as f64 / denominator as f64
        }
    }
}

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

/// Everything one evaluation concluded for one target and pattern.
#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    pub windows: Vec<Window>,
    /// Per window.
    pub totals: Vec<Counts>,
    /// Over the whole window.
    pub total: Counts,
    pub failing_vantages: usize,
    /// (Segment, window) pairs tested (the Holm family's size).
    pub tests: usize,
    pub segments: Vec<SegmentStat>,
    pub findings: Vec<Finding>,
}

/// Most findings reported per target and pattern.
const MAX_FINDINGS: usize = 4;
/// A flagged segment is correlated evidence of a finding when at least this
/// share of the smaller one's failing probes lie in both.
const CORRELATED_SHARE: f64 = 0.8;
/// A lead after the first is a finding of its own only if more than this
/// share of its failing probes are not explained by an earlier finding.
const NEW_FAILURE_SHARE: f64 = 0.5;
/// Failures a still-present failure is expected to show within the
/// recency lookback (see [`Timing::recent`]).
const RECENT_EXPECTED_FAILURES: f64 = 3.0;
/// The shortest recency lookback, in rounds: the newest round may still be
/// on its way from the agents (spool, batch, commit), so it alone never
/// says that a failure is over.
const MIN_RECENT_ROUNDS: f64 = 2.0;

/// Whether a segment passes the gates, and its raw (uncorrected) p-value
/// when it does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Judgement {
    /// Enough witnesses and probes on both sides to be tested at all
    /// (counts toward the multiple-testing correction).
    pub eligible: bool,
    pub passes_gates: bool,
    pub raw_p: Option<f64>,
}

/// Judges one segment against the rest (before correction): `witnesses`
/// saw probes in the segment, `failing_witnesses` saw failures.
///
/// A segment is eligible (a member of the multiple-testing family) when
/// it could be flagged whatever the failures: probes on both sides and at
/// least `min_vantages` witnesses. Counting only the segments that happen
/// to have failures would shrink the family exactly when noise is all
/// there is, and let noise through.
pub fn judge(
    segment: Counts,
    rest: Counts,
    witnesses: usize,
    failing_witnesses: usize,
    p: &Params,
) -> Judgement {
    let eligible = segment.probes > 0 && rest.probes > 0 && witnesses >= p.min_vantages;
    let (s, r) = (segment.rate(), rest.rate());
    let passes_gates = eligible
        && failing_witnesses >= p.min_vantages
        && s - r >= p.min_rate_difference
        && (r == 0.0 || s >= p.min_rate_ratio * r);
    let raw_p = passes_gates.then(|| fisher_greater(segment, rest));
    Judgement {
        eligible,
        passes_gates,
        raw_p,
    }
}

/// One-sided Fisher exact test: probability, were failures spread over
/// segment and rest at random, of a segment with this many failures or
/// more.
pub fn fisher_greater(segment: Counts, rest: Counts) -> f64 {
    let table = [
        segment.failures,
        segment.healthy(),
        rest.failures,
        rest.healthy(),
    ];
    fishers_exact(&table, Alternative::Greater).unwrap_or(1.0)
}

/// One-sided binomial test: probability of `counts.failures` or more out
/// of `counts.probes` at a failure rate of `baseline`.
pub fn binomial_greater(counts: Counts, baseline: f64) -> f64 {
    if counts.failures == 0 {
        return 1.0;
    }
    Binomial::new(baseline.clamp(0.0, 1.0), counts.probes)
        .map(|b| b.sf(counts.failures - 1))
        .unwrap_or(1.0)
}

/// Weighted Holm (Holm 1979): hypotheses with weights (of a family whose
/// weights sum to `family_weight`, untested members counting with p = 1)
/// are taken in order of p / weight; each is adjusted by the weight still
/// in play. With equal weights of 1 it is [`holm`]. Returns adjusted
/// p-values in the input order.
pub fn holm_weighted(raw: &[f64], weights: &[f64], family_weight: f64) -> Vec<f64> {
    let total = family_weight.max(weights.iter().sum());
    let q = |i: usize| raw[i] / weights[i].max(f64::MIN_POSITIVE);
    let mut order: Vec<usize> = (0..raw.len()).collect();
    order.sort_by(|a, b| q(*a).total_cmp(&q(*b)));
    let mut adjusted = vec![1.0; raw.len()];
    let mut remaining = total;
    let mut running: f64 = 0.0;
    for i in order {
        running = running.max((q(i) * remaining).min(1.0));
        adjusted[i] = running;
        remaining -= weights[i];
    }
    adjusted
}

/// Holm's step-down adjustment of `raw` p-values within a family of
/// `family` hypotheses (`family >= raw.len()`; untested members count as
/// p = 1). Returns adjusted p-values in the input order.
pub fn holm(raw: &[f64], family: usize) -> Vec<f64> {
    let m = family.max(raw.len());
    let mut order: Vec<usize> = (0..raw.len()).collect();
    order.sort_by(|a, b| raw[*a].total_cmp(&raw[*b]));
    let mut adjusted = vec![1.0; raw.len()];
    let mut running: f64 = 0.0;
    for (rank, i) in order.into_iter().enumerate() {
        let a = ((m - rank) as f64 * raw[i]).min(1.0);
        running = running.max(a);
        adjusted[i] = running;
    }
    adjusted
}

/// The decision for one target and failure pattern (or for every target's
/// path dimensions at once). `windows` are ordered shortest first; the
/// last covers every bucket.
pub fn assess(
    groups: &[Group],
    dimensions: &[DimensionInfo],
    windows: &[Window],
    p: &Params,
) -> Assessment {
    let full = windows.last().copied().unwrap_or(Window {
        buckets: usize::MAX,
        rounds: 1,
    });
    let mut totals = vec![Counts::default(); windows.len()];
    let mut failing_witnesses = HashSet::new();
    let mut total = Counts::default();
    for g in groups {
        for (w, t) in windows.iter().zip(totals.iter_mut()) {
            t.add(g.counts(*w));
        }
        let c = g.counts(full);
        total.add(c);
        if c.failures > 0 {
            failing_witnesses.insert(g.witness);
        }
    }

    // Every value of every cause dimension: its groups.
    let mut by_value: BTreeMap<(usize, &str), Vec<usize>> = BTreeMap::new();
    for (gi, g) in groups.iter().enumerate() {
        for (d, value) in g.values.iter().enumerate().take(dimensions.len()) {
            let Some(value) = value else { continue };
            by_value.entry((d, value.as_str())).or_default().push(gi);
        }
    }
    let mut segments: Vec<SegmentStat> = Vec::with_capacity(by_value.len());
    let mut judgements: Vec<(usize, usize, Judgement)> = Vec::new();
    for ((d, value), members) in by_value {
        let si = segments.len();
        let mut stats = Vec::with_capacity(windows.len());
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
            let rest = totals[wi].minus(counts);
            if dimensions[d].role == Role::Cause {
                let j = judge(counts, rest, witnesses.len(), failing.len(), p);
                judgements.push((si, wi, j));
            }
            stats.push(WindowStat {
                segment: counts,
                rest,
                failing_vantages: failing.len(),
                p_value: None,
                flagged: false,
            });
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
    }

    let mut findings = Vec::new();
    if let Some(global) = global_finding(groups, windows, &totals, &segments, dimensions, p) {
        findings.push(global);
    }
    findings.extend(segment_findings(
        groups, windows, &totals, &segments, dimensions,
    ));
    Assessment {
        windows: windows.to_vec(),
        totals,
        total,
        failing_vantages: failing_witnesses.len(),
        tests,
        segments,
        findings,
    }
}

/// The global finding, if some window shows one: the most significant.
fn global_finding(
    groups: &[Group],
    windows: &[Window],
    totals: &[Counts],
    segments: &[SegmentStat],
    dimensions: &[DimensionInfo],
    p: &Params,
) -> Option<Finding> {
    let level = p.alpha / windows.len().max(1) as f64;
    let mut best: Option<(usize, f64)> = None;
    for (wi, w) in windows.iter().enumerate() {
        let t = totals[wi];
        let witnesses: HashSet<usize> = groups
            .iter()
            .filter(|g| g.counts(*w).failures > 0)
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
        if pv <= level && best.is_none_or(|(_, b)| pv <= b) {
            best = Some((wi, pv));
        }
    }
    let (window, p_value) = best?;
    let all: Vec<usize> = (0..groups.len()).collect();
    Some(Finding::Global {
        window,
        p_value,
        timing: timing(groups, &all, windows),
    })
}

/// When the failures of `members` (group indexes) happened.
fn timing(groups: &[Group], members: &[usize], windows: &[Window]) -> Timing {
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
    Timing {
        rounds_failing: per_bucket.iter().filter(|c| c.failures > 0).count(),
        recent: per_bucket
            .iter()
            .take(lookback.buckets)
            .any(|c| c.failures > 0),
        recent_rounds: lookback.rounds,
    }
}

/// Greedy explanation: the best-scoring flagged segment leads a finding,
/// flagged segments sharing its failures are its evidence; repeat for
/// failures left unexplained.
fn segment_findings(
    groups: &[Group],
    windows: &[Window],
    totals: &[Counts],
    segments: &[SegmentStat],
    dimensions: &[DimensionInfo],
) -> Vec<Finding> {
    let failing_groups = |s: &SegmentStat| -> Vec<usize> {
        s.groups
            .iter()
            .copied()
            .filter(|g| groups[*g].counts(windows[s.explain_window]).failures > 0)
            .collect()
    };
    // Failures of `s` in `set`, in window `w`.
    let failures_in = |set: &HashSet<usize>, s: &SegmentStat, w: Window| -> u64 {
        s.groups
            .iter()
            .filter(|g| set.contains(g))
            .map(|g| groups[*g].counts(w).failures)
            .sum()
    };
    let failures = |s: &SegmentStat| s.windows[s.explain_window].segment.failures;
    let score = |s: &SegmentStat| s.score(totals);
    let mut candidates: Vec<usize> = (0..segments.len())
        .filter(|i| segments[*i].flagged)
        .collect();
    // Best score first; ties: dimension order, then value (deterministic).
    candidates.sort_by(|a, b| {
        let (sa, sb) = (&segments[*a], &segments[*b]);
        score(sb)
            .total_cmp(&score(sa))
            .then(sa.dimension.cmp(&sb.dimension))
            .then(sa.value.cmp(&sb.value))
    });
    let mut used = vec![false; segments.len()];
    let mut explained: HashSet<usize> = HashSet::new();
    let mut findings = Vec::new();
    for &lead in &candidates {
        if used[lead] || findings.len() >= MAX_FINDINGS {
            continue;
        }
        used[lead] = true;
        let lead_stat = &segments[lead];
        // A later lead is a finding of its own only if most of its
        // failures are new: a region containing the /24 that leads is a
        // competing explanation of the same failures, not a second fault.
        let lead_window = windows[lead_stat.explain_window];
        if failures_in(&explained, lead_stat, lead_window) as f64
            >= failures(lead_stat) as f64 * (1.0 - NEW_FAILURE_SHARE)
        {
            continue;
        }
        let lead_failing = failing_groups(lead_stat);
        let lead_set: HashSet<usize> = lead_failing.iter().copied().collect();
        let mut correlated = Vec::new();
        // Correlation is judged in the lead's explanation window.
        for &other in &candidates {
            if used[other] {
                continue;
            }
            let o = &segments[other];
            let shared = failures_in(&lead_set, o, lead_window);
            let all: HashSet<usize> = o.groups.iter().copied().collect();
            let smaller = failures_in(&all, o, lead_window).min(failures(lead_stat));
            if shared > 0 && shared as f64 >= smaller as f64 * CORRELATED_SHARE {
                used[other] = true;
                correlated.push(Correlation {
                    segment: other,
                    shared_failures: shared,
                    of_failures: failures(lead_stat),
                });
            }
        }
        explained.extend(lead_set);
        let narrowed = if dimensions[lead_stat.dimension].prefix {
            narrow(groups, windows[lead_stat.window], lead_stat)
        } else {
            None
        };
        let timing = timing(groups, &lead_stat.groups, windows);
        findings.push(Finding::Segment {
            segment: lead,
            correlated,
            narrowed,
            failing_groups: lead_failing,
            timing,
        });
    }
    findings
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

/// The bucket boundaries, in rounds of age, for windows up to
/// `max_rounds`: 1, 2, 4, 8, ... (each below `max_rounds`). Bucket 0 holds
/// the last round, bucket `i` ages `[t[i-1], t[i])`, the last bucket
/// everything older (PostgreSQL's `width_bucket` over these thresholds).
pub fn bucket_thresholds(max_rounds: u32) -> Vec<u32> {
    std::iter::successors(Some(1u32), |t| t.checked_mul(2))
        .take_while(|t| *t < max_rounds)
        .collect()
}

/// The windows of a target whose detection window holds `rounds` rounds:
/// the last 2, 4, 8, ... rounds (fewer than `rounds`), then all of it.
pub fn windows_for(rounds: u32) -> Vec<Window> {
    let rounds = rounds.max(1);
    // No window of one round: an incident opens only on failures seen in
    // two rounds or more, so a one-round test could only add to the
    // multiple-testing family.
    let mut out: Vec<Window> = bucket_thresholds(rounds)
        .into_iter()
        .enumerate()
        .filter(|(_, t)| *t >= 2)
        .map(|(i, t)| Window {
            buckets: i + 1,
            rounds: t,
        })
        .collect();
    out.push(Window {
        buckets: usize::MAX,
        rounds,
    });
    out
}

/// The rounds bucket `b` spans in a window of `window_rounds`: 1 for the
/// last round, then 1, 2, 4... (the last bucket, holding everything older,
/// ends with the window).
pub fn bucket_width(b: usize, window_rounds: u32) -> u32 {
    let (start, nominal) = match b {
        0 => (0, 1),
        b => {
            let w = 1u32
                .checked_shl(u32::try_from(b - 1).unwrap_or(u32::MAX))
                .unwrap_or(u32::MAX);
            (w, w)
        }
    };
    nominal.min(window_rounds.saturating_sub(start)).max(1)
}

/// The bucket of a probe `age` rounds old (see [`bucket_thresholds`]).
pub fn bucket_of(age: u32, thresholds: &[u32]) -> usize {
    thresholds.iter().take_while(|t| **t <= age).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn c(failures: u64, probes: u64) -> Counts {
        Counts::new(failures, probes)
    }

    const DIMS: &[DimensionInfo] = &[
        DimensionInfo {
            name: "region",
            role: Role::Cause,
            prefix: false,
        },
        DimensionInfo {
            name: "egress_prefix",
            role: Role::Cause,
            prefix: true,
        },
    ];

    /// Rounds in the generated windows.
    const ROUNDS: u32 = 10;

    /// `count` vantages in `region` on `net`.x, probed once per round for
    /// `ROUNDS` rounds; `fails(i, age)` says whether vantage `i`'s probe
    /// `age` rounds old failed.
    fn vantages(
        first_id: usize,
        region: &str,
        net: [u8; 3],
        count: usize,
        fails: impl Fn(usize, u32) -> bool,
    ) -> Vec<Group> {
        let thresholds = bucket_thresholds(ROUNDS);
        (0..count)
            .map(|i| {
                let ip = IpAddr::from([net[0], net[1], net[2], 1 + i as u8]);
                let mut buckets = vec![Counts::default(); thresholds.len() + 1];
                for age in 0..ROUNDS {
                    let b = &mut buckets[bucket_of(age, &thresholds)];
                    b.probes += 1;
                    b.failures += u64::from(fails(i, age));
                }
                Group {
                    values: vec![Some(region.to_owned()), Some(prefix(ip, 24).to_string())],
                    addresses: vec![None, Some(ip)],
                    witness: first_id + i,
                    unit: first_id + i,
                    buckets,
                }
            })
            .collect()
    }

    fn always(_: usize, _: u32) -> bool {
        true
    }
    fn never(_: usize, _: u32) -> bool {
        false
    }

    fn assess_default(groups: &[Group]) -> Assessment {
        assess(groups, DIMS, &windows_for(ROUNDS), &Params::default())
    }

    fn lead(a: &Assessment) -> (&str, &str) {
        let Some(Finding::Segment { segment, .. }) = a
            .findings
            .iter()
            .find(|f| matches!(f, Finding::Segment { .. }))
        else {
            panic!("no segment finding: {:#?}", a.findings);
        };
        let s = &a.segments[*segment];
        (DIMS[s.dimension].name, s.value.as_str())
    }

    #[test]
    fn buckets_and_windows_follow_powers_of_two() {
        let t = bucket_thresholds(10);
        assert_eq!(t, [1, 2, 4, 8]);
        let buckets: Vec<usize> = (0..10).map(|age| bucket_of(age, &t)).collect();
        assert_eq!(buckets, [0, 1, 2, 2, 3, 3, 3, 3, 4, 4]);
        let w = windows_for(10);
        assert_eq!(
            w.iter().map(|w| w.rounds).collect::<Vec<_>>(),
            [2, 4, 8, 10]
        );
        assert_eq!(w[1].buckets, 3, "the last 4 rounds are buckets 0, 1 and 2");
        assert_eq!(windows_for(1).len(), 1);
    }

    #[test]
    fn the_issue_sentence_is_flagged() {
        // Two vantages of one /24 fail in every round, against a healthy
        // fleet.
        let mut groups = vantages(0, "eu", [203, 0, 113], 2, always);
        groups.extend(vantages(10, "eu", [198, 51, 100], 5, never));
        groups.extend(vantages(20, "us", [192, 0, 2], 5, never));
        let a = assess_default(&groups);
        assert_eq!(lead(&a), ("egress_prefix", "203.0.113.0/24"));
        let Some(Finding::Segment {
            segment, narrowed, ..
        }) = a.findings.first()
        else {
            panic!()
        };
        let s = &a.segments[*segment];
        assert_eq!((s.segment, s.rest), (c(20, 20), c(0, 100)));
        assert_eq!(a.windows[s.window].rounds, ROUNDS, "the whole window");
        assert!(s.p_value.unwrap() < 1e-15, "{:?}", s.p_value);
        assert_eq!(narrowed.as_ref().unwrap().value, "203.0.113.0/30");
    }

    #[test]
    fn a_fault_two_rounds_old_is_flagged_in_the_short_window_and_not_after_one() {
        // 2 of 15 vantages fail since `since` rounds.
        let build = |since: u32| {
            let mut g = vantages(0, "eu", [10, 1, 1], 2, move |_, age| age < since);
            g.extend(vantages(10, "eu", [10, 1, 2], 5, never));
            g.extend(vantages(20, "us", [10, 2, 1], 8, never));
            g
        };
        let one = assess_default(&build(1));
        assert!(one.findings.is_empty(), "{:#?}", one.findings);
        let two = assess_default(&build(2));
        assert_eq!(lead(&two), ("egress_prefix", "10.1.1.0/24"));
        let Finding::Segment {
            segment, timing, ..
        } = &two.findings[0]
        else {
            panic!()
        };
        assert_eq!(two.windows[two.segments[*segment].window].rounds, 2);
        assert_eq!(timing.rounds_failing, 2);
        assert!(timing.recent);
    }

    #[test]
    fn a_repaired_fault_is_flagged_but_not_recent() {
        // Failing from 9 to 3 rounds ago, healthy in the last three rounds.
        let mut g = vantages(0, "eu", [10, 1, 1], 3, |_, age| (3..9).contains(&age));
        g.extend(vantages(10, "us", [10, 2, 1], 8, never));
        let a = assess_default(&g);
        let Some(Finding::Segment { timing, .. }) = a.findings.first() else {
            panic!("{:#?}", a.findings)
        };
        assert!(!timing.recent, "{timing:?}");
    }

    #[test]
    fn a_partial_failure_looks_back_further_before_calling_it_repaired() {
        let mut g = vantages(0, "eu", [10, 1, 1], 2, |i, age| (age + i as u32) % 3 == 2);
        g.extend(vantages(10, "us", [10, 2, 1], 10, never));
        let a = assess_default(&g);
        let Some(Finding::Segment { timing, .. }) = a.findings.first() else {
            panic!("{:#?}", a.findings)
        };
        // One in three of two vantages: 0.67 failures a round, so 3
        // expected failures need 5 rounds: the 8-round lookback.
        assert_eq!(timing.recent_rounds, 8);
    }

    #[test]
    fn region_in_two_prefixes_beats_its_prefixes() {
        let mut groups = vantages(0, "eu", [10, 1, 1], 3, always);
        groups.extend(vantages(3, "eu", [10, 1, 2], 3, always));
        groups.extend(vantages(6, "us", [10, 2, 1], 6, never));
        let a = assess_default(&groups);
        assert_eq!(a.findings.len(), 1, "{:#?}", a.findings);
        assert_eq!(lead(&a), ("region", "eu"));
        let Finding::Segment { correlated, .. } = &a.findings[0] else {
            panic!()
        };
        assert_eq!(correlated.len(), 2, "both prefixes are evidence");
    }

    #[test]
    fn half_a_region_is_its_prefix_not_the_region() {
        let mut groups = vantages(0, "us-east", [127, 0, 2], 2, always);
        groups.extend(vantages(2, "us-east", [127, 0, 3], 2, never));
        groups.extend(vantages(4, "eu", [127, 0, 4], 11, never));
        let a = assess_default(&groups);
        assert_eq!(lead(&a), ("egress_prefix", "127.0.2.0/24"));
    }

    #[test]
    fn holm_matches_hand_computation() {
        let adj = holm(&[0.01, 0.04, 0.03], 3);
        let expect = [0.03, 0.06, 0.06];
        for (a, e) in adj.iter().zip(expect) {
            assert!((a - e).abs() < 1e-12, "{adj:?}");
        }
        // Untested family members make the correction stricter.
        assert!((holm(&[0.01], 5)[0] - 0.05).abs() < 1e-12);
    }

    #[test]
    fn weighted_holm_with_equal_weights_is_holm() {
        let raw = [0.01, 0.04, 0.03, 0.2];
        let plain = holm(&raw, 6);
        let weighted = holm_weighted(&raw, &[1.0; 4], 6.0);
        for (a, b) in plain.iter().zip(&weighted) {
            assert!((a - b).abs() < 1e-12, "{plain:?} {weighted:?}");
        }
        // A heavier hypothesis needs less evidence: 0.01 at weight 2 of 4
        // is adjusted to 0.02, at weight 1 of 4 to 0.04.
        let w = holm_weighted(&[0.01, 0.5], &[2.0, 2.0], 4.0);
        assert!((w[0] - 0.02).abs() < 1e-12, "{w:?}");
        let w = holm_weighted(&[0.01, 0.5], &[1.0, 3.0], 4.0);
        assert!((w[0] - 0.04).abs() < 1e-12, "{w:?}");
    }

    #[test]
    fn fisher_matches_scipy() {
        // scipy.stats.fisher_exact([[3, 5], [4, 50]], 'greater') = 0.0397...
        let p = fisher_greater(c(3, 8), c(4, 54));
        assert!((p - 0.039_707_492_465_292_77).abs() < 1e-9, "{p}");
    }

    #[test]
    fn binomial_matches_hand_computation() {
        // P(X >= 2 | n = 3, p = 0.1) = 3 * 0.01 * 0.9 + 0.001 = 0.028.
        assert!((binomial_greater(c(2, 3), 0.1) - 0.028).abs() < 1e-12);
        assert_eq!(binomial_greater(c(0, 3), 0.1), 1.0);
    }

    #[test]
    fn one_rogue_vantage_is_not_a_segment() {
        let mut groups = vantages(0, "eu", [10, 1, 1], 1, always);
        groups.extend(
            vantages(1, "eu", [10, 1, 1], 3, never)
                .into_iter()
                .map(|mut g| {
                    g.addresses[1] = Some("10.1.1.77".parse().unwrap());
                    g
                }),
        );
        groups.extend(vantages(10, "us", [10, 2, 1], 4, never));
        let a = assess_default(&groups);
        assert!(a.findings.is_empty(), "{:#?}", a.findings);
    }

    #[test]
    fn failing_everywhere_is_global_and_not_a_segment() {
        let mut groups = vantages(0, "eu", [10, 1, 1], 3, |i, age| i + age as usize > 0);
        groups.extend(vantages(3, "us", [10, 2, 1], 3, always));
        let a = assess_default(&groups);
        assert!(
            matches!(a.findings.as_slice(), [Finding::Global { .. }]),
            "{:#?}",
            a.findings
        );
        // One region spared: not global.
        let mut groups = vantages(0, "eu", [10, 1, 1], 3, always);
        groups.extend(vantages(3, "us", [10, 2, 1], 3, always));
        groups.extend(vantages(6, "ap", [10, 3, 1], 3, never));
        let a = assess_default(&groups);
        assert!(
            !a.findings
                .iter()
                .any(|f| matches!(f, Finding::Global { .. })),
            "{:#?}",
            a.findings
        );
    }

    #[test]
    fn an_outage_of_the_last_round_is_global_at_once_with_enough_vantages() {
        let g = vantages(0, "eu", [10, 1, 1], 15, |_, age| age == 0);
        let a = assess_default(&g);
        let Some(Finding::Global { window, timing, .. }) = a.findings.first() else {
            panic!("{:#?}", a.findings)
        };
        // Found in the shortest window (two rounds), seen in one round:
        // not yet enough to open.
        assert_eq!(a.windows[*window].rounds, 2);
        assert_eq!(timing.rounds_failing, 1);
        // Two failures of three probes are noise, not an outage.
        let g = vantages(0, "eu", [10, 1, 1], 3, |i, age| age == 0 && i < 2);
        assert!(assess_default(&g).findings.is_empty());
    }

    proptest! {
        /// More failures in a segment (same probes, rest unchanged) never
        /// make it less suspicious: the gates it passed still pass and its
        /// p-value does not grow.
        #[test]
        fn more_failures_never_less_suspicious(
            k in 0u64..120, extra in 0u64..60, n in 1u64..120,
            rest_k in 0u64..200, rest_n in 0u64..400, vantages in 0usize..5,
        ) {
            let p = Params::default();
            let n = n.max(k);
            let rest = c(rest_k.min(rest_n), rest_n);
            let before = judge(c(k, n), rest, 5, vantages, &p);
            let after = judge(c((k + extra).min(n), n), rest, 5, vantages, &p);
            prop_assert!(!before.passes_gates || after.passes_gates);
            if let (Some(b), Some(a)) = (before.raw_p, after.raw_p) {
                prop_assert!(a <= b + 1e-12, "p grew from {b} to {a}");
            }
        }

        /// A uniform failure pattern (every vantage fails in the same
        /// rounds) never flags a segment.
        #[test]
        fn uniform_rate_never_flags(
            failing_rounds in proptest::collection::vec(any::<bool>(), ROUNDS as usize),
            regions in 1usize..4, per_region in 1usize..6,
        ) {
            let mut groups = Vec::new();
            for r in 0..regions {
                let f = failing_rounds.clone();
                groups.extend(vantages(r * 10, &format!("r{r}"), [10, r as u8, 1], per_region,
                    move |_, age| f[age as usize]));
            }
            let a = assess_default(&groups);
            prop_assert!(a.segments.iter().all(|s| !s.flagged));
            let only_global = a.findings.iter().all(|f| matches!(f, Finding::Global { .. }));
            prop_assert!(only_global);
        }

        /// Adding failing rounds to a flagged segment keeps it flagged.
        #[test]
        fn flagged_segment_stays_flagged_with_more_failures(
            failing in 1u32..ROUNDS, extra in 1u32..ROUNDS, healthy in 2usize..12,
        ) {
            let build = |failing: u32| {
                let mut g = vantages(0, "eu", [10, 1, 1], 2, move |_, age| age < failing);
                g.extend(vantages(5, "us", [10, 2, 1], healthy, never));
                g
            };
            let flagged = |a: &Assessment| a.segments.iter().any(|s| s.value == "eu" && s.flagged);
            if flagged(&assess_default(&build(failing))) {
                prop_assert!(flagged(&assess_default(&build((failing + extra).min(ROUNDS)))));
            }
        }
    }
}
