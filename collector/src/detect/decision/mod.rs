//! The decision: from counts to findings, a pure function (no I/O, no
//! clock) so that its statistics can be property-tested.
//!
//! Input: the probes of one target and failure pattern (or, for path
//! findings, of every target at once), reduced to [`Group`]s: probes
//! sharing every dimension value and the same vantage, counted per age
//! bucket (the last probe round, the one before, the two before those...).
//! Evidence is weighed over several windows ending now ([`Window`]: the
//! last 2, 4, 8, ... rounds and the whole detection window), so that a
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
//!    rate higher than the rest's?), weighted-Holm-corrected over every
//!    (segment, window) pair that could be tested whatever the failures
//!    (identical segments once; weights 1/rounds, favouring short windows),
//!    at family-wise level `alpha`. The exact test accounts for small
//!    samples by itself: two vantages failing in one round out of fifteen
//!    are not significant, the same two failing in two rounds are.
//!
//! A flagged segment's evidence is its most significant window; its fit is
//! judged in its shortest flagged window. Flagged segments are then grouped
//! into findings ([`findings`]): the segment that best explains the recent
//! failures (the highest Jaccard index between the segment and the failing
//! probes) leads; other flagged segments sharing its failing probes are its
//! correlated evidence. Mostly new failures can lead a second finding. A
//! finding on an IP prefix is narrowed to the most specific prefix covering
//! every failure.
//!
//! Global: in some window, the target fails at `global_rate` or more, the
//! rate is significantly above `global_baseline` (binomial test), and no
//! segment of any dimension (with `min_segment_probes` probes) is spared,
//! i.e. fails at less than half of `global_rate`.

mod findings;
mod stats;
#[cfg(test)]
mod tests;
mod windows;

use std::collections::{BTreeMap, HashSet};

// The family of tests hashes each segment's list of groups: foldhash.
use foldhash::{HashMap, HashMapExt as _};
use std::net::IpAddr;

pub use findings::{Correlation, Finding, Narrowed, Timing, WalkStep, timing_of};
use findings::{MAX_FINDINGS, global_finding, segment_finding};
pub use stats::{Judgement, binomial_greater, fisher_greater, holm, holm_weighted, judge};
pub use windows::{bucket_of, bucket_thresholds, bucket_width, windows_for};

use super::dimensions::Role;

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
    /// Counts per age bucket, newest first (confirmation probes included).
    pub buckets: Vec<Counts>,
    /// The confirmation probes among them: a failure that reproduced when
    /// the detector asked again is a second observation of it.
    pub confirmed: Counts,
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
    /// The population's totals per window it was tested against, when
    /// earlier findings' probes were set aside (explaining away); `None`:
    /// the whole population's.
    pub residual_totals: Option<Vec<Counts>>,
    /// Probes of the population set aside (explained by other findings)
    /// in its evidence window: neither segment nor rest.
    pub set_aside: Counts,
}

