//! The Rust mirror of each dimension's SQL source
//! ([`crate::detect::dimensions`]), for the results the collector hands
//! its own detector: the same text PostgreSQL's expression gives, or
//! `Unfaithful` where it might differ (the result is then read back).

use std::net::IpAddr;

use super::FedRow;
use crate::detect::dimensions::{
    AGENT, DIALLED, EDGE, EGRESS, GATEWAY, HTTP_VERSION, PROXY, REGION, RESOLVER, RESOLVER_EGRESS,
    VANTAGE,
};
use crate::store::StoredResult;

/// A source's value for one result as the collector received it.
pub type SourceFn = for<'a> fn(&FedRow<'a>) -> SourceValue<'a>;

/// A source's value, or `Unfaithful` where the Rust value might not be
/// byte for byte what PostgreSQL prints (the result is then read from the
/// database instead).
pub type SourceValue<'a> = Result<Option<Value<'a>>, Unfaithful>;

/// A source's value before it is text: borrowed from the result, or the
/// parts of its text, so that a batch's results are grouped without
/// making a string for each (the text is made once per cell).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Value<'a> {
    Text(&'a str),
    /// `host(inet)` of an address PostgreSQL prints as Rust does.
    Host(IpAddr),
    /// `agent_id || '/' || vantage`.
    Joined(&'a str, &'a str),
}

impl Value<'_> {
    /// The text PostgreSQL's expression gives.
    pub fn text(&self) -> String {
        match self {
            Self::Text(s) => (*s).to_owned(),
            Self::Host(ip) => ip.to_string(),
            Self::Joined(a, b) => format!("{a}/{b}"),
        }
    }
}

/// The Rust value might differ from the SQL one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unfaithful;

/// The Rust mirror of the SQL source `sql` (one of [`sources`]); `None`
/// for a source that has none.
pub fn source_fn(sql: &str) -> Option<SourceFn> {
    let f: SourceFn = match sql {
        REGION => |r| Ok(Some(Value::Text(r.region()))),
        PROXY => |r| {
            Ok(Some(Value::Text(
                r.result.proxy.as_deref().unwrap_or("direct"),
            )))
        },
        EGRESS => |r| host(probe_egress(r.result)),
        RESOLVER => |r| Ok(r.result.resolver.as_deref().map(Value::Text)),
        RESOLVER_EGRESS => |r| host(r.result.resolver_egress_ip),
        DIALLED => |r| host(r.result.dialed.map(|a| a.ip())),
        EDGE => |r| Ok(r.result.edge_location.as_deref().map(Value::Text)),
        HTTP_VERSION => |r| Ok(r.result.http_version.as_deref().map(Value::Text)),
        AGENT => |r| Ok(Some(Value::Text(r.agent_id))),
        VANTAGE => |r| Ok(Some(Value::Joined(r.agent_id, &r.result.vantage))),
        GATEWAY => |r| Ok(r.result.gateway.as_deref().map(Value::Text)),
        _ => return None,
    };
    Some(f)
}

/// The `probe_egress` SQL function: the echoed address, else the proxy's,
/// else the local address when it is public, else the egress address the
/// collector saw.
fn probe_egress(r: &StoredResult) -> Option<IpAddr> {
    if r.echo_ip.is_some() {
        return r.echo_ip;
    }
    if r.proxy.is_some() {
        return r.proxy_ip;
    }
    match r.local_ip {
        Some(local) if !is_private(local) => Some(local),
        _ => r.egress_ip,
    }
}

/// The ranges `probe_egress` treats as private: 10/8, 172.16/12,
/// 192.168/16, 100.64/10, 169.254/16, fc00::/7, fe80::/10 (within one
/// family, as PostgreSQL compares inet).
fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            a == 10
                || (a == 172 && b & 0xf0 == 16)
                || (a == 192 && b == 168)
                || (a == 100 && b & 0xc0 == 64)
                || (a == 169 && b == 254)
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            first & 0xfe00 == 0xfc00 || first & 0xffc0 == 0xfe80
        }
    }
}

/// PostgreSQL's `host(inet)`. IPv6 addresses whose first 80 bits are zero
/// (IPv4-mapped and IPv4-compatible ones) are printed with a dotted tail
/// by PostgreSQL in cases Rust does not follow: those are `Unfaithful`.
fn host(ip: Option<IpAddr>) -> SourceValue<'static> {
    match ip {
        None => Ok(None),
        Some(IpAddr::V6(v6)) if v6.segments()[..5] == [0; 5] => Err(Unfaithful),
        Some(ip) => Ok(Some(Value::Host(ip))),
    }
}
