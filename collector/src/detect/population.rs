//! Populations: the probes assessed together (one target's groups of one
//! failure pattern, or every target's for path failures), built from the
//! window's cells, with what their incident records need (when and which
//! probes failed).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

// Hashed many times per pass (a group per cell and pattern): foldhash, not
// SipHash, which was the largest single cost of deciding.
use foldhash::{HashMap, HashMapExt as _};

use chrono::{DateTime, Utc};

use super::cells::WindowCell;
use super::decision::{Counts, Group};
use super::dimensions::{DIMENSIONS, Derive, DeriveContext};
use super::pattern::{CONNECTION_OUTCOMES, Pattern};
use super::settings::DetectorSettings;
use super::track::PATH_TARGET;

/// Names behind the indexes of a pass.
#[derive(Default)]
pub struct Names {
    pub targets: Vec<String>,
    /// `agent/vantage`.
    pub vantages: Vec<String>,
    /// (agent, vantage), as `vantages`.
    pub vantage_pairs: Vec<(String, String)>,
}

/// Probes assessed together: one target's (or, for path findings, every
/// target's) groups of one failure pattern, with what their records need.
pub struct Population {
    /// The target, or [`PATH_TARGET`].
    pub target: String,
    /// The check that probes it (the first seen; empty for a path).
    pub check: String,
    pub pattern: Pattern,
    pub groups: Vec<Group>,
    /// Per group: its failing probes' times and samples.
    pub evidence: Vec<GroupEvidence>,
    /// Per group: indexes into [`Names`].
    pub group_target: Vec<usize>,
    pub group_vantage: Vec<usize>,
    /// Statuses counted as failures.
    pub statuses: BTreeSet<u16>,
    /// One probe round (the longest check interval seen), milliseconds.
    pub round_ms: i64,
    /// Rounds in the detection window.
    pub rounds: u32,
    /// The detection window.
    pub window: Duration,
}

impl Population {
    pub fn new(target: String, pattern: Pattern) -> Self {
        Self {
            target,
            check: String::new(),
            pattern,
            groups: Vec::new(),
            evidence: Vec::new(),
            group_target: Vec::new(),
            group_vantage: Vec::new(),
            statuses: BTreeSet::new(),
            round_ms: 1,
            rounds: 1,
            window: Duration::ZERO,
        }
    }

    pub fn round(&self) -> Duration {
        Duration::from_millis(u64::try_from(self.round_ms).unwrap_or(0))
    }
}

/// Failing probes of one group: when, and a sample of result ids.
#[derive(Debug, Default, Clone)]
pub struct GroupEvidence {
    pub first_failure_at: Option<DateTime<Utc>>,
    pub last_failure_at: Option<DateTime<Utc>>,
    /// (agent, seq, started at).
    pub samples: Vec<(String, i64, DateTime<Utc>)>,
}

impl GroupEvidence {
    /// Adds a cell of failing probes.
    pub fn add(&mut self, cell: &WindowCell) {
        self.first_failure_at = Some(
            self.first_failure_at
                .map_or(cell.counts.first_at, |t| t.min(cell.counts.first_at)),
        );
        self.last_failure_at = Some(
            self.last_failure_at
                .map_or(cell.counts.last_at, |t| t.max(cell.counts.last_at)),
        );
        self.samples.push((
            cell.key.agent_id.clone(),
            cell.counts.last_seq,
            cell.counts.last_at,
        ));
    }
}

/// Rounds of `round_ms` in a window of `window_ms` (at least 1).
pub fn rounds_in(window_ms: i64, round_ms: i64) -> u32 {
    let rounds = (window_ms + round_ms - 1) / round_ms.max(1);
    u32::try_from(rounds.max(1)).unwrap_or(u32::MAX)
}

/// Per population: (derived path, vantage) to the index of its group.
type GroupIndex = HashMap<(usize, usize), usize>;

/// A path's dimension values and, for prefix dimensions, the address.
type Derived = (Vec<Option<String>>, Vec<Option<IpAddr>>);

