//! Incident lifecycle with hysteresis, a pure state machine per tracked
//! failure: open once the failure has persisted, i.e. it held in
//! `open_after` consecutive evaluations *and* its evidence shows failures in
//! `open_after` distinct probe rounds (a one-round blip seen by two passes
//! is still one round; a borderline p-value that crosses the threshold in
//! one pass is not confirmed); resolve only after
//! it has not held for `resolve_after` consecutive evaluations *and* for at
//! least `resolve_quiet`; replace the explanation of an open incident only
//! after another one led for `update_after` consecutive evaluations. The
//! state is persisted by the detector, so a restart continues the count
//! instead of starting over.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// The hysteresis settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hysteresis {
    pub open_after: u32,
    pub resolve_after: u32,
    pub resolve_quiet: Duration,
    pub update_after: u32,
    /// A failure with the explanation of an incident resolved less than
    /// this long ago reopens that incident (`incident.reopened`) instead
    /// of opening another.
    pub reopen_within: Duration,
}

impl Default for Hysteresis {
    fn default() -> Self {
        Self {
            open_after: 2,
            resolve_after: 3,
            resolve_quiet: Duration::from_secs(120),
            update_after: 2,
            reopen_within: Duration::from_secs(240),
        }
    }
}

/// What is remembered between evaluations for one candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeyState {
    /// Consecutive evaluations in which the condition held.
    pub held_streak: u32,
    /// Consecutive evaluations in which it did not.
    pub clear_streak: u32,
    pub last_held_at: Option<DateTime<Utc>>,
    /// The open incident, if any.
    pub incident: Option<i64>,
}

impl KeyState {
    /// Nothing worth persisting: no open incident and no streak building.
    pub fn is_idle(&self) -> bool {
        self.incident.is_none() && self.held_streak == 0
    }
}

/// One evaluation's observation of a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// The failure was found, and is recent.
    pub held: bool,
    /// Distinct probe rounds with failures in the evidence.
    pub rounds_failing: u32,
}

/// What the evaluation does to the candidate's incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    /// Open an incident (the caller stores its id in the state).
    Open,
    /// Resolve the open incident.
    Resolve(i64),
}

/// Applies one observation.
pub fn step(
    state: KeyState,
    obs: Observation,
    now: DateTime<Utc>,
    h: &Hysteresis,
) -> (KeyState, Transition) {
    let mut next = state;
    if obs.held {
        next.held_streak = state.held_streak.saturating_add(1);
        next.clear_streak = 0;
        next.last_held_at = Some(now);
        if state.incident.is_none()
            && obs.rounds_failing >= h.open_after
            && next.held_streak >= h.open_after
        {
            return (next, Transition::Open);
        }
        return (next, Transition::None);
    }
    next.held_streak = 0;
    next.clear_streak = state.clear_streak.saturating_add(1);
    if let Some(id) = state.incident {
        let quiet = state.last_held_at.is_none_or(|at| {
            now.signed_duration_since(at).to_std().unwrap_or_default() >= h.resolve_quiet
        });
        if next.clear_streak >= h.resolve_after && quiet {
            next.incident = None;
            return (next, Transition::Resolve(id));
        }
    }
    (next, Transition::None)
}

