//! Integration tests of the collector: real gRPC over a real socket, a
//! fresh PostgreSQL database per test (`#[sqlx::test]`), real agents.

// Test helpers fail loudly: a panic is the right report here.
#![allow(clippy::unwrap_used)]

mod access;
mod auth;
mod cells;
// The cells PostgreSQL computes from stored rows (shared with the detect
// bench).
#[path = "../../benches/common/cells.rs"]
#[allow(dead_code)] // the bench's way of naming results is not used here
mod cells_sql;
mod checks;
mod citus;
mod config;
mod confirm;
mod database_tls;
mod delivery;
mod detection;
mod e2e;
mod failover;
mod faults;
mod field;
mod field_multi;
mod fleet;
mod flood;
mod grafana;
mod hostile;
mod ingest;
mod lease;
mod limits;
mod notify;
mod pages;
mod paths;
mod probe_now;
mod process;
mod reload;
mod retention;
mod rig;
mod schema;
mod starve;
mod supervision;
mod tls;
mod ui;
mod window;

use std::net::SocketAddr;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use vantage_collector::{Application, CollectorConfig};
use vantage_proto::v1 as pb;

/// Without `DATABASE_URL`, this run's private PostgreSQL cluster (the
/// demo's kind: server binaries from PATH or /usr/lib/postgresql), shared
/// by every test of this binary, each in its own database as with any
/// server; stopped and removed after the last test.
static PRIVATE_POSTGRES: std::sync::Mutex<Option<vantage_testkit::cluster::PrivateCluster>> =
    std::sync::Mutex::new(None);

/// Before any test (and before main, one thread): with `DATABASE_URL`
/// unset, start the private cluster and point `DATABASE_URL` at it.
#[ctor::ctor]
#[allow(unsafe_code)]
unsafe fn start_private_postgres() {
    if std::env::var_os("DATABASE_URL").is_some() {
        return;
    }
    let Some(bin) = vantage_testkit::cluster::find_server_binaries() else {
        eprintln!(
            "DATABASE_URL is not set and no PostgreSQL server binaries (initdb, pg_ctl) are on \
             PATH or in /usr/lib/postgresql/*/bin: install PostgreSQL's server (Debian: \
             apt-get install postgresql) or set DATABASE_URL to a server whose user may \
             create databases."
        );
        std::process::exit(2);
    };
    match vantage_testkit::cluster::PrivateCluster::start(bin) {
        Ok(cluster) => {
            // SAFETY: this runs before main, while the process has one
            // thread: nothing else reads or writes the environment.
            unsafe { std::env::set_var("DATABASE_URL", cluster.url()) };
            *PRIVATE_POSTGRES.lock().unwrap_or_else(|p| p.into_inner()) = Some(cluster);
        }
        Err(e) => {
            eprintln!("cannot start a private PostgreSQL cluster for the tests: {e:#}");
            std::process::exit(2);
        }
    }
}

/// After the last test: stop and remove the private cluster.
#[ctor::dtor]
#[allow(unsafe_code)]
unsafe fn stop_private_postgres() {
    let cluster = PRIVATE_POSTGRES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    if let Some(cluster) = cluster
        && let Err(e) = cluster.stop()
    {
        eprintln!("stopping the tests' private PostgreSQL: {e:#}");
    }
}