/// Reduces the window's cells to populations: one per target and pattern,
/// both patterns for every target with probes (an open incident must see
/// the healthy window to resolve).
pub fn group(
    cells: &[WindowCell],
    ctx: &DeriveContext<'_>,
    settings: &DetectorSettings,
    thresholds: &[u32],
) -> (Vec<Population>, Names) {
    let source_index = super::dimensions::source_index();
    let buckets = thresholds.len() + 1;
    let mut names = Names::default();
    let mut target_ids: HashMap<&str, usize> = HashMap::new();
    let mut vantage_ids: HashMap<(&str, &str), usize> = HashMap::new();
    let mut populations: Vec<Population> = Vec::new();
    let mut by_key: HashMap<(usize, Pattern), usize> = HashMap::new();
    let mut index: Vec<GroupIndex> = Vec::new();
    // Each distinct path's derived values, once; groups are indexed by it.
    let mut path_ids: HashMap<&[Option<String>], usize> = HashMap::new();
    let mut derived: Vec<Derived> = Vec::new();
    for cell in cells {
        let target = *target_ids
            .entry(cell.key.target.as_str())
            .or_insert_with(|| {
                names.targets.push(cell.key.target.clone());
                names.targets.len() - 1
            });
        let vantage = *vantage_ids
            .entry((cell.key.agent_id.as_str(), cell.key.vantage.as_str()))
            .or_insert_with(|| {
                names
                    .vantages
                    .push(format!("{}/{}", cell.key.agent_id, cell.key.vantage));
                names
                    .vantage_pairs
                    .push((cell.key.agent_id.clone(), cell.key.vantage.clone()));
                names.vantages.len() - 1
            });
        // Cells of one path in other slots and buckets derive alike.
        let path_id = *path_ids
            .entry(cell.key.sources.as_slice())
            .or_insert_with(|| {
                let mut values = Vec::with_capacity(DIMENSIONS.len());
                let mut addresses = Vec::with_capacity(DIMENSIONS.len());
                for (d, si) in DIMENSIONS.iter().zip(&source_index) {
                    let source = cell.key.sources.get(*si).and_then(Option::as_deref);
                    values.push(source.and_then(|s| d.derive.apply(s, ctx)));
                    addresses.push(if d.derive == Derive::Prefix {
                        source.and_then(|s| s.parse::<IpAddr>().ok())
                    } else {
                        None
                    });
                }
                derived.push((values, addresses));
                derived.len() - 1
            });
        let (values, addresses) = &derived[path_id];
        let statuses = settings.statuses_for(&cell.key.check);
        let status_failure = cell
            .key
            .status
            .and_then(|s| u16::try_from(s).ok())
            .is_some_and(|s| statuses.contains(&s));
        let connection_failure =
            !status_failure && CONNECTION_OUTCOMES.contains(&cell.key.outcome.as_str());
        let probes = u64::try_from(cell.counts.probes).unwrap_or(0);
        let bucket = usize::try_from(cell.bucket).unwrap_or(0).min(buckets - 1);
        for (pattern, failing) in [
            (Pattern::Status, status_failure),
            (Pattern::Connection, connection_failure),
        ] {
            let pi = *by_key.entry((target, pattern)).or_insert_with(|| {
                populations.push(Population::new(cell.key.target.clone(), pattern));
                index.push(HashMap::new());
                populations.len() - 1
            });
            let p = &mut populations[pi];
            p.statuses.extend(statuses.iter().copied());
            p.round_ms = p.round_ms.max(i64::from(cell.key.interval_ms));
            let gi = *index[pi].entry((path_id, vantage)).or_insert_with(|| {
                p.groups.push(Group {
                    values: values.clone(),
                    addresses: addresses.clone(),
                    witness: vantage,
                    unit: vantage,
                    buckets: vec![Counts::default(); buckets],
                    confirmed: Counts::default(),
                });
                p.evidence.push(GroupEvidence::default());
                p.group_target.push(target);
                p.group_vantage.push(vantage);
                p.groups.len() - 1
            });
            if p.check.is_empty() {
                p.check.clone_from(&cell.key.check);
            }
            let group = &mut p.groups[gi];
            let mut counted = vec![&mut group.buckets[bucket]];
            if cell.key.confirmation {
                counted.push(&mut group.confirmed);
            }
            for c in counted {
                c.probes += probes;
                if failing {
                    c.failures += probes;
                }
            }
            if failing {
                p.evidence[gi].add(cell);
            }
        }
    }
    (populations, names)
}

/// Every target's groups of one pattern at once, for failures of the
/// vantages' own path: only the dimensions that span targets are kept,
/// and the distinct-witness gate counts targets, not vantages. None with
/// fewer than two targets.
pub fn path_population(
    members: &[&Population],
    pattern: Pattern,
    vantages: usize,
) -> Option<Population> {
    if members.len() < 2 {
        return None;
    }
    let mut path = Population::new(PATH_TARGET.to_owned(), pattern);
    for p in members.iter().copied() {
        path.window = p.window;
        path.statuses.extend(p.statuses.iter().copied());
        path.round_ms = path.round_ms.max(p.round_ms);
        path.rounds = path.rounds.max(p.rounds);
        for (gi, g) in p.groups.iter().enumerate() {
            let target = p.group_target[gi];
            let mut g = g.clone();
            for (d, v) in g.values.iter_mut().enumerate() {
                if !DIMENSIONS[d].spans_targets {
                    *v = None;
                }
            }
            g.witness = target;
            g.unit = target * vantages.max(1) + p.group_vantage[gi];
            path.groups.push(g);
            path.evidence.push(p.evidence[gi].clone());
            path.group_target.push(target);
            path.group_vantage.push(p.group_vantage[gi]);
        }
    }
    Some(path)
}
