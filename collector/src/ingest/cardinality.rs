//! The distinct vantage and check names each agent has reported since this
//! collector started, capped per agent: a result that would take its agent
//! past a cap is refused (a `cardinality` gap), so one enrolled agent gone
//! wrong cannot grow the tables, the pages or the detector's window (and
//! this collector's memory) without bound. The names held are at most the
//! caps per agent; an agent's first names after a restart are its names
//! again, in the order its results bring them.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most one ERROR line per agent per this.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// Which cap a result would have broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverCap {
    Vantages(usize),
    Checks(usize),
}

impl std::fmt::Display for OverCap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Vantages(cap) => write!(
                f,
                "more than {cap} distinct vantage names (ingest.max_vantages_per_agent)"
            ),
            Self::Checks(cap) => write!(
                f,
                "more than {cap} distinct check names (ingest.max_checks_per_agent)"
            ),
        }
    }
}

#[derive(Debug, Default)]
struct Names {
    vantages: HashSet<String>,
    checks: HashSet<String>,
    logged_at: Option<Instant>,
}

/// Every agent's names; shared by all streams.
#[derive(Debug)]
pub struct Cardinality {
    max_vantages: usize,
    max_checks: usize,
    agents: Mutex<HashMap<String, Names>>,
}

impl Cardinality {
    pub fn new(max_vantages: usize, max_checks: usize) -> Self {
        Self {
            max_vantages,
            max_checks,
            agents: Mutex::default(),
        }
    }

    /// Whether `agent` may report one more result of `vantage` and `check`
    /// (each either known or still within its cap; then remembered).
    pub fn admit(&self, agent: &str, vantage: &str, check: &str) -> Result<(), OverCap> {
        let mut agents = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        let names = match agents.get_mut(agent) {
            Some(names) => names,
            None => agents.entry(agent.to_owned()).or_default(),
        };
        let new_vantage = !names.vantages.contains(vantage);
        let new_check = !names.checks.contains(check);
        if new_vantage && names.vantages.len() >= self.max_vantages {
            return Err(OverCap::Vantages(self.max_vantages));
        }
        if new_check && names.checks.len() >= self.max_checks {
            return Err(OverCap::Checks(self.max_checks));
        }
        if new_vantage {
            names.vantages.insert(vantage.to_owned());
        }
        if new_check {
            names.checks.insert(check.to_owned());
        }
        Ok(())
    }

    /// Whether a Hello naming `vantages` fits under the cap.
    pub fn admit_hello(&self, vantages: usize) -> Result<(), OverCap> {
        if vantages > self.max_vantages {
            return Err(OverCap::Vantages(self.max_vantages));
        }
        Ok(())
    }

    /// Whether the refusals of `agent` are due their ERROR line (once a
    /// minute per agent).
    pub fn due_a_log_line(&self, agent: &str) -> bool {
        let mut agents = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        let Some(names) = agents.get_mut(agent) else {
            return true;
        };
        let now = Instant::now();
        if names
            .logged_at
            .is_none_or(|at| now.duration_since(at) >= LOG_EVERY)
        {
            names.logged_at = Some(now);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_beyond_a_cap_are_refused_and_known_ones_still_admitted() {
        let caps = Cardinality::new(2, 3);
        assert!(caps.admit("a", "v1", "c1").is_ok());
        assert!(caps.admit("a", "v2", "c2").is_ok());
        assert_eq!(caps.admit("a", "v3", "c1"), Err(OverCap::Vantages(2)));
        assert!(caps.admit("a", "v1", "c3").is_ok());
        assert_eq!(caps.admit("a", "v2", "c4"), Err(OverCap::Checks(3)));
        assert!(caps.admit("a", "v2", "c1").is_ok());
        // Another agent has caps of its own.
        assert!(caps.admit("b", "v3", "c4").is_ok());
        assert!(caps.admit_hello(2).is_ok() && caps.admit_hello(3).is_err());
        assert!(caps.due_a_log_line("a") && !caps.due_a_log_line("a"));
    }
}
