//! Wiring: builds every component of the agent from its configuration and
//! runs them until shutdown.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::central::{CentralChecks, file_beside};
use crate::config::AgentConfig;
use crate::control::Control;
use crate::probe::HttpProber;
use crate::probe::dns::DnsSetupError;
use crate::probe::tls::{TlsConfigs, TlsKey, TlsSetupError};
use crate::queue::ResultQueue;
use crate::report::{Connection, ControlLink, CredentialsRefused, Delivery, Identity, Reporter};
use crate::schedule::Scheduler;
use crate::vantage::IdentityRefresher;
use vantage_service::supervise::{Policy, Supervisor};

/// The agent could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Dns(#[from] DnsSetupError),
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    #[error("{0}")]
    Collector(String),
    /// A check's `headers_file` cannot be used.
    #[error("check {check:?}: {message}")]
    HeadersFile { check: String, message: String },
    #[error(transparent)]
    Spool(#[from] crate::spool::SpoolInUse),
}

/// How long the reporter may keep sending spooled results after shutdown
/// was asked for. Below systemd's default stop timeout (90 s) with room to
/// spare; what is left stays in the spool.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A built agent, ready to run.
pub struct App {
    scheduler: Arc<Scheduler>,
    control: Arc<Control>,
    refresher: Arc<Mutex<IdentityRefresher>>,
    /// The configuration file, re-read on SIGHUP.
    config_path: Option<std::path::PathBuf>,
    reporter: Reporter,
    queue: Arc<ResultQueue>,
}

impl App {
    /// What [`App::build`] checks before it opens the spool, run alone:
    /// `--check-config` (the spool is left alone, as a running agent holds
    /// its lock).
    pub fn check(config: &AgentConfig) -> Result<(), SetupError> {
        crate::vantage::build_all(config)?;
        tls_configs(config)?;
        headers_files(config)?;
        connection(config)?;
        Ok(())
    }

    /// Builds the agent; fails only on setup errors (bad resolver config,
    /// unreadable CA, token or certificate file, a spool in use).
    pub fn build(config: AgentConfig) -> Result<Self, SetupError> {
        let vantages = crate::vantage::build_all(&config)?;
        let tls = tls_configs(&config)?;
        headers_files(&config)?;
        let connection = connection(&config)?;
        let prober = HttpProber::new(config.agent_id.as_str(), config.probe_header, tls);
        let refresher = Arc::new(Mutex::new(IdentityRefresher::new(
            vantages.clone(),
            &config.dns,
        )));
        if config.spool.path.is_none() {
            tracing::warn!(
                "No [spool] path: results are kept in memory only and are lost when the agent stops."
            );
        }
        let (queue, opened) = ResultQueue::open(config.spool.settings())?;
        if opened.backlog > 0 {
            tracing::info!(
                backlog = opened.backlog,
                "Spool holds results from an earlier run; delivering them."
            );
        }
        let queue = Arc::new(queue);
        let (egress_tx, egress_rx) = watch::channel(None);
        let identity = Identity {
            agent_id: config.agent_id.to_string(),
            region: config.region.to_string(),
            labels: config.labels.clone(),
            vantages: vantages
                .iter()
                .map(|v| vantage_proto::v1::VantageInfo {
                    name: v.name.clone(),
                    region: v.region.clone().unwrap_or_default(),
                })
                .collect(),
        };
        let central = CentralChecks::open(config.spool.path.as_deref().map(file_beside));
        let scheduler = Arc::new(Scheduler::new(
            config.checks.clone(),
            vantages,
            prober,
            queue.clone(),
            egress_rx,
            config.max_concurrent_probes,
            crate::probe::path::PathTracer::new(config.path.clone()),
        ));
        let (pushed_tx, pushed_rx) = mpsc::unbounded_channel();
        let (answers_tx, answers_rx) = mpsc::unbounded_channel();
        let control = Arc::new(Control::new(
            scheduler.clone(),
            central,
            config.clone(),
            refresher.clone(),
            answers_tx,
            pushed_rx,
        ));
        let reporter = Reporter::new(
            connection,
            identity,
            queue.clone(),
            Delivery {
                batch_size: config.collector.batch_size,
                window: config.collector.window,
                drain_timeout: DRAIN_TIMEOUT,
            },
            egress_tx,
            ControlLink {
                pushed: pushed_tx,
                answers: tokio::sync::Mutex::new(answers_rx),
            },
        );
        Ok(Self {
            scheduler,
            control,
            refresher,
            config_path: None,
            reporter,
            queue,
        })
    }

