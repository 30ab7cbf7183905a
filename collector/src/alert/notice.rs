//! What a page says: one event of one incident, rendered as Vantage's own
//! webhook JSON. Every other format (Slack, PagerDuty, Alertmanager) is
//! built from the same [`Notice`] and the same summary sentence.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::detect::records::{FaultSide, IncidentKind, IncidentScope};
use crate::store::{EventKind, Incident};

/// One event of one incident, ready to render for any sink.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub event: EventKind,
    /// The event's id in `incident_events`: the same across retries and
    /// sinks (`webhook-id`, idempotency keys).
    pub event_id: i64,
    /// The incident as of the event (an update: the explanation it
    /// announced).
    pub incident: Incident,
    /// For an update, the explanation it replaced.
    pub previous: Option<Previous>,
    /// The incident's stable URL (`public_url` + `/incidents/<id>`).
    pub link: Option<String>,
    /// When the notice was rendered.
    pub sent_at: DateTime<Utc>,
}

/// The explanation an update replaced.
#[derive(Debug, Clone, PartialEq)]
pub struct Previous {
    pub dimension: String,
    pub value: String,
    pub explanation: String,
}

impl Notice {
    pub fn is_test(&self) -> bool {
        self.event == EventKind::Test
    }
}

/// What failed: the statuses, or a connection-level failure.
fn failure(incident: &Incident) -> String {
    match incident.pattern.as_str() {
        "connection" => "a connection-level failure".to_owned(),
        _ => incident
            .statuses
            .iter()
            .map(i16::to_string)
            .collect::<Vec<_>>()
            .join("/"),
    }
}

/// Where it fails: the tested segment (its counts are the segment's), with
/// the narrowed prefix beside it, not instead of it.
pub fn place(incident: &Incident) -> String {
    match &incident.narrowed_value {
        Some(narrowed) => format!("{} (narrowed to {narrowed})", incident.value),
        None => incident.value.clone(),
    }
}

/// The one-sentence summary with the counts that prove it.
pub fn summary(incident: &Incident) -> String {
    let failure = failure(incident);
    let place = place(incident);
    if incident.scope == IncidentScope::Path {
        format!(
            "{} {place} fails for {} targets: {} of {} probes through it got {failure}; {} of {} \
             elsewhere",
            incident.dimension,
            incident.targets.len(),
            incident.segment_failures,
            incident.segment_probes,
            incident.rest_failures,
            incident.rest_probes
        )
    } else if incident.kind == IncidentKind::Global {
        format!(
            "{} of {} probes of {} got {failure} from all vantage points",
            incident.segment_failures, incident.segment_probes, incident.target
        )
    } else {
        format!(
            "{} of {} probes of {} from {} {place} got {failure}; {} of {} from everywhere else",
            incident.segment_failures,
            incident.segment_probes,
            incident.target,
            incident.dimension,
            incident.rest_failures,
            incident.rest_probes
        )
    }
}

/// A short title: what happened, where.
pub fn title(notice: &Notice) -> String {
    let i = &notice.incident;
    let what = match notice.event {
        EventKind::Opened => "Opened",
        EventKind::Updated => "Re-explained",
        EventKind::Resolved => "Resolved",
        EventKind::Reopened => "Failing again",
        EventKind::Reminder => "Still open",
        EventKind::Test => "TEST",
    };
    let place = if i.kind == IncidentKind::Global {
        "all vantage points".to_owned()
    } else {
        format!("{} {}", i.dimension, i.value)
    };
    let target = if i.scope == IncidentScope::Path {
        format!("{} targets", i.targets.len())
    } else {
        i.target.clone()
    };
    format!(
        "{what}: {} for {target} from {place} (incident {})",
        failure(i),
        i.id
    )
}

