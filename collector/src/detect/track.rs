//! Tracked failures: what the detector remembers between passes, and how a
//! pass's findings are matched to it (pure).
//!
//! An incident is a failure, not a first guess. A tracked failure is known
//! by its current explanation ([`CandidateKey`]) and by its footprint: the
//! failing (target, vantage) pairs it was last seen on. A finding continues
//! the tracked failure with the same explanation or, failing that, the one
//! whose footprint it overlaps most; so a better explanation of the same
//! failing probes (a narrower prefix, another dimension, a path spanning
//! several targets) re-explains the open incident instead of opening
//! another or being locked out as its "correlated evidence".

use std::collections::{BTreeSet, HashMap};

use super::decision::Timing;
use super::lifecycle::KeyState;
use super::pattern::Pattern;

/// The `target` of a path incident: it spans several targets.
pub const PATH_TARGET: &str = "*";
/// The dimension and value of a global incident.
pub const GLOBAL: (&str, &str) = ("global", "*");

/// What a tracked failure is currently explained by: where (one target, or
/// a path across targets), which pattern, which dimension and value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CandidateKey {
    /// The target, or [`PATH_TARGET`].
    pub target: String,
    pub pattern: Pattern,
    pub dimension: String,
    pub value: String,
}

impl CandidateKey {
    pub fn new(target: &str, pattern: Pattern, dimension: &str, value: &str) -> Self {
        Self {
            target: target.to_owned(),
            pattern,
            dimension: dimension.to_owned(),
            value: value.to_owned(),
        }
    }

    pub fn is_path(&self) -> bool {
        self.target == PATH_TARGET
    }

    pub fn is_global(&self) -> bool {
        (self.dimension.as_str(), self.value.as_str()) == GLOBAL
    }
}

impl std::fmt::Display for CandidateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {}={}",
            self.target,
            self.pattern.as_str(),
            self.dimension,
            self.value
        )
    }
}

/// One element of a footprint: a target and a vantage
/// (`"<target> <agent>/<vantage>"`).
pub fn footprint_entry(target: &str, vantage: &str) -> String {
    format!("{target} {vantage}")
}

/// A failure the detector keeps track of between passes.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracked {
    pub key: CandidateKey,
    pub state: KeyState,
    pub footprint: BTreeSet<String>,
    /// Another explanation that led the evidence, and for how many
    /// consecutive passes (open incidents only).
    pub pending: Option<(CandidateKey, u32)>,
}

/// What a pass saw of one failure.
#[derive(Debug, Clone)]
pub struct Seen {
    pub key: CandidateKey,
    pub footprint: BTreeSet<String>,
    /// How well its lead explains the failing probes.
    pub score: f64,
    /// The scores of the other flagged explanations of the same failing
    /// probes (its correlated segments), to judge whether it beats an
    /// incident's current explanation clearly enough to replace it.
    pub alternatives: HashMap<CandidateKey, f64>,
    /// When its failures happened: whether they are still there.
    pub timing: Timing,
}

/// A new explanation replaces a current one that is still flagged only if
/// it explains the failing probes better by at least this much (Jaccard
/// index): two near-equal explanations must not take turns.
pub const BETTER_BY: f64 = 0.05;

impl Seen {
    /// Whether this explanation should replace `current`.
    pub fn beats(&self, current: &CandidateKey) -> bool {
        if *current == self.key {
            return false;
        }
        match self.alternatives.get(current) {
            None => true,
            Some(score) => self.score >= score + BETTER_BY,
        }
    }
}

/// Footprints overlapping by at least this share of the smaller one are
/// the same failure.
const SAME_FAILURE: f64 = 0.5;

fn overlap(a: &BTreeSet<String>, b: &BTreeSet<String>) -> f64 {
    let smaller = a.len().min(b.len());
    if smaller == 0 {
        return 0.0;
    }
    a.intersection(b).count() as f64 / smaller as f64
}

