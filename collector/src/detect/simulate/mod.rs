//! A fleet simulator for the detection scenarios benchmark and tests:
//! vantages probe targets once per round (at a fixed offset inside it),
//! a fault model says which probes fail, and the real pass ([`plan`]) runs
//! every detector interval over the window, with the tracked state carried
//! from pass to pass as the database would. No I/O and no clock: a run of
//! thousands of passes takes milliseconds, and the same seed gives the
//! same events.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::asn::AsnTable;
use super::cells::{CellCounts, CellKey, WindowCell};
use super::decision::{bucket_of, bucket_thresholds};
use super::dimensions::{DIMENSIONS, sources};
use super::plan::{self, PassInput};
use super::settings::DetectorSettings;
use super::track::{CandidateKey, Tracked};

mod measure;
mod scenarios;
#[cfg(test)]
mod tests;
pub mod worlds;

pub use measure::Measured;
pub use scenarios::{Scenario, scenarios};

/// One simulated vantage.
#[derive(Debug, Clone)]
pub struct SimVantage {
    pub agent: String,
    pub name: String,
    pub region: String,
    /// The address the targets see (the proxy's, through a proxy).
    pub egress: IpAddr,
    pub proxy: Option<String>,
    /// Where inside a round it probes, as a fraction of the round.
    pub offset: f64,
    /// 0 for scheduled probes; the confirmation request otherwise (its
    /// probes are independent draws of a random fault).
    pub nonce: u64,
    /// The resolver it asks, instead of each target path's own.
    pub resolver: Option<String>,
}

impl SimVantage {
    pub fn new(agent: &str, name: &str, region: &str, egress: &str) -> Self {
        Self {
            agent: agent.into(),
            name: name.into(),
            region: region.into(),
            egress: egress.parse().unwrap_or(IpAddr::from([127, 0, 0, 1])),
            proxy: None,
            offset: 0.5,
            nonce: 0,
            resolver: None,
        }
    }

    pub fn via(mut self, proxy: &str, proxy_ip: &str) -> Self {
        self.proxy = Some(proxy.into());
        self.egress = proxy_ip.parse().unwrap_or(self.egress);
        self
    }
}

/// One probe a vantage makes of a target in a round: which resolver it
/// asked and which address it dialled.
#[derive(Debug, Clone)]
pub struct SimPath {
    pub resolver: String,
    pub address: IpAddr,
}

/// What a probe got: `true` for a 502.
pub type FaultModel<'a> = dyn Fn(u64, &str, &SimVantage, &SimPath) -> bool + 'a;

/// A simulated fleet probing targets.
pub struct Simulation<'a> {
    pub settings: DetectorSettings,
    pub round: Duration,
    pub vantages: Vec<SimVantage>,
    /// Per target: the paths each vantage probes every round.
    pub targets: Vec<(String, Vec<SimPath>)>,
    pub fault: Box<FaultModel<'a>>,
    /// Per region: the CDN edge location serving it (its `edge_location`);
    /// none when empty.
    pub edges: HashMap<String, String>,
}

/// How long after a pass its confirmation probes are stored (probe,
/// spool sync, delivery), at most half a detector interval; a second
/// round of them a second later.
pub const CONFIRMATION_DELAY: Duration = Duration::from_secs(2);

/// A confirmation probe asked for: when it runs, from where, of what.
#[derive(Debug, Clone, Copy)]
struct Asked {
    at: f64,
    vantage: usize,
    target: usize,
    nonce: u64,
}

/// A pass's view of probes: when it runs, the round, the age buckets and
/// the dimension sources.
#[derive(Clone, Copy)]
struct Sight<'a> {
    now: f64,
    round: f64,
    thresholds: &'a [u32],
    sources: &'a [&'static str],
}

/// What a run did besides its events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Candidates held for the first time without an incident.
    pub new_candidates: u64,
    /// Passes × candidates held without an incident.
    pub candidate_passes: u64,
    /// Confirmation requests and the probes they made.
    pub confirmations: u64,
    pub confirmation_probes: u64,
}

/// What happened to an incident, at which simulated second.
#[derive(Debug, Clone, PartialEq)]
pub struct SimEvent {
    pub at: f64,
    pub incident: i64,
    pub kind: &'static str,
    pub key: CandidateKey,
    /// The targets the page names (those of an opening or an update).
    pub targets: Vec<String>,
}

