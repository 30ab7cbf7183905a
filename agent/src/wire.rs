//! Conversion of the agent's domain types to the wire contract: the one
//! place where `vantage_proto` types are built.

use std::time::Duration;

use vantage_proto::v1 as pb;

use crate::probe::{Outcome, ProbeResult, Timings};

fn micros(d: Option<Duration>) -> Option<u64> {
    d.map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
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
    }
}

/// The wire form of one result.
pub fn result_to_proto(r: &ProbeResult) -> pb::ProbeResult {
    pb::ProbeResult {
        seq: r.seq,
        started_at: Some(prost_types::Timestamp {
            seconds: r.started_at.timestamp(),
            nanos: i32::try_from(r.started_at.timestamp_subsec_nanos()).unwrap_or(0),
        }),
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
        dialed_addr: r.dialed.map(|a| a.to_string()).unwrap_or_default(),
        local_ip: r.local_ip.map(|a| a.to_string()).unwrap_or_default(),
        egress_ip: r.egress_ip.map(|a| a.to_string()).unwrap_or_default(),
        timings: Some(timings(&r.timings)),
        headers: r.headers.clone().into_iter().collect(),
    }
}
