//! Random worlds: a fleet of 30–60 vantages in 3–6 regions (several /24s
//! each, some behind forward proxies, three resolvers), 6–10 targets (one
//! address, two A records, or dual stack; behind a CDN whose edge
//! locations serve one or two regions), and K simultaneous faults drawn
//! from the field notes' causes (egress prefix, region, resolver,
//! address, IP family, proxy, edge location, global) with random start
//! and end rounds, over 2% background noise. [`World::score`] runs the
//! real pass over it and says, per fault, whether it was paged with its
//! own dimension and value within 3 rounds, and which incidents no fault
//! explains, resolved while their fault went on, or paged a fault twice.
//! A world is drawn from its seed alone, so any world can be replayed.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt as _, SeedableRng as _};

mod fit;
mod score;

pub use score::{PAGE_WITHIN_ROUNDS, WorldScore};

use super::{SimEvent, SimPath, SimVantage, Simulation, coin};
use crate::detect::asn::AsnTable;
use crate::detect::dimensions::{DIMENSIONS, DeriveContext};
use crate::detect::settings::DetectorSettings;
use crate::detect::track::{CandidateKey, GLOBAL, PATH_TARGET};

/// A cause of the field notes, as drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cause {
    EgressPrefix,
    Region,
    Resolver,
    Address,
    IpFamily,
    Proxy,
    EdgeLocation,
    Global,
}

impl Cause {
    pub const ALL: [Cause; 8] = [
        Cause::EgressPrefix,
        Cause::Region,
        Cause::Resolver,
        Cause::Address,
        Cause::IpFamily,
        Cause::Proxy,
        Cause::EdgeLocation,
        Cause::Global,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::EgressPrefix => "egress prefix",
            Self::Region => "region",
            Self::Resolver => "resolver",
            Self::Address => "address",
            Self::IpFamily => "IP family",
            Self::Proxy => "proxy",
            Self::EdgeLocation => "edge location",
            Self::Global => "global",
        }
    }
}

/// One fault of a world: which probes it fails, when, and the incident
/// it should page.
#[derive(Debug, Clone, PartialEq)]
pub struct WorldFault {
    pub cause: Cause,
    /// The target (index), or `None` for a path fault (a proxy).
    pub target: Option<usize>,
    /// The dimension and value of the cause.
    pub dimension: &'static str,
    pub value: String,
    /// On in rounds `[start, end)`.
    pub start: u64,
    pub end: u64,
}

impl WorldFault {
    /// The incident key it should page.
    pub fn key(&self, world: &World) -> CandidateKey {
        let target = self
            .target
            .map_or(PATH_TARGET, |t| world.targets[t].0.as_str());
        CandidateKey::new(
            target,
            crate::detect::pattern::Pattern::Status,
            self.dimension,
            &self.value,
        )
    }
}

/// A probe unit: (target, vantage, path) indexes.
type Unit = (usize, usize, usize);

/// A probe as the fault model sees it: target, agent, vantage, address.
type Probe = (String, String, String, IpAddr);

/// A drawn world.
pub struct World {
    pub seed: u64,
    pub vantages: Vec<SimVantage>,
    pub targets: Vec<(String, Vec<SimPath>)>,
    pub edges: HashMap<String, String>,
    pub faults: Vec<WorldFault>,
    /// Rounds simulated.
    pub rounds: u64,
    /// Background failure probability of every probe.
    pub noise: f64,
    /// Faults drawn and set aside because with those on beside them they
    /// would fail a whole target ([`World::covers_a_target`]).
    pub outage_draws: u32,
}