impl Simulation<'_> {
    /// The standard fleet of the scenarios: 15 vantages on 4 agents.
    /// us-east: 127.0.2.1-2 and 127.0.3.1-2; us-west: 127.0.4.1,
    /// 127.0.5.1, 127.0.6.1; eu: 127.0.7.1-2, 127.0.8.1-2; ap: four
    /// vantages through two proxies on 127.0.0.1 (two each).
    pub fn standard_fleet() -> Vec<SimVantage> {
        let mut v = vec![
            SimVantage::new("east", "e1", "us-east", "127.0.2.1"),
            SimVantage::new("east", "e2", "us-east", "127.0.2.2"),
            SimVantage::new("east", "e3", "us-east", "127.0.3.1"),
            SimVantage::new("east", "e4", "us-east", "127.0.3.2"),
            SimVantage::new("west", "w1", "us-west", "127.0.4.1"),
            SimVantage::new("west", "w2", "us-west", "127.0.5.1"),
            SimVantage::new("west", "w3", "us-west", "127.0.6.1"),
            SimVantage::new("eu", "u1", "eu", "127.0.7.1"),
            SimVantage::new("eu", "u2", "eu", "127.0.7.2"),
            SimVantage::new("eu", "u3", "eu", "127.0.8.1"),
            SimVantage::new("eu", "u4", "eu", "127.0.8.2"),
        ];
        for (name, proxy) in [("p1", 'a'), ("p2", 'a'), ("p3", 'b'), ("p4", 'b')] {
            let (url, port) = if proxy == 'a' {
                ("http://127.0.0.1:8881", "127.0.0.1")
            } else {
                ("http://127.0.0.1:8882", "127.0.0.1")
            };
            v.push(SimVantage::new("ap", name, "ap", "127.0.10.1").via(url, port));
        }
        let n = v.len() as f64;
        for (i, x) in v.iter_mut().enumerate() {
            x.offset = (i as f64 + 0.5) / n;
        }
        v
    }

    /// Runs `rounds` rounds with a pass every detector interval; returns
    /// every open, update and resolve.
    pub fn run(&self, rounds: u64) -> Vec<SimEvent> {
        self.run_with_stats(rounds).0
    }

    /// [`Simulation::run`], and what it did besides.
    pub fn run_with_stats(&self, rounds: u64) -> (Vec<SimEvent>, SimStats) {
        let mut stats = SimStats::default();
        let mut asked: Vec<Asked> = Vec::new();
        let mut asked_at: HashMap<CandidateKey, DateTime<Utc>> = HashMap::new();
        let delay = CONFIRMATION_DELAY
            .min(self.settings.interval / 2)
            .as_secs_f64();
        let round = self.round.as_secs_f64();
        let interval = self.settings.interval.as_secs_f64();
        let window = self.settings.window.as_secs_f64();
        let thresholds = bucket_thresholds(
            u32::try_from(self.settings.window.as_millis() / 100).unwrap_or(u32::MAX),
        );
        let asn = AsnTable::default();
        let epoch = DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::days(20_000);
        let mut tracked: Vec<Tracked> = Vec::new();
        let mut events = Vec::new();
        let mut next_id = 1;
        let passes = (rounds as f64 * round / interval).floor() as u64;
        let source_list = sources();
        let mut made = HashMap::new();
        // Incidents resolved, for reopening: (id, key, when).
        let mut resolved: Vec<(i64, CandidateKey, DateTime<Utc>)> = Vec::new();
        for pass in 1..=passes {
            let now = pass as f64 * interval;
            let mut cells = self.cells(now, window, round, &thresholds, &source_list, &mut made);
            asked.retain(|a| a.at > now - window);
            for a in asked.iter().filter(|a| a.at <= now) {
                let v = &self.vantages[a.vantage];
                let v = SimVantage {
                    nonce: a.nonce,
                    ..v.clone()
                };
                let (target, paths) = &self.targets[a.target];
                let sight = Sight {
                    now,
                    round,
                    thresholds: &thresholds,
                    sources: &source_list,
                };
                for path in paths {
                    cells.push(self.cell(&sight, a.at, &v, target, path, true));
                }
            }
            let at = epoch + chrono::Duration::milliseconds((now * 1000.0) as i64);
            let plan = plan::plan(PassInput {
                cells: &cells,
                tracked: std::mem::take(&mut tracked),
                open: &[],
                settings: &self.settings,
                asn: &asn,
                thresholds: &thresholds,
                now: at,
                asked: &asked_at,
                resolved: &resolved,
            });
            tracked = plan.tracked;
            for c in &plan.confirmations {
                stats.confirmations += 1;
                asked_at.insert(c.key.clone(), at);
                // The check names its target here (a path candidate's
                // key names none).
                let Some(target) = self.targets.iter().position(|(t, _)| *t == c.check) else {
                    continue;
                };
                for (agent, name) in c.inside.iter().chain(&c.outside) {
                    if let Some(vantage) = self
                        .vantages
                        .iter()
                        .position(|v| v.agent == *agent && v.name == *name)
                    {
                        for round in 0..c.rounds {
                            stats.confirmation_probes += self.targets[target].1.len() as u64;
                            asked.push(Asked {
                                // One after the other, a second apart.
                                at: now + delay + f64::from(round),
                                vantage,
                                target,
                                nonce: stats.confirmations * 16 + u64::from(round),
                            });
                        }
                    }
                }
            }
            for (ti, record) in &plan.opens {
                if let Some(t) = tracked.get_mut(*ti) {
                    t.state.incident = Some(next_id);
                    events.push(SimEvent {
                        at: now,
                        incident: next_id,
                        kind: "opened",
                        key: t.key.clone(),
                        targets: record.targets.clone(),
                    });
                    next_id += 1;
                }
            }
            // Candidates held and not (yet) an incident.
            for t in tracked
                .iter()
                .filter(|t| t.state.incident.is_none() && t.state.held_streak > 0)
            {
                stats.candidate_passes += 1;
                stats.new_candidates += u64::from(t.state.held_streak == 1);
            }
            for (id, record) in &plan.updates {
                if let Some(t) = tracked.iter().find(|t| t.state.incident == Some(*id)) {
                    events.push(SimEvent {
                        at: now,
                        incident: *id,
                        kind: "updated",
                        key: t.key.clone(),
                        targets: record.targets.clone(),
                    });
                }
            }
            for (_, id, record) in &plan.reopens {
                resolved.retain(|r| r.0 != *id);
                if let Some(t) = tracked.iter().find(|t| t.state.incident == Some(*id)) {
                    events.push(SimEvent {
                        at: now,
                        incident: *id,
                        kind: "reopened",
                        key: t.key.clone(),
                        targets: record.targets.clone(),
                    });
                }
            }
            for (id, key) in &plan.resolves {
                resolved.push((*id, key.clone(), at));
                events.push(SimEvent {
                    at: now,
                    incident: *id,
                    kind: "resolved",
                    key: key.clone(),
                    targets: Vec::new(),
                });
            }
        }
        (events, stats)
    }

    /// Every probe started in `(now - window, now]`, one cell each. A
    /// probe's cell is made once (`made`, kept from pass to pass) and only
    /// its age bucket changes.
    fn cells(
        &self,
        now: f64,
        window: f64,
        round: f64,
        thresholds: &[u32],
        source_list: &[&'static str],
        made: &mut HashMap<(u64, usize, usize, usize), WindowCell>,
    ) -> Vec<WindowCell> {
        let sight = Sight {
            now,
            round,
            thresholds,
            sources: source_list,
        };
        let mut out = Vec::new();
        let first_round = ((now - window) / round).floor().max(0.0) as u64;
        let last_round = (now / round).ceil() as u64;
        made.retain(|(r, ..), _| *r + 1 >= first_round);
        for r in first_round..=last_round {
            for (vi, v) in self.vantages.iter().enumerate() {
                let t = (r as f64 + v.offset) * round;
                if t <= now - window || t > now {
                    continue;
                }
                for (ti, (target, paths)) in self.targets.iter().enumerate() {
                    for (pi, path) in paths.iter().enumerate() {
                        let cell = made
                            .entry((r, vi, ti, pi))
                            .or_insert_with(|| self.cell(&sight, t, v, target, path, false));
                        let mut cell = cell.clone();
                        cell.bucket = bucket_at(&sight, t);
                        out.push(cell);
                    }
                }
            }
        }
        out
    }

    /// The cell of one probe made at `t` (seconds), seen from a pass.
    fn cell(
        &self,
        sight: &Sight<'_>,
        t: f64,
        v: &SimVantage,
        target: &str,
        path: &SimPath,
        confirmation: bool,
    ) -> WindowCell {
        let Sight {
            round,
            sources: source_list,
            ..
        } = *sight;
        let epoch = DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::days(20_000);
        let r = (t / round).floor() as u64;
        let bucket = bucket_at(sight, t);
        let resolved;
        let path = match &v.resolver {
            Some(resolver) => {
                resolved = SimPath {
                    resolver: resolver.clone(),
                    address: path.address,
                };
                &resolved
            }
            None => path,
        };
        let failed = (self.fault)(r, target, v, path);
        let values = self.values(v, path, failed);
        let sources = source_list
            .iter()
            .map(|s| {
                DIMENSIONS
                    .iter()
                    .find(|d| d.source == *s)
                    .and_then(|d| values.get(d.name).cloned().flatten())
            })
            .collect();
        let at = epoch + chrono::Duration::milliseconds((t * 1000.0) as i64);
        WindowCell {
            key: Arc::new(CellKey {
                target: target.to_owned(),
                check: target.to_owned(),
                outcome: if failed { "http" } else { "ok" }.into(),
                status: Some(if failed { 502 } else { 200 }),
                agent_id: v.agent.clone(),
                vantage: v.name.clone(),
                sources,
                interval_ms: (round * 1000.0) as i32,
                confirmation,
            }),
            bucket,
            counts: CellCounts {
                probes: 1,
                first_at: at,
                last_at: at,
                last_seq: i64::try_from(r).unwrap_or(0),
            },
        }
    }

    /// The source value of every dimension for one probe.
    fn values(
        &self,
        v: &SimVantage,
        path: &SimPath,
        failed: bool,
    ) -> HashMap<&'static str, Option<String>> {
        probe_values(&self.edges, v, path, failed)
    }
}

