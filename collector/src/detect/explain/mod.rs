//! The words and records of an incident: the population a finding was
//! made in, the incident record built from a finding (counts, evidence,
//! samples), the explanation an on-call engineer reads first, the counts
//! table of its evidence, and how it relates to a global incident of the
//! same target.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

mod counts;
mod evidence;
use evidence::{
    FailingEvidence, correlated_json, failing_evidence, failing_values, per_target, where_it_fails,
};

pub use counts::counts_table;

use super::decision::{Assessment, Counts, Finding, Window};
use super::dimensions::DIMENSIONS;
use super::pattern::Pattern;
use super::population::Names;
use super::population::Population;
use super::records::{FaultSide, IncidentKind, IncidentRecord, IncidentScope, OpenIncident};
use super::settings::DetectorSettings;
use super::track::PATH_TARGET;

/// What counts as a failure, in words: `502`, `502/503/504`, or a
/// connection-level failure.
pub fn failure_label(pattern: Pattern, statuses: &BTreeSet<u16>) -> String {
    match pattern {
        Pattern::Status if statuses.is_empty() => "a counted status".into(),
        Pattern::Status => statuses
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join("/"),
        Pattern::Connection => "a connection-level failure (DNS, connect, TLS, timeout)".into(),
    }
}

/// A duration as people say it: whole seconds from a second up.
fn spoken(d: Duration) -> String {
    let d = if d >= Duration::from_secs(1) {
        Duration::from_secs(d.as_secs())
    } else {
        Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    };
    humantime::format_duration(d).to_string()
}

/// "the last 4 probe rounds (2m)", or "the whole window (5m)".
fn window_phrase(w: Window, full: bool, round: Duration, window: Duration) -> String {
    if full && w.rounds > 1 {
        return format!("the whole window ({})", spoken(window));
    }
    let span = spoken(round.saturating_mul(w.rounds));
    match w.rounds {
        1 => format!("the last probe round ({span})"),
        n => format!("the last {n} probe rounds ({span})"),
    }
}

/// Inputs of the explanation of one assessment.
pub struct Text<'a> {
    pub population: &'a Population,
    pub failure: &'a str,
    pub assessment: &'a Assessment,
    pub total_vantages: usize,
    pub gateways: &'a [String],
    pub edge_locations: &'a [String],
}

fn of(c: Counts) -> String {
    format!("{} of {}", c.failures, c.probes)
}

