//! A running scenario: a collector, agents bound to different loopback
//! sources acting as regions, a local DNS server, a target failing for one
//! source range, a webhook receiver. The demo tells its story with one;
//! the end-to-end tests reuse it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result};
use ipnet::IpNet;
use serde_json::Value;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use vantage_agent::AgentConfig;
use vantage_collector::Application;
use vantage_collector::alert::Sink;
use vantage_collector::config::{CollectorConfig, DetectorConfig};
use vantage_testkit::{DnsServer, Target, WebhookReceiver};

/// The demo webhook's Standard Webhooks signing secret.
pub const DEMO_SECRET: &str = "whsec_ZGVtbyBzZWNyZXQgZm9yIHZhbnRhZ2U=";

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
    /// Evaluations a pattern must hold before its incident opens.
    pub open_after: u32,
    /// Evaluations (and time) without it before the incident resolves.
    pub resolve_after: u32,
    pub resolve_quiet: Duration,
}

impl Default for ScenarioTiming {
    fn default() -> Self {
        Self {
            probe_interval: Duration::from_millis(250),
            detector_interval: Duration::from_millis(500),
            window: Duration::from_secs(8),
            open_after: 2,
            resolve_after: 3,
            resolve_quiet: Duration::from_secs(1),
        }
    }
}

/// A running scenario. Stop it with [`Scenario::stop`].
pub struct Scenario {
    pub dns: DnsServer,
    pub target: Target,
    pub webhook: WebhookReceiver,
    pub grpc_addr: SocketAddr,
    /// The collector's HTTP listener: health, metrics, the incident pages.
    pub http_addr: SocketAddr,
    pub target_url: String,
    pub agents: Vec<AgentSpec>,
    stop_agents: CancellationToken,
    stop_collector: CancellationToken,
    collector: JoinHandle<Result<()>>,
    agent_tasks: Vec<JoinHandle<Result<(), vantage_agent::app::AgentExit>>>,
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
        vantage_service::install_crypto_provider();
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let target = Target::start(loopback, failing).await?;
        let dns = DnsServer::start(loopback, &[(TARGET_HOST, target.addr().ip())]).await?;
        let webhook = WebhookReceiver::start(loopback).await?;
        let target_url = format!("http://{TARGET_HOST}:{}/", target.addr().port());

        // A known port (not 0): the pages' links name it.
        let http_addr = SocketAddr::new(loopback, vantage_testkit::free_port(loopback)?);
        let config = CollectorConfig {
            grpc_listen: SocketAddr::new(loopback, 0),
            http_listen: Some(http_addr),
            detector: DetectorConfig {
                interval: timing.detector_interval,
                window: timing.window,
                open_after: timing.open_after,
                resolve_after: timing.resolve_after,
                resolve_quiet: timing.resolve_quiet,
                ..DetectorConfig::default()
            },
            sinks: vec![Sink {
                timeout: Duration::from_secs(2),
                secrets: vantage_collector::alert::config::decode_secret(DEMO_SECRET)
                    .into_iter()
                    .collect(),
                ..Sink::webhook("webhook-1", webhook.url().parse().context("webhook URL")?)
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
            let token = vantage_collector::enrol::enrol(&store, &spec.agent_id, &spec.region)
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
            http_addr,
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

/// The demo's vantage points: two agents per region on the region's /24,
/// and a third us-east agent on another network (127.0.4.0/24), so that
/// the failing /24 and the region it sits in can be told apart.
pub fn demo_agents() -> Vec<AgentSpec> {
    [
        ("eu-west", 1, [127, 0, 1, 1]),
        ("eu-west", 2, [127, 0, 1, 2]),
        ("us-east", 1, [127, 0, 2, 1]),
        ("us-east", 2, [127, 0, 2, 2]),
        ("us-east", 3, [127, 0, 4, 1]),
        ("ap-south", 1, [127, 0, 3, 1]),
        ("ap-south", 2, [127, 0, 3, 2]),
    ]
    .into_iter()
    .map(|(region, n, ip)| AgentSpec {
        agent_id: format!("{region}-{n}"),
        region: region.to_owned(),
        source_ip: IpAddr::from(ip),
    })
    .collect()
}

/// The IP-to-ASN table the demo loads (also the tests' fixture): the
/// loopback networks the demo's agents use, named like real networks.
pub const DEMO_ASN_TABLE: &str = include_str!("../../collector/fixtures/asn-loopback.tsv");
