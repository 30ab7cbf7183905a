//! The field test, with real processes: targets failing the ways the field
//! notes describe (a WAF rule on one egress /24 that later spreads to the
//! whole region, a regional edge across three /24s, a resolver with a
//! stale view, one bad address among two A records, a global outage, a
//! forward proxy answering 502 to CONNECT), two DNS servers, two forward
//! proxies, four `vantage-agent` processes with 15 vantages on loopback
//! sources, a `vantage-collector` process detecting every round and a
//! webhook receiver. Asserts the paged dimension and value of each fault,
//! one `incident.updated` when the WAF fault spreads, one incident (not
//! one per target) for the proxy, and prints rounds to open and resolve.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use serde_json::Value;
use sqlx::PgPool;
use vantage_testkit::{DnsServer, ForwardProxy, ProxyKind, Target, WebhookReceiver};

use crate::database_url;
use crate::process::{agent_binary, terminate};

/// One probe round: every check's interval, and the detector's.
pub(crate) const ROUND: Duration = Duration::from_secs(2);
pub(crate) const RESOLVE_QUIET: Duration = Duration::from_secs(10);

pub(crate) fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub(crate) fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|n| n.parse().unwrap()).collect()
}

/// An open or resolved incident, as `v_incidents` shows it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct Row {
    pub id: i64,
    pub target: String,
    pub scope: String,
    pub dimension: String,
    pub value: String,
    pub version: i32,
    pub fault_side: String,
    pub explanation: String,
    pub opened_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
}