impl Text<'_> {
    fn window(&self, wi: usize) -> String {
        let a = self.assessment;
        window_phrase(
            a.windows[wi],
            wi + 1 == a.windows.len(),
            self.population.round(),
            self.population.window,
        )
    }

    /// "1200 of 1210 probes of URL got 502 (99.2 %) in the last 2 probe
    /// rounds (1m), from 12 of 12 vantages; no region is spared."
    pub fn global(&self, wi: usize) -> String {
        let a = self.assessment;
        let t = a.totals[wi];
        let mut s = format!(
            "{} probes of {} got {} ({:.1} %) in {}, from {} of {} vantages; no region is \
             spared: the failure is global, not specific to a place.",
            of(t),
            self.population.target,
            self.failure,
            100.0 * t.rate(),
            self.window(wi),
            a.failing_vantages,
            self.total_vantages,
        );
        self.push_layers(&mut s);
        s
    }

    /// "41 of 43 probes of URL from egress prefix 203.0.113.0/24 got 502
    /// in the last 4 probe rounds (2m); 0 of 380 from everywhere else
    /// (...)." and its evidence. For a path: "proxy P fails for 5 of 5
    /// targets: ...".
    pub fn segment(
        &self,
        segment: usize,
        finding: &Finding,
        targets: &[(String, Counts)],
    ) -> String {
        let a = self.assessment;
        let stat = &a.segments[segment];
        let dim = &DIMENSIONS[stat.dimension];
        let mut s = if self.population.target == PATH_TARGET {
            let failing = targets.iter().filter(|(_, c)| c.failures > 0).count();
            format!(
                "{} {} fails for {} of {} targets: {} probes through it got {} in {}; {} \
                 elsewhere",
                dim.label,
                stat.value,
                failing,
                targets.len(),
                of(stat.segment),
                self.failure,
                self.window(stat.window),
                of(stat.rest),
            )
        } else {
            format!(
                "{} probes of {} from {} {} got {} in {}; {} from everywhere else",
                of(stat.segment),
                self.population.target,
                dim.label,
                stat.value,
                self.failure,
                self.window(stat.window),
                of(stat.rest),
            )
        };
        if stat.set_aside.probes > 0 {
            s.push_str(&format!(
                ", leaving out {} probes that another cause explains",
                stat.set_aside.probes
            ));
        }
        let witnesses = if self.population.target == PATH_TARGET {
            "targets"
        } else {
            "vantages"
        };
        match stat.p_value {
            Some(p) => s.push_str(&format!(
                " (one-sided Fisher exact test p = {p:.1e}, Holm-corrected over {} tests; \
                 failures seen by {} {witnesses}).",
                a.tests, stat.failing_vantages
            )),
            None => s.push('.'),
        }
        if self.population.target == PATH_TARGET && !targets.is_empty() {
            let per: Vec<String> = targets
                .iter()
                .map(|(t, c)| format!("{t} {}", of(*c)))
                .collect();
            s.push_str(&format!(" Per target: {}.", per.join(", ")));
        }
        if let Finding::Segment {
            correlated,
            narrowed,
            ..
        } = finding
        {
            if let Some(n) = narrowed {
                s.push_str(&format!(
                    " The most specific prefix covering every failure is {} ({} probes).",
                    n.value,
                    of(n.segment)
                ));
            }
            let mut all = Vec::new();
            let mut most = Vec::new();
            for c in correlated {
                let o = &a.segments[c.segment];
                let name = format!("{} {}", DIMENSIONS[o.dimension].label, o.value);
                if c.shared_failures >= c.of_failures {
                    all.push(name);
                } else {
                    most.push(format!(
                        "{name} ({} of {} recent failures)",
                        c.shared_failures, c.of_failures
                    ));
                }
            }
            if !all.is_empty() {
                s.push_str(&format!(
                    " All failing probes also share {}.",
                    join_and(&all)
                ));
            }
            if !most.is_empty() {
                s.push_str(&format!(" Also flagged: {}.", join_and(&most)));
            }
        }
        self.push_layers(&mut s);
        s
    }

    fn push_layers(&self, s: &mut String) {
        if !self.gateways.is_empty() {
            s.push_str(&format!(
                " Failing responses were produced by {}",
                join_and(self.gateways)
            ));
            if self.edge_locations.is_empty() {
                s.push('.');
            } else {
                s.push_str(&format!(" at edge {}.", join_and(self.edge_locations)));
            }
        } else if !self.edge_locations.is_empty() {
            s.push_str(&format!(
                " Failing probes were served by edge {}.",
                join_and(self.edge_locations)
            ));
        }
    }
}

