//! The detector's I/O around confirmation probes ([`crate::detect::plan::confirm`]
//! says which and from where): which were asked recently (not again
//! within half an interval), asking (a probe request per candidate, to
//! the chosen (agent, vantage) pairs, through the control plane), and the
//! confirmations an incident's evidence lists.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::control::Targets;
use crate::detect::CONNECTION_OUTCOMES;
use crate::detect::pattern::Pattern;
use crate::detect::plan::Plan;
use crate::detect::plan::confirm::Confirm;
use crate::detect::records::IncidentRecord;
use crate::detect::track::CandidateKey;
use crate::store::{NewProbeRequest, Purpose, Store, StoreError};

/// When confirmation probes were last asked for each candidate since
/// `since`.
pub async fn recently_asked(
    store: &Store,
    since: DateTime<Utc>,
) -> Result<HashMap<CandidateKey, DateTime<Utc>>, StoreError> {
    Ok(store
        .recent_confirmations(since)
        .await?
        .into_iter()
        .filter_map(|(target, pattern, dimension, value, at)| {
            let pattern = Pattern::parse(&pattern)?;
            Some((CandidateKey::new(&target, pattern, &dimension, &value), at))
        })
        .collect())
}

/// The candidate as stored with its request.
fn candidate(c: &Confirm) -> serde_json::Value {
    serde_json::json!({
        "target": c.key.target,
        "pattern": c.key.pattern.as_str(),
        "dimension": c.key.dimension,
        "value": c.key.value,
        "inside": c.inside,
        "outside": c.outside,
    })
}

/// Asks for each confirmation; a request that cannot be stored is logged
/// at ERROR (the candidate then waits for its scheduled rounds).
pub async fn ask(store: &Store, confirmations: &[Confirm]) {
    for c in confirmations {
        let targets = Targets {
            pairs: c.inside.iter().chain(&c.outside).cloned().collect(),
            ..Targets::default()
        };
        let request = NewProbeRequest {
            purpose: Purpose::Confirmation,
            check_name: Some(c.check.clone()),
            definition: None,
            selector: serde_json::to_value(&targets).unwrap_or_default(),
            resolvers: Vec::new(),
            dial_each: c.dial_each,
            rounds: i32::try_from(c.rounds).unwrap_or(1),
            candidate: Some(candidate(c)),
            // The inside and outside vantages' paths are the incident's
            // evidence of where they part.
            trace_path: true,
        };
        match store.create_probe_request(&request).await {
            Ok(id) => {
                metrics::counter!("vantage_confirmation_requests_total").increment(1);
                tracing::info!(
                    request_id = id, candidate = %c.key, inside = c.inside.len(),
                    outside = c.outside.len(), "Asked for confirmation probes."
                );
            }
            Err(error) => tracing::error!(
                candidate = %c.key, %error,
                "Cannot ask for confirmation probes; the candidate waits for its scheduled rounds."
            ),
        }
    }
}

/// Adds to the evidence of every record the plan writes the confirmation
/// probes asked for its explanation within the window.
pub async fn add_evidence(
    store: &Store,
    plan: &mut Plan,
    since: DateTime<Utc>,
) -> Result<(), StoreError> {
    let records = plan
        .opens
        .iter_mut()
        .map(|o| &mut o.1)
        .chain(plan.updates.iter_mut().map(|u| &mut u.1))
        .chain(plan.refreshes.iter_mut().map(|r| &mut r.1));
    for record in records {
        add_to(store, record, since).await?;
    }
    Ok(())
}

async fn add_to(
    store: &Store,
    record: &mut IncidentRecord,
    since: DateTime<Utc>,
) -> Result<(), StoreError> {
    let key = (
        record.target.as_str(),
        record.pattern.as_str(),
        record.dimension.as_str(),
        record.value.as_str(),
    );
    let found = store
        .confirmations_of(key, since, &record.statuses, &CONNECTION_OUTCOMES)
        .await?;
    if found.is_empty() {
        return Ok(());
    }
    record.evidence["confirmation_probes"] = found
        .iter()
        .map(|c| {
            let side = |side: &str| {
                c.candidate
                    .as_ref()
                    .and_then(|v| v.get(side).cloned())
                    .unwrap_or_default()
            };
            serde_json::json!({
                "request_id": c.id,
                "asked_at": c.requested_at,
                "inside": {
                    "vantages": side("inside"),
                    "probes": c.inside_probes,
                    "failures": c.inside_failures,
                },
                "outside": {
                    "vantages": side("outside"),
                    "probes": c.outside_probes,
                    "failures": c.outside_failures,
                },
            })
        })
        .collect();
    // Where the inside vantages' paths part from the outside ones', as
    // their confirmation probes traced them.
    let ids: Vec<i64> = found.iter().map(|c| c.id).collect();
    let paths = store.request_paths(&ids).await?;
    let reading = crate::path_evidence::divergence(&paths);
    if let Some(summary) = reading.summary() {
        record.evidence["paths"] = serde_json::json!({
            "summary": summary,
            "failing_traces": reading.failing,
            "healthy_traces": reading.healthy,
            "divergent_hop": reading.divergent_hop.map(|(ttl, address)| {
                serde_json::json!({ "ttl": ttl, "address": address.to_string() })
            }),
            "port_answered_at": reading.intercepted_at.map(|(ttl, address)| {
                serde_json::json!({ "ttl": ttl, "address": address.map(|a| a.to_string()) })
            }),
            "path_mtu_below": reading.mtu_below,
            "black_hole": reading.black_hole,
        });
    }
    Ok(())
}
