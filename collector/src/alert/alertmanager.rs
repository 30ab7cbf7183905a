//! The `alertmanager` sink: alerts pushed to Alertmanager's
//! `/api/v2/alerts`, as Prometheus does. An open incident is re-sent every
//! `repeat_interval` with `endsAt` four intervals ahead, so it stays active
//! while the collector keeps sending and ends by itself if the collector is
//! gone; the resolution sends `endsAt` = the resolution time. A
//! re-explanation ends the alert under the old labels and starts one under
//! the new.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::config::Sink;
use super::notice::{Notice, summary};
use crate::store::EventKind;

/// The `alertname` label of every incident's alert.
pub const ALERTNAME: &str = "VantageIncident";

/// The endpoint under the configured base URL.
pub fn endpoint(base: &url::Url) -> url::Url {
    let mut url = base.clone();
    let path = format!("{}/api/v2/alerts", base.path().trim_end_matches('/'));
    url.set_path(&path);
    url
}

fn labels(notice: &Notice, dimension: &str, value: &str) -> Value {
    let i = &notice.incident;
    let alertname = if notice.is_test() {
        "VantageSinkTest"
    } else {
        ALERTNAME
    };
    json!({
        "alertname": alertname,
        "incident_id": i.id.to_string(),
        "target": i.target,
        "pattern": i.pattern,
        "kind": i.kind,
        "dimension": dimension,
        "value": value,
        "fault_side": i.fault_side,
    })
}

fn alert(notice: &Notice, labels: Value, ends_at: DateTime<Utc>) -> Value {
    let i = &notice.incident;
    let mut annotations = json!({
        "summary": summary(i),
        "explanation": i.explanation,
    });
    if let Some(link) = &notice.link {
        annotations["incident_url"] = json!(link);
    }
    if let Some(paths) = &i.path_summary {
        annotations["paths"] = json!(paths);
    }
    json!({
        "labels": labels,
        "annotations": annotations,
        "startsAt": i.opened_at,
        "endsAt": ends_at,
        "generatorURL": notice.link.clone().unwrap_or_default(),
    })
}

/// The alerts to post for `notice`.
pub fn body(notice: &Notice, sink: &Sink) -> Value {
    let i = &notice.incident;
    let now = notice.sent_at;
    let resend = sink
        .repeat_interval
        .unwrap_or(super::config::ALERTMANAGER_RESEND);
    let active_until =
        now + chrono::Duration::from_std(resend * 4).unwrap_or(chrono::Duration::MAX);
    let current = labels(notice, &i.dimension, &i.value);
    let mut alerts = Vec::new();
    if let (EventKind::Updated, Some(p)) = (notice.event, &notice.previous)
        && (p.dimension.as_str(), p.value.as_str()) != (i.dimension.as_str(), i.value.as_str())
    {
        alerts.push(alert(notice, labels(notice, &p.dimension, &p.value), now));
    }
    let ends_at = match notice.event {
        EventKind::Resolved => i.resolved_at.unwrap_or(now),
        _ => active_until,
    };
    alerts.push(alert(notice, current, ends_at));
    Value::Array(alerts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::notice::Previous;
    use crate::alert::notice::tests::sample_notice;

    fn sink() -> Sink {
        let mut s = Sink::webhook("am", "http://127.0.0.1:9093/".parse().unwrap());
        s.kind = crate::alert::config::SinkKind::Alertmanager;
        s.repeat_interval = Some(std::time::Duration::from_secs(60));
        s
    }

    #[test]
    fn golden_firing_alert() {
        assert_eq!(
            body(&sample_notice(EventKind::Opened), &sink()),
            json!([{
                "labels": {
                    "alertname": "VantageIncident", "incident_id": "7",
                    "target": "http://shop.test/", "pattern": "status", "kind": "segment",
                    "dimension": "egress_prefix", "value": "127.0.2.0/24", "fault_side": "site"
                },
                "annotations": {
                    "summary": "41 of 43 probes of http://shop.test/ from egress_prefix 127.0.2.0/24 (narrowed to 127.0.2.0/28) got 502; 0 of 380 from everywhere else",
                    "explanation": "41 of 43 probes ...",
                    "incident_url": "https://vantage.example/incidents/7"
                },
                "startsAt": "2026-11-21T12:00:00Z",
                "endsAt": "2026-11-21T12:04:00Z",
                "generatorURL": "https://vantage.example/incidents/7"
            }])
        );
    }

    #[test]
    fn resolution_ends_the_alert_and_an_update_moves_it() {
        let resolved = body(&sample_notice(EventKind::Resolved), &sink());
        assert_eq!(resolved[0]["endsAt"], "2026-11-21T12:00:00Z");
        let mut update = sample_notice(EventKind::Updated);
        update.previous = Some(Previous {
            dimension: "region".into(),
            value: "eu".into(),
            explanation: "old".into(),
        });
        let alerts = body(&update, &sink());
        assert_eq!(alerts.as_array().unwrap().len(), 2);
        assert_eq!(alerts[0]["labels"]["dimension"], "region");
        assert_eq!(alerts[0]["endsAt"], "2026-11-21T12:00:00Z");
        assert_eq!(alerts[1]["labels"]["dimension"], "egress_prefix");
        assert_eq!(alerts[1]["endsAt"], "2026-11-21T12:04:00Z");
    }

    #[test]
    fn endpoint_is_under_the_base_path() {
        assert_eq!(
            endpoint(&"http://127.0.0.1:9093".parse().unwrap()).as_str(),
            "http://127.0.0.1:9093/api/v2/alerts"
        );
        assert_eq!(
            endpoint(&"http://am.test/prefix/".parse().unwrap()).as_str(),
            "http://am.test/prefix/api/v2/alerts"
        );
    }
}
