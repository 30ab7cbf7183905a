//! The `vantage-collector` command line: its commands and what each does
//! (the binary's `main` only sets up logging, signals and exit codes).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::detect::asn;
use crate::store::Store;
use crate::{Application, CollectorConfig, alert, app, enrol, probe_now, silence};

mod check;
use check::check_command;

#[derive(Parser)]
#[command(
    version,
    about = "Vantage collector: stores probe results and detects 502 patterns"
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
    /// Log lines as text (coloured on a terminal) or JSON, on stderr;
    /// stdout carries only what a command prints.
    #[arg(
        long,
        global = true,
        value_enum,
        env = "VANTAGE_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: vantage_service::logging::LogFormat,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the collector.
    Serve {
        #[arg(long, default_value = "/etc/vantage/collector.toml")]
        config: PathBuf,
    },
    /// Check a configuration as start-up does (every key, the database
    /// URL, the TLS files) without connecting or listening; exits non-zero
    /// with the file, line and key of the first problem.
    CheckConfig {
        #[arg(long, default_value = "/etc/vantage/collector.toml")]
        config: PathBuf,
    },
    /// Apply database migrations and exit.
    Migrate {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Enrol, list and revoke agents.
    Agent {
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: AgentCommand,
    },
    /// Manage the IP-to-ASN table behind the `asn` dimension.
    Asn {
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: AsnCommand,
    },
    /// Silence pages: matching incidents are still detected and stored,
    /// but not paged until the silence ends.
    Silence {
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: SilenceCommand,
    },
    /// Manage the checks defined centrally (the set the collector owns).
    Check {
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: CheckCommand,
    },
    /// Probe now from the connected agents (all, or those `--from`
    /// names) and print the results side by side: "is it just me?". The
    /// results are stored, marked as one-off; the detector does not count
    /// them.
    Probe {
        /// The URL to probe (or --check NAME).
        url: Option<String>,
        /// Run this check of the agents' (central or their own) instead.
        #[arg(long)]
        check: Option<String>,
        /// region=NAME, agent=ID or vantage=NAME; repeat for more (several
        /// of one kind: any; of different kinds: all).
        #[arg(long)]
        from: Vec<String>,
        /// Ask this resolver instead of the agents' own (udp://IP:PORT,
        /// tcp://IP:PORT, IP:PORT, system); repeat for several.
        #[arg(long)]
        resolver: Vec<String>,
        /// Dial the first resolved address or each (one result per
        /// address).
        #[arg(long, value_enum, default_value = "first")]
        dial: DialChoice,
        /// The probe's timeout.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
        /// Also trace each vantage's path to the address its probe dialled
        /// (or to its forward proxy) and print the paths side by side.
        #[arg(long)]
        path: bool,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Check the configured sinks.
    Sink {
        #[arg(long, global = true, default_value = "/etc/vantage/collector.toml")]
        config: PathBuf,
        #[command(subcommand)]
        command: SinkCommand,
    },
}

/// Which resolved addresses a probe dials.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum DialChoice {
    First,
    Each,
}

#[derive(Subcommand)]
pub enum AgentCommand {
    /// Enrol an agent (or re-enrol it with a new token) and print its token
    /// once; only the token's hash is stored.
    Add {
        agent_id: String,
        #[arg(long)]
        region: String,
    },
    /// List every known agent with its enrolment state and progress.
    List,
    /// Revoke an agent's token: its streams are refused from the next batch.
    Revoke { agent_id: String },
}

#[derive(Subcommand)]
pub enum SilenceCommand {
    /// Silence a target, or one dimension value of it (`--target '*'`:
    /// every target).
    Add {
        #[arg(long)]
        target: String,
        #[arg(long)]
        dimension: Option<String>,
        #[arg(long)]
        value: Option<String>,
        /// How long, e.g. 2h or 30m.
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
        #[arg(long)]
        comment: String,
        /// Who silenced it (default: $USER).
        #[arg(long, env = "USER", default_value = "unknown")]
        author: String,
    },
    /// List silences in force or yet to start (`--all`: every one).
    List {
        #[arg(long)]
        all: bool,
    },
    /// End a silence now; its incidents still open are paged.
    Expire { id: i64 },
}

