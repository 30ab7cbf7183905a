//! Conversion of wire messages into the collector's domain types: the one
//! place where incoming `vantage_proto` data is validated.

use std::net::{IpAddr, SocketAddr};

use chrono::{DateTime, Utc};
use vantage_proto::v1 as pb;

use crate::store::StoredResult;

/// A result the collector cannot store as sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("result seq {seq}: field `{field}`: {problem}")]
pub struct InvalidResult {
    pub seq: u64,
    pub field: &'static str,
    pub problem: String,
}

fn optional_ip(seq: u64, field: &'static str, s: &str) -> Result<Option<IpAddr>, InvalidResult> {
    if s.is_empty() {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|_| InvalidResult {
        seq,
        field,
        problem: format!("expected an IP address, got {s:?}"),
    })
}

fn micros(seq: u64, field: &'static str, v: Option<u64>) -> Result<Option<i64>, InvalidResult> {
    v.map(|v| {
        i64::try_from(v).map_err(|_| InvalidResult {
            seq,
            field,
            problem: format!("{v} is out of range"),
        })
    })
    .transpose()
}

/// Validates one result; `peer_ip` stands in for a missing egress address.
pub fn stored_result(r: pb::ProbeResult, peer_ip: IpAddr) -> Result<StoredResult, InvalidResult> {
    let seq = r.seq;
    let bad = |field: &'static str, problem: String| InvalidResult {
        seq,
        field,
        problem,
    };
    let seq_i64 = i64::try_from(seq)
        .ok()
        .filter(|s| *s > 0)
        .ok_or_else(|| bad("seq", "expected 1..=2^63-1".into()))?;
    let started = r
        .started_at
        .ok_or_else(|| bad("started_at", "missing".into()))?;
    let started_at: DateTime<Utc> = u32::try_from(started.nanos)
        .ok()
        .and_then(|nanos| DateTime::from_timestamp(started.seconds, nanos))
        .ok_or_else(|| bad("started_at", "not a valid timestamp".into()))?;
    let outcome = match pb::Outcome::try_from(r.outcome) {
        Ok(pb::Outcome::Ok) => "ok",
        Ok(pb::Outcome::Dns) => "dns",
        Ok(pb::Outcome::Connect) => "connect",
        Ok(pb::Outcome::Tls) => "tls",
        Ok(pb::Outcome::Timeout) => "timeout",
        Ok(pb::Outcome::Http) => "http",
        Ok(pb::Outcome::Other) => "other",
        Ok(pb::Outcome::Unspecified) | Err(_) => {
            return Err(bad("outcome", format!("unknown outcome {}", r.outcome)));
        }
    };
    let http_status = r
        .http_status
        .map(|s| {
            i16::try_from(s)
                .ok()
                .filter(|s| (100..=999).contains(s))
                .ok_or_else(|| bad("http_status", format!("{s} is not an HTTP status")))
        })
        .transpose()?;
    let resolved = r
        .resolved
        .iter()
        .map(|a| {
            a.ip.parse::<IpAddr>()
                .map(|ip| (ip, a.ttl_seconds))
                .map_err(|_| {
                    bad(
                        "resolved",
                        format!("expected an IP address, got {:?}", a.ip),
                    )
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let dialed = if r.dialed_addr.is_empty() {
        None
    } else {
        Some(r.dialed_addr.parse::<SocketAddr>().map_err(|_| {
            bad(
                "dialed_addr",
                format!("expected IP:PORT, got {:?}", r.dialed_addr),
            )
        })?)
    };
    let t = r.timings.unwrap_or_default();
    if r.check.is_empty() || r.url.is_empty() {
        return Err(bad("check/url", "must not be empty".into()));
    }
    Ok(StoredResult {
        seq: seq_i64,
        started_at,
        check: r.check,
        url: r.url,
        method: r.method,
        outcome,
        message: r.message,
        http_status,
        http_version: Some(r.http_version).filter(|s| !s.is_empty()),
        resolver: Some(r.resolver).filter(|s| !s.is_empty()),
        resolved,
        dialed,
        local_ip: optional_ip(seq, "local_ip", &r.local_ip)?,
        egress_ip: optional_ip(seq, "egress_ip", &r.egress_ip)?.or(Some(peer_ip)),
        dns_us: micros(seq, "timings.dns_us", t.dns_us)?,
        connect_us: micros(seq, "timings.connect_us", t.connect_us)?,
        tls_us: micros(seq, "timings.tls_us", t.tls_us)?,
        ttfb_us: micros(seq, "timings.ttfb_us", t.ttfb_us)?,
        total_us: micros(seq, "timings.total_us", t.total_us)?,
        headers: r.headers.into_iter().collect(),
    })
}
