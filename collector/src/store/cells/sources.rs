//! Each dimension's source ([`crate::detect::dimensions`]) computed from a
//! result as the ingest received it, for the cells it writes: the same
//! text PostgreSQL's SQL expression gives over the stored row (the views
//! and the evidence queries use those), addresses printed as PostgreSQL's
//! `host(inet)` prints them.

use std::net::{IpAddr, Ipv4Addr};

use crate::detect::dimensions::{
    AGENT, DIALLED, EDGE, EGRESS, GATEWAY, HTTP_VERSION, PROXY, REGION, RESOLVER, RESOLVER_EGRESS,
    VANTAGE,
};
use crate::store::StoredResult;

/// One result as the collector received it, with its stream's identity.
pub struct FedRow<'a> {
    pub agent_id: &'a str,
    /// The stream's region (a result may name its vantage's own).
    pub region: &'a str,
    pub result: &'a StoredResult,
}

impl<'a> FedRow<'a> {
    /// The `region` column as stored.
    pub fn region(&self) -> &'a str {
        self.result.region.as_deref().unwrap_or(self.region)
    }
}

/// A source's value for one result as the collector received it.
pub type SourceFn = for<'a> fn(&FedRow<'a>) -> Option<Value<'a>>;

/// A source's value before it is text: borrowed from the result, or the
/// parts of its text, so that a batch's results are grouped without
/// making a string for each (the text is made once per cell).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Value<'a> {
    Text(&'a str),
    /// `host(inet)` of an address.
    Host(IpAddr),
    /// `agent_id || '/' || vantage`.
    Joined(&'a str, &'a str),
}

impl Value<'_> {
    /// The text PostgreSQL's expression gives.
    pub fn text(&self) -> String {
        match self {
            Self::Text(s) => (*s).to_owned(),
            Self::Host(ip) => pg_host(*ip),
            Self::Joined(a, b) => format!("{a}/{b}"),
        }
    }
}

/// The Rust mirror of the SQL source `sql` (one of [`sources`]); `None`
/// for a source that has none.
pub fn source_fn(sql: &str) -> Option<SourceFn> {
    let f: SourceFn = match sql {
        REGION => |r| Some(Value::Text(r.region())),
        PROXY => |r| Some(Value::Text(r.result.proxy.as_deref().unwrap_or("direct"))),
        EGRESS => |r| probe_egress(r.result).map(Value::Host),
        RESOLVER => |r| r.result.resolver.as_deref().map(Value::Text),
        RESOLVER_EGRESS => |r| r.result.resolver_egress_ip.map(Value::Host),
        DIALLED => |r| r.result.dialed.map(|a| Value::Host(a.ip())),
        EDGE => |r| r.result.edge_location.as_deref().map(Value::Text),
        HTTP_VERSION => |r| r.result.http_version.as_deref().map(Value::Text),
        AGENT => |r| Some(Value::Text(r.agent_id)),
        VANTAGE => |r| Some(Value::Joined(r.agent_id, &r.result.vantage)),
        GATEWAY => |r| r.result.gateway.as_deref().map(Value::Text),
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

/// PostgreSQL's `host(inet)`: as Rust prints addresses, but PostgreSQL
/// prints an IPv6 address whose first 80 bits are zero with a dotted IPv4
/// tail when the next 16 are all ones (`::ffff:0.0.0.1`) or zero with a
/// non-zero word after them (`::0.1.0.0`), and Rust only the former.
pub fn pg_host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let tail = Ipv4Addr::from((u128::from(v6) & 0xffff_ffff) as u32);
            if s[..5] == [0; 5] && s[5] == 0xffff {
                format!("::ffff:{tail}")
            } else if s[..6] == [0; 6] && s[6] != 0 {
                format!("::{tail}")
            } else {
                v6.to_string()
            }
        }
        IpAddr::V4(v4) => v4.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_print_as_postgresql_prints_them() {
        // What PostgreSQL 15.20's host(inet) printed for each.
        for (ip, pg) in [
            ("192.0.2.1", "192.0.2.1"),
            ("2001:db8::1", "2001:db8::1"),
            ("::2", "::2"),
            ("::0.1.0.0", "::0.1.0.0"),
            ("::1.2.3.4", "::1.2.3.4"),
            ("::ffff:0:1", "::ffff:0.0.0.1"),
            ("::ffff:1.2.3.4", "::ffff:1.2.3.4"),
            ("::1", "::1"),
            ("::", "::"),
            ("::0.0.1.0", "::100"),
            ("::ffff:0.0.0.0", "::ffff:0.0.0.0"),
            ("::1:0:0:0", "::1:0:0:0"),
        ] {
            assert_eq!(pg_host(ip.parse().unwrap()), pg, "{ip}");
        }
    }
}