#[derive(Subcommand)]
pub enum CheckCommand {
    /// Make FILE (`[[check]]` entries, each with an optional `[check.select]`
    /// of `regions`, `agents`, `labels`) the whole set: prints the changes
    /// (`+` added, `~` changed, `-` removed) and applies them.
    Apply {
        file: PathBuf,
        /// Print the changes without applying them.
        #[arg(long)]
        dry_run: bool,
        /// How long to wait for the connected agents to report which
        /// checks they run and which they refused (0: do not wait).
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        wait: std::time::Duration,
    },
    /// List the checks with their version, interval, URL and selector.
    List,
    /// Show one check as stored.
    Show { name: String },
    /// Delete one check.
    Delete { name: String },
}

#[derive(Subcommand)]
pub enum SinkCommand {
    /// Send a clearly marked test event to each sink (or the one named)
    /// and print what each answered.
    Test { name: Option<String> },
}

#[derive(Subcommand)]
pub enum AsnCommand {
    /// Replace the table with a tab-separated file of `first_ip last_ip asn
    /// country name` lines (the ip2asn format, e.g. iptoasn.com's
    /// ip2asn-combined.tsv); the running collector picks it up at its next
    /// detection pass.
    Load { file: PathBuf },
}

/// Runs `command`; `serve` runs until `shutdown`.
pub async fn run(command: Command, shutdown: CancellationToken) -> anyhow::Result<()> {
    match command {
        Command::Serve { config: path } => {
            let config = CollectorConfig::load(&path)?;
            crate::preflight::preflight(&config)?;
            let pool = app::connect(&config).await?;
            let app = Application::build(config, pool).await?.reload_from(path);
            app.run(shutdown).await
        }
        Command::CheckConfig { config: path } => {
            let config = CollectorConfig::load(&path)?;
            crate::preflight::preflight(&config)?;
            println!("{}: OK", path.display());
            Ok(())
        }
        Command::Migrate { config } => {
            let config = match config {
                Some(path) => CollectorConfig::load(&path)?,
                None => CollectorConfig::default(),
            };
            let store = Store::new(app::connect(&config).await?);
            let citus = store.migrate().await.context("applying migrations")?;
            println!("migrations applied");
            if let Some(citus) = citus {
                println!(
                    "Citus {} with workers {}: {} distributed by agent_id ({})",
                    citus.version,
                    citus.workers.join(", "),
                    crate::store::citus::DISTRIBUTED.join(", "),
                    if citus.distributed_now.is_empty() {
                        "already".to_owned()
                    } else {
                        format!("now: {}", citus.distributed_now.join(", "))
                    }
                );
            }
            Ok(())
        }
        Command::Agent { config, command } => {
            let store = migrated_store(config.as_deref()).await?;
            agent_command(&store, command).await
        }
        Command::Asn { config, command } => {
            let AsnCommand::Load { file } = command;
            let ranges = asn::read_file(&file)?;
            let store = migrated_store(config.as_deref()).await?;
            store
                .load_asn(&file.display().to_string(), &ranges)
                .await
                .context("storing the ASN table")?;
            println!("Loaded {} ranges from {}.", ranges.len(), file.display());
            Ok(())
        }
        Command::Check { config, command } => {
            let store = migrated_store(config.as_deref()).await?;
            check_command(&store, command).await
        }
        Command::Silence { config, command } => {
            let store = migrated_store(config.as_deref()).await?;
            silence_command(&store, command).await
        }
        Command::Sink { config, command } => {
            let config = CollectorConfig::load(&config)?;
            let SinkCommand::Test { name } = command;
            sink_test(&config, name.as_deref()).await
        }
        Command::Probe {
            url,
            check,
            from,
            resolver,
            dial,
            timeout,
            path,
            config,
        } => {
            let store = migrated_store(config.as_deref()).await?;
            let what = url
                .clone()
                .or_else(|| check.as_ref().map(|c| format!("check {c:?}")))
                .unwrap_or_default();
            let options = probe_now::ProbeOptions {
                url,
                check,
                from,
                resolvers: resolver,
                dial_each: matches!(dial, DialChoice::Each),
                timeout,
                trace_path: path,
            };
            let outcome = probe_now::run(&store, &options).await?;
            print!("{}", probe_now::render(&outcome, &what, path));
            if !outcome.complete() {
                anyhow::bail!(
                    "not every agent asked answered (probe request {})",
                    outcome.request_id
                );
            }
            Ok(())
        }
    }
}

