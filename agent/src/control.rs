//! The agent's control: turns what changes the checks in force (a check
//! set the collector pushes, a configuration reloaded on SIGHUP) into a
//! new set for the scheduler, and runs the one-off probes the collector
//! asks for, answering each.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use vantage_proto::v1 as pb;

use crate::central::CentralChecks;
use crate::config::{AgentConfig, CheckConfig, ResolverSpec};
use crate::report::Pushed;
use crate::schedule::{OneOff, OneOffCheck, Scheduler};
use crate::vantage::IdentityRefresher;
use vantage_service::supervise::{ComponentError, Liveness, Supervisor};

/// The checks in force come from here.
pub struct Control {
    scheduler: Arc<Scheduler>,
    central: Mutex<CentralChecks>,
    /// The configuration in force (its checks are the local ones).
    config: Mutex<AgentConfig>,
    /// Shared with the `identity` component, made again on a reload that
    /// changes the vantages.
    refresher: Arc<Mutex<IdentityRefresher>>,
    /// What goes back to the collector: probe answers, check reports.
    answers: mpsc::UnboundedSender<pb::agent_message::Body>,
    pushed: tokio::sync::Mutex<mpsc::UnboundedReceiver<Pushed>>,
}

impl Control {
    pub fn new(
        scheduler: Arc<Scheduler>,
        central: CentralChecks,
        config: AgentConfig,
        refresher: Arc<Mutex<IdentityRefresher>>,
        answers: mpsc::UnboundedSender<pb::agent_message::Body>,
        pushed: mpsc::UnboundedReceiver<Pushed>,
    ) -> Self {
        Self {
            scheduler,
            central: Mutex::new(central),
            config: Mutex::new(config),
            refresher,
            answers,
            pushed: tokio::sync::Mutex::new(pushed),
        }
    }

    /// The local checks and the assigned ones that are valid here, and
    /// the assigned ones left out with why.
    pub fn checks(&self) -> (Vec<Arc<CheckConfig>>, BTreeMap<String, String>) {
        let names = self.scheduler.vantage_names();
        let names: HashSet<&str> = names.iter().map(String::as_str).collect();
        let config = self.config.lock().unwrap_or_else(|p| p.into_inner());
        let central = self.central.lock().unwrap_or_else(|p| p.into_inner());
        central.merged(&config.checks, &names)
    }

    /// Puts the checks in force into effect under `probing`; logs what
    /// changed (`why`: what changed them) and tells the collector which
    /// assigned checks run and which were refused.
    pub fn apply(&self, probing: &Supervisor, why: &str) {
        let (checks, mut refused) = self.checks();
        let applied = self.scheduler.apply(probing, checks);
        refused.extend(applied.refused.clone());
        let report = self
            .central
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .report(&refused);
        let version = report.set_version;
        if applied != Default::default() {
            tracing::info!(
                started = ?applied.started,
                changed = ?applied.changed,
                stopped = ?applied.stopped,
                refused = ?applied.refused.keys().collect::<Vec<_>>(),
                central_version = version,
                "Checks updated ({why})."
            );
        }
        // Nothing assigned, nothing ever assigned: nothing to report.
        if version > 0 {
            // An unsent report waits for the next session (the channel
            // outlives sessions); `Err`: the reporter is gone.
            let _ = self
                .answers
                .send(pb::agent_message::Body::ChecksApplied(report));
        }
    }

    /// Puts a reloaded configuration in force: its checks, vantages and
    /// resolvers now; what can change only at a restart is named in the
    /// log and keeps its running value. A configuration whose vantages
    /// cannot be set up changes nothing.
    pub fn reload(&self, probing: &Supervisor, new: AgentConfig) -> Result<(), String> {
        let old = self
            .config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let dns_changed = old.dns != new.dns;
        let vantages_changed = old.effective_vantages() != new.effective_vantages();
        if dns_changed || vantages_changed {
            let vantages =
                crate::vantage::rebuild_all(&new, &self.scheduler.vantages(), dns_changed)
                    .map_err(|e| e.to_string())?;
            *self.refresher.lock().unwrap_or_else(|p| p.into_inner()) =
                IdentityRefresher::new(vantages.clone(), &new.dns);
            self.scheduler.set_vantages(vantages);
            probing.restart("identity");
        }
        let at_restart = restart_only_changes(&old, &new);
        if !at_restart.is_empty() {
            tracing::warn!(
                keys = ?at_restart,
                "Configuration reloaded, but these settings take effect only at the next restart."
            );
        }
        // Keys that wait for a restart keep their running values.
        let mut kept = old;
        kept.checks = new.checks;
        kept.dns = new.dns;
        kept.vantages = new.vantages;
        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = kept;
        self.apply(probing, "configuration reloaded");
        Ok(())
    }

