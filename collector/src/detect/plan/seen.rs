//! Findings as the tracker sees them (key, footprint, fit, timing), and
//! the `segment_rates` rows of an assessment.

use std::collections::{BTreeSet, HashMap};

use super::{Found, Names};
use crate::detect::decision::{Assessment, Finding, Window};
use crate::detect::dimensions::DIMENSIONS;
use crate::detect::pattern::Pattern;
use crate::detect::population::Population;
use crate::detect::records::RateRow;
use crate::detect::track::{self, CandidateKey, Seen};

/// Every finding as a seen failure.
pub(super) fn findings(
    populations: &[Population],
    assessments: &[Assessment],
    names: &Names,
) -> Vec<Found> {
    let mut out: Vec<Found> = Vec::new();
    for (pi, (p, a)) in populations.iter().zip(assessments).enumerate() {
        for (fi, f) in a.findings.iter().enumerate() {
            out.push(Found {
                population: pi,
                finding: fi,
                seen: seen(p, a, f, names),
            });
        }
    }
    out
}

/// How the tracker sees one finding.
fn seen(p: &Population, a: &Assessment, f: &Finding, names: &Names) -> Seen {
    let key_of = |s: usize| {
        let stat = &a.segments[s];
        CandidateKey::new(
            &p.target,
            p.pattern,
            DIMENSIONS[stat.dimension].name,
            &stat.value,
        )
    };
    let score_of = |s: usize| a.segments[s].score(&a.totals);
    let footprint_of = |groups: &mut dyn Iterator<Item = usize>| -> BTreeSet<String> {
        groups
            .map(|g| {
                track::footprint_entry(
                    &names.targets[p.group_target[g]],
                    &names.vantages[p.group_vantage[g]],
                )
            })
            .collect()
    };
    match f {
        Finding::Global { window, timing, .. } => {
            let w: Window = a.windows[*window];
            Seen {
                key: CandidateKey::new(&p.target, p.pattern, track::GLOBAL.0, track::GLOBAL.1),
                footprint: footprint_of(
                    &mut (0..p.groups.len()).filter(|g| p.groups[*g].counts(w).failures > 0),
                ),
                score: 1.0,
                alternatives: HashMap::new(),
                timing: *timing,
            }
        }
        Finding::Segment {
            segment,
            correlated,
            failing_groups,
            timing,
            ..
        } => Seen {
            key: key_of(*segment),
            footprint: footprint_of(&mut failing_groups.iter().copied()),
            score: score_of(*segment),
            alternatives: correlated
                .iter()
                .map(|c| (key_of(c.segment), score_of(c.segment)))
                .collect(),
            timing: *timing,
        },
    }
}

/// `segment_rates` rows for one assessment.
pub(super) fn rate_rows(target: &str, pattern: Pattern, a: &Assessment) -> Vec<RateRow> {
    let to_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    a.segments[..a.base_segments]
        .iter()
        .map(|s| RateRow {
            target: target.to_owned(),
            pattern: pattern.as_str().to_owned(),
            dimension: DIMENSIONS[s.dimension].name.to_owned(),
            value: s.value.clone(),
            probes: to_i64(s.segment.probes),
            failures: to_i64(s.segment.failures),
            rest_probes: to_i64(s.rest.probes),
            rest_failures: to_i64(s.rest.failures),
            vantages: i32::try_from(s.failing_vantages).unwrap_or(i32::MAX),
            p_value: s.p_value,
            flagged: s.flagged,
            window_rounds: i32::try_from(a.windows[s.window].rounds).unwrap_or(i32::MAX),
        })
        .collect()
}
