//! The scheduler: runs every check from every vantage it applies to, on its
//! interval, from a random offset inside the interval, never overlapping
//! itself, with bounded concurrency. The set of checks changes while it
//! runs ([`Scheduler::apply`]): loops of checks that did not change keep
//! their rhythm, the others stop or start; results and sequence numbers
//! go on in the same queue.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::config::{CheckConfig, Dial, ResolverSpec};
use crate::probe::http::Probed;
use crate::probe::path::PathTracer;
use crate::probe::{HttpProber, ProbeResult};
use crate::queue::{ReservedSeq, ResultQueue};
use crate::vantage::Vantage;
use vantage_service::supervise::{Liveness, Policy, Supervisor};

/// Runs probes on schedule and queues their results.
pub struct Scheduler {
    /// Replaced whole by a reload ([`Scheduler::set_vantages`]).
    vantages: RwLock<Vec<Arc<Vantage>>>,
    prober: Arc<HttpProber>,
    queue: Arc<ResultQueue>,
    egress_ip: watch::Receiver<Option<IpAddr>>,
    permits: Arc<Semaphore>,
    tracer: PathTracer,
    /// The checks in force, and the loop running each from each vantage.
    running: Mutex<Running>,
}

#[derive(Default)]
struct Running {
    checks: Vec<Arc<CheckConfig>>,
    /// Component name (`check:<name>@<vantage>`) → the check it runs and
    /// from where.
    loops: HashMap<String, (Arc<CheckConfig>, Arc<Vantage>)>,
}

/// What [`Scheduler::apply`] did, in check names.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub started: BTreeSet<String>,
    pub changed: BTreeSet<String>,
    pub stopped: BTreeSet<String>,
    /// Checks left out, and why.
    pub refused: BTreeMap<String, String>,
}

/// Rounds one request may ask for at most.
const MAX_ONE_OFF_ROUNDS: u32 = 10;

/// Why a one-off probe could not run.
#[derive(Debug, thiserror::Error)]
pub enum OneOffError {
    #[error("no check named {0:?} runs on this agent")]
    UnknownCheck(String),
    #[error("{0}")]
    Invalid(String),
    #[error("no vantage of this agent is named {0:?}")]
    UnknownVantage(String),
}

/// A probe asked for now, beyond the schedule.
#[derive(Debug, Clone)]
pub struct OneOff {
    pub request_id: u64,
    /// The check as configured here, or a definition of its own.
    pub check: OneOffCheck,
    /// Vantages that probe; empty: all the check runs from.
    pub vantages: Vec<String>,
    /// Resolvers instead of the check's; empty: the check's.
    pub resolvers: Vec<ResolverSpec>,
    pub dial_each: bool,
    /// Rounds run one after the other (at least one).
    pub rounds: u32,
    /// Trace the path to where each probe went.
    pub trace_path: bool,
}

#[derive(Debug, Clone)]
pub enum OneOffCheck {
    Named(String),
    Defined(Box<CheckConfig>),
}

impl Scheduler {
    /// A scheduler with `checks` in force and no loop running yet (until
    /// [`Scheduler::apply`]).
    pub fn new(
        checks: Vec<Arc<CheckConfig>>,
        vantages: Vec<Arc<Vantage>>,
        prober: HttpProber,
        queue: Arc<ResultQueue>,
        egress_ip: watch::Receiver<Option<IpAddr>>,
        max_concurrent_probes: usize,
        tracer: PathTracer,
    ) -> Self {
        Self {
            vantages: RwLock::new(vantages),
            prober: Arc::new(prober),
            queue,
            egress_ip,
            permits: Arc::new(Semaphore::new(max_concurrent_probes)),
            tracer,
            running: Mutex::new(Running {
                checks,
                loops: HashMap::new(),
            }),
        }
    }

    /// The names of this agent's vantages.
    pub fn vantage_names(&self) -> Vec<String> {
        self.vantages().iter().map(|v| v.name.clone()).collect()
    }

