//! The detector's actor: every `interval`, if it holds the database's
//! detector lease, brings its kept window of the probes up to date
//! ([`window`], from the cells every collector's ingest writes), plans
//! the pass with the pure core ([`crate::detect::plan`]), asks for the
//! confirmation probes it wants ([`confirm`]) and has the store apply the
//! plan in one transaction (incidents and their explanation history,
//! tracked state, `detection_runs`, `segment_rates`). [`config`] is its
//! `[detector]` section.

pub mod config;
mod confirm;
pub mod window;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use vantage_service::supervise::Liveness;

use crate::detect::asn::AsnTable;
use crate::detect::records::OpenIncident;
use crate::detect::{DetectorSettings, decision, dimensions, plan};
use crate::store::{RunRecord, Store, StoreError};

/// What one pass did, for logs, tests and the benchmark.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PassSummary {
    /// False when another collector holds the detector lease: this one did
    /// nothing.
    pub ran: bool,
    pub probes: u64,
    pub cells: usize,
    pub segments: usize,
    pub opened: Vec<i64>,
    /// Incidents reopened (one `incident.reopened` each).
    pub reopened: Vec<i64>,
    /// Incidents re-explained (one `incident.updated` each).
    pub updated: Vec<i64>,
    pub resolved: Vec<i64>,
    /// How the kept window was brought up to date, and the probes read
    /// for it (only the new ones when updated).
    pub refresh: Option<window::Refresh>,
    pub read_probes: u64,
    /// Cell rows read for them.
    pub read_rows: u64,
    /// Cell slots the kept window holds after the pass (its memory).
    pub window_slots: usize,
    /// Time bringing the window up to date, and in everything after it
    /// (of which planning: reading the tracked state and deciding).
    pub query_time: Duration,
    pub plan_time: Duration,
    pub decide_time: Duration,
}

/// Periodically evaluates the window and opens, re-explains, refreshes
/// and resolves incidents.
pub struct Detector {
    store: Arc<Store>,
    settings: DetectorSettings,
    /// Woken when an incident opened, changed or resolved, for the alerter.
    changed: Arc<Notify>,
    /// The IP-to-ASN table and the load it came from.
    asn: Mutex<(Option<i64>, Arc<AsnTable>)>,
    /// Who this detector is, for the lease.
    holder: String,
    /// How long the last pass took: the lease covers at least two.
    last_pass: Mutex<Duration>,
    /// Told of every pass that ended (led or stood by), for `/healthz`.
    liveness: Option<Liveness>,
    /// The window as of the last pass (kept standing by too).
    window: tokio::sync::Mutex<Option<window::KeptWindow>>,
}

impl Detector {
    pub fn new(store: Arc<Store>, settings: DetectorSettings, changed: Arc<Notify>) -> Self {
        Self {
            store,
            settings,
            changed,
            asn: Mutex::new((None, Arc::new(AsnTable::default()))),
            holder: format!(
                "{}:{}:{}",
                hostname(),
                std::process::id(),
                rand::random::<u32>()
            ),
            last_pass: Mutex::new(Duration::ZERO),
            liveness: None,
            window: tokio::sync::Mutex::new(None),
        }
    }

    /// Reports each pass that ended to `liveness` (its supervisor's).
    pub fn with_liveness(mut self, liveness: Liveness) -> Self {
        self.liveness = Some(liveness);
        self
    }

