//! The one-command demonstration (`vantage-collector demo`), and the
//! [`Scenario`] it is built from, which the end-to-end tests reuse: a
//! collector, agents bound to different loopback sources acting as regions,
//! a local DNS server, a target failing for one source range, a webhook
//! receiver. Everything real, everything on 127.0.0.0/8.

pub mod cluster;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ipnet::IpNet;
use serde_json::Value;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use vantage_agent::AgentConfig;
use vantage_testkit::{DnsServer, Target, WebhookReceiver};

pub use cluster::{PrivateCluster, find_server_binaries};

use crate::Application;
use crate::config::{CollectorConfig, DetectorConfig, WebhookConfig};

/// The name agents probe; the scenario's DNS server answers it.
pub const TARGET_HOST: &str = "shop.test";

/// One agent of a scenario.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    pub agent_id: String,
    pub region: String,
    pub source_ip: IpAddr,
}

/// Timing of a scenario; small values make detection quick.
#[derive(Debug, Clone)]
pub struct ScenarioTiming {
    pub probe_interval: Duration,
    pub detector_interval: Duration,
    pub window: Duration,
    pub min_probes: u64,
}

impl Default for ScenarioTiming {
    fn default() -> Self {
        Self {
            probe_interval: Duration::from_millis(250),
            detector_interval: Duration::from_millis(500),
            window: Duration::from_secs(8),
            min_probes: 8,
        }
    }
}

/// A running scenario. Stop it with [`Scenario::stop`].
pub struct Scenario {
    pub dns: DnsServer,
    pub target: Target,
    pub webhook: WebhookReceiver,
    pub grpc_addr: SocketAddr,
    pub target_url: String,
    pub agents: Vec<AgentSpec>,
    stop_agents: CancellationToken,
    stop_collector: CancellationToken,
    collector: JoinHandle<Result<()>>,
    agent_tasks: Vec<JoinHandle<Result<(), vantage_agent::report::CredentialsRefused>>>,
}

impl Scenario {
    /// Starts everything against `pool` (which must be an empty or Vantage
    /// database); `failing` gets 502 from the target.
    pub async fn start(
        pool: PgPool,
        agents: Vec<AgentSpec>,
        failing: Option<IpNet>,
        timing: &ScenarioTiming,
    ) -> Result<Self> {
        vantage_agent::install_crypto_provider();
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let target = Target::start(loopback, failing).await?;
        let dns = DnsServer::start(loopback, &[(TARGET_HOST, target.addr().ip())]).await?;
        let webhook = WebhookReceiver::start(loopback).await?;
        let target_url = format!("http://{TARGET_HOST}:{}/", target.addr().port());

        let config = CollectorConfig {
            grpc_listen: SocketAddr::new(loopback, 0),
            http_listen: None,
            detector: DetectorConfig {
                interval: timing.detector_interval,
                window: timing.window,
                min_probes: timing.min_probes,
                ..DetectorConfig::default()
            },
            webhooks: vec![WebhookConfig {
                url: webhook.url().parse().context("webhook URL")?,
                timeout: Duration::from_secs(2),
                attempts: 3,
            }],
            ..CollectorConfig::default()
        };
        let app = Application::build(config, pool).await?;
        let store = app.store();
        let grpc_addr = app.grpc_addr();
        let stop_collector = CancellationToken::new();
        let collector = tokio::spawn(app.run(stop_collector.clone()));
        let stop_agents = CancellationToken::new();

        let mut agent_tasks = Vec::new();
        for spec in &agents {
            let token = crate::enrol::enrol(&store, &spec.agent_id, &spec.region)
                .await
                .with_context(|| format!("enrolling {}", spec.agent_id))?;
            let toml = agent_toml(
                spec,
                &token,
                grpc_addr,
                dns.addr(),
                &target_url,
                timing.probe_interval,
            );
            let config = AgentConfig::parse(std::path::Path::new("<scenario>"), &toml)
                .with_context(|| format!("agent config for {}", spec.agent_id))?;
            let agent = vantage_agent::App::build(config)?;
            agent_tasks.push(tokio::spawn(agent.run(stop_agents.clone())));
        }
        Ok(Self {
            dns,
            target,
            webhook,
            grpc_addr,
            target_url,
            agents,
            stop_agents,
            stop_collector,
            collector,
            agent_tasks,
        })
    }

