//! The demo's story, printed on stdout: the fault, the detection, what
//! on-call reads, the SQL, the spread and re-explanation, the repair.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use ipnet::IpNet;
use serde_json::Value;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::database::demo_database;
use crate::scenario::{
    DEMO_ASN_TABLE, DEMO_SECRET, Scenario, ScenarioTiming, TARGET_HOST, demo_agents,
};
use crate::stop::StopSignal;

/// Runs the demo; prints the story on stdout. With `keep`, the collector
/// and the agents keep running at the end, so the incident pages can be
/// browsed, until a signal stops them. SIGINT, SIGTERM and SIGHUP stop the
/// demo at any point; its database is removed however it ends.
pub async fn run(keep: bool) -> Result<()> {
    let mut stop = StopSignal::listen()?;
    println!("Vantage demo: which vantage points get 502, and why only them?\n");
    // Not raced with the signal: a cluster half started is one that could
    // not be removed. A signal meanwhile is seen right after.
    let (database, url) = demo_database().await?;
    let outcome = match stop.received() {
        Some(signal) => Err(Stopped(signal).into()),
        None => tokio::select! {
            told = story(&url, keep) => told,
            signal = stop.wait() => Err(Stopped(signal).into()),
        },
    };
    let outcome = match outcome {
        Ok(scenario) => {
            if keep {
                let signal = stop.wait().await;
                println!("{signal}: stopping.");
            }
            scenario.stop().await
        }
        Err(error) => Err(error),
    };
    let removed = database.remove().await;
    if let Err(error) = &outcome
        && let Some(Stopped(signal)) = error.downcast_ref::<Stopped>()
    {
        println!("\nStopped by {signal}; the demo's database and files are removed.");
    }
    outcome?;
    removed.context("removing the demo database")
}

/// The story was cut short by a signal.
#[derive(Debug)]
pub struct Stopped(pub &'static str);

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stopped by {} before the story ended", self.0)
    }
}

impl std::error::Error for Stopped {}

/// How long each act waits for the page it expects.
const ACT_WAIT: Duration = Duration::from_secs(60);

/// Tells the story; returns the running scenario (collector, agents,
/// fixtures) for the caller to keep or stop.
async fn story(url: &str, keep: bool) -> Result<Scenario> {
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect(url)
        .await
        .context("connecting to the demo database")?;
    let failing: IpNet = "127.0.2.0/24".parse().context("failing range")?;
    let started = Instant::now();
    let scenario = start(&pool, failing).await?;
    match acts(&pool, &scenario, failing, started, keep).await {
        Ok(()) => Ok(scenario),
        Err(error) => {
            scenario.stop().await?;
            Err(error)
        }
    }
}

/// The database, the ASN table and the scenario's parts, each printed.
async fn start(pool: &PgPool, failing: IpNet) -> Result<Scenario> {
    let timing = ScenarioTiming::default();
    let store = vantage_collector::store::Store::new(pool.clone());
    store.migrate().await?;
    let ranges = vantage_collector::detect::asn::parse("asn-loopback.tsv", DEMO_ASN_TABLE)?;
    store.load_asn("asn-loopback.tsv", &ranges).await?;
    println!(
        "  ASN table   {} ranges loaded (vantage-collector asn load <file>)",
        ranges.len()
    );
    let scenario = Scenario::start(pool.clone(), demo_agents(), Some(failing), &timing).await?;
    println!(
        "  DNS server  udp+tcp {} answers {TARGET_HOST} -> {}",
        scenario.dns.addr(),
        scenario.target.addr().ip()
    );
    println!(
        "  target      {} answers 502 (nginx) to {failing}, 200 to everyone else",
        scenario.target_url
    );
    println!("  webhook     {}", scenario.webhook.url());
    println!(
        "  collector   gRPC {} (detector every {:?} over a {:?} window), pages http://{}/",
        scenario.grpc_addr, timing.detector_interval, timing.window, scenario.http_addr
    );
    for a in &scenario.agents {
        println!(
            "  agent       {:<14} region {:<9} source {}",
            a.agent_id, a.region, a.source_ip
        );
    }
    println!(
        "\nProbing every {:?} from each agent; waiting for the detector...\n",
        timing.probe_interval
    );
    Ok(scenario)
}

