//! Detection scenarios at the default settings and at the compressed
//! settings of the field test (checks and detector every 2 s, window 60 s,
//! `resolve_quiet` 10 s): rounds to open and to resolve per scenario, and
//! the false-positive rates (2% uniform noise, one vantage failing alone,
//! a flapping fault). The simulated fleet runs the real detection pass
//! ([`vantage_collector::detect::simulate`]); no database, no clock.
//!
//! `cargo bench -p vantage-collector --bench scenarios`

use std::time::{Duration, Instant};

use vantage_collector::detect::DetectorSettings;
use vantage_collector::detect::lifecycle::Hysteresis;
use vantage_collector::detect::simulate::{Scenario, SimVantage, Simulation, one_path, scenarios};

fn main() {
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
            "  {:<66} {:>8} {:>10}  {:<40} updates",
            "scenario (15 vantages, fault from round 20 to 40)", "to open", "to resolve", "paged",
        );
        for s in scenarios() {
            let m = Simulation::measure(settings, round, &s);
            let key = |k: &Option<vantage_collector::detect::track::CandidateKey>| {
                k.as_ref().map_or("-".to_owned(), |k| {
                    format!("{} {}={}", k.target, k.dimension, k.value)
                })
            };
            let paged = if m.first_key == m.final_key {
                key(&m.final_key)
            } else {
                format!("{} -> {}", key(&m.first_key), key(&m.final_key))
            };
            let ok = match (&s.expect, &m.final_key) {
                (Some((t, d, v)), Some(k)) => k.target == *t && k.dimension == *d && k.value == *v,
                (None, None) => true,
                _ => false,
            };
            println!(
                "  {:<66} {:>8} {:>10}  {:<40} {} {}",
                s.name,
                m.rounds_to_open.map_or("-".into(), |r| format!("{r:.1}")),
                m.rounds_to_resolve
                    .map_or("-".into(), |r| format!("{r:.1}")),
                paged,
                m.updates,
                if ok && m.opened == 1 {
                    "ok"
                } else {
                    "UNEXPECTED"
                }
            );
        }
        println!(
            "  (rounds to resolve include resolve_quiet = {quiet:.0} rounds; target: <= 3 + {quiet:.0})"
        );
        let started = Instant::now();
        let (opened, target_passes) = Simulation::noise(settings, round, 6, 2000, 0.02, 1);
        println!(
            "  2% uniform noise: {opened} incidents over {target_passes} target-passes (6 targets, 2000 rounds; {:.1} s)",
            started.elapsed().as_secs_f64()
        );
        let alone = Scenario {
            name: "one vantage failing alone",
            targets: vec![("alone".into(), one_path())],
            start: 20,
            end: 200,
            fails: Box::new(|_, _, v: &SimVantage, _| v.name == "e1"),
            expect: None,
        };
        let m = Simulation::measure(settings, round, &alone);
        println!(
            "  one vantage failing alone for 180 rounds: {} incidents",
            m.opened
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
        let m = Simulation::measure(settings, round, &flapping);
        println!(
            "  a /24 failing every other round for 100 rounds: {} incident(s), resolved {} rounds after the last flap",
            m.opened,
            m.rounds_to_resolve
                .map_or("-".into(), |r| format!("{r:.1}"))
        );
    }
}
