//! `vantage-collector probe URL`: "is it just me?" for a person in an
//! incident. Asks the connected agents chosen by `--from` for one probe
//! now, waits for their results to be stored, and prints them side by
//! side. The results stay in `probe_results`, marked by their
//! `request_id` (purpose `manual` in `probe_requests`); the detector does
//! not count them.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use vantage_check::{CheckConfig, ResolverSpec};

use crate::control::Targets;
use crate::store::{NewProbeRequest, Purpose, RequestAgent, ResultPath, Store, TracedPath};

/// The check name one-off probes of a URL run under.
pub const PROBE_CHECK_NAME: &str = "probe";

/// How long agents have to be asked (every collector forwards a request
/// the moment it is notified): after this, one not asked is not connected.
const ASKED_WITHIN: Duration = Duration::from_secs(3);
/// Answers are not final before this: an agent on a slower collector may
/// still be asked.
const SETTLE: Duration = Duration::from_secs(1);
/// Time for results to travel through the agents' spools after the probe.
const DELIVERY_GRACE: Duration = Duration::from_secs(10);
/// What a path trace may add (the agents' `path.max_duration` is 30 s by
/// default, and a port check follows).
const TRACE_GRACE: Duration = Duration::from_secs(40);

/// A probe request that cannot be made, naming the option at fault.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProbeOptionError {
    #[error("--from {0:?}: expected region=NAME, agent=ID or vantage=NAME")]
    From(String),
    #[error("--resolver {0}")]
    Resolver(String),
    #[error("{0}")]
    Url(String),
    #[error("give a URL or --check NAME, not both")]
    UrlAndCheck,
    #[error("give a URL to probe, or --check NAME")]
    Nothing,
}

/// What to probe, from where.
#[derive(Debug, Clone, Default)]
pub struct ProbeOptions {
    pub url: Option<String>,
    /// A check the agents run, instead of a URL.
    pub check: Option<String>,
    /// `region=…`, `agent=…`, `vantage=…`; several of one kind: any of
    /// them; of different kinds: all.
    pub from: Vec<String>,
    pub resolvers: Vec<String>,
    pub dial_each: bool,
    /// Trace each vantage's path to where its probe went.
    pub trace_path: bool,
    pub timeout: Duration,
}

/// The stored request the options make.
pub fn request(options: &ProbeOptions) -> Result<NewProbeRequest, ProbeOptionError> {
    let mut targets = Targets::default();
    for from in &options.from {
        let (key, value) = from
            .split_once('=')
            .filter(|(_, v)| !v.is_empty())
            .ok_or_else(|| ProbeOptionError::From(from.clone()))?;
        let list = match key {
            "region" => &mut targets.regions,
            "agent" => &mut targets.agents,
            "vantage" => &mut targets.vantages,
            _ => return Err(ProbeOptionError::From(from.clone())),
        };
        list.push(value.to_owned());
    }
    for resolver in &options.resolvers {
        resolver
            .parse::<ResolverSpec>()
            .map_err(ProbeOptionError::Resolver)?;
    }
    let (check_name, definition) = match (&options.url, &options.check) {
        (Some(_), Some(_)) => return Err(ProbeOptionError::UrlAndCheck),
        (None, None) => return Err(ProbeOptionError::Nothing),
        (None, Some(check)) => (Some(check.clone()), None),
        (Some(url), None) => {
            let timeout = humantime::format_duration(options.timeout).to_string();
            // A round's interval must hold its timeout; it is never
            // scheduled.
            let interval = humantime::format_duration(
                options.timeout.max(vantage_check::default_check_interval()),
            )
            .to_string();
            let definition = serde_json::json!({
                "name": PROBE_CHECK_NAME,
                "url": url,
                "timeout": timeout,
                "interval": interval,
            });
            // The agents' own rules, here first: a bad URL or timeout is
            // the person's to fix, not twenty agents' to report.
            let text = crate::control::json_to_toml(&definition).map_err(ProbeOptionError::Url)?;
            CheckConfig::from_table_text("the probe", &text, &HashSet::new())
                .map_err(|e| ProbeOptionError::Url(without_location(&e).to_owned()))?;
            (None, Some(definition))
        }
    };
    Ok(NewProbeRequest {
        purpose: Purpose::Manual,
        check_name,
        definition,
        selector: serde_json::to_value(&targets).unwrap_or_default(),
        resolvers: options.resolvers.clone(),
        dial_each: options.dial_each,
        rounds: 1,
        trace_path: options.trace_path,
        candidate: None,
    })
}

