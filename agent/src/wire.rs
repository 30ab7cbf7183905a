//! Conversion of the agent's domain types to the wire contract: the one
//! place where `vantage_proto` types are built.

use std::time::Duration;

use chrono::{DateTime, Utc};
use vantage_proto::v1 as pb;

use crate::probe::path::{PathEnd, PathTrace, Reply};
use crate::probe::{Hop, Outcome, ProbeResult, Timings, TlsInfo};

fn micros(d: Option<Duration>) -> Option<u64> {
    d.map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

fn text<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

impl From<Outcome> for pb::Outcome {
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::Ok => Self::Ok,
            Outcome::Dns => Self::Dns,
            Outcome::Connect => Self::Connect,
            Outcome::Tls => Self::Tls,
            Outcome::Timeout => Self::Timeout,
            Outcome::Http => Self::Http,
            Outcome::Other => Self::Other,
            Outcome::Protocol => Self::Protocol,
            Outcome::CertExpiry => Self::CertExpiry,
            Outcome::Proxy => Self::Proxy,
            Outcome::Stalled => Self::Stalled,
            Outcome::BodyMatch => Self::BodyMatch,
        }
    }
}

fn timings(t: &Timings) -> pb::Timings {
    pb::Timings {
        dns_us: micros(t.dns),
        connect_us: micros(t.connect),
        tls_us: micros(t.tls),
        ttfb_us: micros(t.ttfb),
        total_us: micros(t.total),
        proxy_us: micros(t.proxy),
        transfer_us: micros(t.transfer),
    }
}

fn tls(t: &TlsInfo) -> pb::Tls {
    pb::Tls {
        version: t.version.clone(),
        alpn: t.alpn.clone().unwrap_or_default(),
        cipher: t.cipher.clone(),
        cert_subject: t
            .cert
            .as_ref()
            .map(|c| c.subject.clone())
            .unwrap_or_default(),
        cert_issuer: t
            .cert
            .as_ref()
            .map(|c| c.issuer.clone())
            .unwrap_or_default(),
        cert_not_after: t.cert.as_ref().map(|c| timestamp(c.not_after)),
    }
}

fn hop(h: &Hop) -> pb::Hop {
    pb::Hop {
        url: h.url.clone(),
        status: h.status.map(u32::from),
        dialed_addr: text(h.dialed),
        timings: Some(timings(&h.timings)),
    }
}

/// The wire form of one result.
pub fn result_to_proto(r: &ProbeResult) -> pb::ProbeResult {
    pb::ProbeResult {
        seq: r.seq,
        started_at: Some(timestamp(r.started_at)),
        check: r.check.clone(),
        url: r.url.clone(),
        method: r.method.clone(),
        outcome: pb::Outcome::from(r.outcome) as i32,
        message: r.message.clone(),
        http_status: r.http_status.map(u32::from),
        http_version: r.http_version.clone().unwrap_or_default(),
        resolver: r.resolver.clone(),
        resolved: r
            .resolved
            .iter()
            .map(|a| pb::ResolvedAddress {
                ip: a.ip.to_string(),
                ttl_seconds: a.ttl_seconds,
            })
            .collect(),
        dialed_addr: text(r.dialed),
        local_ip: text(r.local_ip),
        egress_ip: text(r.egress_ip),
        timings: Some(timings(&r.timings)),
        headers: r.headers.clone().into_iter().collect(),
        vantage: r.vantage.clone(),
        region: r.region.clone().unwrap_or_default(),
        proxy: r.proxy.clone().unwrap_or_default(),
        proxy_status: r.proxy_status.map(u32::from),
        dns_rcode: r.dns_rcode.clone().unwrap_or_default(),
        resolver_egress_ip: text(r.resolver_identity.egress_ip),
        resolver_nsid: r.resolver_identity.nsid.clone().unwrap_or_default(),
        resolver_identity_error: r.resolver_identity.error.clone(),
        echo_ip: text(r.echo_ip),
        tls: r.tls.as_ref().map(tls),
        tls_insecure: r.tls_insecure,
        body_bytes: r.body_bytes,
        body_sha256: r.body_sha256.clone().unwrap_or_default(),
        body_truncated: r.body_truncated,
        gateway: r.gateway.clone().unwrap_or_default(),
        edge_location: r.edge_location.clone().unwrap_or_default(),
        hops: r.hops.iter().map(hop).collect(),
        interval_ms: r
            .interval
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        proxy_ip: text(r.proxy_ip),
        check_version: r.check_version.unwrap_or(0),
        request_id: r.request_id.unwrap_or(0),
        path: r.path.as_ref().map(path_trace),
    }
}

impl From<Reply> for pb::HopReply {
    fn from(r: Reply) -> Self {
        match r {
            Reply::TimeExceeded => Self::TimeExceeded,
            Reply::PortUnreachable => Self::PortUnreachable,
            Reply::NetUnreachable => Self::NetUnreachable,
            Reply::HostUnreachable => Self::HostUnreachable,
            Reply::Prohibited => Self::Prohibited,
            Reply::FragNeeded => Self::FragNeeded,
            Reply::OtherIcmp => Self::OtherIcmp,
            Reply::TcpOpen => Self::TcpOpen,
            Reply::TcpReset => Self::TcpReset,
        }
    }
}

impl From<PathEnd> for pb::PathEnd {
    fn from(e: PathEnd) -> Self {
        match e {
            PathEnd::Reached => Self::Reached,
            PathEnd::Unreachable => Self::Unreachable,
            PathEnd::MaxHops => Self::MaxHops,
            PathEnd::TimedOut => Self::TimedOut,
            PathEnd::Error => Self::Error,
        }
    }
}

/// The wire form of a trace.
pub fn path_trace(t: &PathTrace) -> pb::PathTrace {
    let destination = (!t.target.destination.ip().is_unspecified()).then_some(t.target.destination);
    pb::PathTrace {
        protocol: t.protocol.text().to_owned(),
        source_ip: text(t.source),
        destination_ip: text(destination.map(|d| d.ip())),
        destination_port: destination.map_or(0, |d| u32::from(d.port())),
        via_proxy: t.target.via_proxy,
        probes: t
            .probes
            .iter()
            .map(|p| pb::PathProbe {
                ttl: u32::from(p.ttl),
                from: text(p.from),
                rtt_us: micros(p.rtt),
                reply: p
                    .reply
                    .map_or(pb::HopReply::Unspecified, pb::HopReply::from)
                    as i32,
                size: p.size,
            })
            .collect(),
        end: pb::PathEnd::from(t.end) as i32,
        error: t.error.clone().unwrap_or_default(),
        path_mtu: t.path_mtu,
        mtu_from: text(t.mtu_from),
        black_hole_after_ttl: t.black_hole.map(|h| u32::from(h.after_ttl)),
        black_hole_largest_passed: t.black_hole.map(|h| h.largest_passed),
        black_hole_smallest_lost: t.black_hole.map(|h| h.smallest_lost),
        port_answered_at: t.port_answered_at.map(u32::from),
        port_reached: t.port.reached,
        port_rtt_us: micros(t.port.rtt),
        port_error: t.port.error.clone().unwrap_or_default(),
        duration_us: micros(Some(t.duration)).unwrap_or(0),
    }
}
