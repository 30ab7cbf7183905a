//! A world's score: per fault, whether it was paged with its own
//! dimension and value within 3 rounds; per incident, which fault it
//! stands for, and whether it resolved while that fault went on.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use super::{Unit, World};
use crate::detect::settings::DetectorSettings;
use crate::detect::simulate::SimEvent;
use crate::detect::track::CandidateKey;

/// What one world's run scored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorldScore {
    pub faults: usize,
    /// Faults paged with their own dimension and value within 3 rounds.
    pub right_in_time: usize,
    /// Of those, named by a segment holding exactly the same probes
    /// under another name (a proxy and its address's /24).
    pub right_by_twin: usize,
    /// Per fault not right in time: its cause, and what happened.
    pub missed: Vec<String>,
    /// Incidents opened that no fault explains.
    pub unexplained: Vec<String>,
    /// Resolves of an incident while its fault continued.
    pub resolved_while_failing: Vec<String>,
    /// Incidents opened (or reopened) per fault, summed.
    pub open_pages: usize,
    /// Rounds from each fault's start to its right page.
    pub rounds_to_page: Vec<f64>,
}

/// Rounds within which a fault must be paged.
pub const PAGE_WITHIN_ROUNDS: f64 = 3.0;

impl World {
    /// Runs the world and scores it.
    pub fn score(&self, settings: &DetectorSettings, round: Duration) -> WorldScore {
        let events = self.run(settings, round);
        self.score_events(&events, settings, round)
    }

    /// Scores a run's events against the world's faults.
    pub fn score_events(
        &self,
        events: &[SimEvent],
        settings: &DetectorSettings,
        round: Duration,
    ) -> WorldScore {
        let r = round.as_secs_f64();
        let mut score = WorldScore {
            faults: self.faults.len(),
            ..WorldScore::default()
        };
        let fault_units: Vec<BTreeSet<Unit>> =
            self.faults.iter().map(|f| self.fault_units(f)).collect();
        let keys: BTreeSet<&CandidateKey> = events.iter().map(|e| &e.key).collect();
        let units_of: HashMap<&CandidateKey, BTreeSet<Unit>> =
            keys.into_iter().map(|k| (k, self.key_units(k))).collect();
        let units = |key: &CandidateKey| units_of.get(key).cloned().unwrap_or_default();
        // Slack after a fault's end in which its incident may still be
        // open or open late: the resolve takes resolve_quiet and a few
        // rounds.
        let slack = settings.hysteresis.resolve_quiet.as_secs_f64() / r + 8.0;
        // Whether an incident key at round `at` stands for fault `fi`: the
        // same key, the same probes (a twin), or mostly a part of its
        // probes (a narrower first guess). Second: a twin.
        let explains = |fi: usize, key: &CandidateKey, at: f64| -> (bool, bool) {
            let f = &self.faults[fi];
            let on = at >= f.start as f64 && at <= f.end as f64 + slack;
            if !on {
                return (false, false);
            }
            if *key == f.key(self) {
                return (true, false);
            }
            let k = units(key);
            let twin = k == fault_units[fi];
            let inside = k.iter().filter(|u| fault_units[fi].contains(u)).count();
            (twin || (!k.is_empty() && inside * 2 > k.len()), twin)
        };
        // Per fault: its right page.
        for (fi, f) in self.faults.iter().enumerate() {
            let right = events.iter().find(|e| {
                e.kind != "resolved" && {
                    let at = e.at / r;
                    at >= f.start as f64
                        && at <= f.start as f64 + PAGE_WITHIN_ROUNDS
                        && (e.key == f.key(self) || explains(fi, &e.key, at) == (true, true))
                }
            });
            match right {
                Some(e) => {
                    score.right_in_time += 1;
                    score.right_by_twin += usize::from(e.key != f.key(self));
                    score.rounds_to_page.push(e.at / r - f.start as f64);
                }
                None => {
                    let seen: Vec<String> = events
                        .iter()
                        .filter(|e| e.kind != "resolved" && e.at / r >= f.start as f64)
                        .filter(|e| explains(fi, &e.key, e.at / r).0)
                        .map(|e| {
                            format!("{} {} at {:.1}", e.kind, e.key, e.at / r - f.start as f64)
                        })
                        .collect();
                    score.missed.push(format!(
                        "{} ({}) rounds {}..{}: {}",
                        f.cause.name(),
                        f.key(self),
                        f.start,
                        f.end,
                        if seen.is_empty() {
                            "never paged".into()
                        } else {
                            seen.join("; ")
                        }
                    ));
                }
            }
        }
        // Per incident: which fault it stands for, and its resolve.
        let mut incidents: Vec<i64> = events.iter().map(|e| e.incident).collect();
        incidents.sort_unstable();
        incidents.dedup();
        for id in incidents {
            let mine: Vec<&SimEvent> = events.iter().filter(|e| e.incident == id).collect();
            let Some(opened) = mine.iter().find(|e| e.kind == "opened") else {
                continue;
            };
            let at = opened.at / r;
            // The fault it names exactly, else one it stands for.
            let fault = (0..self.faults.len())
                .find(|fi| {
                    opened.key == self.faults[*fi].key(self) && explains(*fi, &opened.key, at).0
                })
                .or_else(|| (0..self.faults.len()).find(|fi| explains(*fi, &opened.key, at).0));
            match fault {
                None => score
                    .unexplained
                    .push(format!("{} at round {at:.1}", opened.key)),
                Some(_) => {
                    score.open_pages += 1 + mine.iter().filter(|e| e.kind == "reopened").count();
                }
            }
            for e in mine.iter().filter(|e| e.kind == "resolved") {
                let at = e.at / r;
                // The last key before the resolve.
                let key = mine
                    .iter()
                    .rev()
                    .find(|x| x.kind != "resolved" && x.at <= e.at)
                    .map_or(&e.key, |x| &x.key);
                // The fault it stands for (its own key's first), still on?
                let own = (0..self.faults.len())
                    .find(|fi| *key == self.faults[*fi].key(self) && explains(*fi, key, at).0)
                    .or_else(|| (0..self.faults.len()).find(|fi| explains(*fi, key, at).0));
                let still = own.is_some_and(|fi| {
                    let f = &self.faults[fi];
                    at < f.end as f64 && at >= f.start as f64
                });
                if still {
                    score
                        .resolved_while_failing
                        .push(format!("{key} at round {at:.1}"));
                }
            }
        }
        score
    }
}