impl World {
    /// Draws the world of `seed` with `k` faults.
    pub fn draw(seed: u64, k: usize) -> World {
        let mut rng = StdRng::seed_from_u64(seed);
        let regions = rng.random_range(3..=6usize);
        let total = rng.random_range(30..=60usize);
        let resolvers: Vec<String> = (0..3)
            .map(|i| format!("udp://10.53.0.{}:53", i + 1))
            .collect();
        let mut vantages = Vec::new();
        let proxies = rng.random_range(1..=2usize);
        // Proxied vantages: 2-3 per proxy, in a random region, on an
        // agent of their own; they leave from the proxy's address.
        let mut proxied = Vec::new();
        for p in 0..proxies {
            let region = rng.random_range(0..regions);
            for i in 0..rng.random_range(2..=3usize) {
                proxied.push((p, region, i));
            }
        }
        let direct = total.saturating_sub(proxied.len());
        for r in 0..regions {
            let here = direct / regions + usize::from(r < direct % regions);
            let nets = if here >= 6 {
                rng.random_range(2..=3usize)
            } else {
                2
            };
            for i in 0..here {
                // Contiguous /24s of at least two vantages each.
                let net = (i * nets / here.max(1)).min(nets - 1);
                let agent = format!("r{r}-{}", i % 2);
                let mut v = SimVantage::new(
                    &agent,
                    &format!("v{i}"),
                    &format!("r{r}"),
                    &format!("10.{r}.{net}.{}", i + 1),
                );
                v.resolver = Some(resolvers[rng.random_range(0..resolvers.len())].clone());
                vantages.push(v);
            }
        }
        for (p, region, i) in proxied {
            let mut v = SimVantage::new(
                &format!("px{p}"),
                &format!("p{i}"),
                &format!("r{region}"),
                "10.250.0.1",
            )
            .via(
                &format!("http://10.250.{p}.1:3128"),
                &format!("10.250.{p}.1"),
            );
            v.resolver = Some(resolvers[rng.random_range(0..resolvers.len())].clone());
            vantages.push(v);
        }
        let n = vantages.len() as f64;
        for (i, v) in vantages.iter_mut().enumerate() {
            v.offset = (i as f64 + 0.5) / n;
        }
        // Edge locations: regions shuffled into PoPs of one or two regions,
        // at least one of two.
        let mut order: Vec<usize> = (0..regions).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.random_range(0..=i));
        }
        let mut edges = HashMap::new();
        let mut pop = 0;
        let mut i = 0;
        while i < order.len() {
            let two = i + 1 < order.len() && (pop == 0 || rng.random_bool(0.4));
            for r in &order[i..i + if two { 2 } else { 1 }] {
                edges.insert(format!("r{r}"), format!("pop{pop}"));
            }
            i += if two { 2 } else { 1 };
            pop += 1;
        }
        let target_count = rng.random_range(6..=10usize);
        let mut targets = Vec::new();
        for t in 0..target_count {
            let v4 = |i: u8| SimPath {
                resolver: String::new(),
                address: IpAddr::from([10, 100, t as u8, i]),
            };
            let v6 = |i: u16| SimPath {
                resolver: String::new(),
                address: IpAddr::from([0x2001, 0xdb8, i, t as u16, 0, 0, 0, 1]),
            };
            let paths = match rng.random_range(0..3u8) {
                0 => vec![v4(1)],
                1 => vec![v4(1), v4(2)],
                _ => vec![v4(1), v6(1), v6(2)],
            };
            targets.push((format!("site{t}"), paths));
        }
        let mut world = World {
            seed,
            vantages,
            targets,
            edges,
            faults: Vec::new(),
            rounds: 0,
            noise: 0.02,
            outage_draws: 0,
        };
        let mut attempts = 0;
        while world.faults.len() < k && attempts < 1000 {
            attempts += 1;
            let cause = Cause::ALL[rng.random_range(0..Cause::ALL.len())];
            let start = rng.random_range(12..36u64);
            let end = start + rng.random_range(10..24u64);
            let Some(fault) = world.fault_of(cause, &mut rng, start, end) else {
                continue;
            };
            if !world.fits(&fault) {
                continue;
            }
            if world.covers_a_target(&fault) {
                world.outage_draws += 1;
                continue;
            }
            world.faults.push(fault);
        }
        world.rounds = world.faults.iter().map(|f| f.end).max().unwrap_or(40) + 14;
        world
    }

    /// A fault of `cause` on a random target (or proxy), if the world has
    /// one such.
    fn fault_of(&self, cause: Cause, rng: &mut StdRng, start: u64, end: u64) -> Option<WorldFault> {
        let target = rng.random_range(0..self.targets.len());
        let pick = |rng: &mut StdRng, list: Vec<String>| -> Option<String> {
            (!list.is_empty()).then(|| list[rng.random_range(0..list.len())].clone())
        };
        let (target, dimension, value) = match cause {
            Cause::EgressPrefix => {
                let nets: BTreeSet<String> = self
                    .vantages
                    .iter()
                    .filter(|v| v.proxy.is_none())
                    .map(|v| self.derived(v, &self.targets[0].1[0], "egress_prefix"))
                    .collect();
                (
                    Some(target),
                    "egress_prefix",
                    pick(rng, nets.into_iter().collect())?,
                )
            }
            Cause::Region => {
                let regions: BTreeSet<String> =
                    self.vantages.iter().map(|v| v.region.clone()).collect();
                (
                    Some(target),
                    "region",
                    pick(rng, regions.into_iter().collect())?,
                )
            }
            Cause::Resolver => {
                let resolvers: BTreeSet<String> = self
                    .vantages
                    .iter()
                    .filter_map(|v| v.resolver.clone())
                    .collect();
                (
                    Some(target),
                    "resolver",
                    pick(rng, resolvers.into_iter().collect())?,
                )
            }
            Cause::Address => {
                let paths = &self.targets[target].1;
                if paths.len() != 2 {
                    return None;
                }
                let i = rng.random_range(0..2);
                (Some(target), "address", paths[i].address.to_string())
            }
            Cause::IpFamily => {
                if !self.targets[target].1.iter().any(|p| p.address.is_ipv6()) {
                    return None;
                }
                (Some(target), "ip_family", "IPv6".to_owned())
            }
            Cause::Proxy => {
                let proxies: BTreeSet<String> = self
                    .vantages
                    .iter()
                    .filter_map(|v| v.proxy.clone())
                    .collect();
                (None, "proxy", pick(rng, proxies.into_iter().collect())?)
            }
            Cause::EdgeLocation => {
                // A PoP serving two regions: otherwise it is its region.
                let mut served: HashMap<&String, usize> = HashMap::new();
                for pop in self.edges.values() {
                    *served.entry(pop).or_default() += 1;
                }
                let shared: Vec<String> = served
                    .into_iter()
                    .filter(|(_, n)| *n >= 2)
                    .map(|(p, _)| p.clone())
                    .collect();
                let mut shared = shared;
                shared.sort();
                (Some(target), "edge_location", pick(rng, shared)?)
            }
            Cause::Global => (Some(target), GLOBAL.0, GLOBAL.1.to_owned()),
        };
        Some(WorldFault {
            cause,
            target,
            dimension,
            value,
            start,
            end,
        })
    }

    /// The derived value of dimension `name` for a vantage's probe on a
    /// path (the detector's own derivation).
    fn derived(&self, v: &SimVantage, path: &SimPath, name: &str) -> String {
        let path = match &v.resolver {
            Some(r) => SimPath {
                resolver: r.clone(),
                address: path.address,
            },
            None => path.clone(),
        };
        let values = super::probe_values(&self.edges, v, &path, false);
        let asn = AsnTable::default();
        let ctx = DeriveContext {
            prefix_v4: 24,
            prefix_v6: 48,
            asn: &asn,
        };
        DIMENSIONS
            .iter()
            .find(|d| d.name == name)
            .and_then(|d| {
                values
                    .get(d.name)
                    .cloned()
                    .flatten()
                    .and_then(|s| d.derive.apply(&s, &ctx))
            })
            .unwrap_or_default()
    }

    /// Every probe unit of the world.
    fn units(&self) -> Vec<Unit> {
        let mut out = Vec::new();
        for (t, (_, paths)) in self.targets.iter().enumerate() {
            for v in 0..self.vantages.len() {
                for p in 0..paths.len() {
                    out.push((t, v, p));
                }
            }
        }
        out
    }

    /// The units in segment `key` (dimension = value on its target, or on
    /// every target for a path key; every unit of the target if global).
    fn key_units(&self, key: &CandidateKey) -> BTreeSet<Unit> {
        self.units()
            .into_iter()
            .filter(|(t, v, p)| {
                (key.target == PATH_TARGET || self.targets[*t].0 == key.target)
                    && (key.is_global()
                        || self.derived(
                            &self.vantages[*v],
                            &self.targets[*t].1[*p],
                            &key.dimension,
                        ) == key.value)
            })
            .collect()
    }

    /// The units a fault fails while it is on.
    fn fault_units(&self, f: &WorldFault) -> BTreeSet<Unit> {
        self.key_units(&f.key(self))
    }

    /// The simulation of this world (without its faults).
    fn simulation(&self, settings: DetectorSettings, round: Duration) -> Simulation<'static> {
        Simulation {
            settings,
            round,
            vantages: self.vantages.clone(),
            targets: self.targets.clone(),
            fault: Box::new(|_, _, _, _| false),
            edges: self.edges.clone(),
        }
    }

    /// Runs the world with its faults and noise; returns the events.
    pub fn run(&self, settings: &DetectorSettings, round: Duration) -> Vec<SimEvent> {
        let failing: Vec<(u64, u64, BTreeSet<Probe>)> = self
            .faults
            .iter()
            .map(|f| {
                let units = self
                    .fault_units(f)
                    .into_iter()
                    .map(|(t, v, p)| {
                        let vantage = &self.vantages[v];
                        (
                            self.targets[t].0.clone(),
                            vantage.agent.clone(),
                            vantage.name.clone(),
                            self.targets[t].1[p].address,
                        )
                    })
                    .collect();
                (f.start, f.end, units)
            })
            .collect();
        let noise = self.noise;
        let seed = self.seed;
        let mut sim = self.simulation(settings.clone(), round);
        sim.fault = Box::new(move |r, target, v, path| {
            let probe = (
                target.to_owned(),
                v.agent.clone(),
                v.name.clone(),
                path.address,
            );
            failing
                .iter()
                .any(|(s, e, units)| (*s..*e).contains(&r) && units.contains(&probe))
                || coin(noise, seed, r, target, v, path)
        });
        sim.run(self.rounds)
    }
}

