//! The path probe on real kernels: namespaces joined by veth pairs, real
//! routers (the kernel's forwarding), real ICMP. Its hops are held to what
//! `tracepath` (iputils) and `traceroute` (UDP and `-T`) report for the
//! same source and destination; MTUs, black holes and a port answered
//! before the destination are staged with link MTUs and nftables rules.
//!
//! Topology (IPv4 and IPv6 on every link; the target's service address
//! 10.99.0.1 / fd99::1 is on its loopback):
//!
//! ```text
//! e1 ── r1 ─────────── t      (2 hops)
//! e2 ── r2a ══ r2b ─── t      (3 hops; ══ may have a smaller MTU)
//! ```

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use vantage_agent::probe::path::{
    self, PathEnd, PathProtocol, PathSettings, PathTarget, PathTrace,
};
use vantage_testkit::netns::{Lab, Ns};

pub(crate) struct TwoPaths {
    pub(crate) lab: Lab,
    pub(crate) e1: Ns,
    pub(crate) e2: Ns,
    pub(crate) r1: Ns,
    pub(crate) r2a: Ns,
    pub(crate) r2b: Ns,
    pub(crate) t: Ns,
}

pub(crate) const TARGET4: &str = "10.99.0.1";
pub(crate) const TARGET6: &str = "fd99::1";

/// The two paths; `middle_mtu`: the MTU of the link between r2a and r2b.
pub(crate) fn two_paths(middle_mtu: Option<u32>) -> TwoPaths {
    let mut lab = Lab::new().unwrap();
    let e1 = lab.host("e1").unwrap();
    let e2 = lab.host("e2").unwrap();
    let r1 = lab.router("r1").unwrap();
    let r2a = lab.router("r2a").unwrap();
    let r2b = lab.router("r2b").unwrap();
    let t = lab.host("t").unwrap();
    lab.link(
        &e1,
        &["10.1.0.2/24", "fd01::2/64"],
        &r1,
        &["10.1.0.1/24", "fd01::1/64"],
        None,
    )
    .unwrap();
    lab.link(
        &r1,
        &["10.9.1.1/24", "fd91::1/64"],
        &t,
        &["10.9.1.2/24", "fd91::2/64"],
        None,
    )
    .unwrap();
    lab.link(
        &e2,
        &["10.2.0.2/24", "fd02::2/64"],
        &r2a,
        &["10.2.0.1/24", "fd02::1/64"],
        None,
    )
    .unwrap();
    lab.link(
        &r2a,
        &["10.8.0.1/24", "fd08::1/64"],
        &r2b,
        &["10.8.0.2/24", "fd08::2/64"],
        middle_mtu,
    )
    .unwrap();
    lab.link(
        &r2b,
        &["10.9.2.1/24", "fd92::1/64"],
        &t,
        &["10.9.2.2/24", "fd92::2/64"],
        None,
    )
    .unwrap();
    lab.address(&t, "10.99.0.1/32").unwrap();
    lab.address(&t, "fd99::1/128").unwrap();
    for (ns, to, via) in [
        (&e1, "default", "10.1.0.1"),
        (&e1, "default", "fd01::1"),
        (&e2, "default", "10.2.0.1"),
        (&e2, "default", "fd02::1"),
        (&r1, "10.99.0.1/32", "10.9.1.2"),
        (&r1, "fd99::1/128", "fd91::2"),
        (&r2a, "10.99.0.1/32", "10.8.0.2"),
        (&r2a, "fd99::1/128", "fd08::2"),
        (&r2b, "10.99.0.1/32", "10.9.2.2"),
        (&r2b, "fd99::1/128", "fd92::2"),
        (&r2b, "10.2.0.0/24", "10.8.0.1"),
        (&r2b, "fd02::/64", "fd08::1"),
        (&t, "10.1.0.0/24", "10.9.1.1"),
        (&t, "fd01::/64", "fd91::1"),
        (&t, "10.2.0.0/24", "10.9.2.1"),
        (&t, "fd02::/64", "fd92::1"),
    ] {
        lab.route(ns, to, via).unwrap();
    }
    TwoPaths {
        lab,
        e1,
        e2,
        r1,
        r2a,
        r2b,
        t,
    }
}

