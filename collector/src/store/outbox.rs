//! The notification outbox: incident events, one delivery row per event
//! and sink, their claiming (`FOR UPDATE SKIP LOCKED`, so two collectors
//! never send one delivery twice), completion, expiry, reminders, and the
//! silences that hold deliveries back.
//!
//! Every function takes the time as `now` instead of reading the
//! database's clock, so that the retry schedule can be tested over
//! simulated hours.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};

use super::{Store, StoreError};

vocabulary! {
    /// What happened to an incident, as events are named in
    /// `incident_events`, in every payload and in `v_notifications` (one
    /// vocabulary).
    pub enum EventKind {
        Opened = "incident.opened",
        /// Re-explained: a better explanation replaced the one before.
        Updated = "incident.updated",
        Resolved = "incident.resolved",
        /// Resolved, then failing again with the same explanation within
        /// `reopen_within`: open again, the same incident.
        Reopened = "incident.reopened",
        /// Still open: sent again after a sink's `repeat_interval`.
        Reminder = "incident.reminder",
        /// `vantage-collector sink test`: never stored.
        Test = "vantage.test",
    }
}

impl EventKind {
    /// Whether events of this kind are stored (`incident_events.event`).
    pub fn is_stored(self) -> bool {
        self != Self::Test
    }
}

vocabulary! {
    /// Where one delivery of an event to a sink stands
    /// (`notification_deliveries.state`; the statements below spell these
    /// texts in their SQL).
    pub enum DeliveryState {
        /// Not yet delivered: claimed, tried, retried with backoff.
        Pending = "pending",
        /// The sink answered 2xx.
        Delivered = "delivered",
        /// Not delivered within the sink's `expire_after`: recorded, never
        /// sent.
        Expired = "expired",
        /// Held back by a silence; pending again when it ends.
        Silenced = "silenced",
    }
}

/// What the outbox needs to know of one configured sink.
#[derive(Debug, Clone)]
pub struct SinkSpec {
    pub name: String,
    pub kind: &'static str,
    /// A delivery not done this long after it was created expires.
    pub expire_after: Duration,
    /// Re-send while an incident stays open (reminders), if set.
    pub repeat_interval: Option<Duration>,
}

/// A delivery claimed for sending.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    pub id: i64,
    pub event_id: i64,
    pub incident_id: i64,
    pub event: EventKind,
    pub version: i32,
    /// Attempts completed before this one.
    pub attempts: i32,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptOutcome {
    /// The sink answered 2xx.
    Delivered { status: u16 },
    /// Anything else; tried again at `retry_at`.
    Failed {
        status: Option<u16>,
        error: String,
        retry_at: DateTime<Utc>,
    },
}

/// A delivery that ran out of time.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Expired {
    pub id: i64,
    pub sink: String,
    pub event: String,
    pub incident_id: i64,
    pub attempts: i32,
    pub last_error: Option<String>,
}

/// What one round of outbox upkeep did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Upkeep {
    /// Delivery rows created from new events (all sinks).
    pub fanned_out: u64,
    pub reminders: u64,
    /// Deliveries held back by a silence, per sink.
    pub silenced: Vec<String>,
    /// Deliveries whose silence ended while their incident is open.
    pub released: u64,
    pub expired: Vec<Expired>,
}

/// Which incidents a silence covers.
#[derive(Debug, Clone, PartialEq)]
pub struct SilenceMatch {
    /// A target URL, or `*` for every target.
    pub target: String,
    pub dimension: Option<String>,
    pub value: Option<String>,
}

/// A stored silence.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Silence {
    pub id: i64,
    pub target: String,
    pub dimension: Option<String>,
    pub value: Option<String>,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub expired_at: Option<DateTime<Utc>>,
    pub comment: String,
    pub created_by: String,
    pub active: bool,
}

