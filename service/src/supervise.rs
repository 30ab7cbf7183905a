//! One supervisor for every long-lived component of a process (the
//! agent's check loops, identity refresher, spool sync and reporter; the
//! collector's servers, detector, alerter and partition maintenance).
//!
//! A component is a future made afresh by a factory. When it panics,
//! returns an error, or ends while the process is not shutting down, the
//! supervisor logs it at ERROR with the component's name and then, by the
//! component's [`Policy`], either makes it again after a backoff or stops
//! the process with the error (the caller exits non-zero). Never a
//! silently dead task.
//!
//! Each component reports liveness through its [`Liveness`] handle
//! ([`Liveness::beat`] after every successful pass); [`Supervisor::health`]
//! says which are alive, for `/healthz` and the metrics
//! `vantage_component_last_success_timestamp_seconds{component}`,
//! `vantage_component_up{component}` and
//! `vantage_component_restarts_total{component}`.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::FutureExt;
use tokio::time::Instant;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What a component's future returns when it fails.
pub type ComponentError = Box<dyn std::error::Error + Send + Sync>;

/// What the supervisor does when a component fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Make it again after 1 s, 2 s, 4 s … (at most [`MAX_BACKOFF`]); the
    /// backoff starts over once a run has lasted [`STABLE_AFTER`].
    Restart,
    /// Stop the process: without this component it is useless (a
    /// listener), and the service manager restarts it whole.
    Exit,
}

impl Policy {
    fn as_str(self) -> &'static str {
        match self {
            Self::Restart => "restart",
            Self::Exit => "exit",
        }
    }
}

/// The longest wait before a failed component is made again.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A run this long resets the backoff: the component had recovered.
pub const STABLE_AFTER: Duration = Duration::from_secs(300);

/// A component's state as `/healthz` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Running,
    /// Failed; waiting for its backoff before it is made again.
    Restarting,
    /// Failed under [`Policy::Exit`]: the process is stopping.
    Failed,
    /// Ended with the process's shutdown.
    Stopped,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Restarting => "restarting",
            Self::Failed => "failed",
            Self::Stopped => "stopped",
        }
    }
}

/// One component's health at one moment.
#[derive(Debug, Clone)]
pub struct ComponentHealth {
    pub name: String,
    pub state: State,
    /// Running, and (if it reports passes) its last success is recent.
    pub alive: bool,
    pub last_success: Option<SystemTime>,
    /// How old a last success may be before the component counts as
    /// stalled; `None` for components without passes (servers).
    pub stale_after: Option<Duration>,
    pub restarts: u64,
    pub last_error: Option<String>,
}

struct Component {
    name: String,
    stale_after: Option<Duration>,
    status: Mutex<Status>,
    /// Cancelled with the process's shutdown, or alone by
    /// [`Supervisor::stop`].
    stop: CancellationToken,
    /// The current run's token (a child of `stop`), cancelled alone by
    /// [`Supervisor::restart`].
    run: Mutex<CancellationToken>,
    /// The current run was ended to be made again at once.
    restart_asked: std::sync::atomic::AtomicBool,
}

struct Status {
    state: State,
    /// When the current run started (the grace before a first success).
    run_started: Instant,
    last_success: Option<(Instant, SystemTime)>,
    restarts: u64,
    last_error: Option<String>,
}

impl Component {
    fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn health(&self, now: Instant) -> ComponentHealth {
        let status = self.status();
        let fresh = match self.stale_after {
            None => true,
            Some(limit) => {
                let since = status
                    .last_success
                    .map_or(status.run_started, |(at, _)| at.max(status.run_started));
                now.saturating_duration_since(since) <= limit
            }
        };
        ComponentHealth {
            name: self.name.clone(),
            state: status.state,
            alive: status.state == State::Running && fresh,
            last_success: status.last_success.map(|(_, wall)| wall),
            stale_after: self.stale_after,
            restarts: status.restarts,
            last_error: status.last_error.clone(),
        }
    }
}

