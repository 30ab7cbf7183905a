//! Each tracked failure through the hysteresis for one pass: what opens
//! (or reopens a recently resolved incident), is re-explained, refreshed,
//! touched or resolved, and which new candidates are confirmed by probes.

use std::collections::HashSet;

use super::super::decision::{Assessment, Finding};
use super::super::explain;
use super::super::lifecycle::{self, Observation, Transition};
use super::super::population::{Names, Population};
use super::super::records::IncidentRecord;
use super::super::track::{CandidateKey, Seen, Tracked};
use super::confirm::{asked_recently, confirmation, path_confirmation};
use super::own::{segment_groups, still_failing};
use super::{Found, PassInput, Plan};

/// What a pass found, for stepping its tracked failures.
pub(super) struct Pass<'a> {
    pub(super) input: &'a PassInput<'a>,
    pub(super) populations: &'a [Population],
    pub(super) assessments: &'a [Assessment],
    pub(super) names: &'a Names,
    pub(super) found: &'a [Found],
    /// How many populations are a target's (the rest are paths').
    pub(super) targets: usize,
}

impl Pass<'_> {
    /// Steps every tracked failure (`seen_of`: its finding this pass),
    /// writing what changes into `plan`.
    pub(super) fn step_all(
        &self,
        tracked: &mut [Tracked],
        seen_of: &[Option<usize>],
        plan: &mut Plan,
    ) {
        let settings = self.input.settings;
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
                let (pi, groups) =
                    segment_groups(&t.key, &self.populations[..self.targets], self.assessments)?;
                Some((t.key.clone(), pi, groups))
            })
            .collect();
        let h = &settings.hysteresis;
        let mut reopened: HashSet<i64> = HashSet::new();
        for (ti, t) in tracked.iter_mut().enumerate() {
            let s = seen_of[ti].map(|si| (&self.found[si], &self.found[si].seen));
            let found_held = s.is_some_and(|(_, s)| s.timing.recent);
            // An open incident is judged against its own failures too: while
            // its own segment still fails, it is not resolved, whatever
            // explains the window best this pass.
            let own_held = !found_held
                && t.state.incident.is_some()
                && still_failing(&t.key, self.populations, self.assessments, &settings.params);
            let held = found_held || own_held;
            let obs = Observation {
                held,
                rounds_failing: s.map_or(0, |(_, s)| {
                    u32::try_from(s.timing.rounds_failing).unwrap_or(u32::MAX)
                }),
            };
            let (next, transition) = lifecycle::step(t.state, obs, self.input.now, h);
            t.state = next;
            if settings.confirmation_probes
                && transition == Transition::None
                && next.incident.is_none()
                && next.held_streak == 1
                && let Some((f, s)) = s
                && !asked_recently(self.input, &s.key)
            {
                self.confirm(f, s, plan);
            }
            match (transition, s) {
                (Transition::Open, Some((f, s))) => {
                    if self.covered(f, s, &open_keys, &open_segments) {
                        continue;
                    }
                    t.key = s.key.clone();
                    t.footprint = s.footprint.clone();
                    open_keys.insert(t.key.clone());
                    self.open_or_reopen(ti, t, f, s, &mut reopened, plan);
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
                    let (pending, change) =
                        lifecycle::explanation_step(t.pending.take(), leader, h);
                    if change && !open_keys.contains(&s.key) {
                        open_keys.remove(&t.key);
                        t.key = s.key.clone();
                        open_keys.insert(t.key.clone());
                        plan.updates.push((id, self.record(f)));
                    } else if s.key == t.key {
                        plan.refreshes.push((id, self.record(f)));
                    } else {
                        t.pending = pending;
                        plan.touches.push(id);
                    }
                }
                _ => {}
            }
        }
    }

    /// The record of a finding, with how it relates to the other open
    /// incidents of its target (which came first).
    fn record(&self, f: &Found) -> IncidentRecord {
        let mut r = explain::record(
            &self.populations[f.population],
            &self.assessments[f.population],
            f.finding,
            self.names,
            self.input.settings,
        );
        if let Some(text) = explain::relation(&r, self.input.open, self.input.now) {
            r.explanation.push(' ');
            r.explanation.push_str(&text);
            r.evidence["relation"] = serde_json::json!(text);
        }
        r
    }

    /// Asks for confirmation probes of a candidate first held this pass.
    fn confirm(&self, f: &Found, s: &Seen, plan: &mut Plan) {
        let (populations, assessments, names) = (self.populations, self.assessments, self.names);
        let targets = self.targets;
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
                names,
                &s.key,
            ));
        } else {
            plan.confirmations
                .push(confirmation(p, &failing, names, &s.key));
        }
    }

    /// Whether a finding about to open is covered already: another open
    /// incident has its explanation, or every failing group of it lies in
    /// another open incident's segment on the same target (a region of an
    /// open edge location as its fault recedes).
    fn covered(
        &self,
        f: &Found,
        s: &Seen,
        open_keys: &HashSet<CandidateKey>,
        open_segments: &[(CandidateKey, usize, HashSet<usize>)],
    ) -> bool {
        let assessments = self.assessments;
        let failing: &[usize] = match &assessments[f.population].findings[f.finding] {
            Finding::Segment { failing_groups, .. } => failing_groups,
            Finding::Global { .. } => &[],
        };
        open_keys.contains(&s.key)
            || open_segments.iter().any(|(k, pi, groups)| {
                *k != s.key
                    && *pi == f.population
                    && !failing.is_empty()
                    && failing.iter().all(|g| groups.contains(g))
            })
    }

    /// Opens the tracked failure `t`'s incident, or reopens the one it had
    /// if that resolved within `reopen_within`.
    fn open_or_reopen(
        &self,
        ti: usize,
        t: &mut Tracked,
        f: &Found,
        s: &Seen,
        reopened: &mut HashSet<i64>,
        plan: &mut Plan,
    ) {
        let (input, h) = (self.input, &self.input.settings.hysteresis);
        // The same failure back soon after its incident resolved:
        // that incident reopens, it is not paged as new.
        let within = chrono::Duration::from_std(h.reopen_within).unwrap_or(chrono::Duration::MAX);
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
                plan.reopens.push((ti, *id, self.record(f)));
            }
            None => plan.opens.push((ti, self.record(f))),
        }
    }
}