impl TwoPaths {
    /// A trace from `ns` to `destination`'s port 80 with [`settings`].
    pub(crate) fn trace(&self, ns: &Ns, destination: &str, protocol: PathProtocol) -> PathTrace {
        trace_in(&self.lab, ns, target(destination, 80), settings(protocol))
    }
}

fn settings(protocol: PathProtocol) -> PathSettings {
    PathSettings {
        protocol,
        max_hops: 8,
        hop_timeout: Duration::from_millis(1000),
        ..PathSettings::default()
    }
}

fn target(destination: &str, port: u16) -> PathTarget {
    PathTarget {
        source: None,
        destination: SocketAddr::new(destination.parse().unwrap(), port),
        via_proxy: false,
    }
}

fn trace_in(lab: &Lab, ns: &Ns, target: PathTarget, settings: PathSettings) -> path::PathTrace {
    lab.run_in(ns, async move { path::trace(target, &settings).await })
        .unwrap()
}

/// Each TTL's address as a tool printed it (`None`: no reply), up to the
/// last line with one.
pub(crate) fn tool_hops(
    lab: &Lab,
    ns: &Ns,
    program: &str,
    args: &[&str],
) -> Vec<(u8, Option<IpAddr>)> {
    let out = lab.exec(ns, program, args).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut hops: Vec<(u8, Option<IpAddr>)> = Vec::new();
    for line in text
        .lines()
        .skip_while(|l| program == "traceroute" && l.starts_with("traceroute"))
    {
        let mut words = line.split_whitespace();
        let Some(ttl) = words
            .next()
            .and_then(|w| w.trim_end_matches(':').parse::<u8>().ok())
        else {
            continue;
        };
        let addr = words.find_map(|w| w.parse::<IpAddr>().ok());
        match hops.iter_mut().find(|(t, _)| *t == ttl) {
            // tracepath prints a hop twice; the first answer is the hop's.
            Some((_, known)) => *known = known.or(addr),
            None => hops.push((ttl, addr)),
        }
    }
    hops
}

pub(crate) fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[test]
fn hops_agree_with_tracepath_and_traceroute_on_both_paths_v4_and_v6() {
    let net = two_paths(None);
    // Five tracers back to back within a second or two: a router's limit
    // on the ICMP errors it sends one source (a burst of 6, then one a
    // second) would leave whichever runs last with nothing. Off here; the
    // other tests keep it.
    // Both limits: per source, and the host's own for everyone (1,000 a
    // second, a burst of 50), which the destination, answering every
    // tracer's probes beyond it, would reach.
    for name in ["r1", "r2a", "r2b", "t"] {
        let ns = net.lab.namespace(name);
        for (key, value) in [
            ("net.ipv4.icmp_ratelimit", "0"),
            ("net.ipv6.icmp.ratelimit", "0"),
            ("net.ipv4.icmp_msgs_per_sec", "1000000"),
            ("net.ipv4.icmp_msgs_burst", "1000000"),
        ] {
            net.lab.sysctl(&ns, key, value).unwrap();
        }
    }
    let cases = [
        (&net.e1, TARGET4, vec!["10.1.0.1", TARGET4]),
        (&net.e2, TARGET4, vec!["10.2.0.1", "10.8.0.2", TARGET4]),
        (&net.e1, TARGET6, vec!["fd01::1", TARGET6]),
        (&net.e2, TARGET6, vec!["fd02::1", "fd08::2", TARGET6]),
    ];
    for (ns, destination, expected) in cases {
        let expected: Vec<(u8, Option<IpAddr>)> = expected
            .iter()
            .enumerate()
            .map(|(i, a)| (u8::try_from(i + 1).unwrap(), Some(ip(a))))
            .collect();
        // A cold IPv6 link loses the first packet while the router
        // resolves its neighbour, whichever tracer sends it: warm it.
        let _ = net.trace(ns, destination, PathProtocol::Udp);
        let udp = net.trace(ns, destination, PathProtocol::Udp);
        let tcp = net.trace(ns, destination, PathProtocol::Tcp);
        let tracepath = tool_hops(&net.lab, ns, "tracepath", &["-n", "-m", "8", destination]);
        let traceroute_udp = tool_hops(
            &net.lab,
            ns,
            "traceroute",
            &["-n", "-q", "3", "-w", "1", "-m", "8", destination],
        );
        let traceroute_tcp = tool_hops(
            &net.lab,
            ns,
            "traceroute",
            &[
                "-n",
                "-T",
                "-p",
                "80",
                "-q",
                "3",
                "-w",
                "1",
                "-m",
                "8",
                destination,
            ],
        );
        let what = format!("{} to {destination}", ns.name());
        assert_eq!(udp.end, PathEnd::Reached, "{what}: {udp:?}");
        assert_eq!(tcp.end, PathEnd::Reached, "{what}: {tcp:?}");
        assert_eq!(udp.hop_addresses(), expected, "{what}: UDP trace");
        assert_eq!(tcp.hop_addresses(), expected, "{what}: TCP trace");
        assert_eq!(tracepath, expected, "{what}: tracepath");
        assert_eq!(traceroute_udp, expected, "{what}: traceroute");
        assert_eq!(traceroute_tcp, expected, "{what}: traceroute -T");
        // Every probe of every hop answered, with an RTT.
        assert!(
            udp.probes.iter().all(|p| p.rtt.is_some()),
            "{what}: {udp:?}"
        );
        assert_eq!(udp.probes.len(), expected.len() * 3, "{what}");
        // The port answers at the destination, not before.
        assert_eq!(
            udp.port_answered_at,
            Some(u8::try_from(expected.len()).unwrap())
        );
        assert!(udp.port.reached, "{what}: {:?}", udp.port);
        assert_eq!(udp.black_hole, None, "{what}");
    }
}

