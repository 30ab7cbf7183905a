//! The statistics: the gates and the one-sided Fisher exact test of one
//! segment against the rest, the binomial test of a global rate, and the
//! (weighted) Holm correction.

use statrs::distribution::{Binomial, DiscreteCDF};
use statrs::stats_tests::Alternative;
use statrs::stats_tests::fisher::fishers_exact;

use super::{Counts, Params};

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
/// saw probes in the segment, `failing_witnesses` saw failures;
/// `background`: the rest's failure rate over the whole detection window.
///
/// The p-value is the larger of the exact test against the rest and a
/// binomial test against the background: the exact test conditions on
/// the failures of the window, so when a short window's rest happens to
/// be spotless, four noise failures that all land in one /24 of a 2%-noise
/// target look like a cause; against the 2% the target shows over the
/// whole window they are what noise does.
///
/// A segment is eligible (a member of the multiple-testing family) when
/// it could be flagged whatever the failures: probes on both sides and at
/// least `min_vantages` witnesses. Counting only the segments that happen
/// to have failures would shrink the family exactly when noise is all
/// there is, and let noise through.
pub fn judge(
    segment: Counts,
    rest: Counts,
    background: f64,
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
    let raw_p = passes_gates
        .then(|| fisher_greater(segment, rest).max(binomial_greater(segment, background)));
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