/// The age bucket, seen from a pass, of a probe made at `t` (seconds).
fn bucket_at(sight: &Sight<'_>, t: f64) -> i32 {
    let age = ((sight.now - t) / sight.round).floor() as u32;
    i32::try_from(bucket_of(age, sight.thresholds)).unwrap_or(i32::MAX)
}

/// The source value of every dimension for one probe of `v` on `path`
/// (its resolver already the vantage's own), `edges` serving its region.
fn probe_values(
    edges: &HashMap<String, String>,
    v: &SimVantage,
    path: &SimPath,
    failed: bool,
) -> HashMap<&'static str, Option<String>> {
    {
        let egress = v.egress.to_string();
        let address = path.address.to_string();
        HashMap::from([
            ("region", Some(v.region.clone())),
            (
                "proxy",
                Some(v.proxy.clone().unwrap_or_else(|| "direct".into())),
            ),
            ("egress_prefix", Some(egress.clone())),
            ("asn", Some(egress)),
            ("resolver", Some(path.resolver.clone())),
            ("resolver_egress", None),
            ("address", Some(address.clone())),
            ("address_prefix", Some(address.clone())),
            ("ip_family", Some(address)),
            ("edge_location", edges.get(&v.region).cloned()),
            ("http_version", Some("HTTP/1.1".into())),
            ("agent", Some(v.agent.clone())),
            ("vantage", Some(format!("{}/{}", v.agent, v.name))),
            ("gateway", failed.then(|| "nginx".into())),
        ])
    }
}

/// One path per target: resolver `udp://127.0.0.53:53`, address 127.0.0.10.
pub fn one_path() -> Vec<SimPath> {
    vec![SimPath {
        resolver: "udp://127.0.0.53:53".into(),
        address: IpAddr::from([127, 0, 0, 10]),
    }]
}

/// A deterministic coin: `true` with probability `p` for these inputs.
pub fn coin(
    p: f64,
    seed: u64,
    round: u64,
    target: &str,
    vantage: &SimVantage,
    path: &SimPath,
) -> bool {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (
        seed,
        round,
        target,
        &vantage.agent,
        &vantage.name,
        &path.resolver,
        path.address,
    )
        .hash(&mut h);
    // A confirmation probe is another draw (scheduled probes hash as they
    // always did, so earlier runs' figures stand).
    if vantage.nonce != 0 {
        vantage.nonce.hash(&mut h);
    }
    // SplitMix64 finaliser over the hash, then a uniform in [0, 1).
    let mut z = h.finish().wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    ((z >> 11) as f64 / (1u64 << 53) as f64) < p
}
