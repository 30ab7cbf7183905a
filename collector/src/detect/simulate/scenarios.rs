//! The fault scenarios of the field notes on the standard fleet, each with
//! the incident it should page.

use std::net::IpAddr;

use super::{FaultModel, SimPath, coin, one_path};

/// A fault scenario: targets, when the fault is on, what it does, and
/// which incident it should page.
pub struct Scenario {
    pub name: &'static str,
    pub targets: Vec<(String, Vec<SimPath>)>,
    /// The fault is on in rounds `[start, end)`.
    pub start: u64,
    pub end: u64,
    /// Whether a probe fails while the fault is on.
    pub fails: Box<FaultModel<'static>>,
    /// (target or `*`, dimension, value) the page should name; `None`:
    /// nothing should open.
    pub expect: Option<(String, &'static str, String)>,
}

fn resolver(n: u8) -> String {
    format!("udp://127.0.0.{n}:53")
}

fn path(resolver_n: u8, address: [u8; 4]) -> SimPath {
    SimPath {
        resolver: resolver(resolver_n),
        address: IpAddr::from(address),
    }
}

pub(super) fn in_net(ip: IpAddr, net: &str) -> bool {
    net.parse::<ipnet::IpNet>().is_ok_and(|n| n.contains(&ip))
}

/// The scenarios of the field notes, on the standard fleet, the fault
/// starting at round 20 and ending at round 40.
pub fn scenarios() -> Vec<Scenario> {
    let one = |name: &str| vec![(name.to_owned(), one_path())];
    let (start, end) = (20, 40);
    vec![
        Scenario {
            name: "WAF rule on one egress /24 (2 of 4 us-east vantages)",
            targets: one("waf"),
            start,
            end,
            fails: Box::new(|_, _, v, _| in_net(v.egress, "127.0.2.0/24")),
            expect: Some(("waf".into(), "egress_prefix", "127.0.2.0/24".into())),
        },
        Scenario {
            name: "regional edge (us-west, 3 vantages in 3 /24s)",
            targets: one("region"),
            start,
            end,
            fails: Box::new(|_, _, v, _| v.region == "us-west"),
            expect: Some(("region".into(), "region", "us-west".into())),
        },
        Scenario {
            name: "stale resolver (one of two resolvers answers the old address)",
            targets: vec![(
                "stale".into(),
                vec![path(53, [127, 0, 0, 20]), path(54, [127, 0, 0, 21])],
            )],
            start,
            end,
            fails: Box::new(|_, _, _, p| p.address == IpAddr::from([127, 0, 0, 21])),
            expect: Some(("stale".into(), "resolver", resolver(54))),
        },
        Scenario {
            name: "one bad address among two A records (dial each)",
            targets: vec![(
                "records".into(),
                vec![path(53, [127, 0, 0, 30]), path(53, [127, 0, 0, 31])],
            )],
            start,
            end,
            fails: Box::new(|_, _, _, p| p.address == IpAddr::from([127, 0, 0, 31])),
            expect: Some(("records".into(), "address", "127.0.0.31".into())),
        },
        Scenario {
            name: "forward proxy answers 502 to CONNECT (5 targets)",
            targets: (1..=5).map(|i| (format!("site{i}"), one_path())).collect(),
            start,
            end,
            fails: Box::new(|_, _, v, _| v.proxy.as_deref() == Some("http://127.0.0.1:8881")),
            expect: Some(("*".into(), "proxy", "http://127.0.0.1:8881".into())),
        },
        Scenario {
            name: "global outage",
            targets: one("global"),
            start,
            end,
            fails: Box::new(|_, _, _, _| true),
            expect: Some(("global".into(), "global", "*".into())),
        },
        Scenario {
            name: "WAF rule failing half the probes of its /24",
            targets: one("partial"),
            start,
            end,
            fails: Box::new(|r, t, v, p| {
                in_net(v.egress, "127.0.2.0/24") && coin(0.5, 7, r, t, v, p)
            }),
            expect: Some(("partial".into(), "egress_prefix", "127.0.2.0/24".into())),
        },
        Scenario {
            name: "fault spreads from one /24 to the whole region (re-explained)",
            targets: one("spread"),
            start,
            end,
            fails: Box::new(move |r, _, v, _| {
                in_net(v.egress, "127.0.2.0/24") || (r >= start + 6 && v.region == "us-east")
            }),
            expect: Some(("spread".into(), "region", "us-east".into())),
        },
    ]
}