impl World {
    /// For a replay: every failing probe (fault or noise) in segment `key`
    /// during rounds `[from, to)`, as `round vantage address`.
    pub fn failures_in(&self, key: &CandidateKey, from: u64, to: u64) -> Vec<String> {
        let mut out = Vec::new();
        let faults: Vec<(u64, u64, BTreeSet<Unit>)> = self
            .faults
            .iter()
            .map(|f| (f.start, f.end, self.fault_units(f)))
            .collect();
        for (t, v, p) in self.key_units(key) {
            let vantage = &self.vantages[v];
            let (target, paths) = &self.targets[t];
            // The path as probed: the vantage's own resolver (the noise
            // coin is drawn over it).
            let path = &SimPath {
                resolver: vantage.resolver.clone().unwrap_or_default(),
                address: paths[p].address,
            };
            for r in from..to {
                let faulted = faults.iter().any(|(start, end, units)| {
                    (*start..*end).contains(&r) && units.contains(&(t, v, p))
                });
                let noise = coin(self.noise, self.seed, r, target, vantage, path);
                if faulted || noise {
                    out.push(format!(
                        "r{r} {target} {}/{} {} {}",
                        vantage.agent,
                        vantage.name,
                        path.address,
                        if faulted { "fault" } else { "noise" }
                    ));
                }
            }
        }
        out.sort();
        out
    }
}
