//! The collector's upkeep loops: daily partitions created ahead, compacted
//! once closed and dropped past retention, the detector's hourly cell
//! partitions likewise, and the per-minute roll-up.

use std::sync::Arc;
use std::time::Duration;

use chrono::DurationRound as _;
use tokio_util::sync::CancellationToken;
use vantage_service::supervise::Liveness;

use crate::config::RetentionConfig;
use crate::store::Store;

/// How often daily partitions ahead of today are checked for.
pub(super) const PARTITION_MAINTENANCE_INTERVAL: Duration = Duration::from_secs(3600);

/// Hours of detector cell partitions created ahead (the check runs
/// hourly; the ingest creates any other it needs on demand).
const CELL_HOURS_AHEAD: i64 = 3;

/// Creates the partitions `ahead` days ahead and drops those past the
/// retention (raw results rolled up first); the detector's cells likewise,
/// kept for `cells_kept` (longer than its window); the days that ended
/// more than `closed_after` ago (the ingest refuses results that old)
/// compacted; whether all of it reached the database.
pub(super) async fn maintain_partitions(
    store: &Store,
    ahead: u64,
    retention: &RetentionConfig,
    cells_kept: Duration,
    closed_after: Duration,
) -> bool {
    let now = chrono::Utc::now();
    let mut created = store.ensure_partitions_around(now, 0, ahead).await;
    if created.is_ok() {
        created = store
            .ensure_cell_partitions_ahead(now, CELL_HOURS_AHEAD)
            .await;
    }
    if let Err(error) = &created {
        tracing::warn!(%error, "Cannot create partitions ahead; will retry.");
    }
    let before =
        |age: Duration| now - chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX);
    let mut ok = created.is_ok();
    match store.compact_days_before(before(closed_after)).await {
        Ok(days) => {
            for (name, how) in days {
                metrics::counter!("vantage_days_compacted_total", "how" => how.as_str())
                    .increment(1);
                tracing::info!(partition = %name, how = how.as_str(), "Compacted a closed day of results.");
            }
        }
        Err(error) => {
            ok = false;
            tracing::warn!(%error, "Cannot compact closed days of results; will retry.");
        }
    }
    for (what, dropped) in [
        (
            "retention.raw",
            store.drop_partitions_before(before(retention.raw)).await,
        ),
        (
            "retention.rollup",
            store
                .drop_rollup_partitions_before(before(retention.rollup))
                .await,
        ),
        (
            "the detector's window",
            store.drop_cell_partitions_before(before(cells_kept)).await,
        ),
    ] {
        match dropped {
            Ok(names) => {
                for name in names {
                    metrics::counter!("vantage_partitions_dropped_total").increment(1);
                    tracing::info!(partition = %name, "Dropped a partition past {what}.");
                }
            }
            Err(error) => {
                ok = false;
                tracing::warn!(%error, "Cannot drop partitions past {what}; will retry.");
            }
        }
    }
    ok
}

/// How often the last minutes are rolled up.
pub(super) const ROLLUP_INTERVAL: Duration = Duration::from_secs(60);
/// How far back each roll-up recomputes: results that arrive later than
/// this (a spool delivered after an outage) are rolled up with their whole
/// day before its raw partition is dropped.
const ROLLUP_LOOKBACK: Duration = Duration::from_secs(600);

/// Rolls the finished minutes of the last [`ROLLUP_LOOKBACK`] up, every
/// [`ROLLUP_INTERVAL`], until `stop`.
pub(super) async fn roll_up_continuously(
    store: Arc<Store>,
    live: Liveness,
    stop: CancellationToken,
) {
    loop {
        let now = chrono::Utc::now();
        let minute = now
            .duration_trunc(chrono::Duration::minutes(1))
            .unwrap_or(now);
        let from = minute - chrono::Duration::from_std(ROLLUP_LOOKBACK).unwrap_or_default();
        match store.roll_up(from, minute).await {
            Ok(_) => live.beat(),
            Err(error) => {
                live.failed(format!("cannot roll results up: {error}"));
                tracing::warn!(%error, "Cannot roll results up; will retry.");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(ROLLUP_INTERVAL) => {}
        }
    }
}