/// One evaluation of an open incident's explanation: `leader` led the
/// evidence this time (`None`: the current explanation did). Returns the
/// new pending (leader, streak), and whether the leader replaces the
/// current explanation now.
pub fn explanation_step<K: PartialEq + Clone>(
    pending: Option<(K, u32)>,
    leader: Option<K>,
    h: &Hysteresis,
) -> (Option<(K, u32)>, bool) {
    let Some(leader) = leader else {
        return (None, false);
    };
    let streak = match pending {
        Some((k, n)) if k == leader => n.saturating_add(1),
        _ => 1,
    };
    if streak >= h.update_after {
        (None, true)
    } else {
        (Some((leader, streak)), false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const H: Hysteresis = Hysteresis {
        open_after: 2,
        resolve_after: 3,
        resolve_quiet: Duration::from_secs(60),
        update_after: 2,
        reopen_within: Duration::from_secs(120),
    };

    /// Observations of a failure that has been seen once per pass so far.
    fn observe(seq: &[bool]) -> Vec<Observation> {
        let mut rounds = 0;
        seq.iter()
            .map(|held| {
                rounds = if *held { rounds + 1 } else { 0 };
                Observation {
                    held: *held,
                    rounds_failing: rounds,
                }
            })
            .collect()
    }

    /// Runs observations 30 s apart; returns the transitions.
    fn run(seq: &[Observation]) -> Vec<(usize, Transition)> {
        let t0 = DateTime::<Utc>::UNIX_EPOCH;
        let mut state = KeyState::default();
        let mut out = Vec::new();
        for (i, o) in seq.iter().enumerate() {
            let now = t0 + chrono::Duration::seconds(30 * i as i64);
            let (next, t) = step(state, *o, now, &H);
            state = next;
            if t == Transition::Open {
                state.incident = Some(i as i64);
            }
            if t != Transition::None {
                out.push((i, t));
            }
        }
        out
    }

    #[test]
    fn opens_after_k_and_resolves_after_m_and_quiet_time() {
        let seq = observe(&[true, true, true, false, false, false, false]);
        // Open at the 2nd holding evaluation; 3 clear evaluations are 90 s,
        // but the quiet time counts from the last hold (index 2, t = 60 s):
        // index 5 is 90 s later, so it resolves there.
        assert_eq!(
            run(&seq),
            vec![(1, Transition::Open), (5, Transition::Resolve(1))]
        );
    }

    #[test]
    fn a_single_blip_opens_nothing_and_a_flap_resolves_nothing() {
        let seq = observe(&[true, false, true, false]);
        assert!(run(&seq).is_empty());
        let seq = observe(&[true, true, false, false, true, false, false, true]);
        assert_eq!(run(&seq), vec![(1, Transition::Open)]);
    }

    #[test]
    fn failures_over_two_rounds_open_at_the_second_pass_that_sees_them() {
        let seq = vec![
            Observation {
                held: true,
                rounds_failing: 2,
            };
            2
        ];
        assert_eq!(run(&seq), vec![(1, Transition::Open)]);
        // A one-round blip seen by many passes opens nothing.
        let seq = vec![
            Observation {
                held: true,
                rounds_failing: 1,
            };
            6
        ];
        assert!(run(&seq).is_empty());
    }

    #[test]
    fn an_explanation_changes_only_after_leading_update_after_times() {
        let mut pending = None;
        let mut changes = Vec::new();
        for (i, leader) in [Some("a"), None, Some("a"), Some("b"), Some("a"), Some("a")]
            .into_iter()
            .enumerate()
        {
            let (next, change) = explanation_step(pending, leader, &H);
            pending = next;
            if change {
                changes.push(i);
            }
        }
        assert_eq!(changes, [5], "a, b, a flip-flops; a twice in a row wins");
    }

    proptest! {
        /// Any sequence: transitions alternate open, resolve, open, ...;
        /// every open follows K consecutive holds; every resolve follows M
        /// consecutive clears.
        /// Alternating leaders never change the explanation.
        #[test]
        fn alternating_leaders_never_change_the_explanation(n in 0usize..50) {
            let mut pending = None;
            for i in 0..n {
                let leader = Some(if i % 2 == 0 { "a" } else { "b" });
                let (next, change) = explanation_step(pending, leader, &H);
                prop_assert!(!change);
                pending = next;
            }
        }

        #[test]
        fn exactly_one_open_and_one_resolve_per_incident(seq in proptest::collection::vec(any::<bool>(), 0..200)) {
            let observations = observe(&seq);
            let transitions = run(&observations);
            for (n, (i, t)) in transitions.iter().enumerate() {
                match t {
                    Transition::Open => {
                        prop_assert_eq!(n % 2, 0);
                        prop_assert!(*i + 1 >= H.open_after as usize);
                        prop_assert!(seq[*i + 1 - H.open_after as usize..=*i].iter().all(|h| *h));
                    }
                    Transition::Resolve(_) => {
                        prop_assert_eq!(n % 2, 1);
                        prop_assert!(seq[*i + 1 - H.resolve_after as usize..=*i].iter().all(|h| !*h));
                    }
                    Transition::None => prop_assert!(false),
                }
            }
        }
    }
}
