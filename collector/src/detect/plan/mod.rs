//! One detection pass as a pure plan (no I/O, no clock): the window's
//! cells are grouped per target and failure pattern ([`population`]),
//! assessed over several
//! windows ([`decision`]), assessed once more across targets for path
//! failures, matched to the failures tracked so far ([`track`]), run
//! through the hysteresis ([`lifecycle`]), and turned into the incident
//! records to open, re-explain, refresh and resolve. The detector applies
//! the plan in one transaction.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};

pub mod confirm;
mod own;
mod seen;

use super::asn::AsnTable;
use super::cells::WindowCell;
use super::decision::{self, Assessment, Finding, Scope};
use super::dimensions::{DeriveContext, dimension_infos};
use super::explain;
use super::lifecycle::{self, Observation, Transition};
use super::pattern::Pattern;
use super::population::{Names, Population, group, path_population, rounds_in};
use super::records::{IncidentRecord, OpenIncident, RateRow};
use super::settings::DetectorSettings;
use super::track::{self, CandidateKey, Seen, Tracked};
use confirm::{Confirm, asked_recently, confirmation, path_confirmation, suspects};
use own::{segment_groups, still_failing};
use seen::{findings, rate_rows};

/// Everything a pass reads.
pub struct PassInput<'a> {
    pub cells: &'a [WindowCell],
    /// The failures tracked by the previous pass.
    pub tracked: Vec<Tracked>,
    /// Open incidents (for how a new one relates to them).
    pub open: &'a [OpenIncident],
    pub settings: &'a DetectorSettings,
    pub asn: &'a AsnTable,
    /// The boundaries of the cells' age buckets, in rounds.
    pub thresholds: &'a [u32],
    pub now: DateTime<Utc>,
    /// When confirmation probes were last asked for each key: not again
    /// within half a detector interval.
    pub asked: &'a HashMap<CandidateKey, DateTime<Utc>>,
    /// Incidents resolved within `reopen_within`: their id, key and when.
    pub resolved: &'a [(i64, CandidateKey, DateTime<Utc>)],
}

/// What a pass decided.
#[derive(Debug, Default)]
pub struct Plan {
    /// Incidents to open: the index of their tracked failure (which gets
    /// the new id) and the record.
    pub opens: Vec<(usize, IncidentRecord)>,
    /// Resolved incidents whose failure came back within `reopen_within`:
    /// the index of their tracked failure, the incident and the record.
    pub reopens: Vec<(usize, i64, IncidentRecord)>,
    /// Open incidents re-explained: a new explanation replaces the old.
    pub updates: Vec<(i64, IncidentRecord)>,
    /// Open incidents still explained the same way, with fresh evidence.
    pub refreshes: Vec<(i64, IncidentRecord)>,
    /// Open incidents still failing while another explanation is pending:
    /// only their last-seen time moves.
    pub touches: Vec<i64>,
    pub resolves: Vec<(i64, CandidateKey)>,
    /// Every tracked failure after this pass (idle ones dropped).
    pub tracked: Vec<Tracked>,
    pub rates: Vec<RateRow>,
    pub probes: u64,
    pub segments: usize,
    /// Confirmation probes to ask for (candidates first held this pass).
    pub confirmations: Vec<Confirm>,
}

/// A finding of one population, with what is needed to build its record.
struct Found {
    population: usize,
    finding: usize,
    seen: Seen,
}

