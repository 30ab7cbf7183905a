//! The collector's side of the control plane: keeps the central check set
//! current in this process (LISTEN on the control channel, re-read on
//! every notice and every [`RELOAD_EVERY`]), hands probe requests to the
//! streams of the agents they are for, and decides what each agent is
//! sent: its assignment (by selector) as a full set on connect and as
//! changes after, and the probe requests that name it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use vantage_proto::v1 as pb;
use vantage_service::supervise::{ComponentError, Liveness};

use crate::checks::Selector;
use crate::store::{CONTROL_CHANNEL, ControlNotice, ProbeRequest, Store, StoredCheck};

/// How often the set is re-read without a notice (one lost while the
/// listening connection was down).
pub const RELOAD_EVERY: Duration = Duration::from_secs(30);

/// Probe requests waiting in the broadcast for slow streams at most.
const PROBE_BACKLOG: usize = 256;

/// The central check set as last read.
#[derive(Debug, Default)]
pub struct CheckSnapshot {
    pub version: u64,
    pub checks: Vec<(StoredCheck, Selector)>,
}

/// What every stream of this process follows.
pub struct ControlHub {
    checks: watch::Sender<Arc<CheckSnapshot>>,
    probes: broadcast::Sender<Arc<ProbeRequest>>,
}

impl Default for ControlHub {
    fn default() -> Self {
        Self {
            checks: watch::Sender::new(Arc::default()),
            probes: broadcast::Sender::new(PROBE_BACKLOG),
        }
    }
}

impl ControlHub {
    /// Reads the check set now (so the first streams get it) and until
    /// `stop`, following the control channel. Supervised: a lost
    /// database is an error, and the component is made again.
    pub async fn run(
        self: Arc<Self>,
        store: Arc<Store>,
        live: Liveness,
        stop: CancellationToken,
    ) -> Result<(), ComponentError> {
        let mut listener = sqlx::postgres::PgListener::connect_with(store.pool()).await?;
        listener.listen(CONTROL_CHANNEL).await?;
        self.reload(&store).await?;
        live.beat();
        let mut every = tokio::time::interval(RELOAD_EVERY);
        every.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = every.tick() => self.reload(&store).await?,
                notice = listener.try_recv() => match notice? {
                    // The connection was lost and is made again: what was
                    // said meanwhile is lost, so read it all again.
                    None => self.reload(&store).await?,
                    Some(n) => match ControlNotice::parse(n.payload()) {
                        Some(ControlNotice::Checks) => self.reload(&store).await?,
                        Some(ControlNotice::Probe(id)) => {
                            if let Some(request) = store.probe_request(id).await? {
                                // No stream listening is fine: no agent is
                                // connected here.
                                let _ = self.probes.send(Arc::new(request));
                            }
                        }
                        None => tracing::warn!(payload = n.payload(), "Unknown control notice."),
                    },
                },
            }
            live.beat();
        }
    }

    /// Reads the set; streams see it only when its version moved.
    async fn reload(&self, store: &Store) -> Result<(), ComponentError> {
        let (version, stored) = store.central_checks().await?;
        let version = u64::try_from(version).unwrap_or(0);
        if version == self.checks.borrow().version && version != 0 {
            return Ok(());
        }
        let checks = stored
            .into_iter()
            .map(|c| {
                let selector = serde_json::from_value(c.selector.clone()).unwrap_or_else(|e| {
                    // Stored by `check apply`, which validated it: only a
                    // hand-edited row gets here.
                    tracing::error!(check = %c.name, error = %e, "Stored selector unreadable; the check goes to no agent.");
                    Selector::nobody()
                });
                (c, selector)
            })
            .collect();
        tracing::info!(version, "Central check set loaded.");
        self.checks
            .send_replace(Arc::new(CheckSnapshot { version, checks }));
        Ok(())
    }

    /// Tells this process's streams about `request` (the detector's
    /// requests go through the database and come back here too).
    pub fn subscribe(
        &self,
    ) -> (
        watch::Receiver<Arc<CheckSnapshot>>,
        broadcast::Receiver<Arc<ProbeRequest>>,
    ) {
        (self.checks.subscribe(), self.probes.subscribe())
    }
}