/// Upkeep runs on one collector at a time (others skip the round).
const UPKEEP_LOCK: i64 = 0x7661_6e74_6167_6501;

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl Store {
    /// One round of upkeep, if no other collector is doing it: fans new
    /// events out to `sinks`, creates due reminders, holds deliveries that
    /// a silence covers, releases those whose silence ended while their
    /// incident is open, and expires deliveries past their time. None when
    /// another collector holds the upkeep lock.
    pub async fn outbox_upkeep(
        &self,
        sinks: &[SinkSpec],
        now: DateTime<Utc>,
    ) -> Result<Option<Upkeep>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(UPKEEP_LOCK)
            .fetch_one(&mut *tx)
            .await?;
        if !locked {
            tx.rollback().await?;
            return Ok(None);
        }
        let mut upkeep = Upkeep {
            fanned_out: fan_out(&mut tx, sinks, now).await?,
            ..Upkeep::default()
        };
        for sink in sinks {
            if let Some(every) = sink.repeat_interval {
                upkeep.reminders += remind(&mut tx, sink, every, now).await?;
            }
        }
        upkeep.released = sqlx::query(
            "UPDATE notification_deliveries d
             SET state = 'pending', silenced_by = NULL, next_attempt_at = $1,
                 expires_at = $1 + (d.expires_at - d.created_at)
             FROM silences s, incidents i
             WHERE d.state = 'silenced' AND s.id = d.silenced_by AND i.id = d.incident_id
               AND i.resolved_at IS NULL AND (s.ends_at <= $1 OR s.expired_at IS NOT NULL)",
        )
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        // A silence never holds back the resolution of an incident that a
        // sink was paged for: on-call must not be left with an open page.
        upkeep.silenced = sqlx::query_scalar(
            "UPDATE notification_deliveries d
             SET state = 'silenced', silenced_by = s.id, claimed_by = NULL
             FROM incident_events e, incidents i, silences s
             WHERE d.state = 'pending' AND (d.claimed_by IS NULL OR d.next_attempt_at <= $1)
               AND e.id = d.event_id AND i.id = d.incident_id
               AND s.expired_at IS NULL AND s.starts_at <= $1 AND s.ends_at > $1
               AND (s.target = '*' OR s.target = i.target OR s.target = ANY (i.targets))
               AND (s.dimension IS NULL OR s.dimension = i.dimension)
               AND (s.value IS NULL OR s.value = i.value)
               AND NOT (e.event = 'incident.resolved' AND EXISTS (
                   SELECT 1 FROM notification_deliveries o
                   WHERE o.incident_id = d.incident_id AND o.sink = d.sink
                     AND o.state = 'delivered'))
             RETURNING d.sink",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        upkeep.expired = sqlx::query_as(
            "UPDATE notification_deliveries d SET state = 'expired', expired_at = $1,
                    claimed_by = NULL
             FROM incident_events e
             WHERE e.id = d.event_id AND d.state = 'pending' AND d.expires_at <= $1
               AND (d.claimed_by IS NULL OR d.next_attempt_at <= $1)
             RETURNING d.id, d.sink, e.event, d.incident_id, d.attempts, d.last_error",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(upkeep))
    }

    /// Claims up to `limit` deliveries of `sink` that are due, oldest event
    /// first, for `lease` (after which another sender may take one whose
    /// sender died). A delivery is due only when every earlier event of
    /// its incident is done for this sink (delivered, expired, or, for a
    /// resolution, held by a silence), so events reach a sink in order and
    /// the resolution of a paged incident is never stuck behind an update a
    /// silence holds.
    pub async fn claim_deliveries(
        &self,
        sink: &str,
        claimant: &str,
        now: DateTime<Utc>,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<Claimed>, StoreError> {
        let rows: Vec<(i64, i64, i64, String, i32, i32)> = sqlx::query_as(
            "WITH due AS (
                 SELECT d.id FROM notification_deliveries d
                 JOIN incident_events de ON de.id = d.event_id
                 WHERE d.sink = $1 AND d.state = 'pending' AND d.next_attempt_at <= $3
                   AND NOT EXISTS (
                       SELECT 1 FROM notification_deliveries p
                       WHERE p.incident_id = d.incident_id AND p.sink = d.sink
                         AND p.event_id < d.event_id
                         AND (p.state = 'pending'
                              OR (p.state = 'silenced' AND de.event <> 'incident.resolved')))
                 ORDER BY d.event_id
                 LIMIT $5
                 FOR UPDATE SKIP LOCKED)
             UPDATE notification_deliveries d
             SET claimed_by = $2, next_attempt_at = $3 + $4 * interval '1 second'
             FROM due, incident_events e
             WHERE d.id = due.id AND e.id = d.event_id
             RETURNING d.id, d.event_id, d.incident_id, e.event, e.version, d.attempts",
        )
        .bind(sink)
        .bind(claimant)
        .bind(now)
        .bind(seconds(lease))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        let mut claimed: Vec<Claimed> = rows
            .into_iter()
            .filter_map(|(id, event_id, incident_id, event, version, attempts)| {
                Some(Claimed {
                    id,
                    event_id,
                    incident_id,
                    event: EventKind::parse(&event)?,
                    version,
                    attempts,
                })
            })
            .collect();
        claimed.sort_by_key(|c| c.event_id);
        Ok(claimed)
    }

    /// Records how an attempt of a claimed delivery ended. False when the
    /// claim was lost meanwhile (it outlived its lease and another sender
    /// took the delivery).
    pub async fn finish_delivery(
        &self,
        id: i64,
        claimant: &str,
        now: DateTime<Utc>,
        outcome: &AttemptOutcome,
    ) -> Result<bool, StoreError> {
        let query = match outcome {
            AttemptOutcome::Delivered { status } => sqlx::query(
                "UPDATE notification_deliveries
                 SET state = 'delivered', delivered_at = $3, last_attempt_at = $3,
                     attempts = attempts + 1, last_status = $4, last_error = NULL,
                     claimed_by = NULL
                 WHERE id = $1 AND claimed_by = $2 AND state = 'pending'",
            )
            .bind(id)
            .bind(claimant)
            .bind(now)
            .bind(i32::from(*status)),
            AttemptOutcome::Failed {
                status,
                error,
                retry_at,
            } => sqlx::query(
                "UPDATE notification_deliveries
                 SET last_attempt_at = $3, attempts = attempts + 1, last_status = $4,
                     last_error = $5, next_attempt_at = $6, claimed_by = NULL
                 WHERE id = $1 AND claimed_by = $2 AND state = 'pending'",
            )
            .bind(id)
            .bind(claimant)
            .bind(now)
            .bind(status.map(i32::from))
            .bind(error)
            .bind(retry_at),
        };
        Ok(query.execute(&self.pool).await?.rows_affected() == 1)
    }

    /// Gives claimed deliveries back, due at once (a sender stopping
    /// mid-attempt): nothing is lost, the next sender retries them.
    pub async fn release_claims(
        &self,
        ids: &[i64],
        claimant: &str,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "UPDATE notification_deliveries SET claimed_by = NULL, next_attempt_at = $3
             WHERE id = ANY ($1) AND claimed_by = $2 AND state = 'pending'",
        )
        .bind(ids)
        .bind(claimant)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Pending deliveries per sink (the `vantage_notifications_pending`
    /// gauge).
    pub async fn pending_deliveries(&self) -> Result<Vec<(String, i64)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT sink, count(*) FROM notification_deliveries WHERE state = 'pending'
             GROUP BY sink ORDER BY sink",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Silences `matching` from `starts_at` to `ends_at`; its id.
    pub async fn add_silence(
        &self,
        matching: &SilenceMatch,
        starts_at: DateTime<Utc>,
        ends_at: DateTime<Utc>,
        comment: &str,
        created_by: &str,
    ) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "INSERT INTO silences (target, dimension, value, starts_at, ends_at, comment,
                                   created_by)
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(&matching.target)
        .bind(&matching.dimension)
        .bind(&matching.value)
        .bind(starts_at)
        .bind(ends_at)
        .bind(comment)
        .bind(created_by)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Silences in force at `now` or later (all of them with `all`).
    pub async fn list_silences(
        &self,
        now: DateTime<Utc>,
        all: bool,
    ) -> Result<Vec<Silence>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT id, target, dimension, value, starts_at, ends_at, expired_at, comment,
                    created_by,
                    (expired_at IS NULL AND starts_at <= $1 AND ends_at > $1) AS active
             FROM silences
             WHERE $2 OR (expired_at IS NULL AND ends_at > $1)
             ORDER BY id",
        )
        .bind(now)
        .bind(all)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Ends a silence now; false when there is no such silence in force.
    pub async fn expire_silence(&self, id: i64, now: DateTime<Utc>) -> Result<bool, StoreError> {
        Ok(sqlx::query(
            "UPDATE silences SET expired_at = $2
             WHERE id = $1 AND expired_at IS NULL AND ends_at > $2",
        )
        .bind(id)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1)
    }
}

