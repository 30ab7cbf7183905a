//! The detector: every `interval`, reads the window's probes grouped by
//! every dimension ([`dimensions`]), decides per target and failure
//! pattern which segment the failures follow ([`decision`], pure), applies
//! the hysteresis ([`lifecycle`], pure), and keeps the `incidents`,
//! `detector_state`, `detection_runs` and `segment_rates` tables current.
//! Everything here is I/O and bookkeeping around those pure parts.

pub mod asn;
pub mod decision;
pub mod dimensions;
mod explain;
pub mod lifecycle;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::store::{
    Incident, IncidentRecord, RateRow, RunRecord, StateRow, Store, StoreError, WindowCell,
};
use asn::AsnTable;
use decision::{Assessment, Counts, DimensionInfo, Finding, Group, Params};
use dimensions::{DIMENSIONS, Derive, DeriveContext, Role};
use lifecycle::{Hysteresis, KeyState, Observation, Transition};

/// Outcomes that are connection-level failures: the site never answered
/// with a status. They form their own pattern, never mixed into the rate
/// of the configured statuses.
pub const CONNECTION_OUTCOMES: &[&str] = &["dns", "connect", "tls", "timeout", "protocol", "proxy"];

/// The two failure patterns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Pattern {
    /// A status the check counts (default 502).
    Status,
    /// A connection-level failure.
    Connection,
}

impl Pattern {
    pub const ALL: [Pattern; 2] = [Pattern::Status, Pattern::Connection];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Connection => "connection",
        }
    }
}

/// Everything the detector is configured with.
#[derive(Debug, Clone)]
pub struct DetectorSettings {
    pub interval: Duration,
    pub window: Duration,
    pub params: Params,
    pub hysteresis: Hysteresis,
    /// Statuses counted as failures unless a check says otherwise.
    pub statuses: Vec<u16>,
    /// Per check name: the statuses counted for it.
    pub check_statuses: HashMap<String, Vec<u16>>,
    pub prefix_v4: u8,
    pub prefix_v6: u8,
    /// How long `segment_rates` keeps each pass.
    pub rates_retention: Duration,
}

impl Default for DetectorSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(15),
            window: Duration::from_secs(300),
            params: Params::default(),
            hysteresis: Hysteresis::default(),
            statuses: vec![502],
            check_statuses: HashMap::new(),
            prefix_v4: 24,
            prefix_v6: 48,
            rates_retention: Duration::from_secs(3600),
        }
    }
}

impl DetectorSettings {
    fn statuses_for(&self, check: &str) -> &[u16] {
        self.check_statuses
            .get(check)
            .map_or(self.statuses.as_slice(), Vec::as_slice)
    }
}

/// What one pass did, for logs, tests and the benchmark.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PassSummary {
    pub probes: u64,
    pub cells: usize,
    pub segments: usize,
    pub opened: Vec<i64>,
    pub resolved: Vec<i64>,
    /// Time in the window query, and in everything after it.
    pub query_time: Duration,
    pub decide_time: Duration,
}

/// Periodically evaluates the window and opens, refreshes and resolves
/// incidents.
pub struct Detector {
    store: Arc<Store>,
    settings: DetectorSettings,
    /// Woken when an incident opened or resolved, for the alerter.
    changed: Arc<Notify>,
    /// The IP-to-ASN table and the load it came from.
    asn: Mutex<(Option<i64>, Arc<AsnTable>)>,
}

/// (target, pattern, dimension, value): one candidate incident.
type Key = (String, String, String, String);

/// Probes of one target and pattern, grouped, with what the evidence needs.
#[derive(Default)]
struct TargetWindow {
    groups: Vec<Group>,
    evidence: Vec<GroupEvidence>,
    index: HashMap<(Vec<Option<String>>, usize), usize>,
    statuses: BTreeSet<u16>,
    vantages: HashSet<usize>,
}

/// Failing probes of one group: when, a sample, which layers and edges.
#[derive(Default, Clone)]
struct GroupEvidence {
    first_failure_at: Option<DateTime<Utc>>,
    last_failure_at: Option<DateTime<Utc>>,
    samples: Vec<(String, i64, DateTime<Utc>)>,
}

impl Detector {
    pub fn new(store: Arc<Store>, settings: DetectorSettings, changed: Arc<Notify>) -> Self {
        Self {
            store,
            settings,
            changed,
            asn: Mutex::new((None, Arc::new(AsnTable::default()))),
        }
    }