    /// Asks every resolver and IP-echo URL who they are, now.
    pub async fn refresh_identities(&self) {
        self.identities().refresh_all().await;
    }

    fn identities(&self) -> IdentityRefresher {
        self.refresher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-reads `path` on SIGHUP: checks, vantages and resolvers change
    /// live; the rest is named in the log as waiting for a restart; a file
    /// that does not load changes nothing.
    pub fn reload_from(mut self, path: std::path::PathBuf) -> Self {
        self.config_path = Some(path);
        self
    }

    /// Runs one round of the check named `check` from every vantage, now,
    /// and returns its results (also spooled for delivery).
    pub async fn probe_once(&self, check: &str) -> Vec<crate::probe::ProbeResult> {
        self.scheduler.probe_once(check).await
    }

    /// The results not yet acknowledged.
    pub fn queue(&self) -> Arc<ResultQueue> {
        self.queue.clone()
    }

    /// Runs until `shutdown`: stops probing first, syncs and closes the
    /// spool, and lets the reporter deliver what is left (bounded by the
    /// drain timeout). Every task runs under a [`Supervisor`]:
    ///
    /// | component            | on failure | why                               |
    /// |----------------------|------------|-----------------------------------|
    /// | `check:<name>@<vantage>` | restart | one loop's panic must not stop the others; results already spooled stay |
    /// | `identity`           | restart    | identities are re-learnt from scratch |
    /// | `control`            | restart    | the checks in force are kept in the scheduler and the assigned-checks file |
    /// | `reload`             | restart    | SIGHUP re-reads the file; a failed reload changes nothing |
    /// | `watchdog`           | restart    | under systemd's WatchdogSec: pings it from this runtime |
    /// | `reporter`           | exit       | it owns the stream's window of unacked batches; a new process rebuilds it from the spool |
    /// | `spool-sync`         | exit       | results not synced would be lost silently; a new process reopens the spool |
    ///
    /// Fails when the collector refuses the credentials or a component
    /// under `exit` fails.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), AgentExit> {
        let main = Supervisor::new(shutdown.clone());
        let refused: Arc<Mutex<Option<CredentialsRefused>>> = Arc::default();
        let stop_sync = CancellationToken::new();
        // Delivery winds down only once every probe has ended and been
        // synced: a round finishing within its shutdown grace is still
        // delivered, not left in the spool for the next start.
        let probes_done = CancellationToken::new();
        let mut reporter = Some(self.reporter);
        {
            let (refused, probes_done) = (refused.clone(), probes_done.clone());
            main.spawn("reporter", Policy::Exit, None, move |_, _| {
                let (reporter, refused) = (reporter.take(), refused.clone());
                let probes_done = probes_done.clone();
                async move {
                    let Some(reporter) = reporter else {
                        return Err("the reporter cannot be started twice".into());
                    };
                    reporter.run(probes_done).await.map_err(|e| {
                        let message = e.to_string();
                        *refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                        message.into()
                    })
                }
            });
        }
        {
            let (queue, stop_sync) = (self.queue.clone(), stop_sync.clone());
            main.spawn("spool-sync", Policy::Exit, None, move |_, _| {
                let (queue, stop_sync) = (queue.clone(), stop_sync.clone());
                async move {
                    queue.run_sync(stop_sync).await;
                    Ok(())
                }
            });
        }
        // Identities first (bounded by the DNS and echo timeouts), so the
        // first results already carry them.
        let identities = self
            .refresher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        tokio::select! {
            _ = shutdown.cancelled() => {}
            () = identities.refresh_all() => {}
        }
        let probing = Supervisor::new(shutdown.clone());
        let refresher = self.refresher.clone();
        probing.spawn("identity", Policy::Restart, None, move |_, stop| {
            let refresher = refresher.lock().unwrap_or_else(|p| p.into_inner()).clone();
            async move {
                refresher.run(stop).await;
                Ok(())
            }
        });
        if self.control.checks().0.is_empty() {
            tracing::warn!(
                "No checks yet: none in the config, none assigned by the collector so far."
            );
        }
        self.control.apply(&probing, "start");
        vantage_service::systemd::serving(&probing, &shutdown, "probing");
        {
            let (control, loops) = (self.control.clone(), probing.clone());
            probing.spawn("control", Policy::Restart, None, move |live, stop| {
                control.clone().run(loops.clone(), live, stop)
            });
        }
        if let Some(path) = self.config_path.clone() {
            let (control, loops) = (self.control.clone(), probing.clone());
            probing.spawn("reload", Policy::Restart, None, move |_, stop| {
                follow_sighup(path.clone(), control.clone(), loops.clone(), stop)
            });
        }
        probing.wait().await;
        // Every probe has ended: the last sync catches all results, and
        // the reporter delivers them (within its drain timeout).
        stop_sync.cancel();
        probes_done.cancel();
        let fatal = main.wait().await;
        if let Some(refusal) = refused.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Err(AgentExit::CredentialsRefused(refusal));
        }
        match fatal {
            Some(error) => Err(AgentExit::Component(error)),
            None => Ok(()),
        }
    }
}