pub(crate) async fn incidents(pool: &PgPool) -> Vec<Row> {
    sqlx::query_as(
        "SELECT id, target, scope, dimension, value, version, fault_side, explanation,
                opened_at, resolved_at
         FROM v_incidents ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Polls `incidents` until `done` holds, or fails after `within`.
pub(crate) async fn wait_for(
    pool: &PgPool,
    what: &str,
    within: Duration,
    done: impl Fn(&[Row]) -> bool,
) -> Vec<Row> {
    let deadline = Instant::now() + within;
    loop {
        let rows = incidents(pool).await;
        if done(&rows) {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {within:?}: {rows:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(crate) fn rounds_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).as_seconds_f64() / ROUND.as_secs_f64()
}

/// The sites, resolvers and proxies of the field.
struct Field {
    waf: Target,
    region: Target,
    stale_new: Target,
    stale_old: Target,
    records_good: Target,
    records_bad: Target,
    global: Target,
    dns_a: DnsServer,
    dns_b: DnsServer,
    proxy_a: ForwardProxy,
    proxy_b: ForwardProxy,
    webhook: WebhookReceiver,
}

impl Field {
    async fn start() -> Self {
        let healthy =
            |addr: &'static str| async move { Target::start(ip(addr), None).await.unwrap() };
        let waf = healthy("127.0.0.20").await;
        let region = healthy("127.0.0.21").await;
        let stale_new = healthy("127.0.0.22").await;
        // The old server of a migration, on the same port: reachable only
        // by those whose resolver still answers its address.
        let stale_old = Target::start_at(
            SocketAddr::new(ip("127.0.0.23"), stale_new.addr().port()),
            None,
        )
        .await
        .unwrap();
        let records_good = healthy("127.0.0.24").await;
        let records_bad = Target::start_at(
            SocketAddr::new(ip("127.0.0.25"), records_good.addr().port()),
            None,
        )
        .await
        .unwrap();
        let global = healthy("127.0.0.26").await;
        let common = [
            ("waf.test", ip("127.0.0.20")),
            ("region.test", ip("127.0.0.21")),
            ("records.test", ip("127.0.0.24")),
            ("records.test", ip("127.0.0.25")),
            ("global.test", ip("127.0.0.26")),
        ];
        let mut a = common.to_vec();
        a.push(("stale.test", ip("127.0.0.22")));
        let mut b = common.to_vec();
        b.push(("stale.test", ip("127.0.0.23")));
        let proxy = |addr: &'static str| async move {
            ForwardProxy::start(
                ip(addr),
                ProxyKind::Http {
                    credentials: None,
                    refuse_with: None,
                },
            )
            .await
            .unwrap()
        };
        Self {
            waf,
            region,
            stale_new,
            stale_old,
            records_good,
            records_bad,
            global,
            dns_a: DnsServer::start(ip("127.0.0.53"), &a).await.unwrap(),
            dns_b: DnsServer::start(ip("127.0.0.54"), &b).await.unwrap(),
            proxy_a: proxy("127.0.0.61").await,
            proxy_b: proxy("127.0.0.62").await,
            webhook: WebhookReceiver::start(ip("127.0.0.1")).await.unwrap(),
        }
    }

    /// The checks every agent runs, one probe round apart.
    fn checks(&self) -> String {
        let check = |name: &str, host: &str, port: u16, extra: &str| {
            format!(
                "[[check]]\nname = \"{name}\"\nurl = \"http://{host}:{port}/\"\n\
                 interval = \"{}ms\"\ntimeout = \"1500ms\"\n{extra}",
                ROUND.as_millis()
            )
        };
        [
            check("waf", "waf.test", self.waf.addr().port(), ""),
            check("region", "region.test", self.region.addr().port(), ""),
            check(
                "stale",
                "stale.test",
                self.stale_new.addr().port(),
                &format!(
                    "resolvers = [\"udp://{}\", \"udp://{}\"]\n",
                    self.dns_a.addr(),
                    self.dns_b.addr()
                ),
            ),
            check(
                "records",
                "records.test",
                self.records_good.addr().port(),
                "dial = \"each\"\n",
            ),
            check("global", "global.test", self.global.addr().port(), ""),
        ]
        .join("")
    }
}

/// A vantage: name, source address, proxy.
pub(crate) type VantageSpec = (String, String, Option<String>);

/// Each agent: its id, region, and vantages.
fn fleet(field: &Field) -> Vec<(&'static str, &'static str, Vec<VantageSpec>)> {
    let direct = |name: &str, source: &str| (name.to_owned(), source.to_owned(), None);
    let proxied = |name: &str, source: &str, proxy: &ForwardProxy| {
        (
            name.to_owned(),
            source.to_owned(),
            Some(format!("http://{}", proxy.addr())),
        )
    };
    vec![
        (
            "east",
            "us-east",
            vec![
                direct("e1", "127.0.2.1"),
                direct("e2", "127.0.2.2"),
                direct("e3", "127.0.3.1"),
                direct("e4", "127.0.3.2"),
            ],
        ),
        (
            "west",
            "us-west",
            vec![
                direct("w1", "127.0.4.1"),
                direct("w2", "127.0.5.1"),
                direct("w3", "127.0.6.1"),
            ],
        ),
        (
            "eu",
            "eu",
            vec![
                direct("u1", "127.0.7.1"),
                direct("u2", "127.0.7.2"),
                direct("u3", "127.0.8.1"),
                direct("u4", "127.0.8.2"),
            ],
        ),
        (
            "ap",
            "ap",
            vec![
                proxied("p1", "127.0.10.1", &field.proxy_a),
                proxied("p2", "127.0.10.2", &field.proxy_a),
                proxied("p3", "127.0.10.3", &field.proxy_b),
                proxied("p4", "127.0.10.4", &field.proxy_b),
            ],
        ),
    ]
}

/// The collector and agent processes; stopped when dropped.
pub(crate) struct Processes {
    children: Vec<Child>,
    dir: tempfile::TempDir,
}

impl Processes {
    fn log(&self, name: &str) -> std::fs::File {
        std::fs::File::create(self.dir.path().join(name)).unwrap()
    }

    pub(crate) fn read_logs(&self) -> String {
        let mut out = String::new();
        for entry in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            if entry.path().extension().is_some_and(|e| e == "log") {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                out.push_str(&format!("--- {}\n", entry.path().display()));
                for line in tail.into_iter().rev() {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        out
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.children {
            terminate(child, Duration::from_secs(20));
        }
    }
}

async fn start_processes(pool: &PgPool, field: &Field) -> Processes {
    start_fleet(
        pool,
        &field.checks(),
        fleet(field),
        field.dns_a.addr(),
        &field.webhook.url(),
    )
    .await
}

/// A collector detecting every round and paging `webhook`, then one
/// agent per entry of `fleet` (id, region, vantages) running `checks`
/// with `dns` as its resolver.
pub(crate) async fn start_fleet(
    pool: &PgPool,
    checks: &str,
    fleet: Vec<(&'static str, &'static str, Vec<VantageSpec>)>,
    dns: SocketAddr,
    webhook: &str,
) -> Processes {
    let store = vantage_collector::store::Store::new(pool.clone());
    store.migrate().await.unwrap();
    let mut processes = Processes {
        children: Vec::new(),
        dir: tempfile::tempdir().unwrap(),
    };
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let grpc = SocketAddr::new(loopback, vantage_testkit::free_port(loopback).unwrap());
    let config = processes.dir.path().join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "grpc_listen = \"{grpc}\"\n\
             [detector]\ninterval = \"{}ms\"\nwindow = \"60s\"\nresolve_quiet = \"{}s\"\n\
             [[webhook]]\nurl = \"{}\"\n",
            ROUND.as_millis(),
            RESOLVE_QUIET.as_secs(),
            webhook
        ),
    )
    .unwrap();
    let collector = Command::new(env!("CARGO_BIN_EXE_vantage-collector"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("DATABASE_URL", database_url(pool))
        .env("RUST_LOG", "info")
        .stdout(processes.log("collector.log"))
        .stderr(processes.log("collector.log"))
        .spawn()
        .unwrap();
    processes.children.push(collector);
    assert!(
        vantage_testkit::wait_until_listening(grpc, Duration::from_secs(30)),
        "collector did not listen:\n{}",
        processes.read_logs()
    );
    for (agent, region, vantages) in fleet {
        let token = vantage_collector::enrol::enrol(&store, agent, region)
            .await
            .unwrap();
        let mut text = format!(
            "agent_id = \"{agent}\"\nregion = \"{region}\"\n\
             [collector]\nendpoint = \"http://{grpc}\"\ntoken = \"{token}\"\nbatch_size = 50\n\
             [spool]\npath = \"{}\"\nsync_interval = \"100ms\"\n\
             [dns]\nresolvers = [\"udp://{}\"]\nidentity_queries = []\n",
            processes.dir.path().join(format!("{agent}.redb")).display(),
            dns,
        );
        for (name, source, proxy) in vantages {
            text.push_str(&format!(
                "[[vantage]]\nname = \"{name}\"\nsource_ip = \"{source}\"\n"
            ));
            if let Some(proxy) = proxy {
                text.push_str(&format!("proxy = \"{proxy}\"\n"));
            }
        }
        text.push_str(checks);
        let path = processes.dir.path().join(format!("{agent}.toml"));
        std::fs::write(&path, text).unwrap();
        let child = Command::new(agent_binary())
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdout(processes.log(&format!("{agent}.log")))
            .stderr(processes.log(&format!("{agent}.log")))
            .spawn()
            .unwrap();
        processes.children.push(child);
    }
    processes
}

/// Once every incident of `rows` has its `incident.resolved` page: the
/// pages, after checking that each incident was opened once, resolved
/// once and never reopened.
pub(crate) async fn one_page_each(webhook: &WebhookReceiver, rows: &[Row]) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let bodies = loop {
        let bodies = webhook.received();
        if rows
            .iter()
            .all(|r| hooks(&bodies, r.id, "incident.resolved").len() == 1)
        {
            break bodies;
        }
        assert!(Instant::now() < deadline, "webhooks: {bodies:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for r in rows {
        for (event, times) in [
            ("incident.opened", 1),
            ("incident.resolved", 1),
            ("incident.reopened", 0),
        ] {
            assert_eq!(
                hooks(&bodies, r.id, event).len(),
                times,
                "{event}: {}",
                r.target
            );
        }
    }
    bodies
}

/// Waits until `vantages` vantages delivered healthy results of `check`,
/// lets a few more rounds pass, and checks that a healthy world pages
/// nothing.
pub(crate) async fn warm_up(pool: &PgPool, processes: &Processes, check: &str, vantages: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let probing: i64 = sqlx::query_scalar(
            "SELECT count(DISTINCT (agent_id, vantage)) FROM probe_results
             WHERE check_name = $1 AND outcome = 'ok'",
        )
        .bind(check)
        .fetch_one(pool)
        .await
        .unwrap();
        if probing == vantages {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{probing} of {vantages} vantages probing:\n{}",
            processes.read_logs()
        );
        tokio::time::sleep(ROUND).await;
    }
    tokio::time::sleep(ROUND * 4).await;
    assert!(
        incidents(pool).await.is_empty(),
        "a healthy world pages nothing"
    );
}

/// Webhooks of one incident and event.
pub(crate) fn hooks<'a>(bodies: &'a [Value], id: i64, event: &str) -> Vec<&'a Value> {
    bodies
        .iter()
        .filter(|b| b["incident_id"] == id && b["event"] == event)
        .collect()
}

#[sqlx::test(migrations = false)]
async fn real_faults_page_the_dimension_they_follow(pool: PgPool) {
    let field = Field::start().await;
    let processes = start_processes(&pool, &field).await;

    warm_up(&pool, &processes, "waf", 15).await;

    // Phase 1: five site faults at once, each on its own target.
    let start = Utc::now();
    field.waf.set_failing_ranges(&nets(&["127.0.2.0/24"]));
    field
        .region
        .set_failing_ranges(&nets(&["127.0.4.0/24", "127.0.5.0/24", "127.0.6.0/24"]));
    field.stale_old.set_failing_ranges(&nets(&["0.0.0.0/0"]));
    field.records_bad.set_failing_ranges(&nets(&["0.0.0.0/0"]));
    field.global.set_failing_ranges(&nets(&["0.0.0.0/0"]));
    let rows = wait_for(&pool, "five incidents", Duration::from_secs(60), |r| {
        r.len() >= 5
    })
    .await;
    let find = |rows: &[Row], target: &str| -> Row {
        rows.iter()
            .find(|r| r.target.contains(target))
            .unwrap_or_else(|| panic!("no incident for {target}: {rows:#?}"))
            .clone()
    };
    let dns_b = format!("udp://{}", field.dns_b.addr());
    let expected = [
        ("waf.test", "egress_prefix", "127.0.2.0/24".to_owned()),
        ("region.test", "region", "us-west".to_owned()),
        ("stale.test", "resolver", dns_b.clone()),
        ("records.test", "address", "127.0.0.25".to_owned()),
        ("global.test", "global", "*".to_owned()),
    ];
    let mut report = Vec::new();
    for (target, dimension, value) in &expected {
        let row = find(&rows, target);
        assert_eq!(
            (row.dimension.as_str(), row.value.as_str()),
            (*dimension, value.as_str()),
            "{target}: {}",
            row.explanation
        );
        assert_eq!(row.fault_side, "site", "{target}");
        report.push((*target, rounds_between(start, row.opened_at)));
    }
    assert_eq!(rows.len(), 5, "one incident per fault: {rows:#?}");

    // The WAF rule spreads to the rest of us-east: the same incident is
    // re-explained as the region, once.
    let waf_id = find(&rows, "waf.test").id;
    let spread = Utc::now();
    field
        .waf
        .set_failing_ranges(&nets(&["127.0.2.0/24", "127.0.3.0/24"]));
    let rows = wait_for(
        &pool,
        "the WAF incident re-explained",
        Duration::from_secs(60),
        |r| r.iter().any(|x| x.id == waf_id && x.version == 2),
    )
    .await;
    let waf = rows.iter().find(|r| r.id == waf_id).unwrap();
    assert_eq!(
        (waf.dimension.as_str(), waf.value.as_str()),
        ("region", "us-east")
    );
    let history: Vec<(i32, String, String)> = sqlx::query_as(
        "SELECT version, dimension, value FROM v_incident_history
         WHERE incident_id = $1 ORDER BY version",
    )
    .bind(waf_id)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        history,
        [
            (1, "egress_prefix".into(), "127.0.2.0/24".into()),
            (2, "region".into(), "us-east".into())
        ]
    );
    let re_explained_after = rounds_between(spread, Utc::now());
    assert_eq!(rows.len(), 5, "the spread opened nothing new: {rows:#?}");

    // Repair everything; every incident resolves, once.
    let repaired = Utc::now();
    for target in [
        &field.waf,
        &field.region,
        &field.stale_old,
        &field.records_bad,
        &field.global,
    ] {
        target.set_failing_ranges(&[]);
    }
    let rows = wait_for(
        &pool,
        "every incident resolved",
        Duration::from_secs(90),
        |r| r.iter().all(|x| x.resolved_at.is_some()),
    )
    .await;
    let resolve_rounds: Vec<(String, f64)> = rows
        .iter()
        .map(|r| {
            (
                r.target.clone(),
                rounds_between(repaired, r.resolved_at.unwrap()),
            )
        })
        .collect();

    // Phase 2: proxy A refuses every tunnel with its own 502.
    let broken = Utc::now();
    field.proxy_a.set_refusing(Some(502));
    let rows = wait_for(&pool, "the proxy incident", Duration::from_secs(60), |r| {
        r.len() >= 6
    })
    .await;
    let proxy = rows.last().unwrap().clone();
    assert_eq!(
        (
            proxy.scope.as_str(),
            proxy.dimension.as_str(),
            proxy.value.as_str()
        ),
        (
            "path",
            "proxy",
            format!("http://{}", field.proxy_a.addr()).as_str()
        ),
        "{}",
        proxy.explanation
    );
    assert_eq!(proxy.fault_side, "path");
    assert!(
        proxy.explanation.contains("fails for 5 of 5 targets"),
        "{}",
        proxy.explanation
    );
    let proxy_open = rounds_between(broken, proxy.opened_at);
    // Let a few more passes run: no per-target incident may follow.
    tokio::time::sleep(ROUND * 4).await;
    assert_eq!(
        incidents(&pool).await.len(),
        6,
        "one incident for the path, not one per target"
    );
    let fixed = Utc::now();
    field.proxy_a.set_refusing(None);
    let rows = wait_for(
        &pool,
        "the proxy incident resolved",
        Duration::from_secs(60),
        |r| r.iter().all(|x| x.resolved_at.is_some()),
    )
    .await;
    let proxy_resolve = rounds_between(fixed, rows.last().unwrap().resolved_at.unwrap());

    // The pages: one opened and one resolved per incident, one update for
    // the re-explained one, in order.
    let bodies = one_page_each(&field.webhook, &rows).await;
    let updates = hooks(&bodies, waf_id, "incident.updated");
    assert_eq!(updates.len(), 1, "{bodies:#?}");
    assert_eq!(updates[0]["dimension"], "region");
    assert_eq!(updates[0]["previous"]["dimension"], "egress_prefix");
    let order: Vec<&str> = bodies
        .iter()
        .filter(|b| b["incident_id"] == waf_id)
        .map(|b| b["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        order,
        ["incident.opened", "incident.updated", "incident.resolved"]
    );
    let proxy_page = hooks(&bodies, proxy.id, "incident.opened")[0];
    assert_eq!(proxy_page["fault_side"], "path");
    assert_eq!(proxy_page["targets"].as_array().unwrap().len(), 5);
    // Every result says its probe round.
    let rounds: Vec<Option<i32>> =
        sqlx::query_scalar("SELECT DISTINCT interval_ms FROM probe_results")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(rounds, [i32::try_from(ROUND.as_millis()).ok()]);
    // A proxied vantage leaves from its proxy's address, not the agent's.
    let egress: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT vantage, egress_ip FROM v_latest_by_vantage
         WHERE check_name = 'waf' AND agent_id = 'ap' ORDER BY vantage",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let a = field.proxy_a.addr().ip().to_string();
    let b = field.proxy_b.addr().ip().to_string();
    assert_eq!(
        egress,
        [
            ("p1".to_owned(), Some(a.clone())),
            ("p2".to_owned(), Some(a)),
            ("p3".to_owned(), Some(b.clone())),
            ("p4".to_owned(), Some(b)),
        ]
    );
    drop(processes);

    println!("rounds to open (round = {ROUND:?}, detector every round):");
    for (target, rounds) in &report {
        println!("  {target:<14} {rounds:.1}");
    }
    println!("  proxy (path)   {proxy_open:.1}");
    println!("re-explained {re_explained_after:.1} rounds after the fault spread");
    println!(
        "rounds to resolve after the repair (resolve_quiet = {} rounds):",
        RESOLVE_QUIET.as_secs_f64() / ROUND.as_secs_f64()
    );
    for (target, rounds) in &resolve_rounds {
        println!("  {target:<40} {rounds:.1}");
    }
    println!("  proxy (path)   {proxy_resolve:.1}");
}
