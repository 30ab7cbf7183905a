//! What ends the demo early: SIGINT (Ctrl-C), SIGTERM (`timeout`, systemd,
//! a CI runner) and SIGHUP (a closed terminal) alike. Each is caught for the
//! whole run, so the story is stopped and its PostgreSQL and temporary
//! files are removed whichever signal ends it; a signal's default action
//! would leave the private cluster running and its directory behind.

use anyhow::{Context, Result};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// The signal that asked the demo to stop, once one has.
#[derive(Debug, Clone)]
pub(crate) struct StopSignal(watch::Receiver<Option<&'static str>>);

impl StopSignal {
    /// Starts listening for SIGINT, SIGTERM and SIGHUP.
    pub(crate) fn listen() -> Result<Self> {
        let (tx, rx) = watch::channel(None);
        let mut streams = Vec::new();
        for (kind, name) in [
            (SignalKind::interrupt(), "SIGINT"),
            (SignalKind::terminate(), "SIGTERM"),
            (SignalKind::hangup(), "SIGHUP"),
        ] {
            streams.push((
                signal(kind).with_context(|| format!("listening for {name}"))?,
                name,
            ));
        }
        for (mut stream, name) in streams {
            let tx = tx.clone();
            tokio::spawn(async move {
                if stream.recv().await.is_some() {
                    tx.send_if_modified(|seen| seen.replace(name).is_none());
                }
            });
        }
        Ok(Self(rx))
    }

    /// The signal received so far, if any.
    pub(crate) fn received(&self) -> Option<&'static str> {
        *self.0.borrow()
    }

    /// Waits for a signal; returns its name.
    pub(crate) async fn wait(&mut self) -> &'static str {
        loop {
            if let Some(name) = *self.0.borrow_and_update() {
                return name;
            }
            if self.0.changed().await.is_err() {
                // Every listener ended without a signal: none can come.
                std::future::pending::<()>().await;
            }
        }
    }
}