/// An agent as its stream knows it: what selectors match.
#[derive(Debug, Clone)]
pub struct AgentView {
    pub agent_id: String,
    /// Its enrolled region.
    pub region: String,
    pub labels: BTreeMap<String, String>,
    /// Its vantages and their regions (the agent's when they set none).
    pub vantages: Vec<(String, String)>,
    pub central_checks: bool,
    pub probe_requests: bool,
    /// Traces paths when a probe request asks.
    pub path_probes: bool,
}

impl AgentView {
    /// From its Hello and enrolment.
    pub fn new(hello: &pb::Hello, region: &str) -> Self {
        let has = |c: pb::Capability| hello.capabilities.contains(&(c as i32));
        Self {
            agent_id: hello.agent_id.clone(),
            region: region.to_owned(),
            labels: hello.labels.clone().into_iter().collect(),
            vantages: hello
                .vantages
                .iter()
                .map(|v| {
                    let region = if v.region.is_empty() {
                        region
                    } else {
                        &v.region
                    };
                    (v.name.clone(), region.to_owned())
                })
                .collect(),
            central_checks: has(pb::Capability::CentralChecks),
            probe_requests: has(pb::Capability::ProbeRequests),
            path_probes: has(pb::Capability::PathProbes),
        }
    }

    /// The capabilities' names, for the agents table (their text forms in
    /// the wire contract).
    pub fn capability_names(&self) -> Vec<String> {
        [
            (self.central_checks, pb::Capability::CentralChecks),
            (self.probe_requests, pb::Capability::ProbeRequests),
            (self.path_probes, pb::Capability::PathProbes),
        ]
        .into_iter()
        .filter(|(has, _)| *has)
        .map(|(_, c)| c.text().to_owned())
        .collect()
    }
}

impl Selector {
    /// A selector no agent matches.
    pub fn nobody() -> Self {
        Self {
            agents: vec![String::new()],
            ..Self::default()
        }
    }

    /// Whether the check goes to `agent`.
    pub fn matches(&self, agent: &AgentView) -> bool {
        (self.agents.is_empty() || self.agents.contains(&agent.agent_id))
            && (self.regions.is_empty() || self.regions.contains(&agent.region))
            && self
                .labels
                .iter()
                .all(|(k, v)| agent.labels.get(k) == Some(v))
    }
}

/// The checks assigned to `agent`, by name.
pub fn assignment(set: &CheckSnapshot, agent: &AgentView) -> BTreeMap<String, pb::AssignedCheck> {
    set.checks
        .iter()
        .filter(|(_, selector)| selector.matches(agent))
        .filter_map(|(check, _)| {
            let definition_toml = json_to_toml(&check.definition)
                .inspect_err(|e| tracing::error!(check = %check.name, error = %e, "Stored check cannot be sent; left out."))
                .ok()?;
            Some((
                check.name.clone(),
                pb::AssignedCheck {
                    name: check.name.clone(),
                    version: u64::try_from(check.version).unwrap_or(0),
                    definition_toml,
                },
            ))
        })
        .collect()
}

/// The `[[check]]` keys stored as JSON, as TOML text.
pub fn json_to_toml(definition: &serde_json::Value) -> Result<String, String> {
    let table: toml::Table =
        serde_json::from_value(definition.clone()).map_err(|e| e.to_string())?;
    toml::to_string(&table).map_err(|e| e.to_string())
}