/// The database of the config at `path` (defaults without one; the
/// `DATABASE_URL` environment variable wins), migrated.
async fn migrated_store(path: Option<&std::path::Path>) -> anyhow::Result<Store> {
    let config = match path {
        Some(path) => CollectorConfig::load(path)?,
        None => CollectorConfig::default(),
    };
    let store = Store::new(app::connect(&config).await?);
    store.migrate().await.context("applying migrations")?;
    Ok(store)
}

async fn agent_command(store: &Store, command: AgentCommand) -> anyhow::Result<()> {
    match command {
        AgentCommand::Add { agent_id, region } => {
            let token = enrol::enrol(store, &agent_id, &region).await?;
            eprintln!("Enrolled agent {agent_id:?} in region {region:?}. Its token (shown once):");
            println!("{token}");
        }
        AgentCommand::List => {
            println!(
                "{:<24} {:<16} {:<8} {:<20} {:>20}  last seen",
                "agent", "region", "state", "enrolled", "last seq"
            );
            for a in store.list_agents().await? {
                let state = match (a.enrolled_at, a.revoked_at) {
                    (_, Some(_)) => "revoked",
                    (Some(_), None) => "enrolled",
                    (None, None) => "unknown",
                };
                let enrolled = a
                    .enrolled_at
                    .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                    .unwrap_or_else(|| "-".into());
                println!(
                    "{:<24} {:<16} {:<8} {:<20} {:>20}  {}",
                    a.agent_id,
                    a.region,
                    state,
                    enrolled,
                    a.last_seq,
                    a.last_seen.format("%Y-%m-%d %H:%M:%S")
                );
            }
        }
        AgentCommand::Revoke { agent_id } => {
            if !store.revoke_agent(&agent_id).await? {
                anyhow::bail!("no enrolled, unrevoked agent {agent_id:?}");
            }
            println!("Revoked agent {agent_id:?}.");
        }
    }
    Ok(())
}

async fn silence_command(store: &Store, command: SilenceCommand) -> anyhow::Result<()> {
    let now = chrono::Utc::now();
    match command {
        SilenceCommand::Add {
            target,
            dimension,
            value,
            duration,
            comment,
            author,
        } => {
            let matching = silence::check(
                &target,
                dimension.as_deref(),
                value.as_deref(),
                duration,
                &comment,
            )?;
            let ends = now + chrono::Duration::from_std(duration)?;
            let id = store
                .add_silence(&matching, now, ends, &comment, &author)
                .await?;
            println!(
                "Silence {id} until {} (UTC).",
                ends.format("%Y-%m-%d %H:%M:%S")
            );
        }
        SilenceCommand::List { all } => {
            print!(
                "{}",
                silence::table(&store.list_silences(now, all).await?, now)
            );
        }
        SilenceCommand::Expire { id } => {
            if !store.expire_silence(id, now).await? {
                anyhow::bail!("no silence {id} in force");
            }
            println!("Silence {id} expired; its incidents still open are paged now.");
        }
    }
    Ok(())
}

/// `sink test`: one test event per sink, and what each answered.
async fn sink_test(config: &CollectorConfig, name: Option<&str>) -> anyhow::Result<()> {
    let sinks: Vec<_> = config
        .sinks
        .iter()
        .filter(|s| name.is_none_or(|n| s.name == n))
        .cloned()
        .collect();
    if sinks.is_empty() {
        match name {
            Some(n) => anyhow::bail!("no sink named {n:?} in the configuration"),
            None => anyhow::bail!("no sinks configured ([[sink]] or [[webhook]])"),
        }
    }
    let answers = alert::test_sinks(&sinks, config.link_base().as_deref()).await?;
    let mut failed = 0;
    for (sink, (name, answer)) in sinks.iter().zip(answers) {
        match answer {
            Ok(a) => println!(
                "{name} ({}) {}: OK, HTTP {} {}",
                sink.kind.as_str(),
                sink.url,
                a.status,
                a.body
            ),
            Err(e) => {
                failed += 1;
                println!("{name} ({}) {}: FAILED, {e}", sink.kind.as_str(), sink.url);
            }
        }
    }
    if failed > 0 {
        anyhow::bail!(
            "{failed} of {} sinks did not accept the test event",
            sinks.len()
        );
    }
    Ok(())
}
