//! Pages: every incident event reaches every sink exactly once, in order,
//! or visibly expires. Real PostgreSQL, real HTTP receivers (and a real
//! Alertmanager), the real binary where the behaviour is a process's
//! (two collectors, shutdown mid-attempt, the CLI). Retry schedules run on
//! a simulated clock: the outbox takes the time as an argument.

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

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const OLD_SECRET: &str = "whsec_b2xkIHNlY3JldCBiZWluZyByb3RhdGVkIG91dA==";

async fn migrated(pool: &PgPool) -> Arc<Store> {
    let store = Arc::new(Store::new(pool.clone()));
    store.migrate().await.unwrap();
    store
}

/// Opens an incident as the detector does (row, explanation history,
/// `incident.opened` event); its id.
async fn open_incident(pool: &PgPool, target: &str, dimension: &str, value: &str) -> i64 {
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
async fn record(pool: &PgPool, id: i64, event: &str) {
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

async fn re_explain(pool: &PgPool, id: i64, dimension: &str, value: &str) {
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

async fn resolve(pool: &PgPool, id: i64) {
    sqlx::query("UPDATE incidents SET resolved_at = now() WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await
        .unwrap();
    record(pool, id, "resolved").await;
}

fn webhook(name: &str, receiver: &WebhookReceiver) -> Sink {
    let mut sink = Sink::webhook(name, receiver.url().parse().unwrap());
    sink.timeout = Duration::from_secs(5);
    sink.secrets = vec![decode_secret(SECRET).unwrap()];
    sink
}

fn alerter(store: &Arc<Store>, sinks: Vec<Sink>) -> Alerter {
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
async fn step(alerter: &Alerter, now: DateTime<Utc>) {
    alerter.upkeep(now).await;
    let never = CancellationToken::new();
    for sink in 0..alerter.sinks().len() {
        while alerter.deliver_due(sink, now, &never).await.unwrap() > 0 {}
    }
}

#[derive(Debug, sqlx::FromRow)]
struct Row {
    incident_id: i64,
    event: String,
    sink: String,
    state: String,
    attempts: i32,
    last_error: Option<String>,
    delivered_at: Option<DateTime<Utc>>,
    expired_at: Option<DateTime<Utc>>,
    reason: Option<String>,
}

async fn notifications(pool: &PgPool) -> Vec<Row> {
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
fn events(receiver: &WebhookReceiver) -> Vec<(i64, String)> {
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

#[sqlx::test(migrations = false)]
async fn a_receiver_down_for_minutes_gets_every_event_once_in_order(pool: PgPool) {
    let store = migrated(&pool).await;
    let receiver = WebhookReceiver::start(LOOPBACK).await.unwrap();
    receiver.set_status(503);
    let alerter = alerter(&store, vec![webhook("hook", &receiver)]);
    let a = open_incident(&pool, "http://shop.test/", "region", "eu").await;
    let b = open_incident(&pool, "http://blog.test/", "resolver", "127.0.0.53").await;
    re_explain(&pool, a, "egress_prefix", "127.0.2.0/24").await;
    resolve(&pool, a).await;

    // Ten minutes of simulated time, the receiver down for the first six.
    let start = Utc::now();
    let up_at = start + chrono::Duration::minutes(6);
    let mut now = start;
    while now < start + chrono::Duration::minutes(16) {
        if now >= up_at {
            receiver.set_status(204);
        }
        step(&alerter, now).await;
        now += chrono::Duration::seconds(5);
    }

    let of = |id: i64| -> Vec<String> {
        events(&receiver)
            .into_iter()
            .filter(|e| e.0 == id)
            .map(|e| e.1)
            .collect()
    };
    assert_eq!(
        of(a),
        ["incident.opened", "incident.updated", "incident.resolved"],
        "every event once, an incident's in order"
    );
    assert_eq!(of(b), ["incident.opened"]);
    assert_eq!(receiver.requests().len(), 4);
    let updated = receiver
        .received()
        .into_iter()
        .find(|b| b["event"] == "incident.updated")
        .unwrap();
    assert_eq!(updated["previous"]["dimension"], "region");
    assert_eq!(updated["dimension"], "egress_prefix");
    assert_eq!(
        updated["incident_url"],
        format!("http://vantage.test/incidents/{a}")
    );
    let rows = notifications(&pool).await;
    assert!(rows.iter().all(|r| r.state == "delivered"), "{rows:?}");
    let opened_a = rows
        .iter()
        .find(|r| r.incident_id == a && r.event == "incident.opened")
        .unwrap();
    // Retries 1, 2, 4 ... 256 s apart (75-100%): 8 to 10 failures in 6 min.
    assert!(
        (9..=12).contains(&opened_a.attempts),
        "attempts {}",
        opened_a.attempts
    );
    // Never more than the 5-minute cap after the receiver came back.
    let delivered = opened_a.delivered_at.unwrap();
    assert!(
        delivered >= up_at && delivered <= up_at + chrono::Duration::minutes(5),
        "delivered at {delivered}, receiver up at {up_at}"
    );
    let failures: i32 = rows.iter().map(|r| r.attempts - 1).sum();
    assert_eq!(
        receiver.attempts(),
        u64::try_from(failures).unwrap() + 4,
        "each attempt recorded once"
    );
    // webhook-id is the event's: the same on every retry and every sink.
    for r in receiver.requests() {
        assert_eq!(
            r.headers["webhook-id"],
            format!("evt_{}", r.body["event_id"])
        );
    }
}

#[sqlx::test(migrations = false)]
async fn an_undeliverable_page_expires_visibly_and_frees_its_successors(pool: PgPool) {
    // The recorder the collector installs at start.
    vantage_collector::metrics::handle();
    let store = migrated(&pool).await;
    let receiver = WebhookReceiver::start(LOOPBACK).await.unwrap();
    receiver.set_status(500);
    let mut sink = webhook("expiring", &receiver);
    sink.expire_after = Duration::from_secs(3600);
    let alerter = alerter(&store, vec![sink]);
    let a = open_incident(&pool, "http://shop.test/", "region", "eu").await;

    let start = Utc::now();
    let mut now = start;
    while now < start + chrono::Duration::minutes(62) {
        step(&alerter, now).await;
        now += chrono::Duration::seconds(30);
    }
    let rows = notifications(&pool).await;
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(r.state, "expired");
    // (PostgreSQL keeps microseconds.)
    assert!(
        r.expired_at.unwrap()
            >= start + chrono::Duration::hours(1) - chrono::Duration::milliseconds(1)
    );
    assert!(r.attempts >= 15, "attempts {}", r.attempts);
    assert!(
        r.last_error.as_deref().unwrap().contains("500"),
        "{:?}",
        r.last_error
    );
    assert!(receiver.requests().is_empty());
    let metrics = vantage_collector::metrics::handle().unwrap().render();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("vantage_notifications_expired_total{sink=\"expiring\"} 1")),
        "{metrics}"
    );

    // The expired page does not hold the incident's later ones back.
    receiver.set_status(204);
    resolve(&pool, a).await;
    step(&alerter, now).await;
    assert_eq!(events(&receiver), [(a, "incident.resolved".to_owned())]);
}

#[sqlx::test(migrations = false)]
async fn every_kind_of_sink_gets_its_format_and_webhooks_verify_during_rotation(pool: PgPool) {
    let store = migrated(&pool).await;
    let hook = WebhookReceiver::start(LOOPBACK).await.unwrap();
    let slack = WebhookReceiver::start(LOOPBACK).await.unwrap();
    let pagerduty = WebhookReceiver::start(LOOPBACK).await.unwrap();
    let alertmanager = WebhookReceiver::start(LOOPBACK).await.unwrap();
    let mut signed = webhook("hook", &hook);
    signed.secrets = vec![
        decode_secret(SECRET).unwrap(),
        decode_secret(OLD_SECRET).unwrap(),
    ];
    let other = |name: &str, kind: SinkKind, url: String| {
        let mut s = Sink::webhook(name, url.parse().unwrap());
        s.kind = kind;
        s
    };
    let mut pd = other("pd", SinkKind::Pagerduty, pagerduty.url());
    pd.routing_key = Some("R0UT1NG".into());
    let sinks = vec![
        signed,
        other("slack", SinkKind::Slack, slack.url()),
        pd,
        other("am", SinkKind::Alertmanager, alertmanager.base_url()),
    ];
    let alerter = alerter(&store, sinks);
    let a = open_incident(&pool, "http://shop.test/", "region", "eu").await;
    step(&alerter, Utc::now()).await;
    resolve(&pool, a).await;
    step(&alerter, Utc::now()).await;

    // Webhook: verified by the Standard Webhooks authors' library, with
    // the new secret and with the one being rotated out.
    let requests = hook.requests();
    assert_eq!(requests.len(), 2);
    for secret in [SECRET, OLD_SECRET] {
        let verifier = standardwebhooks::Webhook::new(secret).unwrap();
        for r in &requests {
            let mut headers = http::HeaderMap::new();
            for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
                headers.insert(name, r.headers[name].parse().unwrap());
            }
            verifier
                .verify(&r.raw, &headers)
                .unwrap_or_else(|e| panic!("{secret}: {e:?}"));
        }
    }
    let wrong = standardwebhooks::Webhook::new("whsec_d3Jvbmcgc2VjcmV0").unwrap();
    let r = &requests[0];
    let mut headers = http::HeaderMap::new();
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        headers.insert(name, r.headers[name].parse().unwrap());
    }
    assert!(wrong.verify(&r.raw, &headers).is_err());
    assert_eq!(r.body["event"], "incident.opened");
    assert_eq!(
        r.body["summary"],
        "12 of 12 probes of http://shop.test/ from region eu got 502; 0 of 40 from everywhere else"
    );

    // Slack: text plus blocks naming the explanation, counts and link.
    let s = &slack.received()[0];
    assert!(
        s["text"]
            .as_str()
            .unwrap()
            .starts_with("Opened: 502 for http://shop.test/ from region eu")
    );
    let blocks = s["blocks"].to_string();
    assert!(
        blocks.contains("12 of 12 probes from region eu"),
        "{blocks}"
    );
    assert!(
        blocks.contains(&format!("http://vantage.test/incidents/{a}")),
        "{blocks}"
    );

    // PagerDuty: one alert per incident, triggered then resolved.
    let p = pagerduty.received();
    assert_eq!(p[0]["event_action"], "trigger");
    assert_eq!(p[0]["routing_key"], "R0UT1NG");
    assert_eq!(p[0]["dedup_key"], format!("vantage-incident-{a}"));
    assert_eq!(p[0]["payload"]["severity"], "error");
    assert_eq!(p[0]["payload"]["custom_details"]["segment_failures"], 12);
    assert_eq!(p[1]["event_action"], "resolve");
    assert_eq!(p[1]["dedup_key"], p[0]["dedup_key"]);

    // Alertmanager: posted to /api/v2/alerts, ended on resolve.
    let m = alertmanager.requests();
    assert_eq!(m[0].path, "/api/v2/alerts");
    assert_eq!(m[0].body[0]["labels"]["alertname"], "VantageIncident");
    assert_eq!(m[0].body[0]["labels"]["dimension"], "region");
    let ends: DateTime<Utc> = m[1].body[0]["endsAt"].as_str().unwrap().parse().unwrap();
    assert!(ends <= Utc::now());
}

#[sqlx::test(migrations = false)]
async fn a_slow_sink_does_not_delay_a_fast_one_and_shutdown_hands_back_its_attempt(pool: PgPool) {
    let store = migrated(&pool).await;
    let slow = WebhookReceiver::start(LOOPBACK).await.unwrap();
    slow.set_delay(Duration::from_secs(60));
    let fast = WebhookReceiver::start(LOOPBACK).await.unwrap();
    let mut slow_sink = webhook("slow", &slow);
    slow_sink.timeout = Duration::from_secs(120);
    let changed = Arc::new(Notify::new());
    let alerter = Alerter::new(
        store.clone(),
        vec![slow_sink, webhook("fast", &fast)],
        None,
        changed.clone(),
    )
    .unwrap();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(alerter.run(shutdown.clone()));
    let a = open_incident(&pool, "http://shop.test/", "region", "eu").await;
    changed.notify_one();

    assert!(
        fast.wait_for_count(1, Duration::from_secs(20)).await,
        "the fast sink was paged"
    );
    assert_eq!(slow.attempts(), 1, "the slow sink's attempt is in flight");
    assert!(slow.requests().is_empty());

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("shutdown does not wait for the slow attempt")
        .unwrap();
    let (state, claimed, due): (String, Option<String>, bool) = sqlx::query_as(
        "SELECT state, claimed_by, next_attempt_at <= now() FROM notification_deliveries
         WHERE sink = 'slow' AND incident_id = $1",
    )
    .bind(a)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (state.as_str(), claimed, due),
        ("pending", None, true),
        "handed back, due at once"
    );
}

#[sqlx::test(migrations = false)]
async fn silences_hold_pages_and_release_them_when_they_end(pool: PgPool) {
    let store = migrated(&pool).await;
    let receiver = WebhookReceiver::start(LOOPBACK).await.unwrap();
    let alerter = alerter(&store, vec![webhook("hook", &receiver)]);
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_vantage-collector"))
            .args(args)
            .env("DATABASE_URL", database_url(&pool))
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    // A page already sent for `paged`; then shop.test is silenced.
    let paged = open_incident(&pool, "http://shop.test/", "resolver", "127.0.0.53").await;
    step(&alerter, Utc::now()).await;
    let (ok, out) = cli(&[
        "silence",
        "add",
        "--target",
        "http://shop.test/",
        "--for",
        "2h",
        "--comment",
        "deploy in progress",
    ]);
    assert!(ok, "{out}");
    let (ok, out) = cli(&[
        "silence",
        "add",
        "--target",
        "shop",
        "--for",
        "2h",
        "--comment",
        "x",
    ]);
    assert!(!ok && out.contains("--target"), "{out}");

    let held = open_incident(&pool, "http://shop.test/", "region", "eu").await;
    let brief = open_incident(&pool, "http://shop.test/", "region", "us").await;
    let other = open_incident(&pool, "http://blog.test/", "region", "eu").await;
    step(&alerter, Utc::now()).await;
    resolve(&pool, brief).await;
    resolve(&pool, paged).await;
    step(&alerter, Utc::now()).await;
    assert_eq!(
        events(&receiver),
        [
            (paged, "incident.opened".to_owned()),
            (other, "incident.opened".to_owned()),
            (paged, "incident.resolved".to_owned()),
        ],
        "silenced pages held; a paged incident's resolution still sent"
    );
    let rows = notifications(&pool).await;
    let held_row = rows.iter().find(|r| r.incident_id == held).unwrap();
    assert_eq!(held_row.state, "silenced");
    assert!(
        held_row
            .reason
            .as_deref()
            .unwrap()
            .contains("deploy in progress"),
        "{held_row:?}"
    );
    let (ok, out) = cli(&["silence", "list"]);
    assert!(
        ok && out.contains("active") && out.contains("deploy in progress"),
        "{out}"
    );

    let id: i64 = sqlx::query_scalar("SELECT id FROM silences")
        .fetch_one(&pool)
        .await
        .unwrap();
    let (ok, out) = cli(&["silence", "expire", &id.to_string()]);
    assert!(ok, "{out}");
    step(&alerter, Utc::now()).await;
    let got = events(&receiver);
    assert_eq!(
        &got[3..],
        [(held, "incident.opened".to_owned())],
        "the open one is paged when the silence ends; the one over meanwhile never"
    );
    let rows = notifications(&pool).await;
    assert!(
        rows.iter()
            .filter(|r| r.incident_id == brief)
            .all(|r| r.state == "silenced"),
        "{rows:?}"
    );
}

#[sqlx::test(migrations = false)]
async fn reminders_repeat_while_an_incident_stays_open(pool: PgPool) {
    let store = migrated(&pool).await;
    let receiver = WebhookReceiver::start(LOOPBACK).await.unwrap();
    let mut sink = webhook("hook", &receiver);
    sink.repeat_interval = Some(Duration::from_secs(600));
    let alerter = alerter(&store, vec![sink]);
    let a = open_incident(&pool, "http://shop.test/", "region", "eu").await;
    let start = Utc::now();
    let mut now = start;
    while now < start + chrono::Duration::minutes(25) {
        step(&alerter, now).await;
        now += chrono::Duration::seconds(30);
    }
    resolve(&pool, a).await;
    while now < start + chrono::Duration::minutes(50) {
        step(&alerter, now).await;
        now += chrono::Duration::seconds(30);
    }
    let got: Vec<String> = events(&receiver).into_iter().map(|e| e.1).collect();
    assert_eq!(
        got,
        [
            "incident.opened",
            "incident.reminder",
            "incident.reminder",
            "incident.resolved"
        ]
    );
}

#[sqlx::test(migrations = false)]
async fn two_collector_processes_deliver_each_event_once(pool: PgPool) {
    migrated(&pool).await;
    let receiver = WebhookReceiver::start(LOOPBACK).await.unwrap();
    receiver.set_delay(Duration::from_millis(50));
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[[sink]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\nsecrets = [\"{SECRET}\"]\n",
        receiver.url()
    );
    let (mut one, _) = start_collector(&pool, dir.path(), "one", &extra);
    let (mut two, _) = start_collector(&pool, dir.path(), "two", &extra);
    let mut ids = Vec::new();
    for n in 0..20 {
        ids.push(open_incident(&pool, &format!("http://site{n}.test/"), "region", "eu").await);
    }
    for id in &ids {
        resolve(&pool, *id).await;
    }
    assert!(
        receiver.wait_for_count(40, Duration::from_secs(60)).await,
        "got {} of 40",
        receiver.requests().len()
    );
    // Time for a duplicate to show up, if there were one.
    tokio::time::sleep(Duration::from_secs(3)).await;
    terminate(&mut one.0, Duration::from_secs(15));
    terminate(&mut two.0, Duration::from_secs(15));
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for r in receiver.requests() {
        *seen.entry(r.headers["webhook-id"].clone()).or_default() += 1;
    }
    assert_eq!(seen.len(), 40);
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");
    for id in ids {
        let order: Vec<String> = events(&receiver)
            .into_iter()
            .filter(|e| e.0 == id)
            .map(|e| e.1)
            .collect();
        assert_eq!(order, ["incident.opened", "incident.resolved"]);
    }
    let senders: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM notification_deliveries WHERE state = 'delivered'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(senders, 40);
}

#[sqlx::test(migrations = false)]
async fn a_collector_stopped_mid_attempt_loses_nothing(pool: PgPool) {
    migrated(&pool).await;
    let receiver = WebhookReceiver::start(LOOPBACK).await.unwrap();
    receiver.set_delay(Duration::from_secs(120));
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[[sink]]\nkind = \"webhook\"\nurl = \"{}\"\ntimeout = \"5m\"\n",
        receiver.url()
    );
    let (mut collector, _) = start_collector(&pool, dir.path(), "first", &extra);
    let a = open_incident(&pool, "http://shop.test/", "region", "eu").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while receiver.attempts() == 0 {
        assert!(Instant::now() < deadline, "no attempt");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = terminate(&mut collector.0, Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
    let (state, attempts, due): (String, i32, bool) = sqlx::query_as(
        "SELECT state, attempts, next_attempt_at <= now() FROM notification_deliveries",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((state.as_str(), attempts, due), ("pending", 0, true));

    receiver.set_delay(Duration::ZERO);
    let (_collector, http2) = start_collector(&pool, dir.path(), "second", &extra);
    let body = receiver
        .wait_for(Duration::from_secs(30), |b| b["incident_id"] == a)
        .await
        .expect("delivered by the next collector");
    assert_eq!(receiver.requests().len(), 1);
    // The link points at this collector's incident endpoint.
    assert_eq!(
        body["incident_url"],
        format!("http://{http2}/incidents/{a}")
    );
    vantage_agent::install_crypto_provider();
    let incident: Value = reqwest::get(format!("http://{http2}/incidents/{a}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(incident["incident_id"], a);
    assert_eq!(incident["state"], "open");
    assert_eq!(incident["history"][0]["dimension"], "region");
    let missing = reqwest::get(format!("http://{http2}/incidents/999999"))
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

// Multi-threaded: the receivers answer while the CLI process blocks this
// test's thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_test_sends_a_marked_event_to_each_sink_and_reports_answers() {
    let hook = WebhookReceiver::start(LOOPBACK).await.unwrap();
    let refusing = WebhookReceiver::start(LOOPBACK).await.unwrap();
    refusing.set_status(400);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "public_url = \"https://vantage.example\"\n\
             [[sink]]\nname = \"ops\"\nkind = \"webhook\"\nurl = \"{}\"\nsecrets = [\"{SECRET}\"]\n\
             [[sink]]\nname = \"pd\"\nkind = \"pagerduty\"\nurl = \"{}\"\nrouting_key = \"K\"\n",
            hook.url(),
            refusing.url()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_vantage-collector"))
            .args(["sink", "test", "--config"])
            .arg(&config)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = run(&[]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("ops (webhook)") && out.contains("OK, HTTP 204"),
        "{out}"
    );
    assert!(
        out.contains("pd (pagerduty)") && out.contains("FAILED, HTTP 400"),
        "{out}"
    );
    let body = &hook.received()[0];
    assert_eq!(body["event"], "vantage.test");
    assert_eq!(body["test"], true);
    assert_eq!(body["incident_url"], "https://vantage.example/incidents/0");
    let test_pd = &refusing.attempts();
    assert_eq!(*test_pd, 1);

    let (ok, out) = run(&["ops"]);
    assert!(ok, "{out}");
    assert_eq!(hook.received().len(), 2);
    let (ok, out) = run(&["nope"]);
    assert!(!ok && out.contains("no sink named \"nope\""), "{out}");
}

/// A real Alertmanager (Debian's `prometheus-alertmanager`) on loopback.
struct Alertmanager {
    child: crate::process::Collector,
    url: String,
    _dir: tempfile::TempDir,
}

impl Alertmanager {
    fn start() -> Self {
        let binary = ["/usr/bin/prometheus-alertmanager", "/usr/bin/alertmanager"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("prometheus-alertmanager is installed (apt install prometheus-alertmanager; .ci/run does)");
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(
            &config,
            "route:\n  receiver: default\n  group_wait: 1s\nreceivers:\n  - name: default\n",
        )
        .unwrap();
        let port = vantage_testkit::free_port(LOOPBACK).unwrap();
        let log = std::fs::File::create(dir.path().join("alertmanager.log")).unwrap();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Self {
            child: crate::process::Collector(child),
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    async fn ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = reqwest::get(format!("{}/-/ready", self.url)).await
                && r.status().is_success()
            {
                return;
            }
            assert!(
                self.child.0.id() > 0 && Instant::now() < deadline,
                "alertmanager did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Alerts it lists as active.
    async fn active(&self) -> Vec<Value> {
        let alerts: Vec<Value> = reqwest::get(format!("{}/api/v2/alerts", self.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        alerts
            .into_iter()
            .filter(|a| a["status"]["state"] == "active")
            .collect()
    }
}

#[sqlx::test(migrations = false)]
async fn a_real_alertmanager_shows_the_alert_while_open_and_not_after_resolve(pool: PgPool) {
    vantage_agent::install_crypto_provider();
    let am = Alertmanager::start();
    am.ready().await;
    let store = migrated(&pool).await;
    let mut sink = Sink::webhook("am", am.url.parse().unwrap());
    sink.kind = SinkKind::Alertmanager;
    sink.repeat_interval = Some(Duration::from_secs(60));
    let alerter = alerter(&store, vec![sink]);
    let a = open_incident(&pool, "http://shop.test/", "egress_prefix", "127.0.2.0/24").await;
    step(&alerter, Utc::now()).await;

    let active = am.active().await;
    assert_eq!(active.len(), 1, "{active:?}");
    let labels = &active[0]["labels"];
    assert_eq!(labels["alertname"], "VantageIncident");
    assert_eq!(labels["target"], "http://shop.test/");
    assert_eq!(labels["pattern"], "status");
    assert_eq!(labels["kind"], "segment");
    assert_eq!(labels["dimension"], "egress_prefix");
    assert_eq!(labels["value"], "127.0.2.0/24");
    assert_eq!(labels["incident_id"], a.to_string());
    assert!(
        active[0]["annotations"]["summary"]
            .as_str()
            .unwrap()
            .contains("12 of 12 probes")
    );
    assert_eq!(
        active[0]["generatorURL"],
        format!("http://vantage.test/incidents/{a}")
    );

    resolve(&pool, a).await;
    step(&alerter, Utc::now()).await;
    let active = am.active().await;
    assert!(active.is_empty(), "{active:?}");
    let rows = notifications(&pool).await;
    assert!(
        rows.iter()
            .all(|r| r.state == "delivered" && r.sink == "am"),
        "{rows:?}"
    );
}

#[sqlx::test(migrations = false)]
async fn an_upgrade_delivers_what_the_old_outbox_had_pending(pool: PgPool) {
    use vantage_collector::store::MIGRATOR;
    MIGRATOR.run_to(20261130000001, &pool).await.unwrap();
    // Under the old outbox: `pending` opened unannounced, `half` announced
    // but re-explained and resolved unannounced, `done` fully announced.
    for (target, open_notified, resolved, resolve_notified, version) in [
        ("http://pending.test/", false, false, false, 1),
        ("http://half.test/", true, true, false, 2),
        ("http://done.test/", true, true, true, 1),
    ] {
        sqlx::query(
            "WITH i AS (
                 INSERT INTO incidents (target, kind, dimension, value, segment_failures,
                     segment_probes, rest_failures, rest_probes, window_seconds, version,
                     open_notified_at, resolved_at, resolve_notified_at)
                 VALUES ($1, 'segment', 'region', 'eu', 5, 5, 0, 20, 300, $5,
                         CASE WHEN $2 THEN now() END, CASE WHEN $3 THEN now() END,
                         CASE WHEN $4 THEN now() END)
                 RETURNING id, version)
             INSERT INTO incident_explanations (incident_id, version, scope, kind, dimension,
                 value, explanation, segment_failures, segment_probes, rest_failures,
                 rest_probes, explained_at, notified_at)
             SELECT i.id, v, 'target', 'segment', 'region', 'eu', 'x', 5, 5, 0, 20, now(),
                    CASE WHEN v = 1 AND $2 THEN now() END
             FROM i, generate_series(1, i.version) v",
        )
        .bind(target)
        .bind(open_notified)
        .bind(resolved)
        .bind(resolve_notified)
        .bind(version)
        .execute(&pool)
        .await
        .unwrap();
    }
    let store = migrated(&pool).await;
    let receiver = WebhookReceiver::start(LOOPBACK).await.unwrap();
    step(
        &alerter(&store, vec![webhook("hook", &receiver)]),
        Utc::now(),
    )
    .await;
    let got: Vec<(String, String)> = receiver
        .received()
        .iter()
        .map(|b| {
            (
                b["target"].as_str().unwrap().to_owned(),
                b["event"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut got_sorted = got.clone();
    got_sorted.sort();
    assert_eq!(
        got_sorted,
        [
            (
                "http://half.test/".to_owned(),
                "incident.resolved".to_owned()
            ),
            (
                "http://half.test/".to_owned(),
                "incident.updated".to_owned()
            ),
            (
                "http://pending.test/".to_owned(),
                "incident.opened".to_owned()
            ),
        ]
    );
    let half: Vec<&str> = got
        .iter()
        .filter(|(t, _)| t == "http://half.test/")
        .map(|(_, e)| e.as_str())
        .collect();
    assert_eq!(half, ["incident.updated", "incident.resolved"]);
}