/// A component's handle for reporting its passes.
#[derive(Clone)]
pub struct Liveness {
    component: Arc<Component>,
}

impl Liveness {
    /// A pass succeeded now.
    pub fn beat(&self) {
        let wall = SystemTime::now();
        self.component.status().last_success = Some((Instant::now(), wall));
        let seconds = wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        metrics::gauge!(
            "vantage_component_last_success_timestamp_seconds",
            "component" => self.component.name.clone()
        )
        .set(seconds);
    }

    /// A pass failed now: `/healthz` shows `error` as the component's
    /// `last_error` (the component goes on, and goes stale if it keeps
    /// failing).
    pub fn failed(&self, error: impl std::fmt::Display) {
        self.component.status().last_error = Some(error.to_string());
    }

    pub fn name(&self) -> &str {
        &self.component.name
    }
}

/// Runs components and keeps them running; see the module docs.
#[derive(Clone)]
pub struct Supervisor {
    components: Arc<Mutex<Vec<Arc<Component>>>>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    fatal: Arc<Mutex<Option<String>>>,
}

impl Supervisor {
    /// A supervisor whose components stop when `shutdown` is cancelled; a
    /// component that fails under [`Policy::Exit`] cancels it.
    pub fn new(shutdown: CancellationToken) -> Self {
        Self {
            components: Arc::default(),
            tracker: TaskTracker::new(),
            shutdown,
            fatal: Arc::default(),
        }
    }

    /// Starts the component `name`: `make(liveness, shutdown)` is its
    /// future, made again after each failure under [`Policy::Restart`].
    /// `stale_after`: how long it may go without [`Liveness::beat`] before
    /// it counts as stalled (`None`: alive while running).
    pub fn spawn<F, Fut>(
        &self,
        name: impl Into<String>,
        policy: Policy,
        stale_after: Option<Duration>,
        mut make: F,
    ) -> Liveness
    where
        F: FnMut(Liveness, CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), ComponentError>> + Send + 'static,
    {
        let component = Arc::new(Component {
            name: name.into(),
            stale_after,
            status: Mutex::new(Status {
                state: State::Running,
                run_started: Instant::now(),
                last_success: None,
                restarts: 0,
                last_error: None,
            }),
            stop: self.shutdown.child_token(),
            run: Mutex::new(CancellationToken::new()),
            restart_asked: std::sync::atomic::AtomicBool::new(false),
        });
        self.components
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(component.clone());
        let liveness = Liveness {
            component: component.clone(),
        };
        metrics::counter!("vantage_component_restarts_total", "component" => component.name.clone())
            .absolute(0);
        let this = self.clone();
        let handle = liveness.clone();
        self.tracker.spawn(async move {
            let mut failures: u32 = 0;
            loop {
                let started = Instant::now();
                {
                    let mut status = component.status();
                    status.state = State::Running;
                    status.run_started = started;
                }
                let token = component.stop.child_token();
                *component.run.lock().unwrap_or_else(|p| p.into_inner()) = token.clone();
                // Run within this task, not as a task of its own: a
                // panic is caught here as tokio would catch it, and a
                // component costs one task (an agent runs one per check).
                let outcome = AssertUnwindSafe(make(handle.clone(), token))
                    .catch_unwind()
                    .await;
                if component.stop.is_cancelled() {
                    component.status().state = State::Stopped;
                    return;
                }
                if component
                    .restart_asked
                    .swap(false, std::sync::atomic::Ordering::SeqCst)
                    && outcome.is_ok()
                {
                    tracing::info!(component = %component.name, "Component {} made again with new settings.", component.name);
                    continue;
                }
                let error = match outcome {
                    Ok(Ok(())) => "ended on its own while the process was running".to_owned(),
                    Ok(Err(e)) => format!("failed: {e}"),
                    Err(panic) => format!("panicked: {}", panic_message(panic)),
                };
                tracing::error!(
                    component = %component.name,
                    policy = policy.as_str(),
                    "Component {} {error}.",
                    component.name
                );
                metrics::counter!(
                    "vantage_component_restarts_total",
                    "component" => component.name.clone()
                )
                .increment(u64::from(policy == Policy::Restart));
                {
                    let mut status = component.status();
                    status.last_error = Some(error.clone());
                    status.state = match policy {
                        Policy::Restart => State::Restarting,
                        Policy::Exit => State::Failed,
                    };
                }
                if policy == Policy::Exit {
                    this.fail(format!("component {} {error}", component.name));
                    return;
                }
                if started.elapsed() >= STABLE_AFTER {
                    failures = 0;
                }
                let backoff = Duration::from_secs(1)
                    .saturating_mul(2u32.saturating_pow(failures))
                    .min(MAX_BACKOFF);
                failures = failures.saturating_add(1);
                tokio::select! {
                    _ = component.stop.cancelled() => {
                        component.status().state = State::Stopped;
                        return;
                    }
                    _ = tokio::time::sleep(backoff) => {}
                }
                component.status().restarts += 1;
                tracing::info!(component = %component.name, "Restarting component {}.", component.name);
            }
        });
        liveness
    }