/// The incident record for finding `fi` of an assessment.
pub fn record(
    p: &Population,
    a: &Assessment,
    fi: usize,
    names: &Names,
    settings: &DetectorSettings,
) -> IncidentRecord {
    let finding = &a.findings[fi];
    let failure = failure_label(p.pattern, &p.statuses);
    let statuses: Vec<i16> = match p.pattern {
        Pattern::Status => p
            .statuses
            .iter()
            .filter_map(|s| i16::try_from(*s).ok())
            .collect(),
        Pattern::Connection => Vec::new(),
    };
    let (segment, wi, failing_groups) = where_it_fails(p, a, finding);
    let window = a.windows[wi];
    let FailingEvidence {
        first,
        last,
        samples,
    } = failing_evidence(p, &failing_groups);
    let gateways = failing_values(p, &failing_groups, "gateway");
    let edge_locations = failing_values(p, &failing_groups, "edge_location");
    let total_vantages = p
        .group_vantage
        .iter()
        .collect::<std::collections::HashSet<_>>()
        .len();
    let targets = per_target(p, a, segment, window, names);
    let text = Text {
        population: p,
        failure: &failure,
        assessment: a,
        total_vantages,
        gateways: &gateways,
        edge_locations: &edge_locations,
    };
    let path = p.target == PATH_TARGET;
    let (kind, dimension, value, counts, p_value, failing_vantages, explanation) = match segment {
        None => (
            IncidentKind::Global,
            "global".to_owned(),
            "*".to_owned(),
            [a.totals[wi].failures, a.totals[wi].probes, 0, 0],
            match finding {
                Finding::Global { p_value, .. } => Some(*p_value),
                Finding::Segment { .. } => None,
            },
            a.failing_vantages,
            text.global(wi),
        ),
        Some(s) => {
            let stat = &a.segments[s];
            (
                IncidentKind::Segment,
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
                text.segment(s, finding, &targets),
            )
        }
    };
    let fault_side =
        if path || segment.is_some_and(|s| DIMENSIONS[a.segments[s].dimension].own_path) {
            FaultSide::Path
        } else {
            FaultSide::Site
        };
    let (correlated, narrowed) = match finding {
        Finding::Segment {
            correlated,
            narrowed,
            ..
        } => (correlated.as_slice(), narrowed.as_ref()),
        Finding::Global { .. } => (&[][..], None),
    };
    let timing = finding.timing();
    let evidence = json!({
        "counts": counts_table(a, segment),
        "walk": narrowed.map(|n| n.walk.iter().map(|s| json!({
            "prefix": s.prefix, "probes": s.segment.probes, "failures": s.segment.failures,
        })).collect::<Vec<_>>()),
        "samples": samples.iter().map(|(agent, seq, at)| json!({
            "agent_id": agent, "seq": seq, "started_at": at,
        })).collect::<Vec<_>>(),
        "segments_tested": a.tests,
        "vantages": { "failing": a.failing_vantages, "total": total_vantages },
        "targets": targets.iter().map(|(t, c)| json!({
            "target": t, "failures": c.failures, "probes": c.probes,
        })).collect::<Vec<_>>(),
        "window_rounds": window.rounds,
        "round_seconds": p.round().as_secs_f64(),
        "rounds_failing": timing.rounds_failing,
        "recent_rounds": timing.recent_rounds,
        "relation": null,
    });
    let to_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let window_seconds = i32::try_from(settings.window.as_secs()).unwrap_or(i32::MAX);
    IncidentRecord {
        target: p.target.clone(),
        pattern: p.pattern.as_str().to_owned(),
        scope: if path {
            IncidentScope::Path
        } else {
            IncidentScope::Target
        },
        targets: if path {
            targets.iter().map(|(t, _)| t.clone()).collect()
        } else {
            vec![p.target.clone()]
        },
        fault_side,
        kind,
        dimension,
        value,
        narrowed_value: narrowed.map(|n| n.value.clone()),
        statuses,
        explanation,
        counts: counts.map(to_i64),
        p_value,
        failing_vantages: i32::try_from(failing_vantages).unwrap_or(i32::MAX),
        correlated: Value::Array(correlated_json(a, correlated)),
        first_failure_at: first,
        last_failure_at: last,
        gateways,
        edge_locations,
        evidence,
        window_seconds,
    }
}

fn join_and(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// Which came first, when a global incident and a segment incident of the
/// same target and pattern are both open.
pub fn relation(
    record: &IncidentRecord,
    open: &[OpenIncident],
    now: DateTime<Utc>,
) -> Option<String> {
    let same_target = |i: &&OpenIncident| i.target == record.target && i.pattern == record.pattern;
    let ago = |at: DateTime<Utc>| {
        let secs = now.signed_duration_since(at).num_seconds().max(0);
        humantime::format_duration(std::time::Duration::from_secs(secs as u64)).to_string()
    };
    if record.kind == IncidentKind::Global {
        let mut segments: Vec<&OpenIncident> = open
            .iter()
            .filter(same_target)
            .filter(|i| i.kind == IncidentKind::Segment)
            .collect();
        segments.sort_by_key(|i| i.opened_at);
        let first = segments.first()?;
        Some(format!(
            "It came second: segment incident #{} ({} {}) opened {} earlier, so the failure \
             started there and spread.",
            first.id,
            first.dimension,
            first.value,
            ago(first.opened_at)
        ))
    } else {
        let global = open
            .iter()
            .filter(same_target)
            .find(|i| i.kind == IncidentKind::Global)?;
        Some(format!(
            "It came second: global incident #{} opened {} earlier; this segment stands out \
             within it.",
            global.id,
            ago(global.opened_at)
        ))
    }
}