/// Plans one pass.
pub fn plan(mut input: PassInput<'_>) -> Plan {
    let settings = input.settings;
    let ctx = DeriveContext {
        prefix_v4: settings.prefix_v4,
        prefix_v6: settings.prefix_v6,
        asn: input.asn,
    };
    let (mut populations, names) = group(input.cells, &ctx, settings, input.thresholds);
    let mut plan = Plan {
        probes: input
            .cells
            .iter()
            .map(|c| u64::try_from(c.counts.probes).unwrap_or(0))
            .sum(),
        ..Plan::default()
    };
    let infos = dimension_infos();
    let window_ms = i64::try_from(settings.window.as_millis()).unwrap_or(i64::MAX);
    for p in &mut populations {
        p.rounds = rounds_in(window_ms, p.round_ms);
        p.window = settings.window;
    }
    let assess = |p: &Population, active: &[bool], scope: Scope| {
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
        .map(|p| assess(p, &all(p), Scope::Target))
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
            assessments.push(assess(&path, &all(&path), Scope::Path(&claims)));
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
                *a = assess(p, &active, Scope::Target);
            }
        }
    }
    for (p, a) in populations.iter().zip(&assessments) {
        plan.segments += a.base_segments;
        plan.rates.extend(rate_rows(&p.target, p.pattern, a));
    }

    let found = findings(&populations, &assessments, &names);
    // The record of a finding, with how it relates to the other open
    // incidents of its target (which came first).
    let record = |f: &Found| {
        let mut r = explain::record(
            &populations[f.population],
            &assessments[f.population],
            f.finding,
            &names,
            settings,
        );
        if let Some(text) = explain::relation(&r, input.open, input.now) {
            r.explanation.push(' ');
            r.explanation.push_str(&text);
            r.evidence["relation"] = serde_json::json!(text);
        }
        r
    };

    let mut tracked = std::mem::take(&mut input.tracked);
    let seen: Vec<&Seen> = found.iter().map(|f| &f.seen).collect();
    let matches = track::match_seen(&tracked, &seen);
    let mut seen_of: Vec<Option<usize>> = vec![None; tracked.len()];
    for (si, m) in matches.iter().enumerate() {
        match m {
            Some(ti) => seen_of[*ti] = Some(si),
            None if seen[si].timing.recent => {
                tracked.push(Tracked {
                    key: seen[si].key.clone(),
                    state: lifecycle::KeyState::default(),
                    footprint: seen[si].footprint.clone(),
                    pending: None,
                });
                seen_of.push(Some(si));
            }
            None => {}
        }
    }
    let mut open_keys: HashSet<CandidateKey> = tracked
        .iter()
        .filter(|t| t.state.incident.is_some())
        .map(|t| t.key.clone())
        .collect();
    // Per open incident of one target (global ones aside: a segment
    // standing out within an outage is paged, and says it came second):
    // its population and the groups of its own segment there.
    let open_segments: Vec<(CandidateKey, usize, HashSet<usize>)> = tracked
        .iter()
        .filter(|t| t.state.incident.is_some() && !t.key.is_global() && !t.key.is_path())
        .filter_map(|t| {
            let (pi, groups) = segment_groups(&t.key, &populations[..targets], &assessments)?;
            Some((t.key.clone(), pi, groups))
        })
        .collect();
    let h = &settings.hysteresis;
    let mut reopened: HashSet<i64> = HashSet::new();
    for (ti, t) in tracked.iter_mut().enumerate() {
        let s = seen_of[ti].map(|si| (&found[si], seen[si]));
        let found_held = s.is_some_and(|(_, s)| s.timing.recent);
        // An open incident is judged against its own failures too: while
        // its own segment still fails, it is not resolved, whatever
        // explains the window best this pass.
        let own_held = !found_held
            && t.state.incident.is_some()
            && still_failing(&t.key, &populations, &assessments, &settings.params);
        let held = found_held || own_held;
        let obs = Observation {
            held,
            rounds_failing: s.map_or(0, |(_, s)| {
                u32::try_from(s.timing.rounds_failing).unwrap_or(u32::MAX)
            }),
        };
        let (next, transition) = lifecycle::step(t.state, obs, input.now, h);
        t.state = next;
        if settings.confirmation_probes
            && transition == Transition::None
            && next.incident.is_none()
            && next.held_streak == 1
            && let Some((f, s)) = s
            && !asked_recently(&input, &s.key)
        {
            let p = &populations[f.population];
            let failing = match &assessments[f.population].findings[f.finding] {
                Finding::Segment { failing_groups, .. } => failing_groups.clone(),
                Finding::Global { .. } => (0..p.groups.len())
                    .filter(|g| p.groups[*g].total().failures > 0)
                    .collect(),
            };
            if s.key.is_path() {
                // A path is confirmed on the target it fails most on: its
                // check, run again by the path's failing vantages.
                plan.confirmations.extend(path_confirmation(
                    &populations[..targets],
                    p,
                    &failing,
                    &names,
                    &s.key,
                ));
            } else {
                plan.confirmations
                    .push(confirmation(p, &failing, &names, &s.key));
            }
        }
        match (transition, s) {
            (Transition::Open, Some((f, s))) => {
                let failing: &[usize] = match &assessments[f.population].findings[f.finding] {
                    Finding::Segment { failing_groups, .. } => failing_groups,
                    Finding::Global { .. } => &[],
                };
                if open_keys.contains(&s.key)
                    || open_segments.iter().any(|(k, pi, groups)| {
                        *k != s.key
                            && *pi == f.population
                            && !failing.is_empty()
                            && failing.iter().all(|g| groups.contains(g))
                    })
                {
                    // Another open incident already has this explanation,
                    // or every failing group of this one lies in another
                    // open incident's segment on the same target (a region
                    // of an open edge location as its fault recedes): it
                    // covers these failures.
                    continue;
                }
                t.key = s.key.clone();
                t.footprint = s.footprint.clone();
                open_keys.insert(t.key.clone());
                // The same failure back soon after its incident resolved:
                // that incident reopens, it is not paged as new.
                let within =
                    chrono::Duration::from_std(h.reopen_within).unwrap_or(chrono::Duration::MAX);
                let earlier = input
                    .resolved
                    .iter()
                    .filter(|(id, k, at)| {
                        *k == s.key && input.now - *at <= within && !reopened.contains(id)
                    })
                    .max_by_key(|(_, _, at)| *at);
                match earlier {
                    Some((id, _, _)) => {
                        reopened.insert(*id);
                        t.state.incident = Some(*id);
                        plan.reopens.push((ti, *id, record(f)));
                    }
                    None => plan.opens.push((ti, record(f))),
                }
            }
            (Transition::Resolve(id), _) => {
                plan.resolves.push((id, t.key.clone()));
                open_keys.remove(&t.key);
                t.pending = None;
            }
            (_, _) if own_held => {
                if let Some(id) = t.state.incident {
                    plan.touches.push(id);
                }
            }
            (_, Some((f, s))) if found_held => {
                t.footprint = s.footprint.clone();
                let Some(id) = t.state.incident else {
                    // A candidate follows its latest explanation.
                    t.key = s.key.clone();
                    continue;
                };
                let leader = s.beats(&t.key).then(|| s.key.clone());
                let (pending, change) = lifecycle::explanation_step(t.pending.take(), leader, h);
                if change && !open_keys.contains(&s.key) {
                    open_keys.remove(&t.key);
                    t.key = s.key.clone();
                    open_keys.insert(t.key.clone());
                    plan.updates.push((id, record(f)));
                } else if s.key == t.key {
                    plan.refreshes.push((id, record(f)));
                } else {
                    t.pending = pending;
                    plan.touches.push(id);
                }
            }
            _ => {}
        }
    }
    if settings.confirmation_probes {
        plan.confirmations.extend(suspects(
            &populations,
            &assessments,
            &tracked,
            &names,
            &input,
            &plan.confirmations,
        ));
    }
    // Idle failures are forgotten; the opens keep pointing at theirs. A key
    // is tracked once (the state's primary key): matching pairs a finding
    // with the failure of the same key first, so a second one would be a
    // bug, and must not stop every later pass.
    let opening: HashSet<usize> = plan.opens.iter().map(|o| o.0).collect();
    let mut new_index = vec![None; tracked.len()];
    let mut kept = Vec::with_capacity(tracked.len());
    let mut keys = HashSet::new();
    for (i, t) in tracked.into_iter().enumerate() {
        if (!t.state.is_idle() || opening.contains(&i)) && keys.insert(t.key.clone()) {
            new_index[i] = Some(kept.len());
            kept.push(t);
        }
    }
    for open in &mut plan.opens {
        open.0 = new_index[open.0].unwrap_or(usize::MAX);
    }
    for reopen in &mut plan.reopens {
        reopen.0 = new_index[reopen.0].unwrap_or(usize::MAX);
    }
    plan.tracked = kept;
    plan
}
