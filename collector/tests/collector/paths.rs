//! Where on the path, with real processes and real packets: agents run in
//! network namespaces made by the test, each region behind routers of its
//! own; one region's router answers the target port itself with a 502 (a
//! transparent proxy: a real nginx, behind an nftables redirect). The
//! detector opens an incident for that region's egress, its confirmation
//! probes trace the inside and outside vantages' paths, and the incident
//! (its evidence, its page, its JSON as the sinks send it) names the hop
//! where the failing paths part from the healthy ones.
//!
//! ```text
//! east (10.1.0.2, .3) ── r1 ══ r1b ───── t   r1 answers :80 with 502, or
//!                                            ══ is a 1400-byte black hole
//! west (10.2.0.2, .3) ── r2a ── r2b ──── t
//! eu   (10.3.0.2, .3) ── r3 ──────────── t   t: nginx on 10.99.0.1:80
//! ```
//!
//! The agents reach the collector (on the test's loopback) through a relay
//! on their namespace's loopback; nothing leaves loopback or the lab.

use std::time::Duration;

use sqlx::PgPool;
use vantage_testkit::netns::{Lab, Ns, Relay};

use crate::rig::{AgentProcess, Fleet};

struct Regions {
    lab: Lab,
    east: Ns,
    west: Ns,
    eu: Ns,
    r1: Ns,
    r1b: Ns,
    t: Ns,
}

/// The three regions; `east_mtu`: the MTU of the link between r1 and r1b.
fn regions(east_mtu: Option<u32>) -> Regions {
    let mut lab = Lab::new().unwrap();
    let east = lab.host("east").unwrap();
    let west = lab.host("west").unwrap();
    let eu = lab.host("eu").unwrap();
    let r1 = lab.router("r1").unwrap();
    let r1b = lab.router("r1b").unwrap();
    let r2a = lab.router("r2a").unwrap();
    let r2b = lab.router("r2b").unwrap();
    let r3 = lab.router("r3").unwrap();
    let t = lab.host("t").unwrap();
    let links: [(&Ns, &[&str], &Ns, &[&str]); 8] = [
        (
            &east,
            &["10.1.0.2/24", "10.1.0.3/24"],
            &r1,
            &["10.1.0.1/24"],
        ),
        (&r1, &["10.7.0.1/24"], &r1b, &["10.7.0.2/24"]),
        (&r1b, &["10.9.1.1/24"], &t, &["10.9.1.2/24"]),
        (
            &west,
            &["10.2.0.2/24", "10.2.0.3/24"],
            &r2a,
            &["10.2.0.1/24"],
        ),
        (&r2a, &["10.8.0.1/24"], &r2b, &["10.8.0.2/24"]),
        (&r2b, &["10.9.2.1/24"], &t, &["10.9.2.2/24"]),
        (&eu, &["10.3.0.2/24", "10.3.0.3/24"], &r3, &["10.3.0.1/24"]),
        (&r3, &["10.9.3.1/24"], &t, &["10.9.3.2/24"]),
    ];
    for (a, a_addrs, b, b_addrs) in links {
        let mtu = (a == &r1 && b == &r1b).then_some(east_mtu).flatten();
        lab.link(a, a_addrs, b, b_addrs, mtu).unwrap();
    }
    lab.address(&t, "10.99.0.1/32").unwrap();
    for (ns, to, via) in [
        (&east, "default", "10.1.0.1"),
        (&west, "default", "10.2.0.1"),
        (&eu, "default", "10.3.0.1"),
        (&r1, "10.99.0.1/32", "10.7.0.2"),
        (&r1b, "10.99.0.1/32", "10.9.1.2"),
        (&r1b, "10.1.0.0/24", "10.7.0.1"),
        (&r2a, "10.99.0.1/32", "10.8.0.2"),
        (&r2b, "10.99.0.1/32", "10.9.2.2"),
        (&r2b, "10.2.0.0/24", "10.8.0.1"),
        (&r3, "10.99.0.1/32", "10.9.3.2"),
        (&t, "10.1.0.0/24", "10.9.1.1"),
        (&t, "10.2.0.0/24", "10.9.2.1"),
        (&t, "10.3.0.0/24", "10.9.3.1"),
    ] {
        lab.route(ns, to, via).unwrap();
    }
    Regions {
        lab,
        east,
        west,
        eu,
        r1,
        r1b,
        t,
    }
}