impl SegmentStat {
    /// How well the segment explains the failures of its explanation
    /// window (`totals`: the population's, per window): failing probes in
    /// it over (all failing probes + healthy probes in it), the Jaccard
    /// index of the segment and the failing probes.
    pub fn score(&self, totals: &[Counts]) -> f64 {
        let totals = self.residual_totals.as_deref().unwrap_or(totals);
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
    /// Every value of every dimension tested on the whole population
    /// (`..base_segments`), then the leads of later findings and their
    /// correlated segments as the residual tested them.
    pub segments: Vec<SegmentStat>,
    /// How many of `segments` the whole population's test made.
    pub base_segments: usize,
    pub findings: Vec<Finding>,
}

/// Which probes an assessment may explain, and how a segment's failures
/// must spread over its witnesses to be a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope<'a> {
    /// One target's probes: witnesses are vantages.
    #[default]
    Target,
    /// Every target's probes on the vantages' own path: witnesses are
    /// targets, and a segment is a finding only if it fails for most of
    /// the targets it probes ([`fails_for_most_witnesses`]): a union of
    /// different per-target faults that share a region is never one.
    /// Per group: the (dimension, value) of the finding its own target's
    /// assessment explained it by, if any: a target whose failures in the
    /// segment another explanation of its own claims does not count for
    /// the path.
    Path(&'a [Option<(usize, String)>]),
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
    assess_in(
        groups,
        &vec![true; groups.len()],
        dimensions,
        windows,
        p,
        Scope::Target,
    )
}

/// The counts of the probes in play (`active` groups), per window, and
/// every value of every dimension among them, tested against the rest.
struct Tested {
    totals: Vec<Counts>,
    total: Counts,
    failing_witnesses: usize,
    tests: usize,
    segments: Vec<SegmentStat>,
}

/// [`assess`] of the `active` groups only (the others are explained by a
/// finding made elsewhere: a path's probes on one target), explaining
/// away: the best explanation of the failures leads a finding, its probes
/// are set aside, and what is left is tested again (counts, gates,
/// significance and fit all recomputed on the residual) for further
/// causes, until no segment is flagged. A second cause is thus judged
/// against the healthy probes only, not against a rest inflated by the
/// first cause's failures.
pub fn assess_in(
    groups: &[Group],
    active: &[bool],
    dimensions: &[DimensionInfo],
    windows: &[Window],
    p: &Params,
    scope: Scope<'_>,
) -> Assessment {
    let base = test_segments(groups, active, dimensions, windows, p, &[]);
    let global = global_finding(
        groups,
        active,
        windows,
        &base.totals,
        &base.segments,
        dimensions,
        p,
    );
    let mut a = Assessment {
        windows: windows.to_vec(),
        totals: base.totals.clone(),
        total: base.total,
        failing_vantages: base.failing_witnesses,
        tests: base.tests,
        base_segments: base.segments.len(),
        segments: base.segments.clone(),
        findings: global.into_iter().collect(),
    };
    // Set aside before this assessment (not active) and by its findings.
    let initially_aside: Vec<usize> = (0..groups.len()).filter(|g| !active[*g]).collect();
    let mut in_play = active.to_vec();
    let mut round = Some(base);
    for _ in 0..MAX_FINDINGS {
        let tested = match round.take() {
            Some(t) => t,
            None => {
                let aside: Vec<usize> = (0..groups.len()).filter(|g| !in_play[*g]).collect();
                test_segments(groups, &in_play, dimensions, windows, p, &aside)
            }
        };
        let first_round = a
            .findings
            .iter()
            .all(|f| matches!(f, Finding::Global { .. }));
        let Some(lead) = pick_lead(groups, &in_play, windows, &tested, p, scope) else {
            break;
        };
        let residual = !first_round || !initially_aside.is_empty();
        let finding = segment_finding(groups, windows, &tested, lead, dimensions);
        // The lead and its correlated evidence, as the residual tested
        // them: appended after the base segments so indexes stay valid.
        let Finding::Segment {
            segment,
            correlated,
            narrowed,
            failing_groups,
            timing,
        } = finding
        else {
            break;
        };
        let offset = a.segments.len();
        let mut keep = vec![segment];
        keep.extend(correlated.iter().map(|c| c.segment));
        for s in &keep {
            let mut stat = tested.segments[*s].clone();
            stat.residual_totals = residual.then(|| tested.totals.clone());
            a.segments.push(stat);
        }
        let index_of = |s: usize| offset + keep.iter().position(|k| *k == s).unwrap_or(0);
        for g in &tested.segments[segment].groups {
            in_play[*g] = false;
        }
        a.findings.push(Finding::Segment {
            segment: index_of(segment),
            correlated: correlated
                .into_iter()
                .map(|c| Correlation {
                    segment: index_of(c.segment),
                    ..c
                })
                .collect(),
            narrowed,
            failing_groups,
            timing,
        });
    }
    // Several causes failing side by side can make a target look global
    // (half of its probes failing, no segment spared). An outage masks
    // every segment, so when the causes explained away hold most of the
    // failures of the global window, it was them, not an outage.
    let explained = |w: Window| -> u64 {
        (0..groups.len())
            .filter(|g| active[*g] && !in_play[*g])
            .map(|g| groups[g].counts(w).failures)
            .sum()
    };
    a.findings.retain(|f| match f {
        Finding::Global { window, .. } => {
            let w = windows[*window];
            explained(w) * 2 < a.totals[*window].failures
        }
        Finding::Segment { .. } => true,
    });
    a
}

/// The first flagged segment, best fit first, that is a finding in this
/// scope (for a path: failing for most of the targets it probes).
fn pick_lead(
    groups: &[Group],
    active: &[bool],
    windows: &[Window],
    tested: &Tested,
    p: &Params,
    scope: Scope<'_>,
) -> Option<usize> {
    let mut candidates: Vec<usize> = (0..tested.segments.len())
        .filter(|i| tested.segments[*i].flagged)
        .collect();
    // Best score first; ties: dimension order, then value (deterministic).
    candidates.sort_by(|a, b| {
        let (sa, sb) = (&tested.segments[*a], &tested.segments[*b]);
        sb.score(&tested.totals)
            .total_cmp(&sa.score(&tested.totals))
            .then(sa.dimension.cmp(&sb.dimension))
            .then(sa.value.cmp(&sb.value))
    });
    candidates.into_iter().find(|s| match scope {
        Scope::Target => true,
        Scope::Path(claims) => {
            let stat = &tested.segments[*s];
            fails_for_most_witnesses(
                groups,
                active,
                claims,
                windows[stat.explain_window],
                stat,
                p,
            )
        }
    })
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

/// Tests every value of every dimension among the `active` groups against
/// the rest of them. `aside`: groups explained by earlier findings, whose
/// counts each segment notes as set aside.
fn test_segments(
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

    // Every value of every cause dimension: its groups.
    let mut by_value: BTreeMap<(usize, &str), Vec<usize>> = BTreeMap::new();
    for (gi, g) in groups.iter().enumerate() {
        if !in_play(gi) {
            continue;
        }
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
