//! Each component of a running collector and how it is started under the
//! supervisor: the gRPC ingest and the control plane, the HTTP listener,
//! the SIGHUP reload, the detector, the alerter and the upkeep
//! (partitions, roll-up). [`super::Application::run`] starts them in
//! turn; the table of their policies is on that function.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use vantage_proto::v1::ingest_server::IngestServer;
use vantage_service::supervise::{Policy, Supervisor};

use super::upkeep::{
    PARTITION_MAINTENANCE_INTERVAL, ROLLUP_INTERVAL, maintain_partitions, roll_up_continuously,
};
use crate::alert::Alerter;
use crate::config::CollectorConfig;
use crate::control::ControlHub;
use crate::detector::Detector;
use crate::ingest::IngestService;
use crate::listen;
use crate::pools::Pools;
use crate::reload::LiveConfig;
use crate::store::Store;

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

/// What the components of one run are started with.
pub(super) struct Components<'a> {
    pub(super) supervisor: &'a Supervisor,
    pub(super) shutdown: &'a CancellationToken,
    /// The configuration at start (listeners, limits, upkeep).
    pub(super) config: &'a CollectorConfig,
    /// The configuration a reload changes (detector, sinks).
    pub(super) live_config: Arc<LiveConfig>,
    pub(super) store: &'a Arc<Store>,
    pub(super) pools: &'a Pools,
    /// The store of the upkeep's pool, shared by partitions and roll-up.
    pub(super) upkeep: Arc<Store>,
    /// Rung by the detector when incidents change, for the alerter.
    pub(super) changed: Arc<Notify>,
    /// The process's descriptor limit, raised as far as allowed.
    pub(super) descriptors: Option<u64>,
    /// Listeners sharing the descriptors.
    pub(super) listeners: u64,
}

