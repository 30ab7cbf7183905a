//! `vantage-collector check …`: the central check set applied from a
//! file, and what the agents made of it (running, or refused and why).

use super::CheckCommand;
use crate::checks;
use crate::store::Store;

pub(super) async fn check_command(store: &Store, command: CheckCommand) -> anyhow::Result<()> {
    match command {
        CheckCommand::Apply {
            file,
            dry_run,
            wait,
        } => {
            let fleet = store.fleet().await?;
            let checks = checks::read_file(&file, &fleet)?;
            for warning in checks.iter().flat_map(|c| c.check.warnings()) {
                eprintln!("warning: {warning}");
            }
            let (version, changes) = store.apply_checks(&checks, dry_run).await?;
            for change in &changes {
                println!("{change}");
            }
            match (changes.is_empty(), dry_run) {
                (true, _) => println!("No changes; check set version {version}."),
                (false, true) => {
                    println!("Dry run: nothing applied (check set version {version}).")
                }
                (false, false) => println!(
                    "Applied: check set version {version}, {} checks.",
                    checks.len()
                ),
            }
            // An apply that changed something waits for what the agents
            // make of it (`check list` shows it at any time).
            if !dry_run && !changes.is_empty() && !wait.is_zero() {
                report_agents(store, version, wait).await?;
            }
        }
        CheckCommand::List => {
            let (version, stored) = store.central_checks().await?;
            println!("check set version {version}");
            let reports = store.agent_checks().await?;
            println!(
                "{:<24} {:>7} {:>9}  {:<40} {:<24} select",
                "check", "version", "interval", "url", "agents"
            );
            for c in stored {
                let of_this: Vec<_> = reports.iter().filter(|r| r.check_name == c.name).collect();
                let current = |state: &str| {
                    of_this
                        .iter()
                        .filter(|r| r.version == c.version && r.state == state)
                        .count()
                };
                let behind = of_this.iter().filter(|r| r.version < c.version).count();
                let mut agents =
                    format!("{} run, {} refused", current("running"), current("refused"));
                if behind > 0 {
                    agents.push_str(&format!(", {behind} behind"));
                }
                let text = |key: &str| c.definition[key].as_str().unwrap_or("").to_owned();
                let interval = Some(text("interval"))
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| {
                        humantime::format_duration(vantage_check::default_check_interval())
                            .to_string()
                    });
                let select = if c.selector.as_object().is_none_or(|o| o.is_empty()) {
                    "all agents".to_owned()
                } else {
                    c.selector.to_string()
                };
                println!(
                    "{:<24} {:>7} {:>9}  {:<40} {:<24} {select}",
                    c.name,
                    c.version,
                    interval,
                    text("url"),
                    agents
                );
            }
            for refused in reports.iter().filter(|r| r.reason.is_some()) {
                println!(
                    "refused: {} v{} by {}: {}",
                    refused.check_name,
                    refused.version,
                    refused.agent_id,
                    refused.reason.as_deref().unwrap_or_default()
                );
            }
        }
        CheckCommand::Show { name } => {
            let (_, stored) = store.central_checks().await?;
            let check = stored
                .into_iter()
                .find(|c| c.name == name)
                .ok_or_else(|| anyhow::anyhow!("no check named {name:?}"))?;
            let shown = serde_json::json!({
                "name": check.name,
                "version": check.version,
                "updated_at": check.updated_at,
                "definition": check.definition,
                "select": check.selector,
            });
            println!("{}", serde_json::to_string_pretty(&shown)?);
        }
        CheckCommand::Delete { name } => match store.delete_check(&name).await? {
            Some(version) => println!("- {name}\nDeleted: check set version {version}."),
            None => anyhow::bail!("no check named {name:?}"),
        },
    }
    Ok(())
}

/// Waits up to `wait` for the agents seen in the last two minutes that
/// take central checks to report on set `version`, prints what each runs
/// and refused, and fails when any refused a check.
async fn report_agents(
    store: &Store,
    version: i64,
    wait: std::time::Duration,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let since = chrono::Utc::now() - chrono::Duration::minutes(2);
    let reporters = loop {
        let reporters = store.check_reporters(since).await?;
        if !reporters.iter().any(|r| r.behind(version)) || started.elapsed() >= wait {
            break reporters;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    if reporters.is_empty() {
        println!("No agent that takes central checks was seen in the last two minutes.");
        return Ok(());
    }
    let checks = store.agent_checks().await?;
    let mut refusals = 0;
    for reporter in &reporters {
        let id = &reporter.agent_id;
        if reporter.behind(version) {
            println!(
                "{id}: no report on set version {version} within {} (last seen {})",
                humantime::format_duration(wait),
                reporter.last_seen.format("%Y-%m-%d %H:%M:%S UTC")
            );
            continue;
        }
        let mine: Vec<_> = checks.iter().filter(|c| &c.agent_id == id).collect();
        let running: Vec<String> = mine
            .iter()
            .filter(|c| c.reason.is_none())
            .map(|c| format!("{} v{}", c.check_name, c.version))
            .collect();
        println!(
            "{id}: runs {}",
            if running.is_empty() {
                "no central check".to_owned()
            } else {
                running.join(", ")
            }
        );
        for refused in mine.iter().filter(|c| c.reason.is_some()) {
            refusals += 1;
            println!(
                "{id}: REFUSED {} v{}: {}",
                refused.check_name,
                refused.version,
                refused.reason.as_deref().unwrap_or_default()
            );
        }
    }
    if refusals > 0 {
        anyhow::bail!(
            "check set version {version} is applied, but agents refused {refusals} check(s) \
             (above): fix or remove them"
        );
    }
    Ok(())
}
