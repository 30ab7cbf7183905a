//! The decision: from counts to findings, a pure function (no I/O, no
//! clock) so that its statistics can be property-tested.
//!
//! Input: the probes of one target and failure pattern over the window,
//! reduced to [`Group`]s (probes sharing every dimension value and the same
//! vantage). For every value of every dimension, the segment (probes with
//! that value) is compared with the rest (every other probe of the target):
//!
//! 1. gates: the segment and the rest have at least `min_probes` probes;
//!    failures come from at least `min_vantages` distinct vantages (one
//!    rogue agent is not a region); the segment's failure rate exceeds the
//!    rest's by at least `min_rate_difference` and by a factor of at least
//!    `min_rate_ratio`;
//! 2. significance: a one-sided Fisher exact test (is the segment's
//!    failure rate higher than the rest's?), Holm-corrected over every
//!    eligible segment of the target, at family-wise level `alpha`.
//!
//! Flagged segments are then grouped into findings: the segment that best
//! explains the failures (covers most failing probes while including the
//! fewest healthy ones, i.e. the highest Jaccard index between the segment
//! and the set of failing probes) leads; other flagged segments sharing its
//! failing probes are its correlated evidence. Failures not explained by
//! the first finding can lead to a second one. A finding on an IP prefix is
//! narrowed to the most specific prefix covering every failure.
//!
//! Global: when the target fails at `global_rate` or more overall and no
//! segment of any dimension (with `min_segment_probes` probes) is spared,
//! i.e. fails at less than half that rate, the finding is global.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

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

    fn add(&mut self, other: Counts) {
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
    /// Fewest probes in a segment, and in the rest, to test it.
    pub min_probes: u64,
    /// Fewest distinct vantages with failures in a segment.
    pub min_vantages: usize,
    /// Segment rate minus rest rate, at least.
    pub min_rate_difference: f64,
    /// Segment rate over rest rate, at least (any rate beats a rest of 0).
    pub min_rate_ratio: f64,
    /// Family-wise significance level over all segments tested per target.
    pub alpha: f64,
    /// Overall failure rate from which a failure is global, provided no
    /// segment is spared.
    pub global_rate: f64,
    /// A segment with at least this many probes and a failure rate below
    /// half of `global_rate` is spared, and rules a global finding out.
    pub min_segment_probes: u64,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            min_probes: 20,
            min_vantages: 2,
            min_rate_difference: 0.2,
            min_rate_ratio: 2.0,
            alpha: 0.01,
            global_rate: 0.5,
            min_segment_probes: 5,
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

/// Probes sharing every dimension value and the same vantage.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// One per dimension; `None`: no value (e.g. no resolver for an IP URL).
    pub values: Vec<Option<String>>,
    /// One per dimension: the address a prefix dimension's value was
    /// derived from.
    pub addresses: Vec<Option<IpAddr>>,
    /// Identifies the vantage (agent and egress path).
    pub vantage: usize,
    pub counts: Counts,
}

/// One value of one dimension, compared with the rest.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentStat {
    /// Index into the dimensions.
    pub dimension: usize,
    pub value: String,
    pub segment: Counts,
    pub rest: Counts,
    /// Distinct vantages with at least one failure in the segment.
    pub failing_vantages: usize,
    /// Holm-adjusted one-sided Fisher p-value; `None`: not tested (too few
    /// probes or vantages, or rates too close).
    pub p_value: Option<f64>,
    pub flagged: bool,
    /// Indexes of the groups in the segment.
    pub groups: Vec<usize>,
}

impl SegmentStat {
    /// How well the segment explains the failures: failing probes in it
    /// over (all failing probes + healthy probes in it).
    pub fn score(&self, total: Counts) -> f64 {
        let denominator = total.failures + self.segment.healthy();
        if denominator == 0 {
            0.0
        } else {
            self.segment.failures as f64 / denominator as f64
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
    /// Failing probes in both.
    pub shared_failures: u64,
}

/// A failure pattern the decision reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Finding {
    /// The target fails everywhere.
    Global,
    /// The target fails in one segment.
    Segment {
        /// Index into [`Assessment::segments`].
        segment: usize,
        correlated: Vec<Correlation>,
        narrowed: Option<Narrowed>,
    },
}

/// Everything one evaluation concluded for one target and pattern.
#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    pub total: Counts,
    pub failing_vantages: usize,
    /// Segments of cause dimensions tested (the Holm family's size).
    pub tests: usize,
    pub segments: Vec<SegmentStat>,
    pub findings: Vec<Finding>,
}

/// Most findings reported per target and pattern.
const MAX_FINDINGS: usize = 4;
/// A flagged segment is correlated evidence of a finding when at least this
/// share of the smaller one's failing probes lie in both.
const CORRELATED_SHARE: f64 = 0.8;

