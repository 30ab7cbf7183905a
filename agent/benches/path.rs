//! What a path probe costs, on a real 3-hop path in network namespaces
//! (root): wall time and CPU time per trace, beside `tracepath` and
//! `traceroute` tracing the same path in the same run; and the peak RSS of
//! the real agent binary running checks with path probing on, beside the
//! same agent with it off. Prints figures; asserts nothing.
//!
//!   cargo bench -p vantage-agent --bench path
//!   TRACES=50 CHECKS=200 cargo bench -p vantage-agent --bench path

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use nix::sys::resource::{UsageWho, getrusage};
use vantage_agent::probe::path::{self, PathEnd, PathSettings, PathTarget};
use vantage_testkit::netns::{Lab, Ns};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn cpu(who: UsageWho) -> Duration {
    let usage = getrusage(who).unwrap();
    let tv = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec().unsigned_abs())
            + Duration::from_micros(t.tv_usec().unsigned_abs())
    };
    tv(usage.user_time()) + tv(usage.system_time())
}

/// e ── r1 ── r2 ── t (10.99.0.1, nginx on :80).
fn three_hops() -> (Lab, Ns, Ns) {
    let mut lab = Lab::new().unwrap();
    let e = lab.host("e").unwrap();
    let r1 = lab.router("r1").unwrap();
    let r2 = lab.router("r2").unwrap();
    let t = lab.host("t").unwrap();
    let mut sources = vec!["10.1.0.2/24".to_owned()];
    sources.extend((3..=66).map(|i| format!("10.1.0.{i}/24")));
    let sources: Vec<&str> = sources.iter().map(String::as_str).collect();
    lab.link(&e, &sources, &r1, &["10.1.0.1/24"], None).unwrap();
    lab.link(&r1, &["10.8.0.1/24"], &r2, &["10.8.0.2/24"], None)
        .unwrap();
    lab.link(&r2, &["10.9.0.1/24"], &t, &["10.9.0.2/24"], None)
        .unwrap();
    lab.address(&t, "10.99.0.1/32").unwrap();
    for (ns, to, via) in [
        (&e, "default", "10.1.0.1"),
        (&r1, "10.99.0.1/32", "10.8.0.2"),
        (&r2, "10.99.0.1/32", "10.9.0.2"),
        (&r2, "10.1.0.0/24", "10.8.0.1"),
        (&t, "10.1.0.0/24", "10.9.0.1"),
    ] {
        lab.route(ns, to, via).unwrap();
    }
    (lab, e, t)
}

/// Mean wall and CPU time of `n` runs of `program args` in `ns`.
fn tool(lab: &Lab, ns: &Ns, n: usize, program: &str, args: &[&str]) -> (Duration, Duration) {
    let cpu_before = cpu(UsageWho::RUSAGE_CHILDREN);
    let started = Instant::now();
    for _ in 0..n {
        let out = lab.exec(ns, program, args).unwrap();
        assert!(out.status.success(), "{program}: {out:?}");
    }
    let runs = u32::try_from(n).unwrap();
    (
        started.elapsed() / runs,
        (cpu(UsageWho::RUSAGE_CHILDREN) - cpu_before) / runs,
    )
}