/// The fault, its page, the spread and re-explanation, the repair.
async fn acts(
    pool: &PgPool,
    scenario: &Scenario,
    failing: IpNet,
    started: Instant,
    keep: bool,
) -> Result<()> {
    opening(scenario, failing, started).await?;
    print_sql(pool).await?;
    let updated = spreading(scenario).await?;
    print_history(pool).await?;
    repairing(scenario, &updated, failing, started, keep).await
}

/// Act one: the incident opens on the failing prefix; what on-call reads
/// and the signed webhook.
async fn opening(scenario: &Scenario, failing: IpNet, started: Instant) -> Result<()> {
    let wait = ACT_WAIT;
    let prefix = failing.to_string();
    let Some(opened) = scenario
        .wait_for_webhook("incident.opened", "egress_prefix", &prefix, wait)
        .await
    else {
        bail!("no incident for {prefix} within {wait:?}: detection failed");
    };
    println!(
        "Incident opened after {:.1} s. What on-call reads:\n",
        started.elapsed().as_secs_f64()
    );
    println!(
        "  {}\n",
        wrap(opened["explanation"].as_str().unwrap_or_default(), 76, "  ")
    );
    println!("Webhook received:");
    if let Some(request) = scenario
        .webhook
        .requests()
        .into_iter()
        .find(|r| r.body == opened)
    {
        let header = |name: &str| request.headers.get(name).cloned().unwrap_or_default();
        println!(
            "  webhook-id: {}\n  webhook-timestamp: {}\n  webhook-signature: {}\n  (Standard \
             Webhooks, secret {DEMO_SECRET})",
            header("webhook-id"),
            header("webhook-timestamp"),
            header("webhook-signature")
        );
    }
    println!("{}\n", serde_json::to_string_pretty(&opened)?);

    Ok(())
}

