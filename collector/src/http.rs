//! The collector's HTTP endpoint for operators, load balancers and
//! Prometheus.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Value, json};
use vantage_agent::supervise::{ComponentHealth, Supervisor};

use crate::store::Store;

/// How long `/healthz` waits for PostgreSQL: a health checker's timeout
/// is often a few seconds, and the answer must come before it.
pub const HEALTH_DATABASE_TIMEOUT: Duration = Duration::from_millis(500);

/// What the handlers share.
#[derive(Clone)]
struct Shared {
    store: Arc<Store>,
    supervisor: Supervisor,
}

/// `GET /healthz`: per-component status as JSON; 200 only when every
/// component is alive and PostgreSQL answered within
/// [`HEALTH_DATABASE_TIMEOUT`], else 503. `GET /metrics`: Prometheus.
/// `GET /incidents/<id>`: one incident as JSON (the link every page
/// carries).
pub fn router(store: Arc<Store>, supervisor: Supervisor) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/incidents/{id}", get(incident))
        .with_state(Shared { store, supervisor })
}

async fn healthz(State(shared): State<Shared>) -> (StatusCode, Json<Value>) {
    let started = std::time::Instant::now();
    let answered = tokio::time::timeout(
        HEALTH_DATABASE_TIMEOUT,
        sqlx::query("SELECT 1").execute(shared.store.pool()),
    )
    .await;
    let database = match answered {
        Ok(Ok(_)) => json!({
            "ok": true,
            "answered_ms": started.elapsed().as_millis() as u64,
        }),
        Ok(Err(e)) => json!({ "ok": false, "error": e.to_string() }),
        Err(_) => json!({
            "ok": false,
            "error": format!(
                "no answer within {} ms",
                HEALTH_DATABASE_TIMEOUT.as_millis()
            ),
        }),
    };
    let components = shared.supervisor.health();
    let healthy = database["ok"] == json!(true) && components.iter().all(|c| c.alive);
    let body = json!({
        "status": if healthy { "ok" } else { "unavailable" },
        "database": database,
        "components": components.iter().map(|c| (c.name.clone(), component_json(c))).collect::<serde_json::Map<_, _>>(),
    });
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}

fn component_json(c: &ComponentHealth) -> Value {
    let now = SystemTime::now();
    let since = c
        .last_success
        .and_then(|t| now.duration_since(t).ok())
        .map(|d| d.as_secs_f64());
    json!({
        "alive": c.alive,
        "state": c.state.as_str(),
        "last_success": c.last_success.map(|t| chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339()),
        "seconds_since_success": since,
        "stale_after_seconds": c.stale_after.map(|d| d.as_secs_f64()),
        "restarts": c.restarts,
        "last_error": c.last_error,
    })
}

/// `GET /metrics`: Prometheus text format.
async fn metrics() -> (StatusCode, String) {
    match crate::metrics::handle() {
        Some(h) => (StatusCode::OK, h.render()),
        None => (
            StatusCode::NOT_FOUND,
            "metrics recorder not installed\n".into(),
        ),
    }
}

/// `GET /incidents/<id>`: the incident as the webhook JSON describes it,
/// with its explanation history.
async fn incident(
    State(Shared { store, .. }): State<Shared>,
    Path(id): Path<i64>,
) -> Result<Json<serde_json::Value>, (StatusCode, &'static str)> {
    let unavailable = |_| (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n");
    let incident = store
        .incident(id)
        .await
        .map_err(unavailable)?
        .ok_or((StatusCode::NOT_FOUND, "no such incident\n"))?;
    let history = store.incident_history(id).await.map_err(unavailable)?;
    let mut body = crate::alert::notice::incident_json(&incident);
    body["state"] = serde_json::json!(if incident.resolved_at.is_some() {
        "resolved"
    } else {
        "open"
    });
    body["history"] = serde_json::Value::Array(history);
    Ok(Json(body))
}
