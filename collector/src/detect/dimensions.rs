//! The dimensions a failure can follow: the one table that says what each
//! is and how its value is read from a probe result. Adding a dimension is
//! one entry in [`DIMENSIONS`]; the window query, the statistics, the
//! explanation text and `v_segment_rates` all follow from it.

use std::net::IpAddr;

use ipnet::IpNet;

use super::asn::AsnTable;

// The SQL sources: each is computed in Rust by the ingest for the
// detector's cells (`store::cells::sources`), and held to give the same
// text by the cells test.
pub const REGION: &str = "region";
/// The forward proxy's name, or `direct`.
pub const PROXY: &str = "COALESCE(proxy, 'direct')";
/// The address a probe left from, as the internet saw it (see the
/// `probe_egress` SQL function in the migrations).
pub const EGRESS: &str = "host(probe_egress(echo_ip, local_ip, proxy, proxy_ip, egress_ip))";
pub const RESOLVER: &str = "resolver";
pub const RESOLVER_EGRESS: &str = "host(resolver_egress_ip)";
/// The address the probe dialled.
pub const DIALLED: &str = "host(dialed_ip)";
pub const EDGE: &str = "edge_location";
pub const HTTP_VERSION: &str = "http_version";
pub const AGENT: &str = "agent_id";
pub const VANTAGE: &str = "agent_id || '/' || vantage";
pub const GATEWAY: &str = "gateway";

/// How a dimension's value is made from its SQL source value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Derive {
    /// The source value as is.
    Text,
    /// The source is an address; the value is its network at the configured
    /// prefix length (`/24` IPv4, `/48` IPv6 by default). Findings on such
    /// a dimension are narrowed to the most specific prefix covering every
    /// failure.
    Prefix,
    /// The source is an address; the value is its ASN and network name from
    /// the loaded IP-to-ASN table (none when no table is loaded).
    Asn,
    /// The source is an address; the value is `IPv4` or `IPv6`.
    Family,
}

/// Whether a dimension can explain failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Tested: a value of it may be the place failures follow.
    Cause,
    /// Reported on failing probes only: it is a consequence of failing
    /// (the layer that wrote an error page exists only on errors), so a
    /// test on it would always "explain" everything.
    Evidence,
}

/// One dimension.
#[derive(Debug, Clone, Copy)]
pub struct Dimension {
    /// Stable name, stored in incidents and `v_segment_rates`.
    pub name: &'static str,
    /// How the explanation text names it.
    pub label: &'static str,
    /// A text-valued SQL expression over a `probe_results` row; NULL means
    /// the probe has no value in this dimension.
    pub source: &'static str,
    pub derive: Derive,
    pub role: Role,
    /// Whether the value describes the vantage's own way to the sites
    /// (region, egress, proxy, resolver, the vantage itself...), so that
    /// it can fail for several targets at once and be one path incident.
    /// Site-side values (the address dialled, its prefix, the CDN edge)
    /// belong to one site.
    pub spans_targets: bool,
    /// A fault following this dimension is in the vantage's own path even
    /// for a single target: a forward proxy writes its own 502s.
    pub own_path: bool,
}

/// Every dimension, in the order ties are broken (earlier wins when two
/// segments explain the same failures equally well): a named proxy beats
/// the egress prefix its address falls in, and both beat the agent and the
/// vantage, which only restate where the probes came from.
pub const DIMENSIONS: &[Dimension] = &[
    Dimension {
        name: "region",
        label: "region",
        source: REGION,
        derive: Derive::Text,
        role: Role::Cause,
        spans_targets: true,
        own_path: false,
    },
    Dimension {
        name: "proxy",
        label: "proxy",
        source: PROXY,
        derive: Derive::Text,
        role: Role::Cause,
        spans_targets: true,
        own_path: true,
    },
    Dimension {
        name: "egress_prefix",
        label: "egress prefix",
        source: EGRESS,
        derive: Derive::Prefix,
        role: Role::Cause,
        spans_targets: true,
        own_path: false,
    },
    Dimension {
        name: "asn",
        label: "network",
        source: EGRESS,
        derive: Derive::Asn,
        role: Role::Cause,
        spans_targets: true,
        own_path: false,
    },
    Dimension {
        name: "resolver",
        label: "resolver",
        source: RESOLVER,
        derive: Derive::Text,
        role: Role::Cause,
        spans_targets: true,
        own_path: false,
    },
    Dimension {
        name: "resolver_egress",
        label: "resolver egress address",
        source: RESOLVER_EGRESS,
        derive: Derive::Text,
        role: Role::Cause,
        spans_targets: true,
        own_path: false,
    },
    Dimension {
        name: "address",
        label: "address",
        source: DIALLED,
        derive: Derive::Text,
        role: Role::Cause,
        spans_targets: false,
        own_path: false,
    },
    Dimension {
        name: "address_prefix",
        label: "address prefix",
        source: DIALLED,
        derive: Derive::Prefix,
        role: Role::Cause,
        spans_targets: false,
        own_path: false,
    },
    Dimension {
        name: "edge_location",
        label: "edge location",
        source: EDGE,
        derive: Derive::Text,
        role: Role::Cause,
        spans_targets: false,
        own_path: false,
    },
    Dimension {
        name: "ip_family",
        label: "IP family",
        source: DIALLED,
        derive: Derive::Family,
        role: Role::Cause,
        spans_targets: true,
        own_path: false,
    },
    Dimension {
        name: "http_version",
        label: "HTTP version",
        source: HTTP_VERSION,
        derive: Derive::Text,
        role: Role::Cause,
        spans_targets: true,
        own_path: false,
    },
    Dimension {
        name: "agent",
        label: "agent",
        source: AGENT,
        derive: Derive::Text,
        role: Role::Cause,
        spans_targets: true,
        own_path: false,
    },
    Dimension {
        name: "vantage",
        label: "vantage",
        source: VANTAGE,
        derive: Derive::Text,
        role: Role::Cause,
        spans_targets: true,
        own_path: false,
    },
    Dimension {
        name: "gateway",
        label: "gateway",
        source: GATEWAY,
        derive: Derive::Text,
        role: Role::Evidence,
        spans_targets: false,
        own_path: false,
    },
];

