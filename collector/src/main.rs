//! `vantage-collector`: argument parsing, signals, logging and exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;
use vantage_collector::{Application, CollectorConfig, app, demo};

#[derive(Parser)]
#[command(
    version,
    about = "Vantage collector: stores probe results and detects 502 patterns"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the collector.
    Serve {
        #[arg(long, default_value = "/etc/vantage/collector.toml")]
        config: PathBuf,
    },
    /// Apply database migrations and exit.
    Migrate {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Show the whole story locally: PostgreSQL, collector, agents in three
    /// "regions", a target failing for one, the detection and the webhooks.
    Demo,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let default_level = if matches!(args.command, Command::Demo) {
        "error"
    } else {
        "info"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)),
        )
        .init();
    vantage_agent::install_crypto_provider();
    match run(args.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve { config } => {
            let config = CollectorConfig::load(&config)?;
            let pool = app::connect(&config).await?;
            let app = Application::build(config, pool).await?;
            let shutdown = CancellationToken::new();
            tokio::spawn(cancel_on_signal(shutdown.clone()));
            app.run(shutdown).await
        }
        Command::Migrate { config } => {
            let config = match config {
                Some(path) => CollectorConfig::load(&path)?,
                None => CollectorConfig::default(),
            };
            let pool = app::connect(&config).await?;
            vantage_collector::store::Store::new(pool)
                .migrate()
                .await
                .context("applying migrations")?;
            println!("migrations applied");
            Ok(())
        }
        Command::Demo => demo::run().await,
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