impl Components<'_> {
    /// The control plane: what each connected agent is sent.
    pub(super) fn control(&self) -> Arc<ControlHub> {
        let control = Arc::new(ControlHub::default());
        let (hub, store) = (control.clone(), self.store.clone());
        self.supervisor.spawn(
            "control",
            Policy::Restart,
            Some(crate::control::RELOAD_EVERY * 3),
            move |live, stop| hub.clone().run(store.clone(), live, stop),
        );
        control
    }

    /// The gRPC listener's bounds, fitted to the descriptors.
    fn grpc_gate(&self) -> Arc<listen::Gate> {
        let ingest = &self.config.ingest;
        let gate = listen::Gate::new(
            "grpc",
            listen::Limits {
                max_connections: listen::fit_to_descriptors(
                    ingest.max_connections,
                    self.descriptors,
                    self.listeners,
                ),
                max_unproven: ingest.max_unauthenticated,
                max_unproven_per_source: ingest.max_unauthenticated_per_source,
                handshake_timeout: ingest.handshake_timeout,
                // Keepalive pings every KEEPALIVE make a live peer answer.
                idle_timeout: crate::ingest::KEEPALIVE * 3,
                busy_timeout: crate::ingest::KEEPALIVE * 3,
                unproven_read_budget: UNPROVEN_READ_BUDGET,
            },
        );
        let fitted = gate.limits();
        tracing::info!(
            max_connections = fitted.max_connections,
            max_unauthenticated = fitted.max_unproven,
            max_unauthenticated_per_source = fitted.max_unproven_per_source,
            descriptor_limit = ?self.descriptors,
            "Connection bounds."
        );
        gate
    }

    /// The gRPC ingest on `listener`, within its bounds and TLS.
    pub(super) fn grpc(&self, listener: TcpListener, control: Arc<ControlHub>) -> Result<()> {
        let limits = self.config.ingest.limits();
        let gate = self.grpc_gate();
        let stall = self.config.ingest.message_stall_timeout;
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
        let ingest = IngestService::new(
            self.store.clone(),
            self.shutdown.clone(),
            limits,
            mutual_tls,
            control,
        )
        .with_gate(gate.clone());
        let grpc = server
            .add_service(
                IngestServer::new(ingest)
                    .max_decoding_message_size(limits.max_message_bytes)
                    .max_encoding_message_size(limits.max_message_bytes),
            )
            .serve_with_incoming_shutdown(
                listen::incoming(listener, gate, self.shutdown.clone()),
                self.shutdown.clone().cancelled_owned(),
            );
        // A server cannot be made twice (it owns its listener): `Exit`.
        let mut grpc = Some(grpc);
        self.supervisor
            .spawn("grpc", Policy::Exit, None, move |_, stop| {
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
        Ok(())
    }

    /// `/healthz`, `/metrics` and the incident pages on `listener`.
    pub(super) fn http(&self, listener: TcpListener) {
        let ui_config = &self.config.ui;
        let ui = ui_config.enabled.then(|| {
            crate::ui::access::Access::new(ui_config.token.as_deref(), &ui_config.trusted_proxies)
        });
        let pages = Arc::new(Store::new(self.pools.pages.clone()));
        let router = crate::http::router(self.store.clone(), pages, self.supervisor.clone(), ui);
        let gate = listen::Gate::new(
            "http",
            listen::Limits {
                max_connections: listen::fit_to_descriptors(
                    HTTP_MAX_CONNECTIONS,
                    self.descriptors,
                    self.listeners,
                ),
                max_unproven: HTTP_MAX_CONNECTIONS / 4,
                max_unproven_per_source: HTTP_MAX_IDLE_PER_SOURCE,
                handshake_timeout: HTTP_TIMEOUT,
                idle_timeout: HTTP_TIMEOUT,
                busy_timeout: HTTP_REQUEST_TIMEOUT,
                unproven_read_budget: UNPROVEN_READ_BUDGET,
            },
        );
        let incoming = listen::incoming(listener, gate, self.shutdown.clone());
        let bounds = listen::HttpBounds {
            header_read_timeout: HTTP_TIMEOUT,
            request_timeout: HTTP_REQUEST_TIMEOUT,
        };
        let mut serving = Some(listen::serve_http(incoming, router, bounds));
        self.supervisor
            .spawn("http", Policy::Exit, None, move |_, stop| {
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

    /// Re-reads `path` on SIGHUP.
    pub(super) fn reload(&self, path: PathBuf) {
        let (config, components) = (self.live_config.clone(), self.supervisor.clone());
        self.supervisor
            .spawn("reload", Policy::Restart, None, move |live, stop| {
                crate::reload::follow_sighup(
                    path.clone(),
                    config.clone(),
                    components.clone(),
                    live,
                    stop,
                )
            });
    }

    /// The detector, made again from the live `[detector]` settings at
    /// every (re)start.
    pub(super) fn detector(&self) {
        // Stalled after three intervals (of the configuration at start: a
        // reload that lengthens the interval a lot needs a restart for
        // /healthz to follow).
        let stale = (self.config.detector.settings().interval * 3).max(Duration::from_secs(30));
        let store = Arc::new(Store::new(self.pools.detector.clone()));
        let (changed, config) = (self.changed.clone(), self.live_config.clone());
        self.supervisor.spawn(
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

    /// The alerter, made again from the live sinks at every (re)start. It
    /// runs without sinks too: events are then marked handled, so that a
    /// sink added later does not page for history.
    pub(super) fn alerter(&self) {
        let store = self.store.clone();
        let (changed, config) = (self.changed.clone(), self.live_config.clone());
        self.supervisor.spawn(
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
                let alerter = Alerter::new(store.clone(), config.sinks, link_base, changed.clone());
                async move {
                    alerter?.with_liveness(live).run(stop).await;
                    Ok(())
                }
            },
        );
    }

    /// Partitions ahead, retention, closed days and the cells' upkeep.
    pub(super) fn partitions(&self) {
        let store = self.upkeep.clone();
        let ahead = self.config.database.partitions_ahead_days;
        let retention = self.config.retention.clone();
        // The cells are read for the detector's window only.
        let cells_kept = self.config.detector.settings().window + Duration::from_secs(3600);
        // No result older than this is accepted: a day that ended before
        // it is closed.
        let closed_after = self.config.ingest.max_result_age;
        self.supervisor.spawn(
            "partitions",
            Policy::Restart,
            Some(PARTITION_MAINTENANCE_INTERVAL * 3),
            move |live, stop| {
                let (store, retention) = (store.clone(), retention.clone());
                async move {
                    loop {
                        if maintain_partitions(&store, ahead, &retention, cells_kept, closed_after)
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

    /// The per-minute roll-up of the last minutes.
    pub(super) fn rollup(&self) {
        let store = self.upkeep.clone();
        self.supervisor.spawn(
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