/// A collector with a fast detector, and an agent per region running
/// `check` from two vantages (its region's .2 and .3), `agent_extra`
/// added to each config, reaching the collector through a relay.
async fn fleet_in(
    pool: PgPool,
    net: &Regions,
    check: &str,
    agent_extra: &str,
) -> (Fleet, Vec<AgentProcess>, Vec<Relay>) {
    let fleet = Fleet::start(
        pool,
        &[("east", "us-east"), ("west", "us-west"), ("eu", "eu")],
        "[detector]\ninterval = \"1s\"\nwindow = \"60s\"\nresolve_quiet = \"5s\"\n",
    )
    .await;
    let mut relays = Vec::new();
    let mut agents = Vec::new();
    for (id, ns, prefix) in [
        ("east", &net.east, "10.1.0"),
        ("west", &net.west, "10.2.0"),
        ("eu", &net.eu, "10.3.0"),
    ] {
        let extra = format!(
            "[[vantage]]\nname = \"v1\"\nsource_ip = \"{prefix}.2\"\n\
             [[vantage]]\nname = \"v2\"\nsource_ip = \"{prefix}.3\"\n{agent_extra}"
        );
        let relay = net.lab.relay(ns, fleet.grpc).unwrap();
        agents.push(fleet.start_agent_in_netns(id, ns.name(), relay.addr, &extra, check));
        relays.push(relay);
    }
    (fleet, agents, relays)
}

