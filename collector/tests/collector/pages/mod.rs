//! Pages: every incident event reaches every sink exactly once, in order,
//! or visibly expires. Real PostgreSQL, real HTTP receivers (and a real
//! Alertmanager), the real binary where the behaviour is a process's
//! (two collectors, shutdown mid-attempt, the CLI). Retry schedules run on
//! a simulated clock: the outbox takes the time as an argument.
//!
//! [`outbox`]: retries, expiry, order, silences, reminders, upgrade;
//! [`sinks`]: each kind's format, signatures, a real Alertmanager, `sink
//! test`; [`concurrency`]: slow and fast sinks, two collector processes,
//! stopping mid-attempt. The helpers here record incidents and events as
//! the detector does.

mod concurrency;
mod outbox;
mod sinks;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use vantage_collector::alert::Alerter;
use vantage_collector::alert::config::{Sink, SinkKind, decode_secret};
use vantage_collector::store::Store;
use vantage_testkit::WebhookReceiver;

use crate::database_url;
use crate::process::{start_collector, terminate};

pub(super) const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
pub(super) const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub(super) const OLD_SECRET: &str = "whsec_b2xkIHNlY3JldCBiZWluZyByb3RhdGVkIG91dA==";

pub(super) async fn migrated(pool: &PgPool) -> Arc<Store> {
    let store = Arc::new(Store::new(pool.clone()));
    store.migrate().await.unwrap();
    store
}

/// Opens an incident as the detector does (row, explanation history,
/// `incident.opened` event); its id.
pub(super) async fn open_incident(
    pool: &PgPool,
    target: &str,
    dimension: &str,
    value: &str,
) -> i64 {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO incidents (target, kind, dimension, value, explanation, segment_failures,
                                segment_probes, rest_failures, rest_probes, window_seconds,
                                targets, failing_vantages)
         VALUES ($1, 'segment', $2, $3, $4, 12, 12, 0, 40, 300, ARRAY[$1], 2) RETURNING id",
    )
    .bind(target)
    .bind(dimension)
    .bind(value)
    .bind(format!("12 of 12 probes from {dimension} {value} got 502"))
    .fetch_one(pool)
    .await
    .unwrap();
    record(pool, id, "opened").await;
    id
}

/// Appends the incident's current explanation and an event, as the
/// detector's pass does.
pub(super) async fn record(pool: &PgPool, id: i64, event: &str) {
    sqlx::query(
        "INSERT INTO incident_explanations (incident_id, version, scope, kind, dimension, value,
             explanation, segment_failures, segment_probes, rest_failures, rest_probes,
             explained_at)
         SELECT id, version, scope, kind, dimension, value, explanation, segment_failures,
                segment_probes, rest_failures, rest_probes, now()
         FROM incidents WHERE id = $1
         ON CONFLICT DO NOTHING",
    )
    .bind(id)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO incident_events (incident_id, event, version, created_at)
         SELECT id, 'incident.' || $2, version, now() FROM incidents WHERE id = $1",
    )
    .bind(id)
    .bind(event)
    .execute(pool)
    .await
    .unwrap();
}

pub(super) async fn re_explain(pool: &PgPool, id: i64, dimension: &str, value: &str) {
    sqlx::query(
        "UPDATE incidents SET dimension = $2, value = $3, version = version + 1,
                explanation = 'now ' || $2 || ' ' || $3 WHERE id = $1",
    )
    .bind(id)
    .bind(dimension)
    .bind(value)
    .execute(pool)
    .await
    .unwrap();
    record(pool, id, "updated").await;
}

pub(super) async fn resolve(pool: &PgPool, id: i64) {
    sqlx::query("UPDATE incidents SET resolved_at = now() WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await
        .unwrap();
    record(pool, id, "resolved").await;
}

pub(super) fn webhook(name: &str, receiver: &WebhookReceiver) -> Sink {
    let mut sink = Sink::webhook(name, receiver.url().parse().unwrap());
    sink.timeout = Duration::from_secs(5);
    sink.secrets = vec![decode_secret(SECRET).unwrap()];
    sink
}

pub(super) fn alerter(store: &Arc<Store>, sinks: Vec<Sink>) -> Alerter {
    Alerter::new(
        store.clone(),
        sinks,
        Some("http://vantage.test".into()),
        Arc::new(Notify::new()),
    )
    .unwrap()
}

/// One step of simulated time: upkeep, then every sink delivers what is
/// due until nothing is.
pub(super) async fn step(alerter: &Alerter, now: DateTime<Utc>) {
    alerter.upkeep(now).await;
    let never = CancellationToken::new();
    for sink in 0..alerter.sinks().len() {
        while alerter.deliver_due(sink, now, &never).await.unwrap() > 0 {}
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(super) struct Row {
    pub(super) incident_id: i64,
    pub(super) event: String,
    pub(super) sink: String,
    pub(super) state: String,
    pub(super) attempts: i32,
    pub(super) last_error: Option<String>,
    pub(super) delivered_at: Option<DateTime<Utc>>,
    pub(super) expired_at: Option<DateTime<Utc>>,
    pub(super) reason: Option<String>,
}

pub(super) async fn notifications(pool: &PgPool) -> Vec<Row> {
    sqlx::query_as(
        "SELECT incident_id, event, sink, state, attempts, last_error, delivered_at, expired_at,
                reason
         FROM v_notifications ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// (incident, event) of every body received, in arrival order.
pub(super) fn events(receiver: &WebhookReceiver) -> Vec<(i64, String)> {
    receiver
        .received()
        .iter()
        .map(|b| {
            (
                b["incident_id"].as_i64().unwrap(),
                b["event"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}
