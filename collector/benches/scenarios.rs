//! Detection scenarios at the default settings and at the compressed
//! settings of the field test (checks and detector every 2 s, window 60 s,
//! `resolve_quiet` 10 s): rounds to open and to resolve per scenario, and
//! the false-positive rates (2% uniform noise, one vantage failing alone,
//! a flapping fault). Every figure is measured twice in the same run:
//! without confirmation probes and with them (the detector asks the
//! candidate's vantages and a matched set outside it to probe again when
//! it first holds a candidate; they are stored 2 s later), side by side as
//! `off → on`. The simulated fleet runs the real detection pass
//! ([`vantage_collector::detect::simulate`]); no database, no clock.
//!
//! `cargo bench -p vantage-collector --bench scenarios`

use std::time::{Duration, Instant};

use vantage_collector::detect::DetectorSettings;
use vantage_collector::detect::lifecycle::Hysteresis;
use vantage_collector::detect::simulate::worlds::{PAGE_WITHIN_ROUNDS, World, WorldScore};
use vantage_collector::detect::simulate::{
    Measured, Scenario, SimVantage, Simulation, one_path, scenarios,
};

/// `settings` without confirmation probes: the detector before them.
fn without(settings: &DetectorSettings) -> DetectorSettings {
    DetectorSettings {
        confirmation_probes: false,
        ..settings.clone()
    }
}

fn main() {
    if std::env::var("SCENARIOS").as_deref() != Ok("0") {
        fixed_scenarios();
    }
    random_worlds();
}

