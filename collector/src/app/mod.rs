//! Wiring: builds the collector (database, listeners, components) and runs
//! it until shutdown or the first fatal error.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use vantage_proto::v1::ingest_server::IngestServer;
use vantage_service::supervise::{Policy, Supervisor};

use crate::alert::Alerter;
use crate::config::CollectorConfig;
use crate::control::ControlHub;
use crate::detector::Detector;
use crate::ingest::IngestService;
use crate::listen;

mod upkeep;
use crate::reload::LiveConfig;
use crate::store::{CellSettings, Store};
use upkeep::{
    PARTITION_MAINTENANCE_INTERVAL, ROLLUP_INTERVAL, maintain_partitions, roll_up_continuously,
};

/// HTTP/2 streams one gRPC connection may open at once (an agent needs one).
const MAX_STREAMS_PER_CONNECTION: u32 = 16;
/// Connections the HTTP listener holds at once (health checkers, scrapers,
/// people following a page's link).
const HTTP_MAX_CONNECTIONS: usize = 1024;
/// The HTTP listener's header-read timeout, and how long a connection may
/// wait for its first request and between requests.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request may take to be answered (a page's queries have a
/// shorter statement timeout); its response may then take as long as the
/// client keeps reading.
const HTTP_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections without a request in flight held at once from one source
/// (a reverse proxy keeps a few open; a flood is evicted).
const HTTP_MAX_IDLE_PER_SOURCE: usize = 32;
/// Bytes a connection may send while it has no authenticated stream or
/// request in flight: TLS, the HTTP/2 preface and SETTINGS, the request's
/// headers, a Hello. Beyond, it is a PING or SETTINGS flood.
const UNPROVEN_READ_BUDGET: u64 = 1024 * 1024;
/// The alerter's upkeep runs every second; a minute without one is a
/// stall (PostgreSQL down, or the task stuck).
const ALERTER_STALE_AFTER: Duration = Duration::from_secs(60);

/// How long a request waits for a pooled database connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens a connection pool to the configured database. Errors name the
/// setting the URL came from and where it points, never the password.
pub async fn connect(config: &CollectorConfig) -> Result<PgPool> {
    let (options, source) = config.database().map_err(anyhow::Error::msg)?;
    connect_to(options, source, config.database.max_connections).await
}

/// [`connect`] to `options` (from the setting `source`): a failed TLS
/// handshake is worded by [`crate::pg_tls::explain`].
pub async fn connect_to(
    options: PgConnectOptions,
    source: &str,
    max_connections: u32,
) -> Result<PgPool> {
    let target = format!(
        "{}:{}/{} as {}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("(default database)"),
        options.get_username()
    );
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(crate::pools::with_statement_timeout(
            options.clone(),
            crate::pools::INGEST_STATEMENT_TIMEOUT,
        ))
        .await
        .map_err(|e| match crate::pg_tls::explain(&e, &options) {
            Some(words) => anyhow::Error::msg(words),
            None => anyhow::Error::new(e),
        })
        .with_context(|| format!("connecting to PostgreSQL at {target} (from {source})"))
}

/// A collector with its database migrated and its listeners bound.
pub struct Application {
    config: CollectorConfig,
    /// The file `config` came from: re-read on SIGHUP.
    config_path: Option<PathBuf>,
    store: Arc<Store>,
    /// The pools of the other kinds of work (see [`crate::pools`]).
    pools: crate::pools::Pools,
    grpc: TcpListener,
    http: Option<TcpListener>,
}

