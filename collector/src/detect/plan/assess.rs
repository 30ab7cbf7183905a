//! A pass's populations and what the decision finds in each: per target
//! and failure pattern, then across targets for path failures (a proxy, a
//! network failing on many sites), then each target again without the
//! probes its path findings explain.

use super::super::decision::{self, Assessment, Finding, Scope};
use super::super::dimensions::{DeriveContext, dimension_infos};
use super::super::pattern::Pattern;
use super::super::population::{Names, Population, group, path_population, rounds_in};
use super::PassInput;

/// The populations of a pass and their assessments, in one order: one per
/// target and pattern first, then the path populations.
pub(super) struct Assessed {
    pub(super) populations: Vec<Population>,
    pub(super) assessments: Vec<Assessment>,
    pub(super) names: Names,
    /// How many populations are a target's (the rest are paths').
    pub(super) targets: usize,
}

/// Groups the window's cells and assesses every population.
pub(super) fn assess(input: &PassInput<'_>) -> Assessed {
    let settings = input.settings;
    let ctx = DeriveContext {
        prefix_v4: settings.prefix_v4,
        prefix_v6: settings.prefix_v6,
        asn: input.asn,
    };
    let (mut populations, names) = group(input.cells, &ctx, settings, input.thresholds);
    let infos = dimension_infos();
    let window_ms = i64::try_from(settings.window.as_millis()).unwrap_or(i64::MAX);
    for p in &mut populations {
        p.rounds = rounds_in(window_ms, p.round_ms);
        p.window = settings.window;
    }
    let assess_one = |p: &Population, active: &[bool], scope: Scope| {
        decision::assess_in(
            &p.groups,
            active,
            &infos,
            &decision::windows_for(p.rounds),
            &settings.params,
            scope,
        )
    };
    let all = |p: &Population| vec![true; p.groups.len()];
    let mut assessments: Vec<Assessment> = populations
        .iter()
        .map(|p| assess_one(p, &all(p), Scope::Target))
        .collect();
    let targets = populations.len();
    // Path failures across targets, leaving out the targets failing
    // everywhere now: an outage of one site says nothing about the paths.
    // A site whose outage is over is a witness again at once, though its
    // old failures still make a long window look global.
    for &pattern in Pattern::ALL {
        let members: Vec<usize> = (0..populations.len())
            .filter(|pi| {
                populations[*pi].pattern == pattern
                    && !assessments[*pi]
                        .findings
                        .iter()
                        .any(|f| matches!(f, Finding::Global { timing, .. } if timing.recent))
            })
            .collect();
        let member_refs: Vec<&Population> = members.iter().map(|pi| &populations[*pi]).collect();
        if let Some(path) = path_population(&member_refs, pattern, names.vantages.len()) {
            // Each path group's claim: the finding of its own target that
            // explains it, if any.
            let claims: Vec<Option<(usize, String)>> = members
                .iter()
                .flat_map(|pi| {
                    let a = &assessments[*pi];
                    (0..populations[*pi].groups.len()).map(move |g| {
                        a.findings.iter().find_map(|f| match f {
                            Finding::Segment { segment, .. }
                                if a.segments[*segment].groups.contains(&g) =>
                            {
                                let s = &a.segments[*segment];
                                Some((s.dimension, s.value.clone()))
                            }
                            _ => None,
                        })
                    })
                })
                .collect();
            assessments.push(assess_one(&path, &all(&path), Scope::Path(&claims)));
            populations.push(path);
        }
    }
    // Explaining away across scopes: a path finding explains its
    // segment's probes on every target, so each target is assessed again
    // without them, and what it finds is a cause of its own (a WAF rule
    // on the same target, a regional edge the proxy's vantages happen to
    // be in), never the path's failures counted a second time.
    let path_leads: Vec<(Pattern, usize, String)> = populations[targets..]
        .iter()
        .zip(&assessments[targets..])
        .flat_map(|(p, a)| {
            a.findings.iter().filter_map(move |f| match f {
                Finding::Segment { segment, .. } => {
                    let s = &a.segments[*segment];
                    Some((p.pattern, s.dimension, s.value.clone()))
                }
                Finding::Global { .. } => None,
            })
        })
        .collect();
    if !path_leads.is_empty() {
        for (p, a) in populations[..targets]
            .iter()
            .zip(&mut assessments[..targets])
        {
            let active: Vec<bool> = p
                .groups
                .iter()
                .map(|g| {
                    !path_leads.iter().any(|(pattern, d, v)| {
                        *pattern == p.pattern && g.values[*d].as_deref() == Some(v.as_str())
                    })
                })
                .collect();
            if active.iter().any(|a| !a) {
                *a = assess_one(p, &active, Scope::Target);
            }
        }
    }
    Assessed {
        populations,
        assessments,
        names,
        targets,
    }
}