/// A collector running on a free port against a fresh database.
pub struct TestCollector {
    pub grpc_addr: SocketAddr,
    pub pool: PgPool,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

pub async fn spawn_collector(pool: PgPool) -> TestCollector {
    spawn_collector_with(pool, CollectorConfig::default()).await
}

/// A collector with `config` (its gRPC listener on a free port).
pub async fn spawn_collector_with(pool: PgPool, config: CollectorConfig) -> TestCollector {
    let config = CollectorConfig {
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        ..config
    };
    let app = Application::build(config, pool.clone()).await.unwrap();
    let grpc_addr = app.grpc_addr();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(app.run(shutdown.clone()));
    TestCollector {
        grpc_addr,
        pool,
        shutdown,
        task,
    }
}

impl TestCollector {
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

/// A URL of the test's own database, for processes the test starts.
pub fn database_url(pool: &PgPool) -> String {
    let o = pool.connect_options();
    format!(
        "postgres://postgres@127.0.0.1:{}/{}",
        o.get_port(),
        o.get_database().unwrap()
    )
}

/// A raw agent stream speaking the wire protocol directly.
pub struct RawStream {
    pub outbound: mpsc::Sender<pb::AgentMessage>,
    pub inbound: tonic::Streaming<pb::CollectorMessage>,
    pub welcome: pb::Welcome,
}

impl TestCollector {
    /// Enrols an agent; returns its token.
    pub async fn enrol(&self, agent_id: &str, region: &str) -> String {
        let store = vantage_collector::store::Store::new(self.pool.clone());
        vantage_collector::enrol::enrol(&store, agent_id, region)
            .await
            .unwrap()
    }
}

/// Enrols `agent_id` and opens a stream as it.
pub async fn open_stream(collector: &TestCollector, agent_id: &str, region: &str) -> RawStream {
    let token = collector.enrol(agent_id, region).await;
    try_open_stream(collector.grpc_addr, &token, agent_id)
        .await
        .unwrap()
}

/// Opens a stream presenting `token` and claiming `agent_id`.
pub async fn try_open_stream(
    addr: SocketAddr,
    token: &str,
    agent_id: &str,
) -> Result<RawStream, tonic::Status> {
    try_open_stream_authorized(addr, &format!("Bearer {token}"), agent_id).await
}

/// Opens a stream sending `authorization` as it is (any scheme or case).
pub async fn try_open_stream_authorized(
    addr: SocketAddr,
    authorization: &str,
    agent_id: &str,
) -> Result<RawStream, tonic::Status> {
    try_open_stream_from(addr, None, authorization, agent_id).await
}

/// [`try_open_stream_authorized`] from the local address `from`.
pub async fn try_open_stream_from(
    addr: SocketAddr,
    from: Option<std::net::IpAddr>,
    authorization: &str,
    agent_id: &str,
) -> Result<RawStream, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .local_address(from)
        .connect()
        .await
        .unwrap();
    let value: tonic::metadata::MetadataValue<_> = authorization.parse().unwrap();
    let mut client = pb::ingest_client::IngestClient::with_interceptor(
        channel,
        move |mut request: tonic::Request<()>| {
            request
                .metadata_mut()
                .insert(vantage_proto::AUTHORIZATION, value.clone());
            Ok(request)
        },
    );
    let (outbound, rx) = mpsc::channel(16);
    outbound
        .send(pb::AgentMessage {
            body: Some(pb::agent_message::Body::Hello(pb::Hello {
                agent_id: agent_id.into(),
                region: "ignored".into(),
                labels: [("provider".to_owned(), "test".to_owned())].into(),
                version: "test".into(),
                // As an agent from before the control plane: it announces
                // nothing and must be sent nothing but Welcome and acks.
                capabilities: Vec::new(),
                vantages: Vec::new(),
            })),
        })
        .await
        .unwrap();
    let mut inbound = client.stream(ReceiverStream::new(rx)).await?.into_inner();
    let welcome = match inbound.message().await?.and_then(|m| m.body) {
        Some(pb::collector_message::Body::Welcome(w)) => w,
        other => panic!("expected Welcome, got {other:?}"),
    };
    Ok(RawStream {
        outbound,
        inbound,
        welcome,
    })
}

impl RawStream {
    pub async fn send_batch(&self, batch_id: u64, results: Vec<pb::ProbeResult>) {
        self.outbound
            .send(pb::AgentMessage {
                body: Some(pb::agent_message::Body::Batch(pb::ResultBatch {
                    batch_id,
                    results,
                    gaps: Vec::new(),
                })),
            })
            .await
            .unwrap();
    }

    /// The next message, or Err(status) if the collector ended the stream.
    pub async fn next_ack(&mut self, wait: Duration) -> Result<pb::BatchAck, tonic::Status> {
        let msg = tokio::time::timeout(wait, self.inbound.message())
            .await
            .expect("collector answered in time")?;
        match msg.and_then(|m| m.body) {
            Some(pb::collector_message::Body::Ack(a)) => Ok(a),
            other => panic!("expected Ack, got {other:?}"),
        }
    }
}

/// A result as an agent would send it.
pub fn result(seq: u64, status: u32) -> pb::ProbeResult {
    let now = chrono::Utc::now();
    pb::ProbeResult {
        seq,
        started_at: Some(prost_types::Timestamp {
            seconds: now.timestamp(),
            nanos: 0,
        }),
        check: "shop".into(),
        url: "http://shop.test/".into(),
        method: "GET".into(),
        outcome: if status == 200 {
            pb::Outcome::Ok
        } else {
            pb::Outcome::Http
        } as i32,
        message: if status == 200 {
            String::new()
        } else {
            format!("unexpected status {status}")
        },
        http_status: Some(status),
        http_version: "HTTP/1.1".into(),
        resolver: "udp://127.0.0.1:53".into(),
        resolved: vec![
            pb::ResolvedAddress {
                ip: "127.0.0.1".into(),
                ttl_seconds: 30,
            },
            pb::ResolvedAddress {
                ip: "::1".into(),
                ttl_seconds: 60,
            },
        ],
        dialed_addr: "127.0.0.1:8080".into(),
        local_ip: "127.0.2.1".into(),
        egress_ip: String::new(),
        timings: Some(pb::Timings {
            dns_us: Some(120),
            connect_us: None,
            tls_us: None,
            ttfb_us: Some(900),
            total_us: Some(1500),
            proxy_us: None,
            transfer_us: Some(80),
        }),
        headers: [("server".to_owned(), "nginx".to_owned())].into(),
        vantage: "direct".into(),
        dns_rcode: "NOERROR".into(),
        resolver_egress_ip: "127.0.0.53".into(),
        resolver_nsid: "ns1.test".into(),
        body_bytes: Some(157),
        body_sha256: "ab".repeat(32),
        gateway: if status == 200 {
            String::new()
        } else {
            "nginx".into()
        },
        ..Default::default()
    }
}
