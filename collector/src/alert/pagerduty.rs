//! The `pagerduty` sink: PagerDuty Events API v2. An incident is one
//! PagerDuty alert (`dedup_key` = `vantage-incident-<id>`): opened, updated
//! and reminders trigger it (updating its summary and details), resolved
//! resolves it.

use serde_json::{Value, json};

use super::config::Sink;
use super::notice::{Notice, correlated, summary, title, truncate};
use crate::store::EventKind;

/// PagerDuty's limit on `payload.summary`.
pub const SUMMARY_LIMIT: usize = 1024;

/// The stable deduplication key of an incident.
pub fn dedup_key(notice: &Notice) -> String {
    match notice.event {
        EventKind::Test => format!("vantage-sink-test-{}", notice.event_id),
        _ => format!("vantage-incident-{}", notice.incident.id),
    }
}

/// The event body.
pub fn body(notice: &Notice, sink: &Sink) -> Value {
    let i = &notice.incident;
    let routing_key = sink.routing_key.clone().unwrap_or_default();
    if notice.event == EventKind::Resolved {
        return json!({
            "routing_key": routing_key,
            "event_action": "resolve",
            "dedup_key": dedup_key(notice),
        });
    }
    let severity = if notice.is_test() {
        "info"
    } else {
        sink.severity.as_str()
    };
    let mut body = json!({
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup_key(notice),
        "payload": {
            "summary": truncate(&format!("{}: {}", title(notice), summary(i)), SUMMARY_LIMIT),
            "source": sink.source,
            "severity": severity,
            "timestamp": i.opened_at,
            "component": i.target,
            "group": i.dimension,
            "class": i.pattern,
            "custom_details": {
                "event": notice.event.as_str(),
                "explanation": i.explanation,
                "dimension": i.dimension,
                "value": i.value,
                "narrowed_value": i.narrowed_value,
                "fault_side": i.fault_side,
                "targets": i.targets,
                "segment_failures": i.segment_failures,
                "segment_probes": i.segment_probes,
                "rest_failures": i.rest_failures,
                "rest_probes": i.rest_probes,
                "p_value": i.p_value,
                "failing_vantages": i.failing_vantages,
                "correlated": correlated(i),
                "gateways": i.gateways,
                "version": i.version,
                "previous": notice.previous.as_ref().map(|p| json!({
                    "dimension": p.dimension, "value": p.value, "explanation": p.explanation,
                })),
            },
        },
        "client": "Vantage",
    });
    if let Some(paths) = &i.path_summary {
        body["payload"]["custom_details"]["paths"] = json!(paths);
    }
    if let Some(link) = &notice.link {
        body["client_url"] = json!(link);
        body["links"] = json!([{ "href": link, "text": format!("Incident {} in Vantage", i.id) }]);
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::notice::tests::sample_notice;

    fn sink() -> Sink {
        let mut s = Sink::webhook("pd", "http://127.0.0.1:9/".parse().unwrap());
        s.kind = crate::alert::config::SinkKind::Pagerduty;
        s.routing_key = Some("R0UT1NGKEY".into());
        s
    }

    #[test]
    fn golden_trigger_and_resolve() {
        let trigger = body(&sample_notice(EventKind::Opened), &sink());
        assert_eq!(
            trigger,
            json!({
                "routing_key": "R0UT1NGKEY",
                "event_action": "trigger",
                "dedup_key": "vantage-incident-7",
                "payload": {
                    "summary": "Opened: 502 for http://shop.test/ from egress_prefix 127.0.2.0/24 (incident 7): 41 of 43 probes of http://shop.test/ from egress_prefix 127.0.2.0/24 (narrowed to 127.0.2.0/28) got 502; 0 of 380 from everywhere else",
                    "source": "vantage-collector",
                    "severity": "error",
                    "timestamp": "2026-11-21T12:00:00Z",
                    "component": "http://shop.test/",
                    "group": "egress_prefix",
                    "class": "status",
                    "custom_details": {
                        "event": "incident.opened",
                        "explanation": "41 of 43 probes ...",
                        "dimension": "egress_prefix",
                        "value": "127.0.2.0/24",
                        "narrowed_value": "127.0.2.0/28",
                        "fault_side": "site",
                        "targets": ["http://shop.test/"],
                        "segment_failures": 41,
                        "segment_probes": 43,
                        "rest_failures": 0,
                        "rest_probes": 380,
                        "p_value": 1e-40,
                        "failing_vantages": 2,
                        "correlated": ["region eu (41 of its 41 failures shared)"],
                        "gateways": ["nginx"],
                        "version": 1,
                        "previous": null
                    }
                },
                "client": "Vantage",
                "client_url": "https://vantage.example/incidents/7",
                "links": [{"href": "https://vantage.example/incidents/7", "text": "Incident 7 in Vantage"}]
            })
        );
        let resolve = body(&sample_notice(EventKind::Resolved), &sink());
        assert_eq!(
            resolve,
            json!({"routing_key": "R0UT1NGKEY", "event_action": "resolve", "dedup_key": "vantage-incident-7"})
        );
    }

    #[test]
    fn summary_stays_within_pagerdutys_limit() {
        let mut n = sample_notice(EventKind::Opened);
        n.incident.target = format!("http://{}.test/", "a".repeat(3000));
        let b = body(&n, &sink());
        assert_eq!(
            b["payload"]["summary"].as_str().unwrap().chars().count(),
            SUMMARY_LIMIT
        );
    }
}