#[test]
fn a_port_answered_before_the_destination_is_seen() {
    let net = two_paths(None);
    // r1 takes every TCP connection to port 80 for itself (a transparent
    // proxy); nothing listens there, so it answers with a RST.
    net.lab
        .nft(
            &net.r1,
            "table inet intercept {
               chain pre {
                 type nat hook prerouting priority -100;
                 tcp dport 80 redirect to :8080
               }
             }",
        )
        .unwrap();
    for destination in [TARGET4, TARGET6] {
        let inside = net.trace(&net.e1, destination, PathProtocol::Udp);
        assert_eq!(inside.reached_at(), Some(2), "{inside:?}");
        assert_eq!(
            inside.port_answered_at,
            Some(1),
            "{destination}: {inside:?}"
        );
        let outside = net.trace(&net.e2, destination, PathProtocol::Udp);
        assert_eq!(
            outside.port_answered_at,
            Some(3),
            "{destination}: {outside:?}"
        );
        // A TCP trace ends at the interceptor, one hop early.
        let tcp = net.trace(&net.e1, destination, PathProtocol::Tcp);
        assert_eq!(tcp.reached_at(), Some(1), "{destination}: {tcp:?}");
    }
}

#[test]
fn bad_settings_and_a_host_that_refuses_the_probe_are_errors_in_words() {
    let zero = PathSettings {
        max_hops: 0,
        ..PathSettings::default()
    };
    assert_eq!(
        zero.validate().unwrap_err().to_string(),
        "path.max_hops is 0; expected 1 to 64 hops"
    );
    let net = two_paths(None);
    let refused = trace_in(&net.lab, &net.e1, target(TARGET4, 80), zero);
    assert_eq!(refused.end, PathEnd::Error);
    assert!(refused.probes.is_empty());

    // A local firewall that refuses the probes: the send fails with EPERM.
    net.lab
        .nft(
            &net.e1,
            "table inet deny {
               chain out {
                 type filter hook output priority 0;
                 udp dport 33434-35000 reject
               }
             }",
        )
        .unwrap();
    let trace = net.trace(&net.e1, TARGET4, PathProtocol::Udp);
    assert_eq!(trace.end, PathEnd::Error, "{trace:?}");
    let error = trace.error.unwrap();
    assert!(error.contains("this host refused to send it"), "{error}");
    // A source address this host does not have.
    let mut elsewhere = target(TARGET4, 80);
    elsewhere.source = Some(ip("10.77.0.1"));
    let trace = trace_in(&net.lab, &net.e2, elsewhere, settings(PathProtocol::Udp));
    assert_eq!(trace.end, PathEnd::Error);
    assert!(
        trace
            .error
            .as_deref()
            .unwrap()
            .contains("cannot use the source address 10.77.0.1"),
        "{trace:?}"
    );
}
