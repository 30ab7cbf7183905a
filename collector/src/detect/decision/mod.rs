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
mod segments;
mod stats;
#[cfg(test)]
mod tests;
mod windows;
mod witnesses;

use std::net::IpAddr;

pub use findings::{Correlation, Finding, Narrowed, Timing, WalkStep, timing_of};
use findings::{MAX_FINDINGS, global_finding, segment_finding};
use segments::{Tested, test_segments};
pub use stats::{Judgement, binomial_greater, fisher_greater, holm, holm_weighted, judge};
pub use windows::{bucket_of, bucket_thresholds, bucket_width, windows_for};
use witnesses::pick_lead;
pub use witnesses::{WitnessCounts, fails_for_most_witnesses, witness_counts};

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
/// docs/detection.md says why each default is what it is).
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

pub use super::dimensions::DimensionInfo;

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

/// Orders segment indexes best explanation first (the fit against
/// `totals`); ties: dimension order, then value (deterministic).
fn best_fit_first(segments: &[SegmentStat], totals: &[Counts], order: &mut [usize]) {
    order.sort_by(|a, b| {
        let (sa, sb) = (&segments[*a], &segments[*b]);
        sb.score(totals)
            .total_cmp(&sa.score(totals))
            .then(sa.dimension.cmp(&sb.dimension))
            .then(sa.value.cmp(&sb.value))
    });
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
    let Tested {
        totals,
        total,
        failing_witnesses,
        tests,
        segments,
    } = base;
    let mut a = Assessment {
        windows: windows.to_vec(),
        totals,
        total,
        failing_vantages: failing_witnesses,
        tests,
        base_segments: segments.len(),
        segments,
        findings: global.into_iter().collect(),
    };
    let mut in_play = active.to_vec();
    for round in 0..MAX_FINDINGS {
        // The first round is the whole population's test; each later one
        // tests what the findings so far left in play.
        let residual = (round > 0).then(|| {
            let aside: Vec<usize> = (0..groups.len()).filter(|g| !in_play[*g]).collect();
            test_segments(groups, &in_play, dimensions, windows, p, &aside)
        });
        let (segments, totals) = match &residual {
            Some(t) => (t.segments.as_slice(), t.totals.as_slice()),
            None => (a.segments.as_slice(), a.totals.as_slice()),
        };
        let Some(lead) = pick_lead(groups, &in_play, windows, segments, totals, p, scope) else {
            break;
        };
        let finding = segment_finding(groups, windows, segments, totals, lead, dimensions);
        for g in &segments[lead].groups {
            in_play[*g] = false;
        }
        let finding = match (&residual, finding) {
            (
                Some(t),
                Finding::Segment {
                    segment,
                    correlated,
                    narrowed,
                    failing_groups,
                    timing,
                },
            ) => {
                // The lead and its correlated evidence as the residual
                // tested them, appended after the base segments so that
                // indexes stay valid.
                let offset = a.segments.len();
                let mut keep = vec![segment];
                keep.extend(correlated.iter().map(|c| c.segment));
                for s in &keep {
                    let mut stat = t.segments[*s].clone();
                    stat.residual_totals = Some(t.totals.clone());
                    a.segments.push(stat);
                }
                let index_of = |s: usize| offset + keep.iter().position(|k| *k == s).unwrap_or(0);
                Finding::Segment {
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
                }
            }
            (_, finding) => finding,
        };
        a.findings.push(finding);
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