/// Whether a segment passes the gates, and its raw (uncorrected) p-value
/// when it does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Judgement {
    /// Enough probes in the segment and in the rest to be tested at all
    /// (counts toward the multiple-testing correction).
    pub eligible: bool,
    pub passes_gates: bool,
    pub raw_p: Option<f64>,
}

/// Judges one segment against the rest (before correction).
pub fn judge(segment: Counts, rest: Counts, failing_vantages: usize, p: &Params) -> Judgement {
    let eligible = segment.probes >= p.min_probes && rest.probes >= p.min_probes;
    let (s, r) = (segment.rate(), rest.rate());
    let passes_gates = eligible
        && failing_vantages >= p.min_vantages
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

/// A segment being built: its groups, counts and failing vantages.
type Members = (Vec<usize>, Counts, HashSet<usize>);

/// The decision for one target and failure pattern.
pub fn assess(groups: &[Group], dimensions: &[DimensionInfo], p: &Params) -> Assessment {
    let mut total = Counts::default();
    let mut failing_vantages = HashSet::new();
    for g in groups {
        total.add(g.counts);
        if g.counts.failures > 0 {
            failing_vantages.insert(g.vantage);
        }
    }

    // Every value of every dimension: its groups, counts and vantages.
    let mut by_value: BTreeMap<(usize, &str), Members> = BTreeMap::new();
    for (gi, g) in groups.iter().enumerate() {
        for (d, value) in g.values.iter().enumerate().take(dimensions.len()) {
            let Some(value) = value else { continue };
            let entry = by_value.entry((d, value.as_str())).or_default();
            entry.0.push(gi);
            entry.1.add(g.counts);
            if g.counts.failures > 0 {
                entry.2.insert(g.vantage);
            }
        }
    }
    let mut segments: Vec<SegmentStat> = Vec::with_capacity(by_value.len());
    let mut judgements = Vec::with_capacity(by_value.len());
    for ((d, value), (members, counts, vantages)) in by_value {
        let rest = total.minus(counts);
        let j = if dimensions[d].role == Role::Cause {
            judge(counts, rest, vantages.len(), p)
        } else {
            Judgement {
                eligible: false,
                passes_gates: false,
                raw_p: None,
            }
        };
        judgements.push(j);
        segments.push(SegmentStat {
            dimension: d,
            value: value.to_owned(),
            segment: counts,
            rest,
            failing_vantages: vantages.len(),
            p_value: None,
            flagged: false,
            groups: members,
        });
    }

    // Multiple testing: the family is every eligible segment.
    let tests = judgements.iter().filter(|j| j.eligible).count();
    let tested: Vec<usize> = (0..segments.len())
        .filter(|i| judgements[*i].raw_p.is_some())
        .collect();
    let raw: Vec<f64> = tested
        .iter()
        .map(|i| judgements[*i].raw_p.unwrap_or(1.0))
        .collect();
    for (i, adjusted) in tested.iter().zip(holm(&raw, tests)) {
        segments[*i].p_value = Some(adjusted);
        segments[*i].flagged = adjusted <= p.alpha;
    }

    let mut findings = Vec::new();
    if is_global(total, failing_vantages.len(), &segments, dimensions, p) {
        findings.push(Finding::Global);
    }
    findings.extend(segment_findings(groups, &segments, dimensions, total));
    Assessment {
        total,
        failing_vantages: failing_vantages.len(),
        tests,
        segments,
        findings,
    }
}

fn is_global(
    total: Counts,
    failing_vantages: usize,
    segments: &[SegmentStat],
    dimensions: &[DimensionInfo],
    p: &Params,
) -> bool {
    total.probes >= p.min_probes
        && total.rate() >= p.global_rate
        && failing_vantages >= p.min_vantages
        && segments
            .iter()
            .filter(|s| dimensions[s.dimension].role == Role::Cause)
            .filter(|s| s.segment.probes >= p.min_segment_probes)
            .all(|s| s.segment.rate() >= p.global_rate / 2.0)
}

/// Greedy explanation: the best-scoring flagged segment leads a finding,
/// flagged segments sharing its failures are its evidence; repeat for
/// failures left unexplained.
fn segment_findings(
    groups: &[Group],
    segments: &[SegmentStat],
    dimensions: &[DimensionInfo],
    total: Counts,
) -> Vec<Finding> {
    let failing_groups = |s: &SegmentStat| -> HashSet<usize> {
        s.groups
            .iter()
            .copied()
            .filter(|g| groups[*g].counts.failures > 0)
            .collect()
    };
    let failures_in = |set: &HashSet<usize>, s: &SegmentStat| -> u64 {
        s.groups
            .iter()
            .filter(|g| set.contains(g))
            .map(|g| groups[*g].counts.failures)
            .sum()
    };
    let mut candidates: Vec<usize> = (0..segments.len())
        .filter(|i| segments[*i].flagged)
        .collect();
    // Best score first; ties: dimension order, then value (deterministic).
    candidates.sort_by(|a, b| {
        let (sa, sb) = (&segments[*a], &segments[*b]);
        sb.score(total)
            .total_cmp(&sa.score(total))
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
        // Failures already explained by an earlier finding.
        if failures_in(&explained, lead_stat) as f64
            >= lead_stat.segment.failures as f64 * CORRELATED_SHARE
        {
            continue;
        }
        let lead_failing = failing_groups(lead_stat);
        let mut correlated = Vec::new();
        for &other in &candidates {
            if used[other] {
                continue;
            }
            let o = &segments[other];
            let shared = failures_in(&lead_failing, o);
            let smaller = o.segment.failures.min(lead_stat.segment.failures);
            if shared > 0 && shared as f64 >= smaller as f64 * CORRELATED_SHARE {
                used[other] = true;
                correlated.push(Correlation {
                    segment: other,
                    shared_failures: shared,
                });
            }
        }
        explained.extend(lead_failing);
        let narrowed = if dimensions[lead_stat.dimension].prefix {
            narrow(groups, lead_stat)
        } else {
            None
        };
        findings.push(Finding::Segment {
            segment: lead,
            correlated,
            narrowed,
        });
    }
    findings
}

/// The prefix walk: from the segment's prefix towards longer ones, one bit
/// at a time, while every failing probe stays inside one prefix. Returns
/// the narrowest such prefix, if narrower than the segment's own.
fn narrow(groups: &[Group], stat: &SegmentStat) -> Option<Narrowed> {
    let d = stat.dimension;
    let start: ipnet::IpNet = stat.value.parse().ok()?;
    let members: Vec<(&Group, IpAddr)> = stat
        .groups
        .iter()
        .filter_map(|g| {
            groups[*g]
                .addresses
                .get(d)
                .copied()
                .flatten()
                .map(|a| (&groups[*g], a))
        })
        .collect();
    let failing: Vec<IpAddr> = members
        .iter()
        .filter(|(g, _)| g.counts.failures > 0)
        .map(|(_, a)| *a)
        .collect();
    let first = *failing.first()?;
    let counts_in = |net: &ipnet::IpNet| {
        let mut c = Counts::default();
        for (g, a) in &members {
            if net.contains(a) {
                c.add(g.counts);
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

    /// `count` vantages in `region` on `net`.x, each with `probes` probes of
    /// which `failures` fail.
    fn vantages(
        first_id: usize,
        region: &str,
        net: [u8; 3],
        count: usize,
        probes: u64,
        failures: u64,
    ) -> Vec<Group> {
        (0..count)
            .map(|i| {
                let ip = IpAddr::from([net[0], net[1], net[2], 1 + i as u8]);
                Group {
                    values: vec![Some(region.to_owned()), Some(prefix(ip, 24).to_string())],
                    addresses: vec![None, Some(ip)],
                    vantage: first_id + i,
                    counts: c(failures, probes),
                }
            })
            .collect()
    }

    #[test]
    fn the_issue_sentence_is_flagged() {
        // 41 of 43 from one /24 (two vantages) against 0 of 380.
        let mut groups = vantages(0, "eu", [203, 0, 113], 1, 22, 21);
        groups.extend(
            vantages(1, "eu", [203, 0, 113], 1, 21, 20)
                .into_iter()
                .map(|mut g| {
                    g.addresses[1] = Some("203.0.113.9".parse().unwrap());
                    g
                }),
        );
        // Healthy vantages in the same region and elsewhere.
        groups.extend(vantages(10, "eu", [198, 51, 100], 5, 38, 0));
        groups.extend(vantages(20, "us", [192, 0, 2], 5, 38, 0));
        let a = assess(&groups, DIMS, &Params::default());
        let Some(Finding::Segment {
            segment, narrowed, ..
        }) = a.findings.first()
        else {
            panic!("no finding: {a:#?}");
        };
        let s = &a.segments[*segment];
        assert_eq!(
            (DIMS[s.dimension].name, s.value.as_str()),
            ("egress_prefix", "203.0.113.0/24")
        );
        assert_eq!((s.segment, s.rest), (c(41, 43), c(0, 380)));
        assert!(s.p_value.unwrap() < 1e-20, "{:?}", s.p_value);
        let narrowed = narrowed.as_ref().unwrap();
        assert_eq!(narrowed.value, "203.0.113.0/28", "{narrowed:#?}");
        assert_eq!(narrowed.segment, c(41, 43));
    }

    #[test]
    fn region_in_two_prefixes_beats_its_prefixes() {
        let mut groups = vantages(0, "eu", [10, 1, 1], 3, 30, 30);
        groups.extend(vantages(3, "eu", [10, 1, 2], 3, 30, 30));
        groups.extend(vantages(6, "us", [10, 2, 1], 6, 30, 0));
        let a = assess(&groups, DIMS, &Params::default());
        assert_eq!(a.findings.len(), 1, "{:#?}", a.findings);
        let Finding::Segment {
            segment,
            correlated,
            ..
        } = &a.findings[0]
        else {
            panic!()
        };
        assert_eq!(a.segments[*segment].value, "eu");
        assert_eq!(correlated.len(), 2, "both prefixes are evidence");
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
    fn fisher_matches_scipy() {
        // scipy.stats.fisher_exact([[3, 5], [4, 50]], 'greater') = 0.0397...
        let p = fisher_greater(c(3, 8), c(4, 54));
        assert!((p - 0.039_707_492_465_292_77).abs() < 1e-9, "{p}");
    }

    #[test]
    fn one_rogue_vantage_is_not_a_segment() {
        let mut groups = vantages(0, "eu", [10, 1, 1], 1, 100, 100);
        groups.extend(
            vantages(1, "eu", [10, 1, 1], 3, 100, 0)
                .into_iter()
                .map(|mut g| {
                    g.addresses[1] = Some("10.1.1.77".parse().unwrap());
                    g
                }),
        );
        groups.extend(vantages(10, "us", [10, 2, 1], 4, 100, 0));
        let a = assess(&groups, DIMS, &Params::default());
        assert!(a.findings.is_empty(), "{:#?}", a.findings);
    }

    #[test]
    fn failing_everywhere_is_global_and_not_a_segment() {
        let mut groups = vantages(0, "eu", [10, 1, 1], 3, 30, 29);
        groups.extend(vantages(3, "us", [10, 2, 1], 3, 30, 30));
        let a = assess(&groups, DIMS, &Params::default());
        assert_eq!(a.findings, vec![Finding::Global]);
        // One region spared: not global.
        let mut groups = vantages(0, "eu", [10, 1, 1], 3, 30, 30);
        groups.extend(vantages(3, "us", [10, 2, 1], 3, 30, 30));
        groups.extend(vantages(6, "ap", [10, 3, 1], 3, 30, 0));
        let a = assess(&groups, DIMS, &Params::default());
        assert!(!a.findings.contains(&Finding::Global), "{:#?}", a.findings);
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
            let before = judge(c(k, n), rest, vantages, &p);
            let after = judge(c((k + extra).min(n), n), rest, vantages, &p);
            prop_assert!(!before.passes_gates || after.passes_gates);
            if let (Some(b), Some(a)) = (before.raw_p, after.raw_p) {
                prop_assert!(a <= b + 1e-12, "p grew from {b} to {a}");
            }
        }

        /// A uniform failure rate (every group fails at the same rate)
        /// never flags a segment.
        #[test]
        fn uniform_rate_never_flags(
            per_group in 1u64..50, failing_per_10 in 0u64..=10, regions in 1usize..4,
            per_region in 1usize..6,
        ) {
            let probes = per_group * 10;
            let failures = per_group * failing_per_10;
            let mut groups = Vec::new();
            for r in 0..regions {
                groups.extend(vantages(r * 10, &format!("r{r}"), [10, r as u8, 1], per_region, probes, failures));
            }
            let a = assess(&groups, DIMS, &Params::default());
            prop_assert!(a.segments.iter().all(|s| !s.flagged));
            prop_assert!(a.findings.iter().all(|f| *f == Finding::Global));
        }

        /// Adding failing probes to a flagged segment keeps it flagged.
        #[test]
        fn flagged_segment_stays_flagged_with_more_failures(
            bad in 20u64..60, healthy_rest in 40u64..400, extra in 1u64..30,
        ) {
            let build = |bad: u64| {
                let mut g = vantages(0, "eu", [10, 1, 1], 2, bad + 5, bad);
                g.extend(vantages(5, "us", [10, 2, 1], 4, healthy_rest, 0));
                g
            };
            let p = Params::default();
            let flagged = |a: &Assessment| a.segments.iter().any(|s| s.value == "eu" && s.flagged);
            if flagged(&assess(&build(bad), DIMS, &p)) {
                prop_assert!(flagged(&assess(&build(bad + extra), DIMS, &p)));
            }
        }
    }
}