    /// Handles what the collector pushes until `stop`.
    pub async fn run(
        self: Arc<Self>,
        probing: Supervisor,
        live: Liveness,
        stop: CancellationToken,
    ) -> Result<(), ComponentError> {
        let mut pushed = self.pushed.lock().await;
        loop {
            live.beat();
            let message = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                message = pushed.recv() => message,
            };
            match message {
                None => {
                    // The reporter has gone: nothing more will come.
                    stop.cancelled().await;
                    return Ok(());
                }
                Some(Pushed::Checks(set)) => {
                    let changed = self
                        .central
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .apply(set);
                    // Applied again even when unchanged: the collector
                    // hears what runs after every set it sends.
                    let why = if changed {
                        "the collector assigned new checks"
                    } else {
                        "the collector sent the checks in force"
                    };
                    self.apply(&probing, why);
                }
                Some(Pushed::Probe(request)) => {
                    let this = self.clone();
                    tokio::spawn(async move { this.probe(request).await });
                }
            }
        }
    }

    /// Runs one probe request and answers it.
    async fn probe(&self, request: pb::ProbeRequest) {
        let request_id = request.request_id;
        let outcome = match self.one_off(request) {
            Ok(one_off) => self
                .scheduler
                .one_off(one_off)
                .await
                .map_err(|e| e.to_string()),
            Err(error) => Err(error),
        };
        let done = match outcome {
            Ok(results) => {
                tracing::info!(
                    request_id,
                    results = results.len(),
                    "Ran a probe the collector asked for."
                );
                pb::ProbeDone {
                    request_id,
                    results: u32::try_from(results.len()).unwrap_or(u32::MAX),
                    error: String::new(),
                }
            }
            Err(error) => {
                tracing::warn!(request_id, %error, "Cannot run a probe the collector asked for.");
                pb::ProbeDone {
                    request_id,
                    results: 0,
                    error,
                }
            }
        };
        let _ = self.answers.send(pb::agent_message::Body::ProbeDone(done));
    }

    fn one_off(&self, request: pb::ProbeRequest) -> Result<OneOff, String> {
        use pb::probe_request::Target;
        let check = match request.target {
            Some(Target::Check(name)) => OneOffCheck::Named(name),
            Some(Target::DefinitionToml(text)) => {
                let names = self.scheduler.vantage_names();
                let names: HashSet<&str> = names.iter().map(String::as_str).collect();
                let what = format!("probe request {}", request.request_id);
                OneOffCheck::Defined(Box::new(CheckConfig::from_table_text(
                    &what, &text, &names,
                )?))
            }
            None => return Err("the request names no check".into()),
        };
        let resolvers = request
            .resolvers
            .iter()
            .map(|r| r.parse::<ResolverSpec>())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(OneOff {
            request_id: request.request_id,
            check,
            vantages: request.vantages,
            resolvers,
            dial_each: request.dial_each,
            rounds: request.rounds.max(1),
            trace_path: request.trace_path,
        })
    }
}

/// The keys of `new` that differ from `old` and take effect only at a
/// restart: who the agent is and how it delivers.
fn restart_only_changes(old: &AgentConfig, new: &AgentConfig) -> Vec<&'static str> {
    // Debug text compares nested settings without every type having to
    // implement PartialEq; nothing here is logged.
    fn differs(a: &impl std::fmt::Debug, b: &impl std::fmt::Debug) -> bool {
        format!("{a:?}") != format!("{b:?}")
    }
    [
        ("agent_id", differs(&old.agent_id, &new.agent_id)),
        ("region", differs(&old.region, &new.region)),
        ("labels", old.labels != new.labels),
        (
            "source_ip",
            old.source_ip != new.source_ip && !new.vantages.is_empty(),
        ),
        (
            "max_concurrent_probes",
            old.max_concurrent_probes != new.max_concurrent_probes,
        ),
        ("probe_header", old.probe_header != new.probe_header),
        ("collector", differs(&old.collector, &new.collector)),
        ("spool", differs(&old.spool, &new.spool)),
        ("metrics_listen", old.metrics_listen != new.metrics_listen),
        ("path", old.path != new.path),
    ]
    .into_iter()
    .filter(|(_, changed)| *changed)
    .map(|(key, _)| key)
    .collect()
}
