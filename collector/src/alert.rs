//! The alerter: sends one webhook per incident opening, one per
//! re-explanation (`incident.updated`) and one per resolution, to every
//! configured URL, with a timeout and retries.
//!
//! The `incidents` table and its explanation history are the outbox: a
//! notification is due while its `*_notified_at` column is NULL, so a
//! restart neither loses nor repeats one (beyond the one in flight when the
//! process died). An incident's notifications go out in order: opened,
//! each update, resolved.

use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::store::{Incident, Notification, Store};

/// How often pending notifications are looked for even without a wake-up
/// (catches up after a restart or a failed pass).
const POLL_INTERVAL: Duration = Duration::from_secs(5);

/// One webhook and how to deliver to it.
#[derive(Debug, Clone)]
pub struct Webhook {
    pub url: Url,
    /// Per attempt.
    pub timeout: Duration,
    /// Attempts per notification, the first included.
    pub attempts: usize,
}

/// Delivers incident notifications to webhooks.
pub struct Alerter {
    store: Arc<Store>,
    webhooks: Vec<Webhook>,
    client: reqwest::Client,
    changed: Arc<Notify>,
}

/// A webhook could not be built or delivered.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    #[error("building HTTP client: {0}")]
    Client(reqwest::Error),
}

impl Alerter {
    pub fn new(
        store: Arc<Store>,
        webhooks: Vec<Webhook>,
        changed: Arc<Notify>,
    ) -> Result<Self, AlertError> {
        vantage_agent::install_crypto_provider();
        let client = reqwest::Client::builder()
            .user_agent(concat!("vantage-collector/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(AlertError::Client)?;
        Ok(Self {
            store,
            webhooks,
            client,
            changed,
        })
    }

    /// Delivers notifications until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            // An incident's next notification is due only once the one
            // before was handled: go again at once while there were some.
            while self.deliver_pending().await && !shutdown.is_cancelled() {}
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.changed.notified() => {}
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
            }
        }
    }

    /// Handles every notification due now; whether any was handled (and
    /// the next of its incident may be due).
    async fn deliver_pending(&self) -> bool {
        let pending = match self.store.pending_notifications().await {
            Ok(p) => p,
            Err(error) => {
                tracing::warn!(%error, "Cannot read pending notifications; will retry.");
                return false;
            }
        };
        let mut handled = false;
        for (incident, which) in pending {
            let body = match which {
                Notification::Updated(version) => {
                    match self.update_body(&incident, version).await {
                        Ok(body) => body,
                        Err(error) => {
                            tracing::warn!(%error, id = incident.id, "Cannot read the explanation history; will retry.");
                            continue;
                        }
                    }
                }
                _ => payload(&incident, which),
            };
            for hook in &self.webhooks {
                let url = &hook.url;
                let send = || async {
                    self.client
                        .post(url.clone())
                        .timeout(hook.timeout)
                        .json(&body)
                        .send()
                        .await?
                        .error_for_status()
                };
                let attempt = send
                    .retry(
                        ExponentialBuilder::new()
                            .with_min_delay(Duration::from_millis(200))
                            .with_max_delay(Duration::from_secs(5))
                            .with_jitter()
                            .with_max_times(hook.attempts.saturating_sub(1)),
                    )
                    .await;
                match attempt {
                    Ok(_) => {
                        tracing::info!(id = incident.id, event = event_name(which), %url, "Webhook delivered.")
                    }
                    Err(error) => tracing::error!(
                        id = incident.id, event = event_name(which), %url, %error,
                        attempts = hook.attempts,
                        "Webhook not delivered; giving up on this notification."
                    ),
                }
            }
            if let Err(error) = self.store.mark_notified(incident.id, which).await {
                tracing::warn!(%error, id = incident.id, "Cannot mark notification sent; it may repeat.");
                return false;
            }
            handled = true;
        }
        handled
    }
}