/// Act two: the fault spreads to the region; the same incident is
/// re-explained, not paged again.
async fn spreading(scenario: &Scenario) -> Result<Value> {
    let wait = ACT_WAIT;
    // The fault spreads: the WAF rule now covers the rest of us-east. The
    // incident is the same failure, re-explained, not a second page.
    let region_nets: Vec<IpNet> = demo_agents()
        .iter()
        .filter(|a| a.region == "us-east")
        .map(|a| IpNet::from(a.source_ip))
        .collect();
    println!(
        "The fault spreads: the target now answers 502 to every us-east agent ({}).",
        region_nets
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    scenario.target.set_failing_ranges(&region_nets);
    let spread = Instant::now();
    let Some(updated) = scenario
        .webhook
        .wait_for(wait, |b| b["event"] == "incident.updated")
        .await
    else {
        bail!("the incident was not re-explained within {wait:?} of the spread");
    };
    println!(
        "Incident #{} re-explained {:.1} s later: {} {} (was {} {}). What on-call reads now:\n",
        updated["incident_id"],
        spread.elapsed().as_secs_f64(),
        updated["dimension"].as_str().unwrap_or_default(),
        updated["value"].as_str().unwrap_or_default(),
        updated["previous"]["dimension"]
            .as_str()
            .unwrap_or_default(),
        updated["previous"]["value"].as_str().unwrap_or_default(),
    );
    println!(
        "  {}\n",
        wrap(
            updated["explanation"].as_str().unwrap_or_default(),
            76,
            "  "
        )
    );

    Ok(updated)
}

/// Act three: the repair, the resolution, and what is left running.
async fn repairing(
    scenario: &Scenario,
    updated: &Value,
    failing: IpNet,
    started: Instant,
    keep: bool,
) -> Result<()> {
    let wait = ACT_WAIT;
    let prefix = failing.to_string();
    println!("Repairing the target: it now answers 200 to everyone.");
    scenario.target.set_failing(None);
    let repaired = Instant::now();
    let dimension = updated["dimension"].as_str().unwrap_or_default().to_owned();
    let value = updated["value"].as_str().unwrap_or_default().to_owned();
    let resolved = scenario
        .wait_for_webhook("incident.resolved", &dimension, &value, wait)
        .await;
    let (opens, updates, resolves) = count_events(&scenario.webhook.received());
    let Some(resolved) = resolved else {
        bail!("the incident for {prefix} did not resolve within {wait:?} of the repair");
    };
    println!(
        "Incident resolved {:.1} s after the repair. Webhook received:",
        repaired.elapsed().as_secs_f64()
    );
    println!("{}\n", serde_json::to_string_pretty(&resolved)?);
    println!(
        "Webhooks in all: {opens} opened, {updates} updated, {resolves} resolved (one incident, \
         re-explained once, no storm)."
    );
    println!("Demo finished in {:.1} s.", started.elapsed().as_secs_f64());
    let page = resolved["incident_url"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if keep {
        println!(
            "\nStill running: the incident pages are at http://{}/ (this incident: {page}), \
             the vantages at http://{}/vantages. Ctrl-C (or SIGTERM) to stop.",
            scenario.http_addr, scenario.http_addr
        );
    } else {
        println!(
            "To browse the incident page ({page}) before everything stops: \
             cargo run -p vantage-demo -- --keep"
        );
    }
    Ok(())
}

fn count_events(bodies: &[Value]) -> (usize, usize, usize) {
    let count = |e: &str| bodies.iter().filter(|b| b["event"] == e).count();
    (
        count("incident.opened"),
        count("incident.updated"),
        count("incident.resolved"),
    )
}

/// A row of `v_incident_history` as the demo prints it.
type HistoryLine = (
    i64,
    i32,
    String,
    String,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
);

/// How the incidents' explanations changed (`v_incident_history`).
async fn print_history(pool: &PgPool) -> Result<()> {
    println!(
        "SQL> SELECT incident_id, version, dimension, value, explained_at, replaced_at\n     \
         FROM v_incident_history;"
    );
    let rows: Vec<HistoryLine> = sqlx::query_as(
        "SELECT incident_id, version, dimension, value, explained_at, replaced_at
             FROM v_incident_history",
    )
    .fetch_all(pool)
    .await?;
    for (id, version, dimension, value, at, replaced) in rows {
        println!(
            "  {id:>3} v{version} {dimension:<14} {value:<16} from {} {}",
            at.format("%H:%M:%S%.3f"),
            replaced.map_or("(current)".to_owned(), |r| format!(
                "to {}",
                r.format("%H:%M:%S%.3f")
            ))
        );
    }
    println!();
    Ok(())
}

/// Wraps `text` at `width` columns, continuing lines with `indent`.
fn wrap(text: &str, width: usize, indent: &str) -> String {
    let mut out = String::new();
    let mut line = 0;
    for word in text.split_whitespace() {
        if line > 0 && line + 1 + word.len() > width {
            out.push('\n');
            out.push_str(indent);
            line = 0;
        } else if line > 0 {
            out.push(' ');
            line += 1;
        }
        out.push_str(word);
        line += word.len();
    }
    out
}

/// Prints what an operator would query: incidents and the views.
async fn print_sql(pool: &PgPool) -> Result<()> {
    println!(
        "SQL> SELECT id, state, dimension, value, narrowed_value, segment_failures, segment_probes,\n            \
         rest_failures, rest_probes, p_value, correlated FROM v_incidents;"
    );
    let incidents: Vec<IncidentLine> = sqlx::query_as(
        "SELECT id, state, dimension, value, narrowed_value, segment_failures, segment_probes,
                rest_failures, rest_probes, p_value, correlated::text
         FROM v_incidents ORDER BY id",
    )
    .fetch_all(pool)
    .await?;
    for (id, state, dim, value, narrowed, sf, sp, rf, rp, p, correlated) in incidents {
        println!(
            "  {id:>3} {state:<8} {dim} {value} (narrowed to {}): {sf} of {sp} failed; rest {rf} of {rp}; p = {}",
            narrowed.unwrap_or_else(|| "-".into()),
            p.map_or("-".into(), |p| format!("{p:.1e}")),
        );
        println!("      correlated: {correlated}");
    }
    println!(
        "\nSQL> SELECT dimension, value, probes, failures, rate, rest_rate, vantages, flagged\n     \
         FROM v_segment_rates WHERE pattern = 'status' AND failures > 0 ORDER BY rate DESC, dimension;"
    );
    let rows: Vec<RateLine> = sqlx::query_as(
        "SELECT dimension, value, probes, failures, rate::float8, rest_rate::float8, vantages,
                flagged
         FROM v_segment_rates WHERE pattern = 'status' AND failures > 0
         ORDER BY rate DESC, dimension, value",
    )
    .fetch_all(pool)
    .await?;
    for (dim, value, probes, failures, rate, rest, vantages, flagged) in rows {
        println!(
            "  {dim:<16} {value:<26} {failures:>4} of {probes:<4} {:>5.1} % (rest {:>4.1} %) {vantages} vantages{}",
            100.0 * rate.unwrap_or(0.0),
            100.0 * rest.unwrap_or(0.0),
            if flagged { "  FLAGGED" } else { "" }
        );
    }
    println!(
        "\nSQL> SELECT agent_id, region, egress_ip, outcome, http_status, gateway, age\n     \
         FROM v_latest_by_vantage ORDER BY agent_id;"
    );
    let rows: Vec<LatestLine> = sqlx::query_as(
        "SELECT agent_id, region, egress_ip, outcome, http_status, gateway,
                extract(epoch FROM age)::float8
         FROM v_latest_by_vantage ORDER BY agent_id",
    )
    .fetch_all(pool)
    .await?;
    for (agent, region, egress, outcome, status, gateway, age) in rows {
        println!(
            "  {agent:<12} {region:<9} {:<10} {outcome:<5} {:<4} {:<8} {age:.1} s ago",
            egress.unwrap_or_default(),
            status.map_or("-".into(), |s| s.to_string()),
            gateway.unwrap_or_else(|| "-".into()),
        );
    }
    print_failing_probe(pool).await?;
    println!();
    Ok(())
}

/// A row of `v_incidents` as the demo prints it.
type IncidentLine = (
    i64,
    String,
    String,
    String,
    Option<String>,
    i64,
    i64,
    i64,
    i64,
    Option<f64>,
    String,
);

/// A row of `v_segment_rates` as the demo prints it.
type RateLine = (
    String,
    String,
    i64,
    i64,
    Option<f64>,
    Option<f64>,
    i32,
    bool,
);

/// A row of `v_latest_by_vantage` as the demo prints it.
type LatestLine = (
    String,
    String,
    Option<String>,
    String,
    Option<i16>,
    Option<String>,
    f64,
);

/// One failing probe's path, as an operator would look it up.
async fn print_failing_probe(pool: &PgPool) -> anyhow::Result<()> {
    println!(
        "\nSQL> SELECT agent_id, vantage, local_ip, resolver, resolver_egress_ip, resolver_nsid, dns_rcode,\n            \
         resolved_ips, dialed_ip, http_status, gateway, dns_us, connect_us, ttfb_us, transfer_us, total_us\n     \
         FROM probe_results WHERE http_status = 502 ORDER BY started_at DESC LIMIT 1;"
    );
    let row: Option<FailingProbe> = sqlx::query_as(
        "SELECT agent_id, vantage, host(local_ip), resolver, host(resolver_egress_ip),
                resolver_nsid, dns_rcode, resolved_ips::text, host(dialed_ip), http_status,
                gateway, dns_us, connect_us, ttfb_us, transfer_us, total_us
         FROM probe_results WHERE http_status = 502 ORDER BY started_at DESC LIMIT 1",
    )
    .fetch_optional(pool)
    .await?;
    if let Some(p) = row {
        let us = |v: Option<i64>| v.map_or("-".to_owned(), |v| v.to_string());
        println!(
            "  agent {} via vantage {} from {}\n  resolver {} (egress {}, NSID {}) answered {} {}\n  \
             dialled {} -> {} produced by {}\n  phases (us): dns {} connect {} ttfb {} transfer {} total {}",
            p.0,
            p.1,
            p.2.unwrap_or_default(),
            p.3.unwrap_or_default(),
            p.4.unwrap_or_else(|| "unknown".into()),
            p.5.unwrap_or_else(|| "none".into()),
            p.6.unwrap_or_default(),
            p.7,
            p.8.unwrap_or_default(),
            p.9.map_or("-".into(), |s| s.to_string()),
            p.10.unwrap_or_else(|| "unknown".into()),
            us(p.11),
            us(p.12),
            us(p.13),
            us(p.14),
            us(p.15),
        );
    }
    Ok(())
}

/// The columns `print_failing_probe` shows.
type FailingProbe = (
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
    Option<String>,
    Option<i16>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
);
