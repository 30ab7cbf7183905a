//! `vantage-collector`: logging, signals and exit codes around [`cli`].
//!
//! [`cli`]: vantage_collector::cli

use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use vantage_collector::cli::{self, Args, Command};

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    // Reads FAILPOINTS; compiled in only for the fault tests' builds.
    let _failpoints = fail::FailScenario::setup();
    let default_level = if matches!(args.command, Command::Demo) {
        "error"
    } else {
        "info"
    };
    vantage_agent::logging::init(args.log_format, default_level);
    vantage_agent::install_crypto_provider();
    // Only `serve` stops gracefully on a signal; the other commands keep
    // the default (a signal ends them at once).
    let shutdown = CancellationToken::new();
    if matches!(args.command, Command::Serve { .. }) {
        tokio::spawn(cancel_on_signal(shutdown.clone()));
    }
    match cli::run(args.command, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Cancels `shutdown` on SIGTERM or SIGINT.
async fn cancel_on_signal(shutdown: CancellationToken) {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(error) => {
            tracing::error!(%error, "Cannot listen for SIGTERM; only SIGINT stops the collector.");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("Shutdown requested.");
    shutdown.cancel();
}