/// A check error without the place in a file it would point at: the
/// probe's check was made from the command line, not written
/// (`the probe:5:7: check[0].url: …` → `url: …`).
fn without_location(error: &str) -> &str {
    let rest = error.strip_prefix("the probe").unwrap_or(error);
    let mut parts = rest.splitn(4, ':');
    let message = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(""), Some(line), Some(column), Some(message))
            if line.trim().parse::<u32>().is_ok() && column.trim().parse::<u32>().is_ok() =>
        {
            message.trim()
        }
        _ => rest.trim_start_matches(':').trim(),
    };
    message.strip_prefix("check[0].").unwrap_or(message)
}

/// What came back.
#[derive(Debug)]
pub struct ProbeOutcome {
    pub request_id: i64,
    pub agents: Vec<RequestAgent>,
    pub results: Vec<ResultPath>,
    /// The paths traced (with `--path`).
    pub paths: Vec<TracedPath>,
}

impl ProbeOutcome {
    /// Whether every agent asked answered and its results are stored.
    pub fn complete(&self) -> bool {
        !self.agents.is_empty() && self.agents.iter().all(answered)
    }
}

fn answered(agent: &RequestAgent) -> bool {
    agent.done_at.is_some() && agent.stored >= i64::from(agent.results.unwrap_or(0))
}

