//! The alerter: delivers every incident event (opened, updated, resolved,
//! reminders) to every configured sink, exactly once or visibly expired.
//!
//! The detector records events in `incident_events` in the transaction
//! that opens, re-explains or resolves an incident. Upkeep (one collector
//! at a time) fans each event out into one `notification_deliveries` row
//! per sink, adds reminders, applies silences and expires what ran out of
//! time. One sender per sink claims due rows (`FOR UPDATE SKIP LOCKED`),
//! sends up to the sink's `concurrency` at once, and records each answer:
//! only a 2xx marks a row delivered; anything else is retried with capped
//! exponential backoff. Sinks never wait for each other; an incident's
//! events reach each sink in order; at shutdown, attempts in flight are
//! dropped and their rows handed back, due at once.
//!
//! Files: [`config`] (the `[[sink]]` entries), [`notice`] (what a page
//! says, and the webhook JSON), [`slack`], [`pagerduty`], [`alertmanager`]
//! (the other formats), [`signing`] (Standard Webhooks), [`sink`] (one HTTP
//! attempt).

pub mod alertmanager;
pub mod config;
pub mod notice;
pub mod pagerduty;
pub mod signing;
pub mod sink;
pub mod slack;

use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, Utc};
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use vantage_service::supervise::Liveness;

pub use config::{Sink, SinkKind};
pub use notice::{Notice, Previous};

use crate::store::{AttemptOutcome, Claimed, EventKind, SinkSpec, Store, StoreError};

/// How often upkeep runs even without a wake-up from the detector (due
/// retries, reminders, silences ending, expiry).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(1);

/// How often a sender looks for due rows without a wake-up.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The first retry's delay; each later one doubles, up to the sink's
/// `max_backoff`.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// A claim outlives the attempt's timeout by this much.
const CLAIM_MARGIN: Duration = Duration::from_secs(15);

/// Delivers incident events to sinks.
pub struct Alerter {
    store: Arc<Store>,
    sinks: Vec<Sink>,
    client: reqwest::Client,
    /// Woken by the detector after a pass that recorded events.
    changed: Arc<Notify>,
    /// `public_url`, the base of each incident's link.
    link_base: Option<String>,
    /// Names this process in `claimed_by`.
    claimant: String,
    /// What upkeep needs of `sinks`.
    specs: Vec<SinkSpec>,
    /// Told of every upkeep that reached the database, for `/healthz`.
    liveness: Option<Liveness>,
}

/// The alerter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    #[error("building HTTP client: {0}")]
    Client(reqwest::Error),
}