/// Creates one delivery per sink for every event not yet fanned out; the
/// rows created.
async fn fan_out(
    tx: &mut Transaction<'_, Postgres>,
    sinks: &[SinkSpec],
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let names: Vec<&str> = sinks.iter().map(|s| s.name.as_str()).collect();
    let kinds: Vec<&str> = sinks.iter().map(|s| s.kind).collect();
    let expire: Vec<f64> = sinks.iter().map(|s| seconds(s.expire_after)).collect();
    let created: i64 = sqlx::query_scalar(
        "WITH ev AS (
             UPDATE incident_events SET fanned_out_at = $1
             WHERE fanned_out_at IS NULL
             RETURNING id, incident_id),
         ins AS (
             INSERT INTO notification_deliveries
                 (event_id, incident_id, sink, sink_kind, created_at, next_attempt_at,
                  expires_at)
             SELECT ev.id, ev.incident_id, s.name, s.kind, $1, $1,
                    $1 + s.expire * interval '1 second'
             FROM ev CROSS JOIN unnest($2::text[], $3::text[], $4::float8[])
                               AS s (name, kind, expire)
             ON CONFLICT (event_id, sink) DO NOTHING
             RETURNING 1)
         SELECT count(*) FROM ins",
    )
    .bind(now)
    .bind(&names)
    .bind(&kinds)
    .bind(&expire)
    .fetch_one(&mut **tx)
    .await?;
    Ok(u64::try_from(created).unwrap_or(0))
}