impl Alerter {
    /// The body of an `incident.updated`: the incident as that version
    /// explained it, and the explanation it replaced.
    async fn update_body(
        &self,
        incident: &Incident,
        version: i32,
    ) -> Result<Value, crate::store::StoreError> {
        let as_of = self.store.incident_as_of(incident, version).await?;
        let mut body = payload(&as_of, Notification::Updated(version));
        if let Some((dimension, value, explanation)) = self
            .store
            .previous_explanation(incident.id, version)
            .await?
        {
            body["previous"] = json!({
                "dimension": dimension, "value": value, "explanation": explanation,
            });
        }
        Ok(body)
    }
}

fn event_name(which: Notification) -> &'static str {
    match which {
        Notification::Opened => "incident.opened",
        Notification::Updated(_) => "incident.updated",
        Notification::Resolved => "incident.resolved",
    }
}

/// The JSON body of a notification. Third parties parse this: fields are
/// only ever added (`counts.*.status_502` stays, equal to `failures`).
pub fn payload(incident: &Incident, which: Notification) -> Value {
    let failure = match incident.pattern.as_str() {
        "connection" => "a connection-level failure".to_owned(),
        _ => incident
            .statuses
            .iter()
            .map(i16::to_string)
            .collect::<Vec<_>>()
            .join("/"),
    };
    // The counts are the tested segment's; the narrowed prefix is named
    // beside it, not instead of it.
    let place = match &incident.narrowed_value {
        Some(narrowed) => format!("{} (narrowed to {narrowed})", incident.value),
        None => incident.value.clone(),
    };
    let summary = if incident.scope == "path" {
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
    } else if incident.kind == "global" {
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
    };
    let counts = |failures: i64, probes: i64| json!({ "failures": failures, "status_502": failures, "probes": probes });
    json!({
        "event": event_name(which),
        "incident_id": incident.id,
        "target": incident.target,
        "pattern": incident.pattern,
        "statuses": incident.statuses,
        "kind": incident.kind,
        "dimension": incident.dimension,
        "value": incident.value,
        "narrowed_value": incident.narrowed_value,
        "summary": summary,
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
        "opened_at": incident.opened_at,
        "last_seen_at": incident.last_seen_at,
        "resolved_at": incident.resolved_at,
        "scope": incident.scope,
        "targets": incident.targets,
        "fault_side": incident.fault_side,
        "fault_in": match incident.fault_side.as_str() {
            "path" => "the vantages' own path (proxy, resolver, egress), not the site",
            _ => "the site, for the vantages named",
        },
        "version": incident.version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    #[test]
    fn payload_names_target_dimension_counts_and_window() {
        let at = Utc.with_ymd_and_hms(2026, 11, 21, 12, 0, 0).unwrap();
        let incident = Incident {
            id: 7,
            target: "http://shop.test/".into(),
            pattern: "status".into(),
            kind: "segment".into(),
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
            correlated: json!([]),
            gateways: vec!["nginx".into()],
            edge_locations: vec![],
            first_failure_at: Some(at),
            last_failure_at: Some(at),
            window_seconds: 300,
            opened_at: at,
            last_seen_at: at,
            resolved_at: None,
            scope: "target".into(),
            targets: vec!["http://shop.test/".into()],
            fault_side: "site".into(),
            version: 1,
        };
        let body = payload(&incident, Notification::Opened);
        assert_eq!(body["event"], "incident.opened");
        assert_eq!(body["incident_id"], 7);
        assert_eq!(body["dimension"], "egress_prefix");
        assert_eq!(body["value"], "127.0.2.0/24");
        assert_eq!(
            body["summary"],
            "41 of 43 probes of http://shop.test/ from egress_prefix 127.0.2.0/24 (narrowed to 127.0.2.0/28) got 502; 0 of 380 from everywhere else"
        );
        assert_eq!(body["explanation"], "41 of 43 probes ...");
        assert_eq!(
            body["counts"],
            json!({
                "segment": {"failures": 41, "status_502": 41, "probes": 43},
                "rest": {"failures": 0, "status_502": 0, "probes": 380}
            })
        );
        assert_eq!(body["gateways"], json!(["nginx"]));
        assert_eq!(body["opened_at"], "2026-11-21T12:00:00Z");
        assert_eq!(body["resolved_at"], Value::Null);
        assert_eq!(body["fault_side"], "site");
        assert_eq!(body["version"], 1);
    }
}
