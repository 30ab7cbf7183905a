//! `vantage-demo`: the whole story locally (PostgreSQL, collector, agents
//! in three "regions", a target failing for one, the detection and the
//! webhooks), printed on stdout.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    // The story is the output; only errors are logged (to stderr).
    vantage_service::logging::init(vantage_service::logging::LogFormat::Text, "error");
    vantage_service::install_crypto_provider();
    match vantage_demo::run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