    /// Waits for a webhook whose `event`, `dimension` and `value` match.
    pub async fn wait_for_webhook(
        &self,
        event: &str,
        dimension: &str,
        value: &str,
        timeout: Duration,
    ) -> Option<Value> {
        self.webhook
            .wait_for(timeout, |b| {
                b["event"] == event && b["dimension"] == dimension && b["value"] == value
            })
            .await
    }

    /// Stops agents (which deliver what they hold) and then the collector.
    pub async fn stop(self) -> Result<()> {
        self.stop_agents.cancel();
        for task in self.agent_tasks {
            let _ = task.await;
        }
        self.stop_collector.cancel();
        self.collector.await.context("collector task")?
    }
}

fn agent_toml(
    spec: &AgentSpec,
    token: &str,
    grpc: SocketAddr,
    dns: SocketAddr,
    url: &str,
    interval: Duration,
) -> String {
    let interval_ms = interval.as_millis().max(100);
    format!(
        r#"agent_id = "{id}"
region = "{region}"
source_ip = "{src}"

[collector]
endpoint = "http://{grpc}"
token = "{token}"
batch_size = 50

[spool]
sync_interval = "100ms"

[dns]
resolvers = ["udp://{dns}"]
timeout = "1s"

[[check]]
name = "shop"
url = "{url}"
interval = "{interval_ms}ms"
timeout = "{interval_ms}ms"
"#,
        id = spec.agent_id,
        region = spec.region,
        src = spec.source_ip,
    )
}

/// The demo's regions: one agent per region, each on its own /24.
fn demo_agents() -> Vec<AgentSpec> {
    [
        ("eu-west", [127, 0, 1, 1]),
        ("us-east", [127, 0, 2, 1]),
        ("ap-south", [127, 0, 3, 1]),
    ]
    .into_iter()
    .map(|(region, ip)| AgentSpec {
        agent_id: format!("demo-{region}"),
        region: region.to_owned(),
        source_ip: IpAddr::from(ip),
    })
    .collect()
}

/// Where the demo's data lives, and how to clean it up.
enum DemoDatabase {
    Private(PrivateCluster),
    /// A database created inside the server `DATABASE_URL` points at.
    Borrowed {
        admin: PgPool,
        name: String,
    },
}

async fn demo_database() -> Result<(DemoDatabase, String)> {
    if let Ok(url) = std::env::var("DATABASE_URL").map(|u| u.trim().to_owned())
        && !url.is_empty()
    {
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
            .context("connecting to DATABASE_URL")?;
        let name = format!("vantage_demo_{}", std::process::id());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .with_context(|| {
                format!("creating database {name} (DATABASE_URL's user needs CREATEDB)")
            })?;
        let mut demo_url: url::Url = url.parse().context("DATABASE_URL is not a URL")?;
        demo_url.set_path(&name);
        println!("  PostgreSQL  database {name} on the server of DATABASE_URL (dropped at exit)");
        return Ok((DemoDatabase::Borrowed { admin, name }, demo_url.to_string()));
    }
    let Some(bin) = find_server_binaries() else {
        bail!(
            "the demo needs PostgreSQL, and found neither DATABASE_URL nor the server binaries \
             (initdb and pg_ctl on PATH or under /usr/lib/postgresql/*/bin).\n\
             Fix: install the server (Debian/Ubuntu: `apt-get install postgresql`), or point \
             DATABASE_URL at a server whose user may CREATE DATABASE, e.g. \
             DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres"
        );
    };
    let cluster = PrivateCluster::start(bin.clone()).await?;
    println!(
        "  PostgreSQL  private cluster from {} on 127.0.0.1:{} (temporary, removed at exit)",
        bin.display(),
        cluster.port()
    );
    let url = cluster.url();
    Ok((DemoDatabase::Private(cluster), url))
}