/// Peak RSS (VmHWM, kB) of the agent binary running `checks` checks
/// against the target for `seconds`, each traced every `path_interval`
/// (none: path probing off).
fn agent_rss(lab: &Lab, ns: &Ns, checks: usize, path_interval: Option<&str>, seconds: u64) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let mut config = String::from(
        "agent_id = \"bench\"\nregion = \"r\"\n\
         [collector]\nendpoint = \"http://127.0.0.1:1\"\ntoken = \"t\"\n\
         [dns]\nresolvers = [\"udp://127.0.0.1:53\"]\nidentity_queries = []\n",
    );
    // Sixteen vantages (source addresses) share the checks.
    for v in 0..16 {
        config.push_str(&format!(
            "[[vantage]]\nname = \"v{v}\"\nsource_ip = \"10.1.0.{}\"\n",
            v + 2
        ));
    }
    for i in 0..checks {
        config.push_str(&format!(
            "[[check]]\nname = \"c{i}\"\nurl = \"http://10.99.0.1/\"\ninterval = \"5s\"\n\
             timeout = \"2s\"\nvantages = [\"v{}\"]\n",
            i % 16
        ));
        if let Some(every) = path_interval {
            config.push_str(&format!("path_interval = \"{every}\"\n"));
        }
    }
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = lab
        .command(ns, env!("CARGO_BIN_EXE_vantage-agent"))
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(seconds));
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let traces = env("TRACES", 30);
    let checks = env("CHECKS", 160);
    let (lab, e, t) = three_hops();
    let _site = lab
        .nginx(
            &t,
            &["10.99.0.1:80"],
            "location / { return 200 \"ok\\n\"; }",
        )
        .unwrap();
    // A router answers one source with a burst of 6 ICMP errors, then one
    // a second; traces from one source back to back would measure that
    // limit, not the tracer: each trace leaves from a source of its own.
    // Wall and CPU time are the trace's own (the pause between is not).
    let settings = PathSettings::default();
    let (wall, cpu_time, hops, walls, silent) = lab
        .run_in(&e, async move {
            let mut wall = Duration::ZERO;
            let mut walls = Vec::new();
            let mut silent = 0;
            let mut hops = 0;
            let before = cpu(UsageWho::RUSAGE_THREAD);
            for i in 0..traces {
                let target = PathTarget {
                    source: Some(format!("10.1.0.{}", 3 + i % 64).parse().unwrap()),
                    destination: "10.99.0.1:80".parse().unwrap(),
                    via_proxy: false,
                };
                let started = Instant::now();
                let trace = path::trace(target, &settings).await;
                wall += started.elapsed();
                walls.push(started.elapsed());
                silent += trace.probes.iter().filter(|p| p.reply.is_none()).count();
                if std::env::var_os("SHOW_SILENT").is_some() {
                    for p in trace.probes.iter().filter(|p| p.reply.is_none()) {
                        eprintln!("trace {i}: silent probe at ttl {} size {}", p.ttl, p.size);
                    }
                }
                assert_eq!(trace.end, PathEnd::Reached, "{trace:?}");
                hops = trace.reached_at().unwrap_or(0);
                // The target answers everyone with at most 1000 ICMP
                // errors a second (a burst of 50): traces back to back
                // would measure that limit (every 8th trace lost a probe
                // to it, waiting out hop_timeout), not the tracer.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let runs = u32::try_from(traces).unwrap();
            walls.sort();
            (
                wall / runs,
                (cpu(UsageWho::RUSAGE_THREAD) - before) / runs,
                hops,
                walls,
                silent,
            )
        })
        .unwrap();
    let (tp_wall, tp_cpu) = tool(&lab, &e, traces.min(10), "tracepath", &["-n", "10.99.0.1"]);
    let (tr_wall, tr_cpu) = tool(
        &lab,
        &e,
        traces.min(10),
        "traceroute",
        &["-n", "-q", "3", "10.99.0.1"],
    );
    println!("path probe on a {hops}-hop path (veth, kernel routers), {traces} traces:");
    println!(
        "  figure: vantage trace   wall {:>8.2} ms   cpu {:>7.3} ms  (UDP, 3 probes/hop, MTU, port check)",
        wall.as_secs_f64() * 1e3,
        cpu_time.as_secs_f64() * 1e3
    );
    println!(
        "          median {:.2} ms, slowest {:.2} ms; {silent} probes unanswered in all",
        walls[walls.len() / 2].as_secs_f64() * 1e3,
        walls[walls.len() - 1].as_secs_f64() * 1e3
    );
    println!(
        "  reference: tracepath    wall {:>8.2} ms   cpu {:>7.3} ms  (process included)",
        tp_wall.as_secs_f64() * 1e3,
        tp_cpu.as_secs_f64() * 1e3
    );
    println!(
        "  reference: traceroute   wall {:>8.2} ms   cpu {:>7.3} ms  (process included)",
        tr_wall.as_secs_f64() * 1e3,
        tr_cpu.as_secs_f64() * 1e3
    );
    let seconds = 20;
    let off = agent_rss(&lab, &e, checks, None, seconds);
    let on = agent_rss(&lab, &e, checks, Some("10s"), seconds);
    println!(
        "agent peak RSS, {checks} checks every 5 s from 16 vantages, {seconds} s (bench profile: optimized, no LTO):"
    );
    println!("  figure: path probing on (path_interval 10s)  {on} kB");
    println!("  reference: path probing off                   {off} kB");
}
