//! The outbox on a simulated clock: retries, expiry, order, silences,
//! reminders, and an upgrade from the old outbox.

use super::*;

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

    // Re-explained during the silence: the update is held...
    re_explain(&pool, paged, "region", "eu-west").await;
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
    // ...and its resolution went out past it.
    let rows = notifications(&pool).await;
    let paged_rows: Vec<(&str, &str)> = rows
        .iter()
        .filter(|r| r.incident_id == paged)
        .map(|r| (r.event.as_str(), r.state.as_str()))
        .collect();
    assert_eq!(
        paged_rows,
        [
            ("incident.opened", "delivered"),
            ("incident.updated", "silenced"),
            ("incident.resolved", "delivered")
        ]
    );
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