/// The message that takes an agent from `sent` (what this stream sent so
/// far; `None`: nothing yet) to `now`; `None` when nothing changed.
pub fn check_set_message(
    sent: Option<&BTreeMap<String, pb::AssignedCheck>>,
    now: &BTreeMap<String, pb::AssignedCheck>,
    version: u64,
) -> Option<pb::CheckSet> {
    let Some(sent) = sent else {
        return Some(pb::CheckSet {
            version,
            full: true,
            checks: now.values().cloned().collect(),
            removed: Vec::new(),
        });
    };
    let checks: Vec<pb::AssignedCheck> = now
        .iter()
        .filter(|(name, check)| sent.get(*name) != Some(check))
        .map(|(_, check)| check.clone())
        .collect();
    let removed: Vec<String> = sent
        .keys()
        .filter(|n| !now.contains_key(*n))
        .cloned()
        .collect();
    if checks.is_empty() && removed.is_empty() {
        return None;
    }
    Some(pb::CheckSet {
        version,
        full: false,
        checks,
        removed,
    })
}

/// Who a probe request is for (its stored selector).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Targets {
    /// Agents by id; empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<String>,
    /// Regions: an agent's enrolled region (all its vantages), or a
    /// vantage's own; empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub regions: Vec<String>,
    /// Vantages by name; empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vantages: Vec<String>,
    /// Exact (agent, vantage) pairs (confirmation probes); when set, the
    /// rest is ignored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pairs: Vec<(String, String)>,
}

impl Targets {
    /// The vantages of `agent` that probe, or `None` when it is not
    /// asked.
    pub fn vantages_of(&self, agent: &AgentView) -> Option<Vec<String>> {
        let chosen: Vec<String> = if !self.pairs.is_empty() {
            self.pairs
                .iter()
                .filter(|(a, _)| *a == agent.agent_id)
                .map(|(_, v)| v.clone())
                .collect()
        } else {
            if !self.agents.is_empty() && !self.agents.contains(&agent.agent_id) {
                return None;
            }
            agent
                .vantages
                .iter()
                .filter(|(name, region)| {
                    (self.regions.is_empty()
                        || self.regions.contains(&agent.region)
                        || self.regions.contains(region))
                        && (self.vantages.is_empty() || self.vantages.contains(name))
                })
                .map(|(name, _)| name.clone())
                .collect()
        };
        Some(chosen).filter(|c| !c.is_empty())
    }
}

/// The message asking an agent for `request` from `vantages`.
pub fn probe_message(
    request: &ProbeRequest,
    vantages: Vec<String>,
) -> Result<pb::ProbeRequest, String> {
    use pb::probe_request::Target;
    let ask = &request.ask;
    let target = match (&ask.check_name, &ask.definition) {
        (Some(name), _) => Target::Check(name.clone()),
        (None, Some(definition)) => Target::DefinitionToml(json_to_toml(definition)?),
        (None, None) => return Err("the request names no check".into()),
    };
    Ok(pb::ProbeRequest {
        request_id: u64::try_from(request.id).unwrap_or(0),
        target: Some(target),
        vantages,
        resolvers: ask.resolvers.clone(),
        dial_each: ask.dial_each,
        rounds: u32::try_from(ask.rounds).unwrap_or(1),
        trace_path: ask.trace_path,
    })
}

type Replies = mpsc::Sender<Result<pb::CollectorMessage, Status>>;

