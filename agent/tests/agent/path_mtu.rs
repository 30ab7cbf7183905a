//! The path MTU on real kernels (see `path.rs` for the topology): a
//! router that says "fragmentation needed" gives the MTU; routers that drop
//! that ICMP make a black hole, which the path probe finds and brackets
//! where tracepath sees nothing, and through which a real nginx's large
//! response stalls, named as such, while small ones pass. IPv4 and IPv6.

use vantage_agent::app::App;
use vantage_agent::config::AgentConfig;
use vantage_agent::probe::path::{PathEnd, PathProtocol};
use vantage_agent::probe::{Outcome, ProbeResult};
use vantage_testkit::netns::{Lab, Ns};

use super::path::{TARGET4, TARGET6, TwoPaths, ip, tool_hops, two_paths};

/// The routers on both sides of the small link drop the ICMP that would
/// tell a sender its packets are too large (as a misconfigured firewall
/// does): large packets vanish in both directions.
fn make_black_hole(net: &TwoPaths) {
    for router in [&net.r2a, &net.r2b] {
        net.lab
            .nft(
                router,
                "table inet blackhole {
                   chain out {
                     type filter hook output priority 0;
                     icmp type destination-unreachable icmp code frag-needed drop
                     icmpv6 type packet-too-big drop
                   }
                 }",
            )
            .unwrap();
    }
}

#[test]
fn a_router_that_says_fragmentation_needed_gives_the_path_mtu() {
    let net = two_paths(Some(1400));
    for (destination, reporter) in [(TARGET4, "10.2.0.1"), (TARGET6, "fd02::1")] {
        let trace = net.trace(&net.e2, destination, PathProtocol::Udp);
        assert_eq!(trace.end, PathEnd::Reached, "{trace:?}");
        assert_eq!(trace.path_mtu, Some(1400), "{destination}: {trace:?}");
        assert_eq!(trace.mtu_from, Some(ip(reporter)), "{destination}");
        assert_eq!(trace.black_hole, None, "{destination}");
        // The other path has the local link's MTU throughout.
        let other = net.trace(&net.e1, destination, PathProtocol::Udp);
        assert_eq!(other.path_mtu, Some(1500), "{destination}: {other:?}");
    }
}

#[test]
fn a_black_hole_is_found_where_tracepath_sees_nothing() {
    let net = two_paths(Some(1400));
    make_black_hole(&net);
    for destination in [TARGET4, TARGET6] {
        let tracepath = tool_hops(
            &net.lab,
            &net.e2,
            "tracepath",
            &["-n", "-m", "4", destination],
        );
        assert_eq!(
            tracepath.iter().filter(|(_, a)| a.is_some()).count(),
            1,
            "tracepath sees only hop 1: {tracepath:?}"
        );
        let trace = net.trace(&net.e2, destination, PathProtocol::Udp);
        let hole = trace
            .black_hole
            .unwrap_or_else(|| panic!("{destination}: {trace:?}"));
        assert_eq!(hole.after_ttl, 1, "{destination}: {hole:?}");
        assert!(
            hole.largest_passed <= 1400 && hole.smallest_lost > 1400,
            "{destination}: {hole:?}"
        );
        assert!(hole.smallest_lost - hole.largest_passed <= 8, "{hole:?}");
        assert_eq!(trace.path_mtu, Some(hole.largest_passed));
        // Small probes went on past it: the destination was reached.
        assert_eq!(trace.end, PathEnd::Reached, "{destination}: {trace:?}");
        assert_eq!(
            trace.hop_addresses().last(),
            Some(&(3, Some(ip(destination)))),
            "{destination}"
        );
    }
}

/// A real nginx behind both paths; `/small` fits in one packet, `/large`
/// (200 KB) does not.
fn nginx_on_target(net: &TwoPaths) -> vantage_testkit::netns::Nginx {
    let nginx = net
        .lab
        .nginx(&net.t, &["10.99.0.1:80", "[fd99::1]:80"], "")
        .unwrap();
    std::fs::write(nginx.www().join("small"), vec![b's'; 500]).unwrap();
    std::fs::write(nginx.www().join("large"), vec![b'L'; 200_000]).unwrap();
    nginx
}

/// Probes `url` once from `ns`, through the agent's own prober.
fn probe_in(lab: &Lab, ns: &Ns, url: &str) -> ProbeResult {
    let text = format!(
        "agent_id = \"path-test\"\nregion = \"r\"\n\
         [collector]\nendpoint = \"http://127.0.0.1:1\"\ntoken = \"t\"\n\
         [dns]\nresolvers = [\"udp://127.0.0.1:53\"]\nidentity_queries = []\n\
         [[check]]\nname = \"c\"\ninterval = \"10s\"\ntimeout = \"3s\"\nurl = \"{url}\"\n"
    );
    let config = AgentConfig::parse(std::path::Path::new("test.toml"), &text).unwrap();
    let mut results = lab
        .run_in(ns, async move {
            let app = App::build(config).expect("agent builds");
            app.probe_once("c").await
        })
        .unwrap();
    assert_eq!(results.len(), 1, "{results:#?}");
    results.remove(0)
}

#[test]
fn large_responses_cross_a_small_link_when_its_router_says_so() {
    let net = two_paths(Some(1400));
    let _nginx = nginx_on_target(&net);
    for base in ["http://10.99.0.1", "http://[fd99::1]"] {
        let large = probe_in(&net.lab, &net.e2, &format!("{base}/large"));
        assert_eq!(large.outcome, Outcome::Ok, "{base}: {}", large.message);
        assert_eq!(large.body_bytes, Some(65536), "{base}");
    }
}

#[test]
fn a_large_response_stalls_in_a_black_hole_and_the_probe_says_so() {
    let net = two_paths(Some(1400));
    let _nginx = nginx_on_target(&net);
    make_black_hole(&net);
    for base in ["http://10.99.0.1", "http://[fd99::1]"] {
        // Small responses pass; the healthy path carries large ones.
        let small = probe_in(&net.lab, &net.e2, &format!("{base}/small"));
        assert_eq!(small.outcome, Outcome::Ok, "{base}: {}", small.message);
        let healthy = probe_in(&net.lab, &net.e1, &format!("{base}/large"));
        assert_eq!(healthy.outcome, Outcome::Ok, "{base}: {}", healthy.message);
        // Through the black hole: the status and headers arrive, then
        // nothing: a stall, not a generic timeout.
        let large = probe_in(&net.lab, &net.e2, &format!("{base}/large"));
        assert_eq!(large.outcome, Outcome::Stalled, "{base}: {}", large.message);
        assert_eq!(large.http_status, Some(200), "{base}");
        assert!(
            large.message.starts_with("the body stopped after")
                && large.message.contains("path-MTU black hole"),
            "{}",
            large.message
        );
        // The path probe from the same vantage names where and how much.
        let destination = if base.contains('[') { TARGET6 } else { TARGET4 };
        let trace = net.trace(&net.e2, destination, PathProtocol::Udp);
        let hole = trace.black_hole.unwrap_or_else(|| panic!("{trace:?}"));
        assert_eq!(hole.after_ttl, 1);
        assert!(
            hole.largest_passed <= 1400 && hole.smallest_lost > 1400,
            "{hole:?}"
        );
    }
}
