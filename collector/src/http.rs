//! The collector's HTTP endpoint for operators, load balancers and
//! Prometheus: health, metrics, and the incident pages.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Value, json};
use vantage_service::supervise::{ComponentHealth, Supervisor};

use crate::store::Store;
use crate::ui::access;

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
/// The incident pages ([`crate::ui`]) are merged in, behind their own
/// access rule, when `[ui] enabled`, reading through `pages` (their own
/// pool: see [`crate::pools`]); `/healthz` asks `store`'s.
pub fn router(
    store: Arc<Store>,
    pages: Arc<Store>,
    supervisor: Supervisor,
    ui: Option<access::Access>,
) -> Router {
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(Shared {
            store: store.clone(),
            supervisor,
        });
    match ui {
        Some(access) => router.merge(crate::ui::router(pages, access)),
        None => router,
    }
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