    /// Stops the component `name` alone (a check that was removed) and
    /// forgets it: it no longer counts in [`Supervisor::health`]. Its
    /// future sees its shutdown token cancelled, as at the process's
    /// shutdown. Whether there was such a component.
    pub fn stop(&self, name: &str) -> bool {
        let mut components = self.components.lock().unwrap_or_else(|p| p.into_inner());
        let Some(at) = components.iter().position(|c| c.name == name) else {
            return false;
        };
        let component = components.remove(at);
        component.stop.cancel();
        metrics::gauge!("vantage_component_up", "component" => component.name.clone()).set(0.0);
        true
    }

    /// Ends the current run of the component `name` as at shutdown and
    /// makes it again at once, after the run has ended (new settings are
    /// read by its factory); not a failure. Whether there was such a
    /// component.
    pub fn restart(&self, name: &str) -> bool {
        let components = self.components.lock().unwrap_or_else(|p| p.into_inner());
        let Some(component) = components.iter().find(|c| c.name == name) else {
            return false;
        };
        component
            .restart_asked
            .store(true, std::sync::atomic::Ordering::SeqCst);
        component
            .run
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .cancel();
        true
    }

    /// Every component's health now, in the order they were started; also
    /// sets `vantage_component_up`.
    pub fn health(&self) -> Vec<ComponentHealth> {
        let now = Instant::now();
        let components = self.components.lock().unwrap_or_else(|p| p.into_inner());
        components
            .iter()
            .map(|c| {
                let health = c.health(now);
                metrics::gauge!("vantage_component_up", "component" => c.name.clone())
                    .set(f64::from(u8::from(health.alive)));
                health
            })
            .collect()
    }

    /// Records the first fatal error and stops the process.
    pub fn fail(&self, error: String) {
        self.fatal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(error);
        self.shutdown.cancel();
    }