impl DemoDatabase {
    async fn remove(self) -> Result<()> {
        match self {
            Self::Private(cluster) => cluster.stop().await,
            Self::Borrowed { admin, name } => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&admin)
                .await?;
                Ok(())
            }
        }
    }
}

/// Runs the demo; prints the story on stdout.
pub async fn run() -> Result<()> {
    println!("Vantage demo: which vantage points get 502, and why only them?\n");
    let (database, url) = demo_database().await?;
    let outcome = story(&url).await;
    let removed = database.remove().await;
    outcome?;
    removed.context("removing the demo database")
}

async fn story(url: &str) -> Result<()> {
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect(url)
        .await
        .context("connecting to the demo database")?;
    let failing: IpNet = "127.0.2.0/24".parse().context("failing range")?;
    let timing = ScenarioTiming::default();
    let started = Instant::now();
    let scenario = Scenario::start(pool.clone(), demo_agents(), Some(failing), &timing).await?;
    println!(
        "  DNS server  udp+tcp {} answers {TARGET_HOST} -> {}",
        scenario.dns.addr(),
        scenario.target.addr().ip()
    );
    println!(
        "  target      {} answers 502 (nginx) to {failing}, 200 to everyone else",
        scenario.target_url
    );
    println!("  webhook     {}", scenario.webhook.url());
    println!(
        "  collector   gRPC {} (detector every {:?} over a {:?} window)",
        scenario.grpc_addr, timing.detector_interval, timing.window
    );
    for a in &scenario.agents {
        println!(
            "  agent       {:<14} region {:<9} source {}",
            a.agent_id, a.region, a.source_ip
        );
    }
    println!(
        "\nProbing every {:?} from each agent; waiting for the detector...\n",
        timing.probe_interval
    );

    let wait = Duration::from_secs(60);
    let prefix = failing.to_string();
    let Some(opened) = scenario
        .wait_for_webhook("incident.opened", "egress_prefix", &prefix, wait)
        .await
    else {
        scenario.stop().await?;
        bail!("no incident for {prefix} within {wait:?}: detection failed");
    };
    println!(
        "Incident opened after {:.1} s. Webhook received:",
        started.elapsed().as_secs_f64()
    );
    println!("{}\n", serde_json::to_string_pretty(&opened)?);
    if let Some(region) = scenario
        .wait_for_webhook(
            "incident.opened",
            "region",
            "us-east",
            Duration::from_secs(5),
        )
        .await
    {
        println!(
            "The region dimension agrees: {}\n",
            region["summary"].as_str().unwrap_or_default()
        );
    }

    print_sql(&pool).await?;

    println!("Repairing the target: it now answers 200 to everyone.");
    scenario.target.set_failing(None);
    let repaired = Instant::now();
    let resolved = scenario
        .wait_for_webhook("incident.resolved", "egress_prefix", &prefix, wait)
        .await;
    let (opens, resolves) = count_events(&scenario.webhook.received());
    scenario.stop().await?;
    let Some(resolved) = resolved else {
        bail!("the incident for {prefix} did not resolve within {wait:?} of the repair");
    };
    println!(
        "Incident resolved {:.1} s after the repair. Webhook received:",
        repaired.elapsed().as_secs_f64()
    );
    println!("{}\n", serde_json::to_string_pretty(&resolved)?);
    println!(
        "Webhooks in all: {opens} opened, {resolves} resolved (one of each per incident, no storm)."
    );
    println!("Demo finished in {:.1} s.", started.elapsed().as_secs_f64());
    Ok(())
}

fn count_events(bodies: &[Value]) -> (usize, usize) {
    let count = |e: &str| bodies.iter().filter(|b| b["event"] == e).count();
    (count("incident.opened"), count("incident.resolved"))
}