/// Sends one stream's agent its checks and probe requests until the
/// stream ends (`ended`) or the collector stops.
pub async fn push_to_agent(
    agent: AgentView,
    hub: Arc<ControlHub>,
    store: Arc<Store>,
    replies: Replies,
    ended: CancellationToken,
) {
    let (mut checks, mut probes) = hub.subscribe();
    let mut sent: Option<BTreeMap<String, pb::AssignedCheck>> = None;
    let message = |body| Ok(pb::CollectorMessage { body: Some(body) });
    loop {
        if agent.central_checks {
            let set = checks.borrow_and_update().clone();
            let now = assignment(&set, &agent);
            if let Some(update) = check_set_message(sent.as_ref(), &now, set.version) {
                tracing::info!(agent_id = %agent.agent_id, version = set.version, checks = now.len(), full = update.full, "Sending checks.");
                if replies
                    .send(message(pb::collector_message::Body::Checks(update)))
                    .await
                    .is_err()
                {
                    return;
                }
                sent = Some(now);
            }
        }
        tokio::select! {
            _ = ended.cancelled() => return,
            changed = checks.changed() => if changed.is_err() { return },
            request = probes.recv() => {
                let request = match request {
                    Ok(r) => r,
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::error!(agent_id = %agent.agent_id, missed, "Probe requests were not passed to this agent: too many at once.");
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if !agent.probe_requests {
                    continue;
                }
                let targets: Targets = serde_json::from_value(request.ask.selector.clone()).unwrap_or_default();
                let Some(vantages) = targets.vantages_of(&agent) else { continue };
                let ask = match probe_message(&request, vantages.clone()) {
                    Ok(ask) => ask,
                    Err(error) => {
                        tracing::error!(request_id = request.id, %error, "Probe request cannot be sent.");
                        continue;
                    }
                };
                if let Err(error) = store.record_probe_sent(request.id, &agent.agent_id, &vantages).await {
                    tracing::error!(request_id = request.id, agent_id = %agent.agent_id, %error, "Cannot record a probe request as sent; not sending it.");
                    continue;
                }
                if replies.send(message(pb::collector_message::Body::Probe(ask))).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(
        id: &str,
        region: &str,
        labels: &[(&str, &str)],
        vantages: &[(&str, &str)],
    ) -> AgentView {
        AgentView {
            agent_id: id.into(),
            region: region.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            vantages: vantages
                .iter()
                .map(|(n, r)| (n.to_string(), r.to_string()))
                .collect(),
            central_checks: true,
            probe_requests: true,
            path_probes: true,
        }
    }

    #[test]
    fn selectors_match_on_every_non_empty_part() {
        let a = agent("fra-1", "eu", &[("provider", "hetzner")], &[]);
        assert!(Selector::default().matches(&a));
        let mut s = Selector {
            regions: vec!["eu".into()],
            ..Selector::default()
        };
        assert!(s.matches(&a));
        s.labels.insert("provider".into(), "aws".into());
        assert!(!s.matches(&a));
        s.labels.insert("provider".into(), "hetzner".into());
        s.agents = vec!["nyc-1".into()];
        assert!(!s.matches(&a));
        assert!(!Selector::nobody().matches(&a));
    }

    #[test]
    fn a_stream_gets_a_full_set_first_then_only_changes() {
        let one = |name: &str, version: u64| {
            (
                name.to_string(),
                pb::AssignedCheck {
                    name: name.into(),
                    version,
                    definition_toml: format!("name = {name:?}\n"),
                },
            )
        };
        let first: BTreeMap<_, _> = [one("a", 1), one("b", 1)].into();
        let full = check_set_message(None, &first, 1).unwrap();
        assert!(full.full);
        assert_eq!(full.checks.len(), 2);
        assert_eq!(check_set_message(Some(&first), &first, 2), None);
        let second: BTreeMap<_, _> = [one("a", 3), one("c", 3)].into();
        let delta = check_set_message(Some(&first), &second, 3).unwrap();
        assert!(!delta.full);
        let names: Vec<&str> = delta.checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["a", "c"]);
        assert_eq!(delta.removed, ["b"]);
    }

    #[test]
    fn probe_targets_pick_vantages_by_region_name_or_pair() {
        let a = agent("fra-1", "eu", &[], &[("direct", "eu"), ("vpn", "us")]);
        let all = Targets::default();
        assert_eq!(all.vantages_of(&a).unwrap(), ["direct", "vpn"]);
        let us = Targets {
            regions: vec!["us".into()],
            ..Targets::default()
        };
        assert_eq!(us.vantages_of(&a).unwrap(), ["vpn"]);
        let other = Targets {
            agents: vec!["nyc-1".into()],
            ..Targets::default()
        };
        assert_eq!(other.vantages_of(&a), None);
        let pairs = Targets {
            pairs: vec![
                ("fra-1".into(), "direct".into()),
                ("nyc-1".into(), "direct".into()),
            ],
            ..Targets::default()
        };
        assert_eq!(pairs.vantages_of(&a).unwrap(), ["direct"]);
    }
}
