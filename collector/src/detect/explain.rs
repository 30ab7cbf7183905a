//! The words of an incident: the explanation an on-call engineer reads
//! first, the counts table of its evidence, and how it relates to a global
//! incident of the same target.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::Pattern;
use super::decision::{Assessment, Counts, Finding};
use super::dimensions::{DIMENSIONS, Role};
use crate::store::{Incident, IncidentRecord};

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

/// Inputs of the explanation of one assessment.
pub struct Text<'a> {
    pub target: &'a str,
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
    /// "1200 of 1210 probes of URL got 502 (99.2 %), from 12 of 12 vantages;
    /// no region is spared."
    pub fn global(&self) -> String {
        let a = self.assessment;
        let mut s = format!(
            "{} probes of {} got {} ({:.1} %), from {} of {} vantages; no region is spared: \
             the failure is global, not specific to a place.",
            of(a.total),
            self.target,
            self.failure,
            100.0 * a.total.rate(),
            a.failing_vantages,
            self.total_vantages,
        );
        self.push_layers(&mut s);
        s
    }

    /// "41 of 43 probes of URL from egress prefix 203.0.113.0/24 got 502;
    /// 0 of 380 from everywhere else (...)." and its evidence.
    pub fn segment(&self, segment: usize, finding: Option<&Finding>) -> String {
        let a = self.assessment;
        let stat = &a.segments[segment];
        let dim = &DIMENSIONS[stat.dimension];
        let mut s = format!(
            "{} probes of {} from {} {} got {}; {} from everywhere else",
            of(stat.segment),
            self.target,
            dim.label,
            stat.value,
            self.failure,
            of(stat.rest),
        );
        match stat.p_value {
            Some(p) => s.push_str(&format!(
                " (one-sided Fisher exact test p = {p:.1e}, Holm-corrected over {} segments; \
                 failures seen by {} vantages).",
                a.tests, stat.failing_vantages
            )),
            None => s.push('.'),
        }
        if let Some(Finding::Segment {
            correlated,
            narrowed,
            ..
        }) = finding
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
                if c.shared_failures >= stat.segment.failures {
                    all.push(name);
                } else {
                    most.push(format!("{name} ({} of the failures)", c.shared_failures));
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

fn join_and(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// The counts table of an incident's evidence: every value of the winning
/// dimension (most failures first, at most 10), then the runners-up of the
/// other cause dimensions (best explanation score first, at most 5).
pub fn counts_table(a: &Assessment, winner: Option<usize>) -> Vec<Value> {
    let row = |i: usize, role: &str| {
        let s = &a.segments[i];
        json!({
            "role": role,
            "dimension": DIMENSIONS[s.dimension].name,
            "value": s.value,
            "probes": s.segment.probes,
            "failures": s.segment.failures,
            "rest_probes": s.rest.probes,
            "rest_failures": s.rest.failures,
            "vantages": s.failing_vantages,
            "p_value": s.p_value,
            "flagged": s.flagged,
        })
    };
    let mut out = Vec::new();
    let winning_dimension = winner.map(|w| a.segments[w].dimension);
    if let Some(d) = winning_dimension {
        let mut same: Vec<usize> = (0..a.segments.len())
            .filter(|i| a.segments[*i].dimension == d)
            .collect();
        same.sort_by(|x, y| {
            a.segments[*y]
                .segment
                .failures
                .cmp(&a.segments[*x].segment.failures)
        });
        for i in same.into_iter().take(10) {
            out.push(row(
                i,
                if Some(i) == winner {
                    "winner"
                } else {
                    "same dimension"
                },
            ));
        }
    }
    let mut others: Vec<usize> = (0..a.segments.len())
        .filter(|i| {
            let s = &a.segments[*i];
            Some(s.dimension) != winning_dimension
                && DIMENSIONS[s.dimension].role == Role::Cause
                && s.segment.failures > 0
        })
        .collect();
    others.sort_by(|x, y| {
        a.segments[*y]
            .score(a.total)
            .total_cmp(&a.segments[*x].score(a.total))
    });
    for i in others.into_iter().take(5) {
        out.push(row(i, "runner-up"));
    }
    out
}

/// Which came first, when a global incident and a segment incident of the
/// same target and pattern are both open.
pub fn relation(record: &IncidentRecord, open: &[Incident], now: DateTime<Utc>) -> Option<String> {
    let same_target = |i: &&Incident| i.target == record.target && i.pattern == record.pattern;
    let ago = |at: DateTime<Utc>| {
        let secs = now.signed_duration_since(at).num_seconds().max(0);
        humantime::format_duration(std::time::Duration::from_secs(secs as u64)).to_string()
    };
    if record.kind == "global" {
        let mut segments: Vec<&Incident> = open
            .iter()
            .filter(same_target)
            .filter(|i| i.kind == "segment")
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
            .find(|i| i.kind == "global")?;
        Some(format!(
            "It came second: global incident #{} opened {} earlier; this segment stands out \
             within it.",
            global.id,
            ago(global.opened_at)
        ))
    }
}
