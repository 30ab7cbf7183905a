//! The agent's control: turns what changes the checks in force (a check
//! set the collector pushes, a reloaded config) into a new set for the
//! scheduler, and runs the one-off probes the collector asks for,
//! answering each.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use vantage_proto::v1 as pb;

use crate::central::CentralChecks;
use crate::config::{CheckConfig, ResolverSpec};
use crate::report::Pushed;
use crate::schedule::{OneOff, OneOffCheck, Scheduler};
use crate::supervise::{ComponentError, Liveness, Supervisor};

/// The checks in force come from here.
pub struct Control {
    scheduler: Arc<Scheduler>,
    central: Mutex<CentralChecks>,
    local: Mutex<Vec<CheckConfig>>,
    answers: mpsc::UnboundedSender<pb::ProbeDone>,
    pushed: tokio::sync::Mutex<mpsc::UnboundedReceiver<Pushed>>,
}

impl Control {
    pub fn new(
        scheduler: Arc<Scheduler>,
        central: CentralChecks,
        local: Vec<CheckConfig>,
        answers: mpsc::UnboundedSender<pb::ProbeDone>,
        pushed: mpsc::UnboundedReceiver<Pushed>,
    ) -> Self {
        Self {
            scheduler,
            central: Mutex::new(central),
            local: Mutex::new(local),
            answers,
            pushed: tokio::sync::Mutex::new(pushed),
        }
    }

    /// The local checks and the assigned ones that are valid here.
    pub fn checks(&self) -> Vec<CheckConfig> {
        let names = self.scheduler.vantage_names();
        let names: HashSet<&str> = names.into_iter().collect();
        let local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        let central = self.central.lock().unwrap_or_else(|p| p.into_inner());
        central.merged(&local, &names)
    }

    /// Puts the checks in force into effect under `probing`; logs what
    /// changed (`why`: what changed them).
    pub fn apply(&self, probing: &Supervisor, why: &str) {
        let applied = self.scheduler.apply(probing, self.checks());
        let version = self
            .central
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set()
            .version;
        if applied != Default::default() {
            tracing::info!(
                started = ?applied.started,
                changed = ?applied.changed,
                stopped = ?applied.stopped,
                central_version = version,
                "Checks updated ({why})."
            );
        }
    }

    /// Replaces the config's own checks (a reload).
    pub fn set_local(&self, probing: &Supervisor, local: Vec<CheckConfig>) {
        *self.local.lock().unwrap_or_else(|p| p.into_inner()) = local;
        self.apply(probing, "configuration reloaded");
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
                    if changed {
                        self.apply(&probing, "the collector assigned new checks");
                    }
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
        let _ = self.answers.send(done);
    }

    fn one_off(&self, request: pb::ProbeRequest) -> Result<OneOff, String> {
        use pb::probe_request::Target;
        let check = match request.target {
            Some(Target::Check(name)) => OneOffCheck::Named(name),
            Some(Target::DefinitionToml(text)) => {
                let names = self.scheduler.vantage_names();
                let names: HashSet<&str> = names.into_iter().collect();
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
        })
    }
}
