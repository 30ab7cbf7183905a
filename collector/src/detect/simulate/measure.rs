//! What a scenario or a noise run measured: rounds to open and resolve,
//! the explanation paged, the candidates held and the confirmation probes
//! asked.

use std::collections::HashMap;
use std::time::Duration;

use super::{SimStats, Simulation, coin, one_path};
use crate::detect::settings::DetectorSettings;
use crate::detect::simulate::Scenario;
use crate::detect::track::CandidateKey;

/// What a scenario run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    /// Incidents opened (any).
    pub opened: usize,
    /// Rounds from the fault's start to the first incident's opening.
    pub rounds_to_open: Option<f64>,
    /// Rounds from the fault's end to that incident's resolution.
    pub rounds_to_resolve: Option<f64>,
    /// The first incident's key when it opened, and at the end.
    pub first_key: Option<CandidateKey>,
    pub final_key: Option<CandidateKey>,
    pub updates: usize,
    pub stats: SimStats,
}

impl Simulation<'_> {
    /// Runs a scenario on the standard fleet for `end + 30` rounds.
    pub fn measure(settings: &DetectorSettings, round: Duration, scenario: &Scenario) -> Measured {
        let (start, end) = (scenario.start, scenario.end);
        let fails = &scenario.fails;
        let sim = Simulation {
            settings: settings.clone(),
            round,
            vantages: Self::standard_fleet(),
            targets: scenario.targets.clone(),
            fault: Box::new(move |r, t, v, p| (start..end).contains(&r) && fails(r, t, v, p)),
            edges: HashMap::new(),
        };
        let (events, stats) = sim.run_with_stats(end + 30);
        let r = round.as_secs_f64();
        let first = events.iter().find(|e| e.kind == "opened");
        let id = first.map(|e| e.incident);
        let last_key = events
            .iter()
            .rev()
            .find(|e| Some(e.incident) == id && e.kind != "resolved")
            .map(|e| e.key.clone());
        Measured {
            opened: events.iter().filter(|e| e.kind == "opened").count(),
            rounds_to_open: first.map(|e| e.at / r - start as f64),
            rounds_to_resolve: events
                .iter()
                .find(|e| e.kind == "resolved" && Some(e.incident) == id)
                .map(|e| e.at / r - end as f64),
            first_key: first.map(|e| e.key.clone()),
            final_key: last_key,
            updates: events
                .iter()
                .filter(|e| e.kind == "updated" && Some(e.incident) == id)
                .count(),
            stats,
        }
    }

    /// Incidents opened by a fault-free fleet probing `targets` targets
    /// for `rounds` rounds, each probe failing with probability `rate`;
    /// the target-passes that covered; the run's candidates and
    /// confirmations.
    pub fn noise(
        settings: &DetectorSettings,
        round: Duration,
        targets: usize,
        rounds: u64,
        rate: f64,
        seed: u64,
    ) -> (usize, u64, SimStats) {
        let sim = Simulation {
            settings: settings.clone(),
            round,
            vantages: Self::standard_fleet(),
            targets: (0..targets)
                .map(|i| (format!("t{i}"), one_path()))
                .collect(),
            fault: Box::new(move |r, t, v, p| coin(rate, seed, r, t, v, p)),
            edges: HashMap::new(),
        };
        let (events, stats) = sim.run_with_stats(rounds);
        let passes = (rounds as f64 * round.as_secs_f64() / settings.interval.as_secs_f64()) as u64;
        (
            events.iter().filter(|e| e.kind == "opened").count(),
            passes * targets as u64,
            stats,
        )
    }
}