impl Application {
    /// Migrates the database, creates partitions and binds the listeners
    /// (port 0 picks a free port: see [`Application::grpc_addr`]).
    pub async fn build(config: CollectorConfig, pool: PgPool) -> Result<Self> {
        crate::metrics::handle();
        let pools = crate::pools::Pools::beside(&pool);
        let store = Arc::new(Store::new(pool));
        store.migrate().await.context("applying migrations")?;
        let detector = config.detector.settings();
        store.set_cell_settings(CellSettings::new(detector.default_round, detector.window));
        store
            .ensure_partitions_around(chrono::Utc::now(), 1, config.database.partitions_ahead_days)
            .await
            .context("creating partitions")?;
        let grpc = TcpListener::bind(config.grpc_listen)
            .await
            .with_context(|| format!("binding gRPC listener {}", config.grpc_listen))?;
        let http = match config.http_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding HTTP listener {addr}"))?,
            ),
            None => None,
        };
        Ok(Self {
            config,
            config_path: None,
            store,
            pools,
            grpc,
            http,
        })
    }

    /// Re-reads `path` on SIGHUP (see [`crate::reload`]).
    pub fn reload_from(mut self, path: PathBuf) -> Self {
        self.config_path = Some(path);
        self
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc.local_addr().unwrap_or(self.config.grpc_listen)
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn store(&self) -> Arc<Store> {
        self.store.clone()
    }

    /// Runs until `shutdown` is cancelled or a component fails fatally,
    /// every component under one [`Supervisor`]:
    ///
    /// | component    | on failure | alive while                          |
    /// |--------------|------------|--------------------------------------|
    /// | `grpc`       | exit       | serving (agents cannot deliver without it) |
    /// | `http`       | exit       | serving (`/healthz` itself)          |
    /// | `detector`   | restart    | a pass ended within 3 intervals (at least 30 s) |
    /// | `alerter`    | restart    | an outbox upkeep ended within 60 s   |
    /// | `partitions` | restart    | partitions ensured and old ones dropped within 3 h |
    /// | `rollup`     | restart    | the last minutes rolled up within 5 min |
    /// | `control`    | restart    | the check set was read within 90 s   |
    /// | `reload`     | restart    | running (SIGHUP re-reads the file)   |
    /// | `watchdog`   | restart    | under systemd's WatchdogSec: pings it from this runtime |
    ///
    /// Restart where the state is in PostgreSQL and a new instance takes
    /// over where the old one stopped; exit where the process is useless
    /// without the component (the service manager restarts it whole).
    /// Order on the way out: stop taking streams, end the sessions (a
    /// batch being committed finishes first), then stop detection and
    /// alerts.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let supervisor = Supervisor::new(shutdown.clone());
        let changed = Arc::new(Notify::new());

        tracing::info!(grpc = %self.grpc_addr(), http = ?self.http_addr(), "Collector listening.");
        let limits = self.config.ingest.limits();
        let ingest_config = &self.config.ingest;
        let descriptors = listen::raise_descriptor_limit();
        let listeners = if self.http.is_some() { 2 } else { 1 };
        let max_connections =
            listen::fit_to_descriptors(ingest_config.max_connections, descriptors, listeners);
        let grpc_gate = listen::Gate::new(
            "grpc",
            listen::Limits {
                max_connections,
                max_unproven: ingest_config.max_unauthenticated,
                max_unproven_per_source: ingest_config.max_unauthenticated_per_source,
                handshake_timeout: ingest_config.handshake_timeout,
                // Keepalive pings every KEEPALIVE make a live peer answer.
                idle_timeout: crate::ingest::KEEPALIVE * 3,
                busy_timeout: crate::ingest::KEEPALIVE * 3,
                unproven_read_budget: UNPROVEN_READ_BUDGET,
            },
        );
        let fitted = grpc_gate.limits();
        tracing::info!(
            max_connections = fitted.max_connections,
            max_unauthenticated = fitted.max_unproven,
            max_unauthenticated_per_source = fitted.max_unproven_per_source,
            descriptor_limit = ?descriptors,
            "Connection bounds."
        );
        let stall = ingest_config.message_stall_timeout;
        let mut server = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(crate::ingest::KEEPALIVE))
            .http2_keepalive_timeout(Some(crate::ingest::KEEPALIVE))
            .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
            .layer(tower::util::MapRequestLayer::new(
                move |request: tonic::codegen::http::Request<tonic::body::Body>| {
                    request.map(|body| listen::StallGuard::wrap(body, stall))
                },
            ));
        let mut mutual_tls = false;
        if let Some(tls) = &self.config.tls {
            let (config, mutual) = crate::preflight::server_tls(tls)?;
            mutual_tls = mutual;
            server = server.tls_config(config).context("configuring gRPC TLS")?;
        }
        let control = Arc::new(ControlHub::default());
        {
            let (control, store) = (control.clone(), self.store.clone());
            supervisor.spawn(
                "control",
                Policy::Restart,
                Some(crate::control::RELOAD_EVERY * 3),
                move |live, stop| control.clone().run(store.clone(), live, stop),
            );
        }
        let ingest = IngestService::new(
            self.store.clone(),
            shutdown.clone(),
            limits,
            mutual_tls,
            control,
        )
        .with_gate(grpc_gate.clone());
        let grpc = server
            .add_service(
                IngestServer::new(ingest)
                    .max_decoding_message_size(limits.max_message_bytes)
                    .max_encoding_message_size(limits.max_message_bytes),
            )
            .serve_with_incoming_shutdown(
                listen::incoming(self.grpc, grpc_gate, shutdown.clone()),
                shutdown.clone().cancelled_owned(),
            );
        // A server cannot be made twice (it owns its listener): `Exit`.
        let mut grpc = Some(grpc);
        supervisor.spawn("grpc", Policy::Exit, None, move |_, stop| {
            let grpc = grpc.take();
            async move {
                let Some(serving) = grpc else {
                    return Err("the gRPC server cannot be started twice".into());
                };
                within_grace(serving, stop, "gRPC")
                    .await?
                    .map_err(|e| e.into())
            }
        });
        if let Some(listener) = self.http {
            let ui = self.config.ui.enabled.then(|| {
                crate::ui::access::Access::new(
                    self.config.ui.token.as_deref(),
                    &self.config.ui.trusted_proxies,
                )
            });
            let pages = Arc::new(Store::new(self.pools.pages.clone()));
            let router = crate::http::router(self.store.clone(), pages, supervisor.clone(), ui);
            let gate = listen::Gate::new(
                "http",
                listen::Limits {
                    max_connections: listen::fit_to_descriptors(
                        HTTP_MAX_CONNECTIONS,
                        descriptors,
                        listeners,
                    ),
                    max_unproven: HTTP_MAX_CONNECTIONS / 4,
                    max_unproven_per_source: HTTP_MAX_IDLE_PER_SOURCE,
                    handshake_timeout: HTTP_TIMEOUT,
                    idle_timeout: HTTP_TIMEOUT,
                    busy_timeout: HTTP_REQUEST_TIMEOUT,
                    unproven_read_budget: UNPROVEN_READ_BUDGET,
                },
            );
            let incoming = listen::incoming(listener, gate, shutdown.clone());
            let bounds = listen::HttpBounds {
                header_read_timeout: HTTP_TIMEOUT,
                request_timeout: HTTP_REQUEST_TIMEOUT,
            };
            let mut serving = Some(listen::serve_http(incoming, router, bounds));
            supervisor.spawn("http", Policy::Exit, None, move |_, stop| {
                let serving = serving.take();
                async move {
                    let Some(serving) = serving else {
                        return Err("the HTTP server cannot be started twice".into());
                    };
                    within_grace(serving, stop.clone(), "HTTP").await?;
                    if stop.is_cancelled() {
                        Ok(())
                    } else {
                        Err("the HTTP listener stopped accepting".into())
                    }
                }
            });
        }
        let config = Arc::new(LiveConfig::new(self.config.clone()));
        if let Some(path) = self.config_path.clone() {
            let (config, components) = (config.clone(), supervisor.clone());
            supervisor.spawn("reload", Policy::Restart, None, move |live, stop| {
                crate::reload::follow_sighup(
                    path.clone(),
                    config.clone(),
                    components.clone(),
                    live,
                    stop,
                )
            });
        }
        // Stalled after three intervals (of the configuration at start: a
        // reload that lengthens the interval a lot needs a restart for
        // /healthz to follow).
        let stale = (self.config.detector.settings().interval * 3).max(Duration::from_secs(30));
        {
            let store = Arc::new(Store::new(self.pools.detector.clone()));
            let (changed, config) = (changed.clone(), config.clone());
            supervisor.spawn(
                "detector",
                Policy::Restart,
                Some(stale),
                move |live, stop| {
                    let settings = config.get().detector.settings();
                    let detector =
                        Detector::new(store.clone(), settings, changed.clone()).with_liveness(live);
                    async move {
                        detector.run(stop).await;
                        Ok(())
                    }
                },
            );
        }
        // Runs without sinks too: events are then marked handled, so that a
        // sink added later does not page for history.
        {
            let store = self.store.clone();
            supervisor.spawn(
                "alerter",
                Policy::Restart,
                Some(ALERTER_STALE_AFTER),
                move |live, stop| {
                    let config = config.get();
                    let link_base = config.link_base();
                    if link_base.is_none() && !config.sinks.is_empty() {
                        tracing::warn!(
                            "Neither public_url nor http_listen is set: pages carry no link to \
                             the incident."
                        );
                    }
                    let alerter =
                        Alerter::new(store.clone(), config.sinks, link_base, changed.clone());
                    async move {
                        alerter?.with_liveness(live).run(stop).await;
                        Ok(())
                    }
                },
            );
        }
        let upkeep = Arc::new(Store::new(self.pools.upkeep.clone()));
        {
            let store = upkeep.clone();
            let ahead = self.config.database.partitions_ahead_days;
            let retention = self.config.retention.clone();
            // The cells are read for the detector's window only.
            let cells_kept = self.config.detector.settings().window + Duration::from_secs(3600);
            // No result older than this is accepted: a day that ended
            // before it is closed.
            let closed_after = self.config.ingest.max_result_age;
            supervisor.spawn(
                "partitions",
                Policy::Restart,
                Some(PARTITION_MAINTENANCE_INTERVAL * 3),
                move |live, stop| {
                    let (store, retention) = (store.clone(), retention.clone());
                    async move {
                        loop {
                            if maintain_partitions(
                                &store,
                                ahead,
                                &retention,
                                cells_kept,
                                closed_after,
                            )
                            .await
                            {
                                live.beat();
                            }
                            tokio::select! {
                                _ = stop.cancelled() => return Ok(()),
                                _ = tokio::time::sleep(PARTITION_MAINTENANCE_INTERVAL) => {}
                            }
                        }
                    }
                },
            );
        }
        {
            let store = upkeep.clone();
            supervisor.spawn(
                "rollup",
                Policy::Restart,
                Some(ROLLUP_INTERVAL * 5),
                move |live, stop| {
                    let store = store.clone();
                    async move {
                        roll_up_continuously(store, live, stop).await;
                        Ok(())
                    }
                },
            );
        }
        // Listening (bound in build), serving, detecting: ready.
        vantage_service::systemd::serving(&supervisor, &shutdown, "serving");
        match supervisor.wait().await {
            Some(error) => Err(anyhow::anyhow!(error)),
            None => Ok(()),
        }
    }
}

/// How long a server waits, once shutdown is asked for, for its clients
/// to close their connections (a client that never reads would hold it
/// forever).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Runs `serving` to its end, or until [`SHUTDOWN_GRACE`] after `stop`:
/// then the connections still open are left to close with the process.
async fn within_grace<T>(
    serving: impl std::future::Future<Output = T>,
    stop: CancellationToken,
    what: &'static str,
) -> Result<T, vantage_service::supervise::ComponentError> {
    let grace = async {
        stop.cancelled().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        done = serving => Ok(done),
        () = grace => {
            tracing::warn!(
                "{what} clients did not close their connections within {} s of shutdown; \
                 closing them.",
                SHUTDOWN_GRACE.as_secs()
            );
            Err(format!("{what} shutdown grace elapsed").into())
        }
    }
}
