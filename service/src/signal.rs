//! The signals that stop a program: SIGTERM (systemd, kill) and SIGINT
//! (a terminal), turned into one cancellation.

use tokio_util::sync::CancellationToken;

/// Cancels `shutdown` on SIGTERM or SIGINT; `program` names the program in
/// the log lines.
pub async fn cancel_on_signal(shutdown: CancellationToken, program: &str) {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(error) => {
            tracing::error!(%error, "Cannot listen for SIGTERM; only SIGINT stops the {program}.");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("Shutdown requested.");
    shutdown.cancel();
}
