//! Sinks never wait for each other; two collectors send each page once;
//! a collector stopped mid-attempt loses nothing.

use super::*;

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
    // The slow sink's attempt is (or soon is) in flight, unanswered: the
    // fast sink did not wait for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while slow.attempts() == 0 {
        assert!(Instant::now() < deadline, "the slow sink was never tried");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(slow.attempts(), 1);
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
    vantage_service::install_crypto_provider();
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