/// The correlated segments, as "dimension value (shared of failures)".
pub fn correlated(incident: &Incident) -> Vec<String> {
    incident
        .correlated
        .as_array()
        .map(|list| {
            list.iter()
                .map(|c| {
                    format!(
                        "{} {} ({} of its {} failures shared)",
                        c["dimension"].as_str().unwrap_or("?"),
                        c["value"].as_str().unwrap_or("?"),
                        c["shared_failures"],
                        c["failures"]
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// At most `limit` characters, marked when cut.
pub fn truncate(text: &str, limit: usize) -> String {
    if text.chars().count() <= limit {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(limit.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Vantage's own JSON body. Third parties parse this: fields are only
/// ever added (`counts.*.status_502` stays, equal to `failures`).
pub fn webhook_body(notice: &Notice) -> Value {
    let mut body = incident_json(&notice.incident);
    body["event"] = json!(notice.event.as_str());
    body["event_id"] = json!(notice.event_id);
    body["incident_url"] = json!(notice.link);
    if let Some(p) = &notice.previous {
        body["previous"] = json!({
            "dimension": p.dimension, "value": p.value, "explanation": p.explanation,
        });
    }
    if notice.is_test() {
        body["test"] = json!(true);
    }
    body
}

/// An incident as JSON: the webhook body's incident fields, also served
/// at `/incidents/<id>`.
pub fn incident_json(incident: &Incident) -> Value {
    let counts = |failures: i64, probes: i64| json!({ "failures": failures, "status_502": failures, "probes": probes });
    json!({
        "incident_id": incident.id,
        "target": incident.target,
        "pattern": incident.pattern,
        "statuses": incident.statuses,
        "kind": incident.kind,
        "dimension": incident.dimension,
        "value": incident.value,
        "narrowed_value": incident.narrowed_value,
        "summary": summary(incident),
        "explanation": incident.explanation,
        "counts": {
            "segment": counts(incident.segment_failures, incident.segment_probes),
            "rest": counts(incident.rest_failures, incident.rest_probes),
        },
        "p_value": incident.p_value,
        "failing_vantages": incident.failing_vantages,
        "correlated": incident.correlated,
        "gateways": incident.gateways,
        "edge_locations": incident.edge_locations,
        "first_failure_at": incident.first_failure_at,
        "last_failure_at": incident.last_failure_at,
        "window_seconds": incident.window_seconds,
        "path_summary": incident.path_summary,
        "opened_at": incident.opened_at,
        "last_seen_at": incident.last_seen_at,
        "resolved_at": incident.resolved_at,
        "scope": incident.scope,
        "targets": incident.targets,
        "fault_side": incident.fault_side,
        "fault_in": match incident.fault_side {
            FaultSide::Path => "the vantages' own path (proxy, resolver, egress), not the site",
            FaultSide::Site => "the site, for the vantages named",
        },
        "version": incident.version,
    })
}

/// A made-up incident for `sink test`, marked as a test everywhere it
/// shows.
pub fn test_notice(link_base: Option<&str>, now: DateTime<Utc>) -> Notice {
    let incident = Incident {
        id: 0,
        target: "https://vantage.test/sink-test".into(),
        pattern: "status".into(),
        kind: IncidentKind::Segment,
        dimension: "region".into(),
        value: "test".into(),
        narrowed_value: None,
        explanation: "TEST from vantage-collector sink test: this is not an incident.".into(),
        statuses: vec![502],
        segment_failures: 0,
        segment_probes: 0,
        rest_failures: 0,
        rest_probes: 0,
        p_value: None,
        failing_vantages: 0,
        correlated: json!([]),
        gateways: Vec::new(),
        edge_locations: Vec::new(),
        first_failure_at: None,
        last_failure_at: None,
        window_seconds: 0,
        opened_at: now,
        last_seen_at: now,
        resolved_at: None,
        scope: IncidentScope::Target,
        targets: vec!["https://vantage.test/sink-test".into()],
        fault_side: FaultSide::Site,
        version: 1,
        path_summary: None,
    };
    Notice {
        event: EventKind::Test,
        event_id: now.timestamp(),
        incident,
        previous: None,
        link: link_base.map(|b| format!("{}/incidents/0", b.trim_end_matches('/'))),
        sent_at: now,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use chrono::TimeZone;

    /// The incident every format's golden test renders.
    pub(crate) fn sample_notice(event: EventKind) -> Notice {
        let at = Utc.with_ymd_and_hms(2026, 11, 21, 12, 0, 0).unwrap();
        Notice {
            event,
            event_id: 31,
            incident: Incident {
                id: 7,
                target: "http://shop.test/".into(),
                pattern: "status".into(),
                kind: IncidentKind::Segment,
                dimension: "egress_prefix".into(),
                value: "127.0.2.0/24".into(),
                narrowed_value: Some("127.0.2.0/28".into()),
                explanation: "41 of 43 probes ...".into(),
                statuses: vec![502],
                segment_failures: 41,
                segment_probes: 43,
                rest_failures: 0,
                rest_probes: 380,
                p_value: Some(1e-40),
                failing_vantages: 2,
                correlated: json!([{"dimension": "region", "value": "eu", "shared_failures": 41,
                                    "failures": 41, "probes": 60}]),
                gateways: vec!["nginx".into()],
                edge_locations: vec![],
                first_failure_at: Some(at),
                last_failure_at: Some(at),
                window_seconds: 300,
                opened_at: at,
                last_seen_at: at,
                resolved_at: (event == EventKind::Resolved).then_some(at),
                scope: IncidentScope::Target,
                targets: vec!["http://shop.test/".into()],
                fault_side: FaultSide::Site,
                version: 1,
                path_summary: None,
            },
            previous: None,
            link: Some("https://vantage.example/incidents/7".into()),
            sent_at: at,
        }
    }

    #[test]
    fn webhook_body_names_target_dimension_counts_window_and_link() {
        let body = webhook_body(&sample_notice(EventKind::Opened));
        assert_eq!(body["event"], "incident.opened");
        assert_eq!(body["incident_id"], 7);
        assert_eq!(body["event_id"], 31);
        assert_eq!(body["incident_url"], "https://vantage.example/incidents/7");
        assert_eq!(body["dimension"], "egress_prefix");
        assert_eq!(body["value"], "127.0.2.0/24");
        assert_eq!(
            body["summary"],
            "41 of 43 probes of http://shop.test/ from egress_prefix 127.0.2.0/24 (narrowed to 127.0.2.0/28) got 502; 0 of 380 from everywhere else"
        );
        assert_eq!(
            body["counts"],
            json!({
                "segment": {"failures": 41, "status_502": 41, "probes": 43},
                "rest": {"failures": 0, "status_502": 0, "probes": 380}
            })
        );
        assert_eq!(body["opened_at"], "2026-11-21T12:00:00Z");
        assert_eq!(body["resolved_at"], Value::Null);
        assert_eq!(body["fault_side"], "site");
        assert_eq!(body["version"], 1);
        assert!(body.get("test").is_none());
    }

    #[test]
    fn title_says_what_happened_where() {
        assert_eq!(
            title(&sample_notice(EventKind::Resolved)),
            "Resolved: 502 for http://shop.test/ from egress_prefix 127.0.2.0/24 (incident 7)"
        );
    }

    /// Where the paths part, when the confirmation probes traced them:
    /// every format carries the line; without it, none mentions paths.
    #[test]
    fn every_format_carries_the_path_summary() {
        use crate::alert::config::SinkKind;
        let line = "the 2 failing vantages' paths all pass 10.1.0.1 (hop 1); none of the 4 healthy paths does";
        let mut notice = sample_notice(EventKind::Opened);
        notice.incident.path_summary = Some(line.to_owned());
        let sink = |kind| {
            let mut s =
                crate::alert::config::Sink::webhook("s", "http://127.0.0.1:9/".parse().unwrap());
            s.kind = kind;
            s.routing_key = Some("K".into());
            s
        };
        assert_eq!(webhook_body(&notice)["path_summary"], line);
        let slack = crate::alert::slack::body(&notice).to_string();
        assert!(slack.contains(&format!("Paths: {line}")), "{slack}");
        let pd = crate::alert::pagerduty::body(&notice, &sink(SinkKind::Pagerduty));
        assert_eq!(pd["payload"]["custom_details"]["paths"], line);
        let am = crate::alert::alertmanager::body(&notice, &sink(SinkKind::Alertmanager));
        assert_eq!(am[0]["annotations"]["paths"], line, "{am}");

        let plain = sample_notice(EventKind::Opened);
        assert!(webhook_body(&plain)["path_summary"].is_null());
        assert!(
            !crate::alert::slack::body(&plain)
                .to_string()
                .contains("Paths:")
        );
    }
}
