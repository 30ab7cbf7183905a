//! `vantage-agent`: signals, logging and exit codes; the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use vantage_agent::app::AgentExit;
use vantage_agent::{AgentConfig, App};
use vantage_service::logging::LogFormat;

#[derive(Parser)]
#[command(
    version,
    about = "Vantage agent: probes targets and streams results to the collector"
)]
struct Args {
    /// Path to the agent's TOML configuration.
    #[arg(long, default_value = "/etc/vantage/agent.toml")]
    config: PathBuf,
    /// Validate the configuration and exit.
    #[arg(long)]
    check_config: bool,
    /// Log lines as text (coloured on a terminal) or JSON, on stderr.
    #[arg(long, value_enum, env = "VANTAGE_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
}

// One thread: probes mostly wait on the network; a thousand checks every 10 s
// keep it under a tenth of a core, and one thread saves the worker stacks and
// allocator arenas of a multi-threaded runtime (bench/agent-cost.sh: peak RSS
// 15.8 MB against 17.5 MB, CPU per probe the same within noise).
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    one_malloc_arena();
    let args = Args::parse();
    vantage_service::logging::init(args.log_format, "info");
    vantage_service::install_crypto_provider();
    // Reads FAILPOINTS; compiled in only for the fault tests' builds.
    let _failpoints = fail::FailScenario::setup();
    let config = match AgentConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        // What start-up checks, short of opening the spool.
        return match App::check(&config) {
            Ok(()) => {
                println!("{}: OK", args.config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        };
    }
    if let Some(addr) = config.metrics_listen {
        let installed = metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install();
        if let Err(e) = installed {
            eprintln!("error: metrics_listen {addr}: {e}");
            return ExitCode::FAILURE;
        }
    }
    let app = match App::build(config) {
        Ok(app) => app.reload_from(args.config.clone()),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(vantage_service::signal::cancel_on_signal(
        shutdown.clone(),
        "agent",
    ));
    match app.run(shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(AgentExit::CredentialsRefused(refused)) => {
            eprintln!("error: {refused}");
            // EX_CONFIG: the unit's RestartPreventExitStatus keeps systemd
            // from hammering the collector with a bad token.
            ExitCode::from(78)
        }
        Err(AgentExit::Component(error)) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// glibc gives each thread that allocates (the runtime's, the spool's, the
/// blocking pool's) an arena of its own, each holding freed memory apart.
/// The agent allocates little and seldom from more than one thread at a
/// time, so one arena costs no measurable CPU and saves about 0.4 MB of
/// its peak RSS (bench/agent-cost.sh). As `MALLOC_ARENA_MAX=1` would, but
/// for every way the agent is started.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn one_malloc_arena() {
    // SAFETY: mallopt only changes a setting of glibc's allocator, which
    // it reads under its own lock; nothing else is involved.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn one_malloc_arena() {}