    /// Waits for every component to end (after shutdown); the fatal error
    /// that caused the shutdown, if one did.
    pub async fn wait(&self) -> Option<String> {
        self.tracker.close();
        self.tracker.wait().await;
        self.fatal.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a non-text panic payload)".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_panicking_component_is_logged_and_made_again_with_backoff() {
        let shutdown = CancellationToken::new();
        let supervisor = Supervisor::new(shutdown.clone());
        let runs = Arc::new(AtomicU32::new(0));
        let counted = runs.clone();
        supervisor.spawn(
            "flaky",
            Policy::Restart,
            Some(Duration::from_secs(10)),
            move |live, stop| {
                let n = counted.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < 3 {
                        panic!("boom {n}");
                    }
                    live.beat();
                    stop.cancelled().await;
                    Ok(())
                }
            },
        );
        // 1 s + 2 s + 4 s of backoff, then the fourth run beats.
        tokio::time::sleep(Duration::from_millis(6_900)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        let h = &supervisor.health()[0];
        assert_eq!(h.state, State::Restarting);
        assert!(!h.alive);
        assert_eq!(h.last_error.as_deref(), Some("panicked: boom 2"));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let h = &supervisor.health()[0];
        assert_eq!((h.state, h.alive, h.restarts), (State::Running, true, 3));
        assert!(h.last_success.is_some());
        // No beat for longer than stale_after: stalled.
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert!(!supervisor.health()[0].alive);
        shutdown.cancel();
        assert_eq!(supervisor.wait().await, None);
        assert_eq!(supervisor.health()[0].state, State::Stopped);
    }

    #[tokio::test]
    async fn a_failing_exit_component_stops_the_process_with_its_error() {
        let shutdown = CancellationToken::new();
        let supervisor = Supervisor::new(shutdown.clone());
        supervisor.spawn("listener", Policy::Exit, None, |_, _| async {
            Err::<(), ComponentError>("address in use".into())
        });
        supervisor.spawn("other", Policy::Restart, None, |_, stop| async move {
            stop.cancelled().await;
            Ok(())
        });
        shutdown.cancelled().await;
        let error = supervisor.wait().await.expect("a fatal error");
        assert_eq!(error, "component listener failed: address in use");
        let health = supervisor.health();
        assert_eq!(health[0].state, State::Failed);
        assert_eq!(health[1].state, State::Stopped);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stopped_component_ends_alone_and_is_forgotten() {
        let shutdown = CancellationToken::new();
        let supervisor = Supervisor::new(shutdown.clone());
        let ended = Arc::new(AtomicU32::new(0));
        for name in ["a", "b"] {
            let ended = ended.clone();
            supervisor.spawn(name, Policy::Restart, None, move |_, stop| {
                let ended = ended.clone();
                async move {
                    stop.cancelled().await;
                    ended.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(supervisor.stop("a"));
        assert!(!supervisor.stop("a"), "already gone");
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(ended.load(Ordering::SeqCst), 1);
        let health = supervisor.health();
        assert_eq!(health.len(), 1);
        assert_eq!(
            (health[0].name.as_str(), health[0].state),
            ("b", State::Running)
        );
        assert!(!shutdown.is_cancelled());
        shutdown.cancel();
        assert_eq!(supervisor.wait().await, None);
        assert_eq!(ended.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_restarted_component_ends_its_run_and_is_made_again_at_once() {
        let shutdown = CancellationToken::new();
        let supervisor = Supervisor::new(shutdown.clone());
        let made = Arc::new(AtomicU32::new(0));
        let ended = Arc::new(AtomicU32::new(0));
        {
            let (made, ended) = (made.clone(), ended.clone());
            supervisor.spawn("detector", Policy::Restart, None, move |_, stop| {
                made.fetch_add(1, Ordering::SeqCst);
                let ended = ended.clone();
                async move {
                    stop.cancelled().await;
                    // A graceful end takes a while (a lease released).
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    ended.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(supervisor.restart("detector"));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            made.load(Ordering::SeqCst),
            1,
            "not before the old run ended"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(ended.load(Ordering::SeqCst), 1);
        assert_eq!(
            made.load(Ordering::SeqCst),
            2,
            "made again without a backoff"
        );
        let h = &supervisor.health()[0];
        assert_eq!(
            (h.state, h.restarts, h.last_error.as_deref()),
            (State::Running, 0, None)
        );
        assert!(!supervisor.restart("nobody"));
        shutdown.cancel();
        assert_eq!(supervisor.wait().await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_component_that_returns_early_is_a_failure_too() {
        let shutdown = CancellationToken::new();
        let supervisor = Supervisor::new(shutdown.clone());
        supervisor.spawn("quitter", Policy::Restart, None, |_, _| async { Ok(()) });
        tokio::time::sleep(Duration::from_millis(500)).await;
        let h = &supervisor.health()[0];
        assert_eq!(h.state, State::Restarting);
        assert!(
            h.last_error
                .as_deref()
                .unwrap_or("")
                .contains("ended on its own")
        );
        shutdown.cancel();
        supervisor.wait().await;
    }
}
