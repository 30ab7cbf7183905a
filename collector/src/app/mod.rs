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

use vantage_service::supervise::Supervisor;

use crate::config::CollectorConfig;
use crate::listen;
use crate::reload::LiveConfig;
use crate::store::{CellSettings, Store};

mod components;
mod upkeep;
use components::Components;

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
        tracing::info!(grpc = %self.grpc_addr(), http = ?self.http_addr(), "Collector listening.");
        let components = Components {
            supervisor: &supervisor,
            shutdown: &shutdown,
            config: &self.config,
            live_config: Arc::new(LiveConfig::new(self.config.clone())),
            store: &self.store,
            pools: &self.pools,
            upkeep: Arc::new(Store::new(self.pools.upkeep.clone())),
            changed: Arc::new(Notify::new()),
            descriptors: listen::raise_descriptor_limit(),
            listeners: if self.http.is_some() { 2 } else { 1 },
        };
        let control = components.control();
        components.grpc(self.grpc, control)?;
        if let Some(listener) = self.http {
            components.http(listener);
        }
        if let Some(path) = self.config_path.clone() {
            components.reload(path);
        }
        components.detector();
        components.alerter();
        components.partitions();
        components.rollup();
        // Listening (bound in build), serving, detecting: ready.
        vantage_service::systemd::serving(&supervisor, &shutdown, "serving");
        match supervisor.wait().await {
            Some(error) => Err(anyhow::anyhow!(error)),
            None => Ok(()),
        }
    }
}