/// Prints what an operator would query: open incidents and the views.
async fn print_sql(pool: &PgPool) -> Result<()> {
    println!(
        "SQL> SELECT id, dimension, value, segment_502, segment_probes, rest_502, rest_probes FROM v_open_incidents;"
    );
    let incidents: Vec<(i64, String, String, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT id, dimension, value, segment_502, segment_probes, rest_502, rest_probes
         FROM v_open_incidents ORDER BY id",
    )
    .fetch_all(pool)
    .await?;
    for (id, dim, value, s5, sp, r5, rp) in incidents {
        println!("  {id:>3}  {dim:<14} {value:<14} {s5:>4} of {sp:<4} got 502; rest {r5} of {rp}");
    }
    println!(
        "\nSQL> SELECT region, probes, status_502, pct_502 FROM v_status_by_region ORDER BY region;"
    );
    let rows: Vec<(String, i64, i64, f64)> = sqlx::query_as(
        "SELECT region, probes, status_502, pct_502::float8 FROM v_status_by_region ORDER BY region",
    )
    .fetch_all(pool)
    .await?;
    for (region, probes, s5, pct) in rows {
        println!("  {region:<10} {probes:>5} probes {s5:>5} x 502  {pct:>5.1} %");
    }
    println!(
        "\nSQL> SELECT egress_prefix, probes, status_502, pct_502 FROM v_status_by_egress_prefix ORDER BY 1;"
    );
    let rows: Vec<(String, i64, i64, f64)> = sqlx::query_as(
        "SELECT egress_prefix::text, probes, status_502, pct_502::float8
         FROM v_status_by_egress_prefix ORDER BY 1",
    )
    .fetch_all(pool)
    .await?;
    for (prefix, probes, s5, pct) in rows {
        println!("  {prefix:<14} {probes:>5} probes {s5:>5} x 502  {pct:>5.1} %");
    }
    print_failing_probe(pool).await?;
    println!();
    Ok(())
}

/// One failing probe's path, as an operator would look it up.
async fn print_failing_probe(pool: &PgPool) -> anyhow::Result<()> {
    println!(
        "\nSQL> SELECT agent_id, vantage, local_ip, resolver, resolver_egress_ip, resolver_nsid, dns_rcode,\n            \
         resolved_ips, dialed_ip, http_status, gateway, dns_us, connect_us, ttfb_us, transfer_us, total_us\n     \
         FROM probe_results WHERE http_status = 502 ORDER BY started_at DESC LIMIT 1;"
    );
    let row: Option<FailingProbe> = sqlx::query_as(
        "SELECT agent_id, vantage, host(local_ip), resolver, host(resolver_egress_ip),
                resolver_nsid, dns_rcode, resolved_ips::text, host(dialed_ip), http_status,
                gateway, dns_us, connect_us, ttfb_us, transfer_us, total_us
         FROM probe_results WHERE http_status = 502 ORDER BY started_at DESC LIMIT 1",
    )
    .fetch_optional(pool)
    .await?;
    if let Some(p) = row {
        let us = |v: Option<i64>| v.map_or("-".to_owned(), |v| v.to_string());
        println!(
            "  agent {} via vantage {} from {}\n  resolver {} (egress {}, NSID {}) answered {} {}\n  \
             dialled {} -> {} produced by {}\n  phases (us): dns {} connect {} ttfb {} transfer {} total {}",
            p.0,
            p.1,
            p.2.unwrap_or_default(),
            p.3.unwrap_or_default(),
            p.4.unwrap_or_else(|| "unknown".into()),
            p.5.unwrap_or_else(|| "none".into()),
            p.6.unwrap_or_default(),
            p.7,
            p.8.unwrap_or_default(),
            p.9.map_or("-".into(), |s| s.to_string()),
            p.10.unwrap_or_else(|| "unknown".into()),
            us(p.11),
            us(p.12),
            us(p.13),
            us(p.14),
            us(p.15),
        );
    }
    Ok(())
}

/// The columns `print_failing_probe` shows.
type FailingProbe = (
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
    Option<String>,
    Option<i16>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
);