/// Pairs each seen failure with at most one tracked failure and vice
/// versa: same explanation first, then the largest footprint overlap
/// (open incidents before candidates on ties). Global failures pair only
/// by key. Returns, per seen failure, the index of its tracked failure.
pub fn match_seen(tracked: &[Tracked], seen: &[&Seen]) -> Vec<Option<usize>> {
    let mut pairs: Vec<(bool, f64, bool, usize, usize)> = Vec::new();
    for (si, s) in seen.iter().enumerate() {
        for (ti, t) in tracked.iter().enumerate() {
            if t.key.pattern != s.key.pattern || t.key.is_global() != s.key.is_global() {
                continue;
            }
            let same_key = t.key == s.key;
            let o = overlap(&t.footprint, &s.footprint);
            let compatible = same_key || (!s.key.is_global() && o >= SAME_FAILURE);
            if compatible {
                pairs.push((same_key, o, t.state.incident.is_some(), si, ti));
            }
        }
    }
    pairs.sort_by(|a, b| {
        b.0.cmp(&a.0)
            .then(b.1.total_cmp(&a.1))
            .then(b.2.cmp(&a.2))
            .then(a.3.cmp(&b.3))
            .then(a.4.cmp(&b.4))
    });
    let mut by_seen = vec![None; seen.len()];
    let mut taken = vec![false; tracked.len()];
    for (_, _, _, si, ti) in pairs {
        if by_seen[si].is_none() && !taken[ti] {
            by_seen[si] = Some(ti);
            taken[ti] = true;
        }
    }
    by_seen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(target: &str, d: &str, v: &str) -> CandidateKey {
        CandidateKey::new(target, Pattern::Status, d, v)
    }

    fn fp(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn tracked(k: CandidateKey, footprint: &[&str], open: Option<i64>) -> Tracked {
        Tracked {
            key: k,
            state: KeyState {
                incident: open,
                ..KeyState::default()
            },
            footprint: fp(footprint),
            pending: None,
        }
    }

    fn seen(k: CandidateKey, footprint: &[&str]) -> Seen {
        Seen {
            key: k,
            footprint: fp(footprint),
            score: 1.0,
            alternatives: HashMap::new(),
            timing: Timing::default(),
        }
    }

    #[test]
    fn a_better_explanation_of_the_same_probes_continues_the_incident() {
        let t = [tracked(
            key("u", "region", "us-east"),
            &["u a", "u b"],
            Some(1),
        )];
        let s = [seen(
            key("u", "egress_prefix", "127.0.2.0/24"),
            &["u a", "u b"],
        )];
        assert_eq!(match_seen(&t, &s.iter().collect::<Vec<_>>()), [Some(0)]);
    }

    #[test]
    fn disjoint_failures_are_different_incidents() {
        let t = [tracked(key("u", "region", "eu"), &["u a", "u b"], Some(1))];
        let s = [seen(key("u", "resolver", "r2"), &["u c", "u d"])];
        assert_eq!(match_seen(&t, &s.iter().collect::<Vec<_>>()), [None]);
    }

    #[test]
    fn the_same_key_wins_over_overlap_and_each_pairs_once() {
        let t = [
            tracked(key("u", "region", "eu"), &["u a", "u b"], Some(1)),
            tracked(key("u", "proxy", "p"), &["u a", "u b"], None),
        ];
        let s = [
            seen(key("u", "proxy", "p"), &["u a", "u b"]),
            seen(key("u", "egress_prefix", "x"), &["u a", "u b"]),
        ];
        assert_eq!(
            match_seen(&t, &s.iter().collect::<Vec<_>>()),
            [Some(1), Some(0)]
        );
    }

    #[test]
    fn a_path_finding_takes_over_a_target_incident() {
        let t = [tracked(key("u", "proxy", "p"), &["u a", "u b"], Some(1))];
        let s = [seen(
            key(PATH_TARGET, "proxy", "p"),
            &["u a", "u b", "v a", "v b"],
        )];
        assert_eq!(match_seen(&t, &s.iter().collect::<Vec<_>>()), [Some(0)]);
        assert!(s[0].beats(&t[0].key));
    }

    #[test]
    fn a_close_second_does_not_replace_a_flagged_explanation() {
        let mut s = seen(key("u", "egress_prefix", "x"), &["u a"]);
        s.score = 0.9;
        s.alternatives.insert(key("u", "region", "eu"), 0.88);
        assert!(!s.beats(&key("u", "region", "eu")));
        s.alternatives.insert(key("u", "region", "eu"), 0.5);
        assert!(s.beats(&key("u", "region", "eu")));
        assert!(!s.beats(&key("u", "egress_prefix", "x")));
    }
}