/// The distinct SQL sources of [`DIMENSIONS`], in first-use order; the
/// window query selects each once.
pub fn sources() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for d in DIMENSIONS {
        if !out.contains(&d.source) {
            out.push(d.source);
        }
    }
    out
}

/// For each dimension, the index of its source in [`sources`].
pub fn source_index() -> Vec<usize> {
    let sources = sources();
    DIMENSIONS
        .iter()
        .map(|d| sources.iter().position(|s| *s == d.source).unwrap_or(0))
        .collect()
}

/// What derivations need besides the source value.
#[derive(Debug, Clone, Copy)]
pub struct DeriveContext<'a> {
    pub prefix_v4: u8,
    pub prefix_v6: u8,
    pub asn: &'a AsnTable,
}

impl Derive {
    /// The dimension value for a source value.
    pub fn apply(self, source: &str, ctx: &DeriveContext<'_>) -> Option<String> {
        match self {
            Self::Text => Some(source.to_owned()),
            Self::Prefix => {
                let ip: IpAddr = source.parse().ok()?;
                Some(prefix(ip, prefix_len(ip, ctx)).to_string())
            }
            Self::Asn => ctx.asn.lookup(source.parse().ok()?).map(|e| e.label()),
            Self::Family => match source.parse::<IpAddr>().ok()? {
                IpAddr::V4(_) => Some("IPv4".into()),
                IpAddr::V6(_) => Some("IPv6".into()),
            },
        }
    }
}

/// The configured prefix length for an address's family.
pub fn prefix_len(ip: IpAddr, ctx: &DeriveContext<'_>) -> u8 {
    match ip {
        IpAddr::V4(_) => ctx.prefix_v4,
        IpAddr::V6(_) => ctx.prefix_v6,
    }
}

/// The network of `ip` at `len` bits (clamped to the family's maximum).
pub fn prefix(ip: IpAddr, len: u8) -> IpNet {
    let max = match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    IpNet::new(ip, len.min(max))
        .map(|n| n.trunc())
        .unwrap_or_else(|_| IpNet::from(ip))
}

/// What the decision needs to know about a dimension.
#[derive(Debug, Clone, Copy)]
pub struct DimensionInfo {
    pub name: &'static str,
    pub role: Role,
    /// Values are IP prefixes; findings are narrowed with the prefix walk.
    pub prefix: bool,
}

/// The decision's view of the dimension table.
pub fn dimension_infos() -> Vec<DimensionInfo> {
    DIMENSIONS
        .iter()
        .map(|d| DimensionInfo {
            name: d.name,
            role: d.role,
            prefix: d.derive == Derive::Prefix,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_sources_shared() {
        let mut names: Vec<_> = DIMENSIONS.iter().map(|d| d.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DIMENSIONS.len());
        // The egress address feeds the prefix and the ASN; it is selected once.
        assert_eq!(sources().iter().filter(|s| **s == EGRESS).count(), 1);
        let idx = source_index();
        assert_eq!(idx.len(), DIMENSIONS.len());
        for (d, i) in DIMENSIONS.iter().zip(idx) {
            assert_eq!(sources()[i], d.source);
        }
    }

    #[test]
    fn derivations() {
        let asn = AsnTable::default();
        let ctx = DeriveContext {
            prefix_v4: 24,
            prefix_v6: 48,
            asn: &asn,
        };
        assert_eq!(
            Derive::Prefix.apply("203.0.113.77", &ctx).as_deref(),
            Some("203.0.113.0/24")
        );
        assert_eq!(
            Derive::Prefix.apply("2001:db8:1:2::1", &ctx).as_deref(),
            Some("2001:db8:1::/48")
        );
        assert_eq!(Derive::Family.apply("::1", &ctx).as_deref(), Some("IPv6"));
        assert_eq!(Derive::Prefix.apply("not-an-ip", &ctx), None);
        assert_eq!(Derive::Asn.apply("203.0.113.77", &ctx), None);
    }
}
