//! The decision's unit and property tests.

use super::*;
use crate::detect::dimensions::{Role, prefix};
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
                confirmed: Counts::default(),
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

/// Every segment finding's (dimension, value), in the order found.
fn leads(a: &Assessment) -> Vec<(&str, &str)> {
    a.findings
        .iter()
        .filter_map(|f| match f {
            Finding::Segment { segment, .. } => {
                let s = &a.segments[*segment];
                Some((DIMS[s.dimension].name, s.value.as_str()))
            }
            Finding::Global { .. } => None,
        })
        .collect()
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
fn noise_landing_in_one_prefix_of_a_spotless_short_window_is_not_a_cause() {
    // Seed 101055 of the random worlds: 2% background noise, and in the
    // last two rounds the target's only four failures all fall in one /24
    // (four of its twelve probes). Against the spotless rest of those two
    // rounds the exact test calls it a cause; against the 2% the rest
    // shows over the whole window, four of twelve is what noise does.
    let mut groups = vantages(0, "eu", [203, 0, 113], 6, |i, age| {
        (age == 0 && i < 2) || (age == 1 && (2..4).contains(&i))
    });
    // The rest: 100 vantages in 25 /24s (a family of tests the size of a
    // real fleet's), failing 2% of their probes, none in the last two
    // rounds.
    for n in 0..25u8 {
        let region = if n % 2 == 0 { "eu" } else { "us" };
        groups.extend(vantages(
            10 + 4 * usize::from(n),
            region,
            [198, 51, n],
            4,
            |i, age| age >= 2 && (usize::from(n) * 4 + i + age as usize * 3).is_multiple_of(40),
        ));
    }
    let a = assess_default(&groups);
    let prefix = a
        .segments
        .iter()
        .find(|s| s.value == "203.0.113.0/24")
        .expect("the /24 is tested");
    assert_eq!(prefix.windows[0].segment, c(4, 12));
    assert_eq!(
        prefix.windows[0].rest.failures, 0,
        "a spotless short window"
    );
    let background = prefix.windows.last().unwrap().rest.rate();
    assert!((0.015..0.025).contains(&background), "{background}");
    assert!(
        fisher_greater(prefix.windows[0].segment, prefix.windows[0].rest) < 1e-5,
        "the exact test alone would call it a cause"
    );
    assert!(!prefix.flagged, "{prefix:#?}");
    assert!(a.findings.is_empty(), "{:#?}", a.findings);
}

#[test]
fn a_cause_explained_away_still_witnesses_a_second_cause_it_shares_a_vantage_with() {
    // Seed 401152: one vantage of a /24 also fails for another cause (its
    // region's). Once the region is explained, the /24's other vantage is
    // all that is left in play, yet both of its vantages fail: the /24 is
    // a cause of its own, not one rogue vantage.
    let mut groups = vantages(0, "eu", [10, 0, 0], 10, always);
    let mut shared = vantages(10, "eu", [203, 0, 113], 1, always);
    let mut alone = vantages(11, "us", [203, 0, 113], 1, always);
    alone[0].addresses[1] = Some(IpAddr::from([203, 0, 113, 9]));
    shared.append(&mut alone);
    groups.extend(shared);
    groups.extend(vantages(20, "us", [192, 0, 2], 10, never));
    let a = assess_default(&groups);
    let leads = leads(&a);
    assert_eq!(
        leads,
        [("region", "eu"), ("egress_prefix", "203.0.113.0/24")],
        "{:#?}",
        a.findings
    );
}

#[test]
fn two_failing_prefixes_of_a_region_with_a_healthy_one_are_two_causes_not_the_region() {
    // Seed 301058: two /24s of a region fail on one target (3 vantages
    // each), its third /24 (4 vantages) is healthy. The region fits the
    // failures best (6 of its 10 vantages), but it holds a healthy part:
    // it is the two causes' union, and each /24 leads a finding.
    let mut groups = vantages(0, "eu", [10, 0, 0], 4, never);
    groups.extend(vantages(10, "eu", [10, 0, 1], 3, always));
    groups.extend(vantages(20, "eu", [10, 0, 2], 3, always));
    groups.extend(vantages(30, "us", [192, 0, 2], 10, never));
    let a = assess_default(&groups);
    let mut leads = leads(&a);
    leads.sort_unstable();
    assert_eq!(
        leads,
        [
            ("egress_prefix", "10.0.1.0/24"),
            ("egress_prefix", "10.0.2.0/24")
        ],
        "{:#?}",
        a.findings
    );
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
    /// Weighted Holm never makes a p-value smaller, never above 1, and a
    /// smaller raw p-value of the same weight never gets a larger adjusted
    /// one.
    #[test]
    fn weighted_holm_is_conservative_and_monotone(
        raw in proptest::collection::vec(0.0f64..1.0, 1..20),
        weights in proptest::collection::vec(0.05f64..1.0, 20),
    ) {
        let w = &weights[..raw.len()];
        let total: f64 = w.iter().sum();
        let adjusted = holm_weighted(&raw, w, total);
        for (i, a) in adjusted.iter().enumerate() {
            prop_assert!(*a >= raw[i] - 1e-12 && *a <= 1.0);
        }
        let equal = holm_weighted(&raw, &vec![1.0; raw.len()], raw.len() as f64);
        for i in 0..raw.len() {
            for j in 0..raw.len() {
                if raw[i] < raw[j] {
                    prop_assert!(equal[i] <= equal[j] + 1e-12);
                }
            }
        }
    }

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
        let before = judge(c(k, n), rest, rest.rate(), 5, vantages, &p);
        let after = judge(c((k + extra).min(n), n), rest, rest.rate(), 5, vantages, &p);
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
