//! The process's metrics recorder (Prometheus text format), installed once
//! and rendered by `GET /metrics`.
//!
//! Counters: `vantage_ingest_results_total`, `vantage_ingest_duplicates_total`,
//! `vantage_ingest_refused_results_total{reason}`,
//! `vantage_ingest_rejected_batches_total`,
//! `vantage_ingest_throttled_batches_total`,
//! `vantage_ingest_auth_failures_total{reason}`; histogram
//! `vantage_ingest_commit_seconds`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the recorder on first use; `None` if another recorder was
/// installed first (metrics are then that recorder's business).
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| PrometheusBuilder::new().install_recorder().ok())
        .as_ref()
}