#[sqlx::test(migrations = false)]
async fn an_incident_carries_the_paths_and_names_the_hop_where_they_part(pool: PgPool) {
    let net = regions(None);
    let site = net
        .lab
        .nginx(
            &net.t,
            &["10.99.0.1:80"],
            "location / { return 200 \"shop\\n\"; }",
        )
        .unwrap();
    // r1 takes every connection to port 80 for itself and answers 502.
    let interceptor = net
        .lab
        .nginx(
            &net.r1,
            &["10.1.0.1:8080"],
            "location / { return 502 \"<html><body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>\\n\"; }",
        )
        .unwrap();
    net.lab
        .nft(
            &net.r1,
            "table ip intercept {
               chain pre {
                 type nat hook prerouting priority -100;
                 iifname \"l1b\" tcp dport 80 redirect to :8080
               }
             }",
        )
        .unwrap();

    let (fleet, agents, relays) = fleet_in(
        pool,
        &net,
        "[[check]]\nname = \"shop\"\nurl = \"http://10.99.0.1/\"\ninterval = \"4s\"\ntimeout = \"2s\"\n",
        "",
    )
    .await;
    fleet
        .wait_for(
            "an incident with traced paths",
            "SELECT count(*) FROM incidents WHERE evidence ? 'paths'",
            1,
            Duration::from_secs(90),
        )
        .await;

    // The evidence: the failing (east) paths all pass r1, no healthy one
    // does, and the port answers there, before the destination.
    let (dimension, value, evidence): (String, String, serde_json::Value) =
        sqlx::query_as("SELECT dimension, value, evidence FROM incidents ORDER BY id LIMIT 1")
            .fetch_one(&fleet.pool)
            .await
            .unwrap();
    assert!(
        (dimension == "region" && value == "us-east")
            || (dimension == "egress_prefix" && value.starts_with("10.1.0.")),
        "{dimension} {value}"
    );
    let paths = &evidence["paths"];
    assert_eq!(paths["divergent_hop"]["address"], "10.1.0.1", "{paths}");
    assert_eq!(paths["divergent_hop"]["ttl"], 1, "{paths}");
    assert_eq!(paths["port_answered_at"]["ttl"], 1, "{paths}");
    let summary = paths["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("the 2 failing vantages' paths all pass 10.1.0.1 (hop 1); none of the")
            && summary
                .contains("the target port answers at hop 1 (10.1.0.1), before the destination"),
        "{summary}"
    );

    // Stored: each traced vantage's path, linked to its confirmation
    // result; the divergence view says the same.
    let divergent: Vec<(String, i16)> = sqlx::query_as(
        "SELECT DISTINCT host(address), ttl FROM path_divergence WHERE divergent ORDER BY 1",
    )
    .fetch_all(&fleet.pool)
    .await
    .unwrap();
    assert!(divergent.contains(&("10.1.0.1".into(), 1)), "{divergent:?}");

    // What the sinks send and the JSON of the incident carry the line.
    let http = fleet.collector_http.unwrap();
    vantage_service::install_crypto_provider();
    let json: serde_json::Value = reqwest::Client::new()
        .get(format!("http://{http}/incidents/1"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // (Later passes may have counted more traces since.)
    let served = json["path_summary"].as_str().unwrap_or_default();
    assert!(
        served.starts_with("the 2 failing vantages' paths all pass 10.1.0.1 (hop 1)"),
        "{:?}",
        json.get("path_summary")
    );

    // The page draws the paths side by side, the divergent hop marked.
    let page = reqwest::Client::new()
        .get(format!("http://{http}/incidents/1"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("<h2>Paths</h2>"), "{page}");
    let drawn = page.split("<h2>Paths</h2>").nth(1).unwrap();
    for vantage in ["east/v1", "east/v2"] {
        assert!(
            drawn.contains(vantage),
            "{vantage} missing from the paths: {drawn}"
        );
    }
    // The outside vantages the detector chose (a matched set of the other
    // regions), as healthy columns.
    assert!(
        drawn.matches("<th class=\"healthy\">").count() >= 2,
        "{drawn}"
    );
    assert_eq!(
        drawn.matches("<th class=\"failing\">").count(),
        2,
        "{drawn}"
    );
    assert!(
        page.contains("class=\"hop divergent intercepted\"") && page.contains("diverges"),
        "{page}"
    );
    // Each healthy column drawn is a west or eu vantage (the detector picks
    // which), and its own routers are drawn: west's 3-hop path passes
    // 10.8.0.2, eu's 10.3.0.1.
    let healthy: Vec<&str> = drawn
        .split("<th class=\"healthy\">")
        .skip(1)
        .map(|column| column.split('/').next().unwrap_or_default())
        .collect();
    for agent in &healthy {
        let router = match *agent {
            "west" => "10.8.0.2",
            "eu" => "10.3.0.1",
            other => panic!("a healthy column for {other}: {drawn}"),
        };
        assert!(
            drawn.contains(router),
            "{agent}'s path through {router} is drawn: {drawn}"
        );
    }
    drop((agents, relays, site, interceptor));
}

/// A path-MTU black hole on one region's way: the link between r1 and r1b
/// carries 1400 bytes and both routers drop the ICMP that would say so.
/// Small responses pass; the site's large page stalls for that region's
/// vantages only. The detector opens a connection-level incident for the
/// region, and its confirmation probes' paths name the black hole and the
/// path MTU the failing vantages share.
#[sqlx::test(migrations = false)]
async fn an_mtu_black_hole_on_one_region_is_named_by_its_paths(pool: PgPool) {
    let net = regions(Some(1400));
    let site = net.lab.nginx(&net.t, &["10.99.0.1:80"], "").unwrap();
    std::fs::write(site.www().join("large"), vec![b'L'; 200_000]).unwrap();
    for router in [&net.r1, &net.r1b] {
        net.lab
            .nft(
                router,
                "table ip blackhole {
                   chain out {
                     type filter hook output priority 0;
                     icmp type destination-unreachable icmp code frag-needed drop
                   }
                 }",
            )
            .unwrap();
    }
    let (fleet, agents, relays) = fleet_in(
        pool,
        &net,
        "[[check]]\nname = \"shop\"\nurl = \"http://10.99.0.1/large\"\ninterval = \"4s\"\ntimeout = \"2s\"\n",
        "[path]\nhop_timeout = \"500ms\"\nmax_duration = \"20s\"\n",
    )
    .await;
    fleet
        .wait_for(
            "an incident whose paths name a black hole",
            "SELECT count(*) FROM incidents WHERE evidence->'paths'->>'black_hole' = 'true'",
            1,
            Duration::from_secs(120),
        )
        .await;
    let (pattern, dimension, value, evidence): (String, String, String, serde_json::Value) =
        sqlx::query_as(
            "SELECT pattern, dimension, value, evidence FROM incidents
             WHERE evidence->'paths'->>'black_hole' = 'true' ORDER BY id LIMIT 1",
        )
        .fetch_one(&fleet.pool)
        .await
        .unwrap();
    assert_eq!(pattern, "connection");
    assert!(
        (dimension == "region" && value == "us-east")
            || (dimension == "egress_prefix" && value.starts_with("10.1.0.")),
        "{dimension} {value}"
    );
    // The failing probes stalled, not timed out.
    let stalled: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM probe_results WHERE outcome = 'stalled' AND host(local_ip) LIKE '10.1.0.%'",
    )
    .fetch_one(&fleet.pool)
    .await
    .unwrap();
    assert!(stalled > 0);
    let paths = &evidence["paths"];
    let mtu = paths["path_mtu_below"]
        .as_i64()
        .unwrap_or_else(|| panic!("{paths}"));
    // The search brackets the MTU to 8 bytes: at most 1400 crosses.
    assert!((1392..=1400).contains(&mtu), "{paths}");
    let summary = paths["summary"].as_str().unwrap();
    assert!(
        summary.contains("large packets vanish on the way (a path-MTU black hole)")
            && summary.contains(&format!(
                "path MTU at most {mtu} on the failing paths, 1500 on the healthy ones"
            )),
        "{summary}"
    );
    drop((agents, relays, site));
}