    /// This detector's lease holder name.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Evaluates every `interval` until `shutdown`. Standing by, it also
    /// tries the moment the holder's lease runs out, so a killed holder is
    /// replaced within two intervals of its last pass, not three.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.settings.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut leading = false;
        let mut lease_ends: Option<tokio::time::Instant> = None;
        loop {
            let lease_ended = async {
                match lease_ends {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => {}
                _ = lease_ended => ticker.reset(),
            }
            lease_ends = None;
            // Fault tests make a pass panic here (test builds only).
            fail::fail_point!("detector-pass");
            match self.evaluate_at(Utc::now()).await {
                Ok(summary) => {
                    if let Some(liveness) = &self.liveness {
                        liveness.beat();
                    }
                    metrics::gauge!("vantage_detector_leader")
                        .set(f64::from(u8::from(summary.ran)));
                    if summary.ran {
                        metrics::counter!("vantage_detector_passes_total").increment(1);
                        metrics::histogram!("vantage_detector_pass_seconds")
                            .record((summary.query_time + summary.decide_time).as_secs_f64());
                        if let Some(refresh) = summary.refresh {
                            metrics::counter!("vantage_detector_reads_total", "read" => refresh.as_str())
                                .increment(1);
                            metrics::counter!("vantage_detector_read_results_total")
                                .increment(summary.read_probes);
                            metrics::counter!("vantage_detector_read_cells_total")
                                .increment(summary.read_rows);
                            metrics::gauge!("vantage_detector_window_slots")
                                .set(summary.window_slots as f64);
                        }
                        for (event, n) in [
                            ("opened", summary.opened.len()),
                            ("reopened", summary.reopened.len()),
                            ("updated", summary.updated.len()),
                            ("resolved", summary.resolved.len()),
                        ] {
                            metrics::counter!("vantage_incidents_total", "event" => event)
                                .increment(n as u64);
                        }
                    }
                    if !summary.ran {
                        lease_ends = self.standby_until().await;
                    }
                    if summary.ran != leading {
                        leading = summary.ran;
                        if leading {
                            tracing::info!(holder = %self.holder, "Holding the detector lease; running detection.");
                        } else {
                            tracing::info!(holder = %self.holder, "Another collector runs detection; standing by.");
                        }
                    }
                }
                Err(error) => {
                    metrics::counter!("vantage_detector_failed_passes_total").increment(1);
                    if let Some(liveness) = &self.liveness {
                        liveness.failed(format!("detection pass failed: {error}"));
                    }
                    tracing::warn!(%error, "Detection pass failed; retrying next interval.")
                }
            }
        }
        if leading {
            self.release_lease().await;
        }
    }

    /// Brings the kept window up to date for a window from `start`.
    async fn refresh_window(
        &self,
        kept: &mut Option<window::KeptWindow>,
        start: DateTime<Utc>,
    ) -> Result<window::RefreshSummary, StoreError> {
        window::KeptWindow::refresh(
            kept,
            &self.store,
            start,
            &dimensions::sources(),
            self.settings.window,
        )
        .await
    }

    /// When the other holder's lease runs out, if before the next tick
    /// (by the database's clock, which the lease is kept in).
    async fn standby_until(&self) -> Option<tokio::time::Instant> {
        match self.store.detector_lease_remaining().await {
            Ok(Some(remaining)) if remaining < self.settings.interval => {
                // A moment past the expiry, so the lease has run out when
                // the renewal arrives.
                Some(tokio::time::Instant::now() + remaining + Duration::from_millis(5))
            }
            Ok(_) => None,
            Err(error) => {
                tracing::debug!(%error, "Cannot read the detector lease; trying at the next tick.");
                None
            }
        }
    }

    /// Gives the detector lease up (a graceful stop), so that another
    /// collector takes over at its next pass.
    pub async fn release_lease(&self) {
        if let Err(error) = self.store.release_detector_lease(&self.holder).await {
            tracing::warn!(%error, "Cannot release the detector lease; it expires by itself.");
        }
    }

    /// The lease's length: another collector takes over two intervals
    /// after this one's last pass (or two passes, when a pass takes longer
    /// than an interval).
    fn lease(&self) -> chrono::Duration {
        let last = *self.last_pass.lock().unwrap_or_else(|e| e.into_inner());
        chrono::Duration::from_std(self.settings.interval.max(last).saturating_mul(2))
            .unwrap_or(chrono::Duration::MAX)
    }