/// Asks for the probe and waits until every agent asked has answered and
/// its results are stored, or the probe's time is up.
pub async fn run(store: &Store, options: &ProbeOptions) -> anyhow::Result<ProbeOutcome> {
    let new = request(options)?;
    let request_id = store.create_probe_request(&new).await?;
    let started = Instant::now();
    let mut deadline = started + ASKED_WITHIN + options.timeout + DELIVERY_GRACE;
    if options.trace_path {
        deadline += TRACE_GRACE;
    }
    loop {
        let agents = store.probe_request_agents(request_id).await?;
        let settled = started.elapsed() >= SETTLE;
        let done = settled && !agents.is_empty() && agents.iter().all(answered);
        let nobody = agents.is_empty() && started.elapsed() >= ASKED_WITHIN;
        if done || nobody || Instant::now() >= deadline {
            let results = store.request_results(request_id).await?;
            let paths = if options.trace_path {
                store.request_paths(&[request_id]).await?
            } else {
                Vec::new()
            };
            return Ok(ProbeOutcome {
                request_id,
                agents,
                results,
                paths,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ms(us: Option<i64>) -> String {
    us.map_or_else(|| "-".to_owned(), |us| format!("{:.1}", us as f64 / 1000.0))
}

/// The results side by side, then what did not come back.
/// With `trace_path`, each vantage's path follows, side by side.
pub fn render(outcome: &ProbeOutcome, what: &str, trace_path: bool) -> String {
    let mut out = String::new();
    let vantages: HashSet<(&str, &str)> = outcome
        .results
        .iter()
        .map(|r| (r.agent_id.as_str(), r.vantage.as_str()))
        .collect();
    let _ = writeln!(
        out,
        "Probe {} of {what}: {} results from {} vantages of {} agents.",
        outcome.request_id,
        outcome.results.len(),
        vantages.len(),
        outcome.agents.len()
    );
    if outcome.agents.is_empty() {
        let _ = writeln!(
            out,
            "No connected agent matched (an agent must be connected and announce probe requests)."
        );
        return out;
    }
    let header = [
        "vantage", "region", "egress", "resolver", "answer", "dialled", "status", "gateway", "dns",
        "connect", "proxy", "tls", "ttfb", "total ms",
    ];
    let rows: Vec<Vec<String>> = outcome
        .results
        .iter()
        .map(|r| {
            let status = match r.http_status {
                Some(s) => format!("{s} {}", r.outcome),
                None => r.outcome.clone(),
            };
            let gateway = match (&r.gateway, &r.edge_location) {
                (Some(g), Some(e)) => format!("{g} ({e})"),
                (Some(g), None) => g.clone(),
                _ => "-".into(),
            };
            let mut egress = r.egress_ip.clone().unwrap_or_else(|| "-".into());
            if let Some(proxy) = &r.proxy {
                let _ = write!(egress, " via {proxy}");
            }
            vec![
                format!("{}/{}", r.agent_id, r.vantage),
                r.region.clone(),
                egress,
                r.resolver.clone().unwrap_or_else(|| "-".into()),
                if r.resolved.is_empty() {
                    "-".into()
                } else {
                    r.resolved.join(",")
                },
                r.dialed.clone().unwrap_or_else(|| "-".into()),
                status,
                gateway,
                ms(r.dns_us),
                ms(r.connect_us),
                ms(r.proxy_us),
                ms(r.tls_us),
                ms(r.ttfb_us),
                ms(r.total_us),
            ]
        })
        .collect();
    out.push_str(&crate::table::aligned(&header, &rows));
    for r in outcome.results.iter().filter(|r| !r.message.is_empty()) {
        let _ = writeln!(out, "{}/{}: {}", r.agent_id, r.vantage, r.message);
    }
    if trace_path {
        out.push_str(&crate::path_evidence::render_side_by_side(&outcome.paths));
    }
    for agent in &outcome.agents {
        match (&agent.error, agent.done_at) {
            (Some(error), _) => {
                let _ = writeln!(out, "{}: could not probe: {error}", agent.agent_id);
            }
            (None, None) => {
                let _ = writeln!(out, "{}: no answer in time", agent.agent_id);
            }
            (None, Some(_)) if !answered(agent) => {
                let _ = writeln!(
                    out,
                    "{}: {} of {} results delivered in time",
                    agent.agent_id,
                    agent.stored,
                    agent.results.unwrap_or(0)
                );
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(url: &str) -> ProbeOptions {
        ProbeOptions {
            url: Some(url.into()),
            timeout: Duration::from_secs(10),
            ..ProbeOptions::default()
        }
    }

    #[test]
    fn from_options_become_the_request_selector() {
        let mut o = options("https://shop.example.com/");
        o.from = vec!["region=eu".into(), "region=us".into(), "agent=fra-1".into()];
        let r = request(&o).unwrap();
        assert_eq!(
            r.selector,
            serde_json::json!({"regions": ["eu", "us"], "agents": ["fra-1"]})
        );
        assert_eq!(r.definition.unwrap()["url"], "https://shop.example.com/");
        assert_eq!(r.purpose, Purpose::Manual);
    }

    #[test]
    fn bad_options_name_what_is_wrong() {
        let mut o = options("https://shop.example.com/");
        o.from = vec!["country=de".into()];
        assert_eq!(
            request(&o).unwrap_err(),
            ProbeOptionError::From("country=de".into())
        );
        let mut o = options("https://shop.example.com/");
        o.resolvers = vec!["8.8.8.8".into()];
        assert!(matches!(request(&o), Err(ProbeOptionError::Resolver(_))));
        let e = request(&options("ftp://shop.example.com/")).unwrap_err();
        assert!(e.to_string().starts_with("url: "), "{e}");
        assert!(!e.to_string().contains(":5:"), "no place in a file: {e}");
        assert_eq!(
            request(&ProbeOptions::default()).unwrap_err(),
            ProbeOptionError::Nothing
        );
    }
}
