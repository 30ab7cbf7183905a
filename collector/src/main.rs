//! `vantage-collector`: logging, signals and exit codes around [`cli`].
//!
//! [`cli`]: vantage_collector::cli

use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use vantage_collector::cli::{self, Args, Command};

#[global_allocator]
static ALLOCATOR: vantage_collector::Allocator = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    // Reads FAILPOINTS; compiled in only for the fault tests' builds.
    let _failpoints = fail::FailScenario::setup();
    vantage_service::logging::init(args.log_format, "info");
    vantage_service::install_crypto_provider();
    // Only `serve` stops gracefully on a signal; the other commands keep
    // the default (a signal ends them at once).
    let shutdown = CancellationToken::new();
    if matches!(args.command, Command::Serve { .. }) {
        tokio::spawn(vantage_service::signal::cancel_on_signal(
            shutdown.clone(),
            "collector",
        ));
    }
    match cli::run(args.command, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