    /// The vantages in force.
    pub fn vantages(&self) -> Vec<Arc<Vantage>> {
        self.vantages
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the vantages (a reload); loops from a vantage that is no
    /// longer the same start again at the next [`Scheduler::apply`].
    pub fn set_vantages(&self, vantages: Vec<Arc<Vantage>>) {
        *self.vantages.write().unwrap_or_else(|p| p.into_inner()) = vantages;
    }

    fn running(&self) -> std::sync::MutexGuard<'_, Running> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `checks` the checks in force: a loop whose check is
    /// unchanged keeps running, a changed one is started again, a removed
    /// one stops (a round under way may finish, within the shutdown
    /// grace). A check whose resolvers or CA file cannot be set up is
    /// left out, logged at ERROR.
    pub fn apply(&self, supervisor: &Supervisor, checks: Vec<Arc<CheckConfig>>) -> Applied {
        let mut ready = Vec::with_capacity(checks.len());
        let mut refused = BTreeMap::new();
        for check in checks {
            match self.prepare(&check) {
                Ok(()) => ready.push(check),
                Err(error) => {
                    tracing::error!(
                        check = %check.name.get_ref(),
                        %error,
                        "Cannot run this check; it is left out."
                    );
                    refused.insert(check.name.get_ref().to_string(), error);
                }
            }
        }
        let vantages = self.vantages();
        let mut running = self.running();
        let before: HashMap<String, Arc<CheckConfig>> = running
            .checks
            .iter()
            .map(|c| (c.name.get_ref().to_string(), c.clone()))
            .collect();
        let mut applied = Applied {
            refused,
            ..Applied::default()
        };
        let mut wanted = HashSet::new();
        for check in &ready {
            let name = check.name.get_ref().to_string();
            match before.get(&name) {
                None => applied.started.insert(name.clone()),
                Some(old) if **old != **check => applied.changed.insert(name.clone()),
                Some(_) => false,
            };
            // A loop lives a bit beyond three intervals without a round
            // (plus one timeout): then it is stuck.
            let stale_after = check.interval * 3 + check.timeout;
            for vantage in vantages.iter().filter(|v| v.runs(check)) {
                let component = format!("check:{name}@{}", vantage.name);
                wanted.insert(component.clone());
                if running
                    .loops
                    .get(&component)
                    .is_some_and(|(c, v)| **c == **check && Arc::ptr_eq(v, vantage))
                {
                    continue;
                }
                supervisor.stop(&component);
                let run = CheckLoop {
                    offset: random_offset(check.interval),
                    check: check.clone(),
                    vantage: vantage.clone(),
                    prober: self.prober.clone(),
                    queue: self.queue.clone(),
                    egress_ip: self.egress_ip.clone(),
                    permits: self.permits.clone(),
                    tracer: self.tracer.clone(),
                };
                supervisor.spawn(
                    component.clone(),
                    Policy::Restart,
                    Some(stale_after + run.offset),
                    move |live, stop| {
                        let run = run.clone();
                        async move {
                            run.run(stop, live).await;
                            Ok(())
                        }
                    },
                );
                running
                    .loops
                    .insert(component, (check.clone(), vantage.clone()));
            }
        }
        running.loops.retain(|component, _| {
            let keep = wanted.contains(component);
            if !keep {
                supervisor.stop(component);
            }
            keep
        });
        let now: HashSet<String> = ready.iter().map(|c| c.name.get_ref().to_string()).collect();
        applied.stopped = before.into_keys().filter(|n| !now.contains(n)).collect();
        running.checks = ready;
        applied
    }

    /// Resolvers and TLS for a check that may name new ones.
    fn prepare(&self, check: &CheckConfig) -> Result<(), String> {
        for vantage in self.vantages().iter().filter(|v| v.runs(check)) {
            vantage.ensure_resolvers(check).map_err(|e| e.to_string())?;
        }
        self.prober.prepare(check).map_err(|e| e.to_string())
    }

    /// The check named `name`, as in force.
    pub fn check(&self, name: &str) -> Option<Arc<CheckConfig>> {
        self.running()
            .checks
            .iter()
            .find(|c| c.name.get_ref().as_str() == name)
            .cloned()
    }

    /// Runs the check named `check` once from every vantage it applies to,
    /// queues the results and returns copies: what a scheduled round does,
    /// on demand (tests, `--probe-once`).
    pub async fn probe_once(&self, check: &str) -> Vec<ProbeResult> {
        let Some(check) = self.check(check) else {
            return Vec::new();
        };
        let vantages = self.vantages();
        self.round_from(&check, vantages.iter().filter(|v| v.runs(&check)), false)
            .await
    }

    /// Runs a probe request now: one round of its check from its vantages,
    /// results queued with the request's id. How many results it made.
    pub async fn one_off(&self, request: OneOff) -> Result<Vec<ProbeResult>, OneOffError> {
        let mut check = match request.check {
            OneOffCheck::Named(name) => {
                let check = self.check(&name).ok_or(OneOffError::UnknownCheck(name))?;
                (*check).clone()
            }
            OneOffCheck::Defined(check) => *check,
        };
        if !request.resolvers.is_empty() {
            check.resolvers = Some(request.resolvers);
        }
        if request.dial_each {
            check.dial = Dial::Each;
        }
        check.origin.request_id = Some(request.request_id);
        let vantages = self.vantages();
        if let Some(unknown) = request
            .vantages
            .iter()
            .find(|name| !vantages.iter().any(|v| &v.name == *name))
        {
            return Err(OneOffError::UnknownVantage(unknown.clone()));
        }
        self.prepare(&check).map_err(OneOffError::Invalid)?;
        let chosen: Vec<Arc<Vantage>> = vantages
            .iter()
            .filter(|v| {
                v.runs(&check)
                    && (request.vantages.is_empty() || request.vantages.contains(&v.name))
            })
            .cloned()
            .collect();
        let mut results = Vec::new();
        let rounds = request.rounds.clamp(1, MAX_ONE_OFF_ROUNDS);
        for round in 1..=rounds {
            // Traced after the last round only: the earlier rounds'
            // results are not held back while a path is traced.
            let trace_path = request.trace_path && round == rounds;
            results.extend(self.round_from(&check, chosen.iter(), trace_path).await);
        }
        Ok(results)
    }

    async fn round_from(
        &self,
        check: &CheckConfig,
        vantages: impl Iterator<Item = &Arc<Vantage>>,
        trace_path: bool,
    ) -> Vec<ProbeResult> {
        let rounds = vantages.map(|vantage| async {
            let reserve = || self.queue.reserve();
            let mut probed = self.prober.round(check, vantage, &reserve).await;
            if trace_path {
                self.tracer.attach(vantage, &mut probed).await;
            }
            probed
        });
        let mut out = Vec::new();
        for probed in futures_util::future::join_all(rounds).await {
            complete(probed, &self.egress_ip, |r| out.push(r.clone()));
        }
        out
    }
}

fn random_offset(interval: Duration) -> Duration {
    let nanos = u64::try_from(interval.as_nanos())
        .unwrap_or(u64::MAX)
        .max(1);
    Duration::from_nanos(rand::random_range(0..nanos))
}

/// How long a round already under way may run on after shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

#[derive(Clone)]
struct CheckLoop {
    check: Arc<CheckConfig>,
    vantage: Arc<Vantage>,
    offset: Duration,
    prober: Arc<HttpProber>,
    queue: Arc<ResultQueue>,
    egress_ip: watch::Receiver<Option<IpAddr>>,
    permits: Arc<Semaphore>,
    tracer: PathTracer,
}

impl CheckLoop {
    async fn run(self, shutdown: CancellationToken, liveness: Liveness) {
        let mut ticker =
            tokio::time::interval_at(Instant::now() + self.offset, self.check.interval);
        // A probe that overran its slot is not made up for: the next one
        // starts at the next slot, so a check never overlaps itself.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut last_traced: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let permit = tokio::select! {
                _ = shutdown.cancelled() => return,
                permit = self.permits.acquire() => permit,
            };
            let Ok(_permit) = permit else { return };
            // Fault tests make a round panic here (test builds only).
            fail::fail_point!("check-round");
            let reserve = || self.queue.reserve();
            // A round under way at shutdown may finish within a grace
            // period (its request has reached the site: its result should
            // too); beyond, its tickets drop and release their numbers.
            let grace = async {
                shutdown.cancelled().await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            };
            // A round's future holds the whole exchange (lookup, TLS
            // handshake, request) inline, about 5 KB: boxed, it takes that
            // memory only while the round is under way, not in every idle
            // loop (1,000 checks: 5 MB of an agent's heap).
            let trace_path = self
                .check
                .path_interval
                .is_some_and(|every| last_traced.is_none_or(|at| at.elapsed() >= every));
            if trace_path {
                last_traced = Some(Instant::now());
            }
            let round = Box::pin(async {
                let mut probed = self
                    .prober
                    .round(&self.check, &self.vantage, &reserve)
                    .await;
                if trace_path {
                    self.tracer.attach(&self.vantage, &mut probed).await;
                }
                probed
            });
            let probed = tokio::select! {
                _ = grace => return,
                probed = round => probed,
            };
            complete(probed, &self.egress_ip, |_| {});
            liveness.beat();
        }
    }
}

/// Stamps each result of a round with the agent's egress address as the
/// collector last saw it, shows it to `inspect`, and queues it under its
/// ticket.
fn complete(
    probed: Vec<Probed<ReservedSeq>>,
    egress_ip: &watch::Receiver<Option<IpAddr>>,
    mut inspect: impl FnMut(&ProbeResult),
) {
    let egress_ip = *egress_ip.borrow();
    for p in probed {
        let mut result = p.result;
        result.egress_ip = egress_ip;
        tracing::debug!(
            check = %result.check,
            vantage = %result.vantage,
            seq = p.ticket.seq(),
            outcome = ?result.outcome,
            "Probe finished."
        );
        inspect(&result);
        p.ticket.complete(result);
    }
}
