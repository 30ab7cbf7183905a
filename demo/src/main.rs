//! `vantage-demo`: the whole story locally (PostgreSQL, collector, agents
//! in three "regions", a target failing for one, the detection and the
//! webhooks), printed on stdout.

use std::process::ExitCode;

use clap::Parser;

/// The whole story locally: a private PostgreSQL, a collector, agents in
/// three "regions", a target failing for one, the detection, the pages.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Keep the collector and the agents running at the end, so the
    /// incident pages can be browsed, until Ctrl-C, SIGTERM or SIGHUP.
    #[arg(long)]
    keep: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    // The story is the output; only errors are logged (to stderr).
    vantage_service::logging::init(vantage_service::logging::LogFormat::Text, "error");
    vantage_service::install_crypto_provider();
    match vantage_demo::run(args.keep).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
