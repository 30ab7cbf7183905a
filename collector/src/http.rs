//! The collector's HTTP endpoint for operators, load balancers and
//! Prometheus.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;

use crate::store::Store;

/// `GET /healthz`: 200 when PostgreSQL answers, 503 otherwise.
/// `GET /metrics`: Prometheus. `GET /incidents/<id>`: one incident as
/// JSON (the link every page carries).
pub fn router(store: Arc<Store>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/incidents/{id}", get(incident))
        .with_state(store)
}

async fn healthz(State(store): State<Arc<Store>>) -> (StatusCode, &'static str) {
    match sqlx::query("SELECT 1").execute(store.pool()).await {
        Ok(_) => (StatusCode::OK, "ok\n"),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n"),
    }
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
    State(store): State<Arc<Store>>,
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