    /// Evaluates every `interval` until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.settings.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            if let Err(error) = self.evaluate_at(Utc::now()).await {
                tracing::warn!(%error, "Detection pass failed; retrying next interval.");
            }
        }
    }

    /// One pass over the window ending at `now`.
    pub async fn evaluate_at(&self, now: DateTime<Utc>) -> Result<PassSummary, StoreError> {
        let started = Instant::now();
        let asn = self.asn_table().await?;
        let window =
            chrono::Duration::from_std(self.settings.window).unwrap_or(chrono::Duration::MAX);
        let window_start = now - window;
        let sources = dimensions::sources();
        let cells = self.store.window_cells(window_start, now, &sources).await?;
        let query_time = started.elapsed();

        let ctx = DeriveContext {
            prefix_v4: self.settings.prefix_v4,
            prefix_v6: self.settings.prefix_v6,
            asn: &asn,
        };
        let windows = self.group(&cells, &ctx);
        let infos = dimension_infos();
        let mut assessments: Vec<((String, Pattern), TargetWindow, Assessment)> = windows
            .into_iter()
            .map(|(key, w)| {
                let a = decision::assess(&w.groups, &infos, &self.settings.params);
                (key, w, a)
            })
            .collect();
        assessments.sort_by(|a, b| a.0.cmp(&b.0));

        let mut summary = PassSummary {
            probes: cells.iter().map(|c| c.probes.max(0) as u64).sum(),
            cells: cells.len(),
            query_time,
            ..PassSummary::default()
        };
        let open = self.store.open_incidents().await?;
        let mut states = self.load_states(&open).await?;
        let mut rates = Vec::new();
        let window_seconds = i32::try_from(self.settings.window.as_secs()).unwrap_or(i32::MAX);

        // Every candidate: observed in this pass, or remembered from earlier
        // ones (including those of targets without a probe in the window:
        // nothing says they still fail).
        let mut observed: HashMap<Key, (Observation, Which, usize)> = HashMap::new();
        for (i, ((target, pattern), _, a)) in assessments.iter().enumerate() {
            summary.segments += a.segments.len();
            rates.extend(rate_rows(target, *pattern, a));
            for (key, (obs, which)) in observations(target, *pattern, a, &states) {
                observed.insert(key, (obs, which, i));
            }
        }
        let keys: BTreeSet<Key> = states.keys().chain(observed.keys()).cloned().collect();
        // The incident record is built only when an incident opens or is
        // refreshed.
        let record = |(_, which, i): &(Observation, Which, usize)| {
            let ((target, pattern), w, a) = &assessments[*i];
            self.record(target, *pattern, w, a, *which, window_seconds)
        };
        for key in keys {
            let seen = observed.get(&key);
            let obs = seen.map_or(
                Observation {
                    held: false,
                    may_open: false,
                },
                |s| s.0,
            );
            let state = states.get(&key).copied().unwrap_or_default();
            let (mut next, transition) =
                lifecycle::step(state, obs, now, &self.settings.hysteresis);
            match (transition, seen) {
                (Transition::Open, Some(seen)) => {
                    let mut record = record(seen);
                    if let Some(text) = explain::relation(&record, &open, now) {
                        record.explanation.push(' ');
                        record.explanation.push_str(&text);
                        record.evidence["relation"] = json!(text);
                    }
                    if let Some(id) = self.store.open_incident(&record, now).await? {
                        tracing::warn!(
                            id, target = %record.target, pattern = %record.pattern,
                            dimension = %record.dimension, value = %record.value,
                            explanation = %record.explanation, "Incident opened."
                        );
                        next.incident = Some(id);
                        summary.opened.push(id);
                    }
                }
                (Transition::Resolve(id), _) => {
                    self.store.resolve_incident(id, now).await?;
                    tracing::info!(id, target = %key.0, pattern = %key.1, dimension = %key.2, value = %key.3, "Incident resolved.");
                    summary.resolved.push(id);
                }
                (_, Some(seen)) if obs.held => {
                    if let Some(id) = next.incident {
                        self.store.refresh_incident(id, &record(seen), now).await?;
                    }
                }
                _ => {}
            }
            states.insert(key, next);
        }

        let rows: Vec<StateRow> = states
            .into_iter()
            .filter(|(_, s)| !s.is_idle())
            .map(|((target, pattern, dimension, value), s)| StateRow {
                target,
                pattern,
                dimension,
                value,
                held_streak: i32::try_from(s.held_streak).unwrap_or(i32::MAX),
                clear_streak: i32::try_from(s.clear_streak).unwrap_or(i32::MAX),
                last_held_at: s.last_held_at,
                incident_id: s.incident,
            })
            .collect();
        self.store.replace_detector_states(&rows).await?;
        summary.decide_time = started.elapsed().saturating_sub(query_time);
        let keep = chrono::Duration::from_std(self.settings.rates_retention)
            .unwrap_or(chrono::Duration::MAX);
        self.store
            .record_run(
                &RunRecord {
                    evaluated_at: now,
                    window_start,
                    window_end: now,
                    probes: i64::try_from(summary.probes).unwrap_or(i64::MAX),
                    duration_ms: started.elapsed().as_secs_f64() * 1000.0,
                },
                &rates,
                now - keep,
            )
            .await?;
        if !summary.opened.is_empty() || !summary.resolved.is_empty() {
            self.changed.notify_one();
        }
        Ok(summary)
    }

    /// The IP-to-ASN table, reloaded when a new one was loaded.
    async fn asn_table(&self) -> Result<Arc<AsnTable>, StoreError> {
        let version = self.store.asn_version().await?;
        {
            let guard = self.asn.lock().unwrap_or_else(|e| e.into_inner());
            if guard.0 == version {
                return Ok(guard.1.clone());
            }
        }
        let table = Arc::new(AsnTable::new(self.store.asn_ranges().await?));
        tracing::info!(ranges = table.len(), "IP-to-ASN table loaded.");
        let mut guard = self.asn.lock().unwrap_or_else(|e| e.into_inner());
        *guard = (version, table.clone());
        Ok(table)
    }

    /// Reduces the window's cells to groups per target and pattern.
    fn group(
        &self,
        cells: &[WindowCell],
        ctx: &DeriveContext<'_>,
    ) -> HashMap<(String, Pattern), TargetWindow> {
        let source_index = dimensions::source_index();
        let mut vantage_ids: HashMap<(&str, &str), usize> = HashMap::new();
        let mut out: HashMap<(String, Pattern), TargetWindow> = HashMap::new();
        for cell in cells {
            let next_id = vantage_ids.len();
            let vantage = *vantage_ids
                .entry((cell.agent_id.as_str(), cell.vantage.as_str()))
                .or_insert(next_id);
            let mut values = Vec::with_capacity(DIMENSIONS.len());
            let mut addresses = Vec::with_capacity(DIMENSIONS.len());
            for (d, si) in DIMENSIONS.iter().zip(&source_index) {
                let source = cell.sources.get(*si).cloned().flatten();
                values.push(source.as_deref().and_then(|s| d.derive.apply(s, ctx)));
                addresses.push(if d.derive == Derive::Prefix {
                    source.as_deref().and_then(|s| s.parse::<IpAddr>().ok())
                } else {
                    None
                });
            }
            let statuses = self.settings.statuses_for(&cell.check);
            let status_failure = cell
                .status
                .and_then(|s| u16::try_from(s).ok())
                .is_some_and(|s| statuses.contains(&s));
            let connection_failure =
                !status_failure && CONNECTION_OUTCOMES.contains(&cell.outcome.as_str());
            let probes = u64::try_from(cell.probes).unwrap_or(0);
            for (pattern, failing) in [
                (Pattern::Status, status_failure),
                (Pattern::Connection, connection_failure),
            ] {
                let w = out.entry((cell.target.clone(), pattern)).or_default();
                w.statuses.extend(statuses.iter().copied());
                w.vantages.insert(vantage);
                let index_key = (values.clone(), vantage);
                let gi = match w.index.get(&index_key) {
                    Some(i) => *i,
                    None => {
                        w.groups.push(Group {
                            values: values.clone(),
                            addresses: addresses.clone(),
                            vantage,
                            counts: Counts::default(),
                        });
                        w.evidence.push(GroupEvidence::default());
                        w.index.insert(index_key, w.groups.len() - 1);
                        w.groups.len() - 1
                    }
                };
                w.groups[gi].counts.probes += probes;
                if failing {
                    w.groups[gi].counts.failures += probes;
                    let e = &mut w.evidence[gi];
                    e.first_failure_at = Some(
                        e.first_failure_at
                            .map_or(cell.first_at, |t| t.min(cell.first_at)),
                    );
                    e.last_failure_at = Some(
                        e.last_failure_at
                            .map_or(cell.last_at, |t| t.max(cell.last_at)),
                    );
                    e.samples
                        .push((cell.agent_id.clone(), cell.last_seq, cell.last_at));
                }
            }
        }
        // Both patterns of every target with probes, failures or not: an
        // open incident must see the healthy window to resolve.
        out
    }

    /// The stored state, plus a state for every open incident that has
    /// none (an incident opened by an older version).
    async fn load_states(&self, open: &[Incident]) -> Result<HashMap<Key, KeyState>, StoreError> {
        let mut states: HashMap<Key, KeyState> = self
            .store
            .detector_states()
            .await?
            .into_iter()
            .map(|r| {
                (
                    (r.target, r.pattern, r.dimension, r.value),
                    KeyState {
                        held_streak: u32::try_from(r.held_streak).unwrap_or(0),
                        clear_streak: u32::try_from(r.clear_streak).unwrap_or(0),
                        last_held_at: r.last_held_at,
                        incident: r.incident_id,
                    },
                )
            })
            .collect();
        for i in open {
            let key = (
                i.target.clone(),
                i.pattern.clone(),
                i.dimension.clone(),
                i.value.clone(),
            );
            let state = states.entry(key).or_default();
            if state.incident.is_none() {
                state.incident = Some(i.id);
                state.last_held_at = state.last_held_at.or(Some(i.last_seen_at));
            }
        }
        Ok(states)
    }

    /// The incident record for a finding (or a flagged segment that is
    /// evidence of another's finding).
    fn record(
        &self,
        target: &str,
        pattern: Pattern,
        w: &TargetWindow,
        a: &Assessment,
        which: Which,
        window_seconds: i32,
    ) -> IncidentRecord {
        let failure = explain::failure_label(pattern, &w.statuses);
        let statuses: Vec<i16> = match pattern {
            Pattern::Status => w
                .statuses
                .iter()
                .filter_map(|s| i16::try_from(*s).ok())
                .collect(),
            Pattern::Connection => Vec::new(),
        };
        let (finding, segment) = match which {
            Which::Global => (Some(&Finding::Global), None),
            Which::Finding(f) => match &a.findings[f] {
                f @ Finding::Segment { segment, .. } => (Some(f), Some(*segment)),
                f @ Finding::Global => (Some(f), None),
            },
            Which::Segment(s) => (None, Some(s)),
        };
        // The failing groups the incident is about.
        let failing_groups: Vec<usize> = match segment {
            Some(s) => a.segments[s].groups.clone(),
            None => (0..w.groups.len()).collect(),
        }
        .into_iter()
        .filter(|g| w.groups[*g].counts.failures > 0)
        .collect();
        let mut first = None::<DateTime<Utc>>;
        let mut last = None::<DateTime<Utc>>;
        let mut samples = Vec::new();
        for g in &failing_groups {
            let e = &w.evidence[*g];
            first = match (first, e.first_failure_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            last = match (last, e.last_failure_at) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            samples.extend(e.samples.iter().cloned());
        }
        samples.sort_by_key(|s| std::cmp::Reverse(s.2));
        samples.dedup_by(|x, y| x.0 == y.0 && x.1 == y.1);
        samples.truncate(5);
        let value_set = |name: &str| -> Vec<String> {
            let d = DIMENSIONS.iter().position(|d| d.name == name);
            let mut set: BTreeSet<String> = BTreeSet::new();
            if let Some(d) = d {
                for g in &failing_groups {
                    if let Some(v) = &w.groups[*g].values[d] {
                        set.insert(v.clone());
                    }
                }
            }
            set.into_iter().collect()
        };
        let gateways = value_set("gateway");
        let edge_locations = value_set("edge_location");
        let total_vantages = w.vantages.len();
        let text = explain::Text {
            target,
            failure: &failure,
            assessment: a,
            total_vantages,
            gateways: &gateways,
            edge_locations: &edge_locations,
        };
        let (kind, dimension, value, counts, p_value, failing_vantages, explanation) = match segment
        {
            None => (
                "global",
                "global".to_owned(),
                "*".to_owned(),
                [a.total.failures, a.total.probes, 0, 0],
                None,
                a.failing_vantages,
                text.global(),
            ),
            Some(s) => {
                let stat = &a.segments[s];
                (
                    "segment",
                    DIMENSIONS[stat.dimension].name.to_owned(),
                    stat.value.clone(),
                    [
                        stat.segment.failures,
                        stat.segment.probes,
                        stat.rest.failures,
                        stat.rest.probes,
                    ],
                    stat.p_value,
                    stat.failing_vantages,
                    text.segment(s, finding),
                )
            }
        };
        let (correlated, narrowed) = match finding {
            Some(Finding::Segment {
                correlated,
                narrowed,
                ..
            }) => (correlated.as_slice(), narrowed.as_ref()),
            _ => (&[][..], None),
        };
        let correlated_json: Vec<serde_json::Value> = correlated
            .iter()
            .map(|c| {
                let s = &a.segments[c.segment];
                json!({
                    "dimension": DIMENSIONS[s.dimension].name,
                    "value": s.value,
                    "shared_failures": c.shared_failures,
                    "failures": s.segment.failures,
                    "probes": s.segment.probes,
                })
            })
            .collect();
        let evidence = json!({
            "counts": explain::counts_table(a, segment),
            "walk": narrowed.map(|n| n.walk.iter().map(|s| json!({
                "prefix": s.prefix, "probes": s.segment.probes, "failures": s.segment.failures,
            })).collect::<Vec<_>>()),
            "samples": samples.iter().map(|(agent, seq, at)| json!({
                "agent_id": agent, "seq": seq, "started_at": at,
            })).collect::<Vec<_>>(),
            "segments_tested": a.tests,
            "vantages": { "failing": a.failing_vantages, "total": total_vantages },
            "relation": null,
        });
        let to_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        IncidentRecord {
            target: target.to_owned(),
            pattern: pattern.as_str().to_owned(),
            kind,
            dimension,
            value,
            narrowed_value: narrowed.map(|n| n.value.clone()),
            statuses,
            explanation,
            counts: counts.map(to_i64),
            p_value,
            failing_vantages: i32::try_from(failing_vantages).unwrap_or(i32::MAX),
            correlated: serde_json::Value::Array(correlated_json),
            first_failure_at: first,
            last_failure_at: last,
            gateways,
            edge_locations,
            evidence,
            window_seconds,
        }
    }
}