    /// One pass over the window ending at `now`, if this detector holds
    /// (or can take) the lease.
    pub async fn evaluate_at(&self, now: DateTime<Utc>) -> Result<PassSummary, StoreError> {
        let started = Instant::now();
        let mut kept = self.window.lock().await;
        let window_start = before(now, self.settings.window);
        if !self
            .store
            .renew_detector_lease(&self.holder, self.lease())
            .await?
        {
            // Standing by, it keeps its window up to date all the same
            // (what is new costs little), so that taking over decides at
            // once instead of reading the whole window first.
            if let Err(error) = self.refresh_window(&mut kept, window_start).await {
                tracing::debug!(%error, "Cannot bring the standby's window up to date; next interval.");
            }
            return Ok(PassSummary::default());
        }
        let since_run = self.store.last_run_id().await?;
        let asn = self.asn_table().await?;
        let thresholds = self.thresholds();
        let refreshed = self.refresh_window(&mut kept, window_start).await?;
        let cells = kept
            .as_ref()
            .map(|k| k.cells(window_start, now, &thresholds))
            .unwrap_or_default();
        drop(kept);
        let query_time = started.elapsed();
        let planning = Instant::now();
        let open = self.store.open_incidents().await?;
        let tracked = self.store.tracked_failures(&open).await?;
        let asked = confirm::recently_asked(&self.store, window_start).await?;
        let resolved = self
            .store
            .resolved_since(before(now, self.settings.hysteresis.reopen_within))
            .await?;
        let mut pass = plan::plan(plan::PassInput {
            cells: &cells,
            tracked,
            open: &open.iter().map(OpenIncident::from).collect::<Vec<_>>(),
            settings: &self.settings,
            asn: &asn,
            thresholds: &thresholds,
            now,
            asked: &asked,
            resolved: &resolved,
        });
        confirm::add_evidence(&self.store, &mut pass, window_start).await?;
        let plan_time = planning.elapsed();
        let run = RunRecord {
            evaluated_at: now,
            window_start,
            window_end: now,
            probes: i64::try_from(pass.probes).unwrap_or(i64::MAX),
            duration_ms: started.elapsed().as_secs_f64() * 1000.0,
        };
        let Some(applied) = self
            .store
            .apply_pass(
                &pass,
                &run,
                before(now, self.settings.rates_retention),
                &self.holder,
                self.lease(),
                since_run,
            )
            .await?
        else {
            // The lease moved to another collector during the pass.
            return Ok(PassSummary::default());
        };
        for (id, r) in applied.opened.iter().zip(pass.opens.iter().map(|o| &o.1)) {
            tracing::warn!(
                id, target = %r.target, pattern = %r.pattern, dimension = %r.dimension,
                value = %r.value, explanation = %r.explanation, "Incident opened."
            );
        }
        for id in &applied.reopened {
            tracing::warn!(id, "Incident reopened: its failure came back.");
        }
        for (id, r) in &pass.updates {
            tracing::warn!(
                id, target = %r.target, dimension = %r.dimension, value = %r.value,
                explanation = %r.explanation, "Incident re-explained."
            );
        }
        for (id, key) in &pass.resolves {
            tracing::info!(id, candidate = %key, "Incident resolved.");
        }
        confirm::ask(&self.store, &pass.confirmations).await;
        *self.last_pass.lock().unwrap_or_else(|e| e.into_inner()) = started.elapsed();
        let summary = PassSummary {
            ran: true,
            probes: pass.probes,
            cells: cells.len(),
            segments: pass.segments,
            opened: applied.opened,
            reopened: applied.reopened,
            updated: pass.updates.iter().map(|u| u.0).collect(),
            resolved: pass.resolves.iter().map(|r| r.0).collect(),
            refresh: Some(refreshed.refresh),
            read_probes: refreshed.probes,
            read_rows: refreshed.rows,
            window_slots: refreshed.slots,
            query_time,
            plan_time,
            decide_time: started.elapsed().saturating_sub(query_time),
        };
        if !summary.opened.is_empty()
            || !summary.reopened.is_empty()
            || !summary.updated.is_empty()
            || !summary.resolved.is_empty()
        {
            self.changed.notify_one();
        }
        Ok(summary)
    }

    /// The age-bucket boundaries: enough for the shortest round a check
    /// may have (100 ms) over the whole window.
    fn thresholds(&self) -> Vec<u32> {
        let rounds = self.settings.window.as_millis() / 100;
        decision::bucket_thresholds(u32::try_from(rounds).unwrap_or(u32::MAX))
    }

    /// The IP-to-ASN table, reloaded when a new one was loaded.
    async fn asn_table(&self) -> Result<Arc<AsnTable>, StoreError> {
        let version = self.store.asn_version().await?;
        {
            let guard = self.asn.lock().unwrap_or_else(|e| e.into_inner());
            if guard.0 == version {
                return Ok(guard.1.clone());
            }
        }
        let table = Arc::new(AsnTable::new(self.store.asn_ranges().await?));
        tracing::info!(ranges = table.len(), "IP-to-ASN table loaded.");
        let mut guard = self.asn.lock().unwrap_or_else(|e| e.into_inner());
        *guard = (version, table.clone());
        Ok(table)
    }
}

/// `span` before `now`, but not before 1970: no probe is older, and
/// PostgreSQL's timestamps end where chrono's do not (a window or retention
/// of "100000000years" is accepted by the configuration).
fn before(now: DateTime<Utc>, span: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(span)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .map_or(DateTime::<Utc>::UNIX_EPOCH, |t| {
            t.max(DateTime::<Utc>::UNIX_EPOCH)
        })
}

/// This machine's name, for the lease holder (best effort).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "collector".into())
}
