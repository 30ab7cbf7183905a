//! The collector's HTTP endpoint for operators, load balancers and
//! Prometheus.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::store::Store;

/// `GET /healthz`: 200 when PostgreSQL answers, 503 otherwise.
pub fn router(store: Arc<Store>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
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
