//! Live reload of `collector.toml` on SIGHUP: the file is read and
//! checked as at start; a refused file changes nothing (logged at ERROR,
//! counted); what can change live (the detector's settings, the sinks and
//! the links in pages) is put in effect by making those components again;
//! what cannot (listeners, database, TLS, ingest limits) is named in the
//! log as waiting for a restart.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use vantage_service::supervise::{ComponentError, Liveness, Supervisor};

use crate::config::CollectorConfig;

/// The configuration components read each time they are made.
pub struct LiveConfig {
    config: Mutex<CollectorConfig>,
    /// The configuration the process started with: what the settings that
    /// change only at a restart still run with.
    started: CollectorConfig,
}

impl LiveConfig {
    pub fn new(config: CollectorConfig) -> Self {
        Self {
            started: config.clone(),
            config: Mutex::new(config),
        }
    }

    /// The configuration in force.
    pub fn get(&self) -> CollectorConfig {
        self.config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set(&self, config: CollectorConfig) {
        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = config;
    }
}

/// What a reload changes, by the components it makes again.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Keys changed that are in effect now.
    pub live: Vec<&'static str>,
    /// Components to make again for them.
    pub components: Vec<&'static str>,
    /// Keys changed that wait for a restart.
    pub at_restart: Vec<&'static str>,
}

/// What differs between `old` (the configuration in force) and `new`;
/// the settings read only at start are compared with `started`'s, so a
/// value restored to the running one is no longer waiting for a restart.
pub fn changes(started: &CollectorConfig, old: &CollectorConfig, new: &CollectorConfig) -> Changes {
    // Debug text compares every nested setting without every type having
    // to implement PartialEq; nothing here is logged.
    fn differs(a: &impl std::fmt::Debug, b: &impl std::fmt::Debug) -> bool {
        format!("{a:?}") != format!("{b:?}")
    }
    let mut c = Changes::default();
    if differs(&old.detector, &new.detector) {
        c.live.push("detector");
        c.components.push("detector");
    }
    if differs(&old.sinks, &new.sinks) || differs(&old.link_base(), &new.link_base()) {
        c.live.push("sink");
        c.components.push("alerter");
    }
    let old = started;
    for (key, changed) in [
        ("grpc_listen", old.grpc_listen != new.grpc_listen),
        ("http_listen", old.http_listen != new.http_listen),
        ("database", differs(&old.database, &new.database)),
        ("ingest", differs(&old.ingest, &new.ingest)),
        ("tls", differs(&old.tls, &new.tls)),
        ("retention", differs(&old.retention, &new.retention)),
        ("ui", differs(&old.ui, &new.ui)),
    ] {
        if changed {
            c.at_restart.push(key);
        }
    }
    c
}

/// Re-reads `path` on every SIGHUP until `stop`.
pub async fn follow_sighup(
    path: PathBuf,
    live: Arc<LiveConfig>,
    supervisor: Supervisor,
    liveness: Liveness,
    stop: CancellationToken,
) -> Result<(), ComponentError> {
    let mut hangups = signal(SignalKind::hangup())?;
    liveness.beat();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = hangups.recv() => {}
        }
        vantage_service::systemd::reloading();
        reload(&path, &live, &supervisor);
        vantage_service::systemd::ready("serving");
        liveness.beat();
    }
}

/// One reload of `path`.
pub fn reload(path: &std::path::Path, live: &LiveConfig, supervisor: &Supervisor) {
    let new = match CollectorConfig::load(path)
        .map_err(anyhow::Error::from)
        .and_then(|c| {
            crate::preflight::preflight(&c)?;
            Ok(c)
        }) {
        Ok(c) => c,
        Err(error) => {
            metrics::counter!("vantage_config_reloads_total", "result" => "refused").increment(1);
            tracing::error!(
                path = %path.display(),
                "Configuration reload refused: {error:#}. The running configuration stays."
            );
            return;
        }
    };
    let changes = changes(&live.started, &live.get(), &new);
    live.set(new);
    for component in &changes.components {
        supervisor.restart(component);
    }
    if !changes.at_restart.is_empty() {
        tracing::warn!(
            keys = ?changes.at_restart,
            "Configuration reloaded, but these settings differ from the running ones and take \
             effect only at the next restart."
        );
    }
    metrics::counter!("vantage_config_reloads_total", "result" => "applied").increment(1);
    metrics::gauge!("vantage_config_last_reload_success_timestamp_seconds").set(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
    );
    tracing::info!(
        path = %path.display(),
        changed = ?changes.live,
        "Configuration reloaded."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> CollectorConfig {
        CollectorConfig::parse(std::path::Path::new("collector.toml"), text).unwrap()
    }

    #[test]
    fn changes_name_live_keys_and_keys_waiting_for_a_restart() {
        let old = parse("");
        assert_eq!(changes(&old, &old, &parse("")), Changes::default());
        let new = parse(
            "grpc_listen = \"127.0.0.1:9999\"\n[detector]\ninterval = \"7s\"\n\
             [[sink]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:1/\"\n",
        );
        assert_eq!(
            changes(&old, &old, &new),
            Changes {
                live: vec!["detector", "sink"],
                components: vec!["detector", "alerter"],
                at_restart: vec!["grpc_listen"],
            }
        );
        // Restored to the running value: nothing waits for a restart any
        // more (the live keys changed back, so they count as changes).
        let restored = changes(&old, &new, &old);
        assert!(restored.at_restart.is_empty(), "{restored:?}");
        assert_eq!(restored.live, vec!["detector", "sink"]);
    }
}
