//! Both programs' side of the service manager (systemd, `Type=notify`):
//! `READY=1` once the program serves, `RELOADING=1` … `READY=1` around a
//! reload, `STOPPING=1` when it begins to stop, and `WATCHDOG=1` at half
//! of `WatchdogSec` from a task of the program's runtime, so a hung
//! runtime is restarted. Without `NOTIFY_SOCKET` (not under systemd) all
//! of this does nothing.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::supervise::{Policy, Supervisor};

fn send(states: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::warn!(%error, "Cannot notify the service manager.");
    }
}

/// The program serves; `status` is what `systemctl status` shows.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload begins (end it with [`ready`]).
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// The program begins to stop.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// The watchdog's period, when the service manager asks for pings.
pub fn watchdog_period() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|timeout| timeout / 2)
}

/// The program serves (`status`): says `READY=1`, pings the watchdog (a
/// `watchdog` component of `supervisor`, when asked for), and says
/// `STOPPING=1` once `shutdown` is cancelled.
pub fn serving(supervisor: &Supervisor, shutdown: &CancellationToken, status: &str) {
    if let Some(period) = watchdog_period() {
        supervisor.spawn(
            "watchdog",
            Policy::Restart,
            None,
            move |_, stop| async move {
                watchdog(period, stop).await;
                Ok(())
            },
        );
    }
    ready(status);
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        stopping();
    });
}

/// Pings the watchdog every `period` until `stop`.
pub async fn watchdog(period: Duration, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => send(&[NotifyState::Watchdog]),
        }
    }
}