/// Re-reads `path` on every SIGHUP until `stop`.
async fn follow_sighup(
    path: std::path::PathBuf,
    control: Arc<Control>,
    probing: Supervisor,
    stop: CancellationToken,
) -> Result<(), vantage_service::supervise::ComponentError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = hangups.recv() => {}
        }
        vantage_service::systemd::reloading();
        let loaded = AgentConfig::load(&path)
            .map_err(|e| e.to_string())
            .and_then(|config| control.reload(&probing, config));
        vantage_service::systemd::ready("probing");
        match loaded {
            Ok(()) => {
                metrics::counter!("vantage_config_reloads_total", "result" => "applied")
                    .increment(1);
                tracing::info!(path = %path.display(), "Configuration reloaded.");
            }
            Err(error) => {
                metrics::counter!("vantage_config_reloads_total", "result" => "refused")
                    .increment(1);
                tracing::error!(
                    path = %path.display(),
                    "Configuration reload refused: {error}. The running configuration stays."
                );
            }
        }
    }
}

/// Why the agent stopped before it was asked to.
#[derive(Debug, thiserror::Error)]
pub enum AgentExit {
    #[error(transparent)]
    CredentialsRefused(#[from] CredentialsRefused),
    #[error("{0}")]
    Component(String),
}

/// The TLS settings of every check, with their CA files read.
fn tls_configs(config: &AgentConfig) -> Result<TlsConfigs, TlsSetupError> {
    TlsConfigs::build(config.checks.iter().map(|c| TlsKey::of(c)))
}

/// Every check's headers file, read once to refuse a bad one at start (a
/// probe reads it again, so a rotated secret is used from the next).
fn headers_files(config: &AgentConfig) -> Result<(), SetupError> {
    for check in &config.checks {
        check
            .file_headers()
            .map_err(|message| SetupError::HeadersFile {
                check: check.name.get_ref().to_string(),
                message,
            })?;
    }
    Ok(())
}

/// How to reach the collector, with the credential and TLS files read.
fn connection(config: &AgentConfig) -> Result<Connection, SetupError> {
    let c = &config.collector;
    let token = c.load_token().map_err(SetupError::Collector)?;
    let endpoints = c.all_endpoints();
    for endpoint in &endpoints {
        if c.insecure && endpoint.plaintext_beyond_loopback() {
            tracing::warn!(
                endpoint = endpoint.as_str(),
                "INSECURE: the token is sent in plaintext to a non-loopback collector (collector.insecure = true)."
            );
        }
    }
    let read = |path: &std::path::Path, what: &str| {
        std::fs::read(path).map_err(|e| {
            SetupError::Collector(format!(
                "cannot read collector.{what} {}: {e}",
                path.display()
            ))
        })
    };
    let tls = if endpoints.iter().any(|e| e.as_str().starts_with("https://")) {
        let ca = c
            .ca_file
            .as_deref()
            .map(|p| read(p, "ca_file"))
            .transpose()?;
        let client = match (&c.client_cert_file, &c.client_key_file) {
            (Some(cert), Some(key)) => Some((
                read(cert, "client_cert_file")?,
                read(key, "client_key_file")?,
            )),
            _ => None,
        };
        Some(Connection::tls_config(
            ca.as_deref(),
            client.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())),
        ))
    } else {
        None
    };
    Ok(Connection {
        endpoints: endpoints
            .iter()
            .map(|e| e.as_str().trim_end_matches('/').to_owned())
            .collect(),
        source_ip: config.source_ip,
        token,
        tls,
    })
}