/// Creates a reminder for `sink` of every open incident it was paged for
/// and has heard nothing about for `every`; how many.
async fn remind(
    tx: &mut Transaction<'_, Postgres>,
    sink: &SinkSpec,
    every: Duration,
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let created: i64 = sqlx::query_scalar(
        "WITH due AS (
             SELECT i.id, i.version FROM incidents i
             WHERE i.resolved_at IS NULL
               AND EXISTS (SELECT 1 FROM notification_deliveries d
                           WHERE d.incident_id = i.id AND d.sink = $1
                             AND d.state = 'delivered')
               AND NOT EXISTS (SELECT 1 FROM notification_deliveries d
                               WHERE d.incident_id = i.id AND d.sink = $1
                                 AND (d.state IN ('pending', 'silenced')
                                      OR d.delivered_at > $3 - $4 * interval '1 second'))
               AND NOT EXISTS (SELECT 1 FROM incident_events e
                               WHERE e.incident_id = i.id AND e.fanned_out_at IS NULL)),
         ev AS (
             INSERT INTO incident_events (incident_id, event, version, sink, created_at,
                                          fanned_out_at)
             SELECT id, 'incident.reminder', version, $1, $3, $3 FROM due
             RETURNING id, incident_id),
         ins AS (
             INSERT INTO notification_deliveries
                 (event_id, incident_id, sink, sink_kind, created_at, next_attempt_at,
                  expires_at)
             SELECT ev.id, ev.incident_id, $1, $2, $3, $3, $3 + $5 * interval '1 second'
             FROM ev
             RETURNING 1)
         SELECT count(*) FROM ins",
    )
    .bind(&sink.name)
    .bind(sink.kind)
    .bind(now)
    .bind(seconds(every))
    .bind(seconds(sink.expire_after))
    .fetch_one(&mut **tx)
    .await?;
    Ok(u64::try_from(created).unwrap_or(0))
}
