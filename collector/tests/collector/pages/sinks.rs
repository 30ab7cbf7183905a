//! Each sink kind's format as a receiver gets it, Standard Webhooks
//! signatures, a real Alertmanager, and `sink test`.

use super::*;

/// The Standard Webhooks headers of a received request, for a verifier.
fn signature_headers(r: &vantage_testkit::Received) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        headers.insert(name, r.headers[name].parse().unwrap());
    }
    headers
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
            let headers = signature_headers(r);
            verifier
                .verify(&r.raw, &headers)
                .unwrap_or_else(|e| panic!("{secret}: {e:?}"));
        }
    }
    let wrong = standardwebhooks::Webhook::new("whsec_d3Jvbmcgc2VjcmV0").unwrap();
    let r = &requests[0];
    assert!(wrong.verify(&r.raw, &signature_headers(r)).is_err());
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
    /// Started and ready.
    async fn running() -> Self {
        vantage_service::install_crypto_provider();
        let am = Self::start();
        am.ready().await;
        am
    }

    /// A sink pushing to it, re-sending open incidents every `repeat`.
    fn sink(&self, repeat: Duration) -> Sink {
        let mut sink = Sink::webhook("am", self.url.parse().unwrap());
        sink.kind = SinkKind::Alertmanager;
        sink.repeat_interval = Some(repeat);
        sink
    }

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
    let am = Alertmanager::running().await;
    let store = migrated(&pool).await;
    let alerter = alerter(&store, vec![am.sink(Duration::from_secs(60))]);
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

    // Re-explained: the alert moves to the new dimension and value.
    re_explain(&pool, a, "region", "us-east").await;
    step(&alerter, Utc::now()).await;
    let active = am.active().await;
    assert_eq!(active.len(), 1, "{active:?}");
    assert_eq!(active[0]["labels"]["dimension"], "region");
    assert_eq!(active[0]["labels"]["value"], "us-east");

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
async fn an_open_incident_stays_active_in_alertmanager_past_its_first_ends_at(pool: PgPool) {
    let am = Alertmanager::running().await;
    let store = migrated(&pool).await;
    // Re-sent every 5 s with endsAt 20 s ahead (a short cadence for the
    // test; 1 minute by default).
    let changed = Arc::new(Notify::new());
    let alerter = Alerter::new(
        store.clone(),
        vec![am.sink(Duration::from_secs(5))],
        None,
        changed.clone(),
    )
    .unwrap();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(alerter.run(shutdown.clone()));
    open_incident(&pool, "http://shop.test/", "region", "eu").await;
    changed.notify_one();
    let deadline = Instant::now() + Duration::from_secs(20);
    let first_ends_at = loop {
        if let Some(alert) = am.active().await.first() {
            break alert["endsAt"]
                .as_str()
                .unwrap()
                .parse::<DateTime<Utc>>()
                .unwrap();
        }
        assert!(Instant::now() < deadline, "never active");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Past the first endsAt, it is still active: the reminders kept it so.
    let wait = (first_ends_at - Utc::now()).to_std().unwrap_or_default() + Duration::from_secs(3);
    tokio::time::sleep(wait).await;
    let active = am.active().await;
    assert_eq!(active.len(), 1, "auto-resolved: {active:?}");
    let ends_at: DateTime<Utc> = active[0]["endsAt"].as_str().unwrap().parse().unwrap();
    assert!(ends_at > first_ends_at, "{ends_at} <= {first_ends_at}");
    let reminders: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM v_notifications WHERE event = 'incident.reminder' AND state = 'delivered'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(reminders >= 3, "{reminders} reminders");
    shutdown.cancel();
    running.await.unwrap();
}