/// The HTTP client every sink uses: no redirects (a sink that moved must
/// be reconfigured, not followed blindly with signed pages).
pub fn client() -> Result<reqwest::Client, AlertError> {
    vantage_service::install_crypto_provider();
    reqwest::Client::builder()
        .user_agent(concat!("vantage-collector/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(AlertError::Client)
}

/// The delay before retry number `attempt` (1 = the first retry):
/// exponential from [`FIRST_RETRY`], capped at `max`, then 75-100% of it
/// (jitter, so that a sink coming back is not hit by every retry at once).
pub fn backoff(attempt: i32, max: Duration) -> Duration {
    let exponent = u32::try_from(attempt.saturating_sub(1))
        .unwrap_or(0)
        .min(30);
    let full = FIRST_RETRY.saturating_mul(1 << exponent).min(max);
    full.mul_f64(0.75 + 0.25 * rand::random::<f64>())
}

impl Alerter {
    pub fn new(
        store: Arc<Store>,
        sinks: Vec<Sink>,
        link_base: Option<String>,
        changed: Arc<Notify>,
    ) -> Result<Self, AlertError> {
        let claimant = format!(
            "{}:{}:{:08x}",
            hostname(),
            std::process::id(),
            rand::random::<u32>()
        );
        let specs = sinks
            .iter()
            .map(|s| SinkSpec {
                name: s.name.clone(),
                kind: s.kind.as_str(),
                expire_after: s.expire_after,
                repeat_interval: s.repeat_interval,
            })
            .collect();
        Ok(Self {
            store,
            specs,
            sinks,
            client: client()?,
            changed,
            link_base: link_base.map(|b| b.trim_end_matches('/').to_owned()),
            claimant,
            liveness: None,
        })
    }

    /// Reports each upkeep that reached the database to `liveness`.
    pub fn with_liveness(mut self, liveness: Liveness) -> Self {
        self.liveness = Some(liveness);
        self
    }

    pub fn sinks(&self) -> &[Sink] {
        &self.sinks
    }

    /// Delivers until `shutdown`: upkeep here, one sender per sink.
    pub async fn run(self, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let (wake, woken) = watch::channel(0u64);
        let senders = TaskTracker::new();
        for index in 0..this.sinks.len() {
            let (this, woken, shutdown) = (this.clone(), woken.clone(), shutdown.clone());
            senders.spawn(async move { this.send_loop(index, woken, shutdown).await });
        }
        senders.close();
        loop {
            if this.upkeep(Utc::now()).await {
                wake.send_modify(|n| *n += 1);
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = this.changed.notified() => {}
                _ = tokio::time::sleep(UPKEEP_INTERVAL) => {}
            }
        }
        senders.wait().await;
    }

    /// One round of upkeep at `now`, logged and counted; whether it made
    /// deliveries due (senders should look now).
    pub async fn upkeep(&self, now: DateTime<Utc>) -> bool {
        let upkeep = self.store.outbox_upkeep(&self.specs, now).await;
        if upkeep.is_ok()
            && let Some(liveness) = &self.liveness
        {
            liveness.beat();
        }
        let upkeep = match upkeep {
            Ok(Some(u)) => u,
            Ok(None) => return false,
            Err(error) => {
                tracing::warn!(%error, "Cannot run outbox upkeep; will retry.");
                return false;
            }
        };
        for sink in &upkeep.silenced {
            metrics::counter!("vantage_notifications_silenced_total", "sink" => sink.clone())
                .increment(1);
        }
        for e in &upkeep.expired {
            metrics::counter!("vantage_notifications_expired_total", "sink" => e.sink.clone())
                .increment(1);
            tracing::error!(
                sink = %e.sink, event = %e.event, incident = e.incident_id, delivery = e.id,
                attempts = e.attempts, last_error = e.last_error.as_deref().unwrap_or(""),
                "Notification expired undelivered: on-call was not paged for this event \
                 (see v_notifications)."
            );
        }
        if upkeep.released > 0 {
            tracing::info!(
                deliveries = upkeep.released,
                "Silence ended while incidents are open: paging them now."
            );
        }
        if let Ok(pending) = self.store.pending_deliveries().await {
            for sink in &self.sinks {
                let n = pending
                    .iter()
                    .find(|(name, _)| name == &sink.name)
                    .map_or(0, |p| p.1);
                metrics::gauge!("vantage_notifications_pending", "sink" => sink.name.clone())
                    .set(n as f64);
            }
        }
        upkeep.fanned_out + upkeep.reminders + upkeep.released > 0
    }

    /// Sender of sink `index`: delivers what is due, then waits for a
    /// wake-up or the poll interval.
    async fn send_loop(
        &self,
        index: usize,
        mut woken: watch::Receiver<u64>,
        shutdown: CancellationToken,
    ) {
        while !shutdown.is_cancelled() {
            match self.deliver_due(index, Utc::now(), &shutdown).await {
                // Something was handled: a successor may be due now.
                Ok(n) if n > 0 => continue,
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, sink = %self.sinks[index].name, "Cannot claim deliveries; will retry.");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = woken.changed() => {}
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
            }
        }
    }

    /// Claims the deliveries of sink `index` due at `now` (up to its
    /// concurrency), attempts them at once, and records each answer;
    /// how many were attempted. On `shutdown`, attempts in flight are
    /// dropped and their rows handed back, due at once.
    pub async fn deliver_due(
        &self,
        index: usize,
        now: DateTime<Utc>,
        shutdown: &CancellationToken,
    ) -> Result<usize, StoreError> {
        let sink = &self.sinks[index];
        let claimed = self
            .store
            .claim_deliveries(
                &sink.name,
                &self.claimant,
                now,
                sink.timeout + CLAIM_MARGIN,
                sink.concurrency,
            )
            .await?;
        let count = claimed.len();
        // Outcomes are recorded at `now` plus the real time the attempts
        // took (simulated clocks in tests stay consistent).
        let started = std::time::Instant::now();
        let mut unfinished: Vec<i64> = claimed.iter().map(|c| c.id).collect();
        let mut attempts: FuturesUnordered<_> = claimed
            .into_iter()
            .map(|c| async move {
                let outcome = self.attempt(sink, &c, now).await;
                (c, outcome)
            })
            .collect();
        loop {
            let next = tokio::select! {
                next = attempts.next() => next,
                _ = shutdown.cancelled() => {
                    drop(attempts);
                    if !unfinished.is_empty() {
                        let handed_back = self.store.release_claims(&unfinished, &self.claimant, Utc::now()).await;
                        tracing::info!(sink = %sink.name, deliveries = unfinished.len(), ?handed_back, "Stopping: attempts in flight handed back, due at once.");
                    }
                    return Ok(count);
                }
            };
            let Some((claimed, outcome)) = next else {
                break;
            };
            unfinished.retain(|id| *id != claimed.id);
            let at = now + chrono::Duration::from_std(started.elapsed()).unwrap_or_default();
            self.record(sink, &claimed, &outcome, at).await;
        }
        Ok(count)
    }

    /// One attempt of one claimed delivery.
    async fn attempt(&self, sink: &Sink, claimed: &Claimed, now: DateTime<Utc>) -> AttemptOutcome {
        let retry_at = |after: Duration| {
            now + chrono::Duration::from_std(after).unwrap_or(chrono::Duration::MAX)
        };
        let delay = backoff(claimed.attempts + 1, sink.max_backoff);
        let notice = match self.notice(claimed, now).await {
            Ok(Some(notice)) => notice,
            Ok(None) => {
                return AttemptOutcome::Failed {
                    status: None,
                    error: format!("incident {} no longer exists", claimed.incident_id),
                    retry_at: retry_at(delay),
                };
            }
            Err(error) => {
                return AttemptOutcome::Failed {
                    status: None,
                    error: format!("reading the incident: {error}"),
                    retry_at: retry_at(delay),
                };
            }
        };
        let started = std::time::Instant::now();
        let result = sink::send(&self.client, sink, &notice).await;
        metrics::histogram!("vantage_notification_attempt_seconds", "sink" => sink.name.clone())
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(answer) => AttemptOutcome::Delivered {
                status: answer.status,
            },
            Err(e) => AttemptOutcome::Failed {
                status: e.status,
                // A sink asking for more time gets it, within the cap.
                retry_at: retry_at(
                    e.retry_after
                        .map_or(delay, |r| r.max(delay))
                        .min(sink.max_backoff.max(delay)),
                ),
                error: e.message,
            },
        }
    }

    /// Records an attempt's outcome, logged and counted.
    async fn record(
        &self,
        sink: &Sink,
        claimed: &Claimed,
        outcome: &AttemptOutcome,
        at: DateTime<Utc>,
    ) {
        let event = claimed.event.as_str();
        let result = match outcome {
            AttemptOutcome::Delivered { status } => {
                tracing::info!(sink = %sink.name, event, incident = claimed.incident_id, status, "Notification delivered.");
                "delivered"
            }
            AttemptOutcome::Failed {
                error, retry_at, ..
            } => {
                tracing::warn!(sink = %sink.name, event, incident = claimed.incident_id,
                    attempts = claimed.attempts + 1, %error, %retry_at,
                    "Notification not delivered; will retry.");
                "failed"
            }
        };
        metrics::counter!("vantage_notification_attempts_total", "sink" => sink.name.clone(), "result" => result)
            .increment(1);
        // Failover tests lose the record here, as a collector killed
        // between the sink's answer and the record would (test builds only).
        fail::fail_point!("alert-before-record", |_| ());
        // A database blip must not turn a sent page into a repeated one:
        // recording is retried for a few seconds (well within the claim).
        let finish = || {
            self.store
                .finish_delivery(claimed.id, &self.claimant, at, outcome)
        };
        let recorded = finish
            .retry(
                ExponentialBuilder::new()
                    .with_min_delay(Duration::from_millis(200))
                    .with_max_delay(Duration::from_secs(2))
                    .with_max_times(5),
            )
            .await;
        match recorded {
            Ok(true) => {
                if matches!(outcome, AttemptOutcome::Delivered { .. }) {
                    metrics::counter!("vantage_notifications_delivered_total", "sink" => sink.name.clone(), "event" => event)
                        .increment(1);
                }
            }
            Ok(false) => tracing::warn!(
                sink = %sink.name, delivery = claimed.id,
                "A delivery outlived its claim; another sender may have repeated it."
            ),
            Err(error) => tracing::error!(
                %error, sink = %sink.name, delivery = claimed.id,
                "Cannot record a delivery's outcome; it will be attempted again when its claim \
                 runs out."
            ),
        }
    }

    /// The notice of a claimed delivery: the incident as of the event.
    async fn notice(
        &self,
        claimed: &Claimed,
        now: DateTime<Utc>,
    ) -> Result<Option<Notice>, StoreError> {
        let Some(mut incident) = self.store.incident(claimed.incident_id).await? else {
            return Ok(None);
        };
        let mut previous = None;
        if claimed.event == EventKind::Updated {
            incident = self
                .store
                .incident_as_of(&incident, claimed.version)
                .await?;
            previous = self
                .store
                .previous_explanation(incident.id, claimed.version)
                .await?
                .map(|(dimension, value, explanation)| Previous {
                    dimension,
                    value,
                    explanation,
                });
        }
        let link = self.link(incident.id);
        Ok(Some(Notice {
            event: claimed.event,
            event_id: claimed.event_id,
            incident,
            previous,
            link,
            sent_at: now,
        }))
    }

    fn link(&self, id: i64) -> Option<String> {
        self.link_base
            .as_ref()
            .map(|base| format!("{base}/incidents/{id}"))
    }
}

/// This host's name, for `claimed_by`.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "collector".into())
}

/// Sends a test notice to each sink (`sink test`); each sink's answer.
pub async fn test_sinks(
    sinks: &[Sink],
    link_base: Option<&str>,
) -> Result<Vec<(String, Result<sink::Answer, sink::AttemptError>)>, AlertError> {
    let client = client()?;
    let notice = notice::test_notice(link_base, Utc::now());
    let mut answers = Vec::new();
    for s in sinks {
        answers.push((s.name.clone(), sink::send(&client, s, &notice).await));
    }
    Ok(answers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_up_to_the_cap() {
        let max = Duration::from_secs(300);
        for (attempt, full) in [(1, 1), (2, 2), (3, 4), (9, 256), (10, 300), (40, 300)] {
            let d = backoff(attempt, max);
            let full = Duration::from_secs(full);
            assert!(d <= full && d >= full.mul_f64(0.75), "{attempt}: {d:?}");
        }
    }
}