/// What an observed candidate is, for its incident record.
#[derive(Debug, Clone, Copy)]
enum Which {
    Global,
    /// Leads the assessment's finding at this index.
    Finding(usize),
    /// Flagged, evidence of another finding.
    Segment(usize),
}

/// The decision's view of the dimension table.
pub fn dimension_infos() -> Vec<DimensionInfo> {
    DIMENSIONS
        .iter()
        .map(|d| DimensionInfo {
            name: d.name,
            role: d.role,
            prefix: d.derive == Derive::Prefix,
        })
        .collect()
}

/// Which candidates held in this assessment, and which may open: a
/// finding's lead, unless an open incident already covers the finding (its
/// lead or one of its correlated segments is open).
fn observations(
    target: &str,
    pattern: Pattern,
    a: &Assessment,
    states: &HashMap<Key, KeyState>,
) -> HashMap<Key, (Observation, Which)> {
    let key = |dimension: &str, value: &str| -> Key {
        (
            target.to_owned(),
            pattern.as_str().to_owned(),
            dimension.to_owned(),
            value.to_owned(),
        )
    };
    let is_open = |k: &Key| states.get(k).is_some_and(|s| s.incident.is_some());
    let mut out = HashMap::new();
    for (i, s) in a.segments.iter().enumerate() {
        if s.flagged && DIMENSIONS[s.dimension].role == Role::Cause {
            out.insert(
                key(DIMENSIONS[s.dimension].name, &s.value),
                (
                    Observation {
                        held: true,
                        may_open: false,
                    },
                    Which::Segment(i),
                ),
            );
        }
    }
    for (fi, f) in a.findings.iter().enumerate() {
        match f {
            Finding::Global => {
                out.insert(
                    key("global", "*"),
                    (
                        Observation {
                            held: true,
                            may_open: true,
                        },
                        Which::Global,
                    ),
                );
            }
            Finding::Segment {
                segment,
                correlated,
                ..
            } => {
                let members: Vec<Key> = std::iter::once(*segment)
                    .chain(correlated.iter().map(|c| c.segment))
                    .map(|s| {
                        let stat = &a.segments[s];
                        key(DIMENSIONS[stat.dimension].name, &stat.value)
                    })
                    .collect();
                let covered = members.iter().any(is_open);
                let lead = &a.segments[*segment];
                out.insert(
                    key(DIMENSIONS[lead.dimension].name, &lead.value),
                    (
                        Observation {
                            held: true,
                            may_open: !covered,
                        },
                        Which::Finding(fi),
                    ),
                );
            }
        }
    }
    out
}

/// `segment_rates` rows for one assessment.
fn rate_rows(target: &str, pattern: Pattern, a: &Assessment) -> Vec<RateRow> {
    let to_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    a.segments
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
        })
        .collect()
}