/// The random worlds: `WORLDS` (default 200) per K = 1..4 simultaneous
/// faults at the default settings, world `i` of K drawn from seed
/// `SEED` (default 1) * 1000 + K * 100000 + i, so any world can be
/// replayed (`World::draw(seed, k)`); `KS` (e.g. "1,4") picks the K.
fn random_worlds() {
    let per_k: u64 = std::env::var("WORLDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let base: u64 = std::env::var("SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let settings = DetectorSettings::default();
    let round = Duration::from_secs(30);
    println!(
        "\n== random worlds (default settings; 30-60 vantages in 3-6 regions, 6-10 targets, 2% noise), {per_k} per K"
    );
    println!(
        "  {:>2} {:>7} {:>7} {:>16} {:>6} {:>12} {:>14} {:>12} {:>16} {:>8}",
        "K",
        "worlds",
        "faults",
        "right in 3 rnds",
        "twins",
        "no fault",
        "resolved early",
        "pages/fault",
        "rounds p50/p95",
        "time",
    );
    // `KS` (e.g. "1,4") runs only those K.
    let ks: Vec<usize> = std::env::var("KS")
        .ok()
        .map(|s| s.split(',').filter_map(|k| k.trim().parse().ok()).collect())
        .unwrap_or_else(|| (1..=4).collect());
    for k in ks {
        let started = Instant::now();
        let seeds: Vec<u64> = (0..per_k)
            .map(|i| base * 1000 + k as u64 * 100_000 + i)
            .collect();
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let chunks: Vec<Vec<u64>> = (0..threads)
            .map(|t| seeds.iter().copied().skip(t).step_by(threads).collect())
            .collect();
        let scores: Vec<(u64, WorldScore)> = std::thread::scope(|scope| {
            let handles: Vec<_> = chunks
                .iter()
                .map(|chunk| {
                    let settings = settings.clone();
                    scope.spawn(move || {
                        chunk
                            .iter()
                            .map(|seed| (*seed, World::draw(*seed, k).score(&settings, round)))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        });
        let faults: usize = scores.iter().map(|s| s.1.faults).sum();
        let right: usize = scores.iter().map(|s| s.1.right_in_time).sum();
        let twins: usize = scores.iter().map(|s| s.1.right_by_twin).sum();
        let unexplained: usize = scores.iter().map(|s| s.1.unexplained.len()).sum();
        let early: usize = scores
            .iter()
            .map(|s| s.1.resolved_while_failing.len())
            .sum();
        let pages: usize = scores.iter().map(|s| s.1.open_pages).sum();
        let mut rounds: Vec<f64> = scores
            .iter()
            .flat_map(|s| s.1.rounds_to_page.iter().copied())
            .collect();
        rounds.sort_by(f64::total_cmp);
        let pct = |q: f64| {
            rounds
                .get(((rounds.len() as f64 - 1.0) * q).round() as usize)
                .copied()
                .unwrap_or(f64::NAN)
        };
        println!(
            "  {:>2} {:>7} {:>7} {:>16} {:>6} {:>12} {:>14} {:>12} {:>16} {:>7.0}s",
            k,
            scores.len(),
            faults,
            format!(
                "{right} ({:.1}%)",
                100.0 * right as f64 / faults.max(1) as f64
            ),
            twins,
            unexplained,
            early,
            format!("{:.3}", pages as f64 / faults.max(1) as f64),
            format!("{:.1} / {:.1}", pct(0.5), pct(0.95)),
            started.elapsed().as_secs_f64(),
        );
        // Drawing alone is cheap: count the faults set aside as outages.
        let outage_draws: u32 = seeds.iter().map(|s| World::draw(*s, k).outage_draws).sum();
        if outage_draws > 0 {
            println!(
                "       {outage_draws} drawn faults set aside: with the faults on beside them they failed a whole target (an outage to anyone)"
            );
        }
        for (seed, s) in &scores {
            for m in &s.missed {
                println!(
                    "       seed {seed} K={k}: not right within {PAGE_WITHIN_ROUNDS} rounds: {m}"
                );
            }
            for u in &s.unexplained {
                println!("       seed {seed} K={k}: no fault explains {u}");
            }
            for u in &s.resolved_while_failing {
                println!("       seed {seed} K={k}: resolved while failing: {u}");
            }
        }
    }
    println!(
        "  targets: >= 98% right within {PAGE_WITHIN_ROUNDS} rounds, 0 without a fault, 0 resolved early, <= 1.02 pages per fault"
    );
}

/// The field notes' scenarios, one fault each, and the noise guards.
fn fixed_scenarios() {
    let default = DetectorSettings::default();
    let compressed = DetectorSettings {
        interval: Duration::from_secs(2),
        window: Duration::from_secs(60),
        hysteresis: Hysteresis {
            resolve_quiet: Duration::from_secs(10),
            ..Hysteresis::default()
        },
        ..DetectorSettings::default()
    };
    for (label, settings, round) in [
        (
            "default settings: checks every 30 s, detector every 15 s, window 5 min, resolve_quiet 2 min",
            &default,
            Duration::from_secs(30),
        ),
        (
            "compressed: checks and detector every 2 s, window 60 s, resolve_quiet 10 s",
            &compressed,
            Duration::from_secs(2),
        ),
    ] {
        println!("\n== {label}");
        let quiet = settings.hysteresis.resolve_quiet.as_secs_f64() / round.as_secs_f64();
        println!(
            "  {:<62} {:>12} {:>12} {:>10}  {:<36} {:>7}",
            "scenario (15 vantages, fault from round 20 to 40)",
            "to open",
            "to resolve",
            "candidates",
            "paged",
            "asked",
        );
        let (mut sum_off, mut sum_on, mut n) = (0.0, 0.0, 0);
        for s in scenarios() {
            let off = Simulation::measure(&without(settings), round, &s);
            let on = Simulation::measure(settings, round, &s);
            let key = |k: &Option<vantage_collector::detect::track::CandidateKey>| {
                k.as_ref().map_or("-".to_owned(), |k| {
                    format!("{} {}={}", k.target, k.dimension, k.value)
                })
            };
            let paged = |m: &Measured| {
                if m.first_key == m.final_key {
                    key(&m.final_key)
                } else {
                    format!("{} -> {}", key(&m.first_key), key(&m.final_key))
                }
            };
            let ok = |m: &Measured| {
                let right = match (&s.expect, &m.final_key) {
                    (Some((t, d, v)), Some(k)) => {
                        k.target == *t && k.dimension == *d && k.value == *v
                    }
                    (None, None) => true,
                    _ => false,
                };
                right && m.opened == usize::from(s.expect.is_some())
            };
            let rounds = |r: Option<f64>| r.map_or("-".into(), |r| format!("{r:.1}"));
            if let (Some(a), Some(b)) = (off.rounds_to_open, on.rounds_to_open) {
                sum_off += a;
                sum_on += b;
                n += 1;
            }
            println!(
                "  {:<62} {:>12} {:>12} {:>10}  {:<36} {:>7} {}",
                s.name,
                format!(
                    "{} → {}",
                    rounds(off.rounds_to_open),
                    rounds(on.rounds_to_open)
                ),
                format!(
                    "{} → {}",
                    rounds(off.rounds_to_resolve),
                    rounds(on.rounds_to_resolve)
                ),
                format!("{} → {}", off.stats.new_candidates, on.stats.new_candidates),
                paged(&on),
                on.stats.confirmation_probes,
                match (ok(&off), ok(&on)) {
                    (true, true) => "ok",
                    (false, true) => "UNEXPECTED without confirmation",
                    (true, false) => "UNEXPECTED with confirmation",
                    (false, false) => "UNEXPECTED",
                }
            );
        }
        if n > 0 {
            println!(
                "  mean rounds to open over {n} scenarios: {:.2} without confirmation probes, {:.2} with ({:+.0}%)",
                sum_off / f64::from(n),
                sum_on / f64::from(n),
                (sum_on - sum_off) / sum_off * 100.0
            );
        }
        println!(
            "  (rounds to resolve include resolve_quiet = {quiet:.0} rounds; target: <= 3 + {quiet:.0})"
        );
        let started = Instant::now();
        let (off_opened, target_passes, off) =
            Simulation::noise(&without(settings), round, 6, 2000, 0.02, 1);
        let (on_opened, _, on) = Simulation::noise(settings, round, 6, 2000, 0.02, 1);
        let scheduled = 6 * 2000 * Simulation::standard_fleet().len() as u64;
        println!(
            "  2% uniform noise, 6 targets, 2000 rounds ({target_passes} target-passes; {:.1} s):",
            started.elapsed().as_secs_f64()
        );
        println!(
            "    incidents {off_opened} → {on_opened}; false candidates held {} → {}; candidate-passes {} → {}; confirmation requests 0 → {} ({} probes, {:.2}% of the {} scheduled)",
            off.new_candidates,
            on.new_candidates,
            off.candidate_passes,
            on.candidate_passes,
            on.confirmations,
            on.confirmation_probes,
            on.confirmation_probes as f64 / scheduled as f64 * 100.0,
            scheduled,
        );
        let alone = Scenario {
            name: "one vantage failing alone",
            targets: vec![("alone".into(), one_path())],
            start: 20,
            end: 200,
            fails: Box::new(|_, _, v: &SimVantage, _| v.name == "e1"),
            expect: None,
        };
        let (off, on) = (
            Simulation::measure(&without(settings), round, &alone),
            Simulation::measure(settings, round, &alone),
        );
        println!(
            "  one vantage failing alone for 180 rounds: {} → {} incidents",
            off.opened, on.opened
        );
        let flapping = Scenario {
            name: "flapping",
            targets: vec![("flap".into(), one_path())],
            start: 20,
            end: 120,
            fails: Box::new(|r, _, v: &SimVantage, _| {
                r % 2 == 0 && v.egress.to_string().starts_with("127.0.2.")
            }),
            expect: None,
        };
        let (off, on) = (
            Simulation::measure(&without(settings), round, &flapping),
            Simulation::measure(settings, round, &flapping),
        );
        let resolved = |m: &Measured| {
            m.rounds_to_resolve
                .map_or("-".into(), |r| format!("{r:.1}"))
        };
        println!(
            "  a /24 failing every other round for 100 rounds: {} → {} incident(s), resolved {} → {} rounds after the last flap",
            off.opened,
            on.opened,
            resolved(&off),
            resolved(&on)
        );
    }
}
