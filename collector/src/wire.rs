//! Conversion of wire messages into the collector's domain types: the one
//! place where incoming `vantage_proto` data is validated.

use std::net::{IpAddr, SocketAddr};

use chrono::{DateTime, Utc};
use vantage_proto::v1 as pb;

use crate::store::{PathProtocol, StoredGap, StoredPath, StoredPathProbe, StoredResult};

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
    let outcome = pb::Outcome::try_from(r.outcome)
        .ok()
        .filter(|o| *o != pb::Outcome::Unspecified)
        .ok_or_else(|| bad("outcome", format!("unknown outcome {}", r.outcome)))?
        .text();
    let status = |field: &'static str, s: Option<u32>| {
        s.map(|s| {
            i16::try_from(s)
                .ok()
                .filter(|s| (100..=999).contains(s))
                .ok_or_else(|| bad(field, format!("{s} is not an HTTP status")))
        })
        .transpose()
    };
    let http_status = status("http_status", r.http_status)?;
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
    let proxy_status = status("proxy_status", r.proxy_status)?;
    let tls = r.tls.unwrap_or_default();
    let cert_not_after = tls
        .cert_not_after
        .map(|ts| {
            u32::try_from(ts.nanos)
                .ok()
                .and_then(|nanos| DateTime::from_timestamp(ts.seconds, nanos))
                .ok_or_else(|| bad("tls.cert_not_after", "not a valid timestamp".into()))
        })
        .transpose()?;
    let hops = r
        .hops
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let field = "hops";
            if !h.dialed_addr.is_empty() && h.dialed_addr.parse::<SocketAddr>().is_err() {
                return Err(bad(
                    field,
                    format!("hop {i}: expected IP:PORT, got {:?}", h.dialed_addr),
                ));
            }
            let ht = h.timings.unwrap_or_default();
            Ok(serde_json::json!({
                "url": h.url,
                "status": status(field, h.status)?,
                "dialed_addr": Some(&h.dialed_addr).filter(|s| !s.is_empty()),
                "dns_us": micros(seq, field, ht.dns_us)?,
                "connect_us": micros(seq, field, ht.connect_us)?,
                "proxy_us": micros(seq, field, ht.proxy_us)?,
                "tls_us": micros(seq, field, ht.tls_us)?,
                "ttfb_us": micros(seq, field, ht.ttfb_us)?,
                "transfer_us": micros(seq, field, ht.transfer_us)?,
                "total_us": micros(seq, field, ht.total_us)?,
            }))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let body_bytes = r
        .body_bytes
        .map(|b| i64::try_from(b).map_err(|_| bad("body_bytes", format!("{b} is out of range"))))
        .transpose()?;
    if r.vantage.len() > 200 {
        return Err(bad("vantage", "longer than 200 bytes".into()));
    }
    let non_empty = |s: String| Some(s).filter(|s| !s.is_empty());
    // A round shorter than the agent accepts (100 ms) or longer than a day
    // is not a probe interval.
    let interval_ms = match r.interval_ms {
        0 => None,
        ms @ 100..=86_400_000 => i32::try_from(ms).ok(),
        ms => {
            return Err(bad(
                "interval_ms",
                format!("{ms} is out of range: expected 100..=86400000 (or 0: unknown)"),
            ));
        }
    };
    let path = r.path.map(|t| stored_path(seq, t)).transpose()?;
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
        region: non_empty(r.region),
        vantage: non_empty(r.vantage).unwrap_or_else(|| "direct".into()),
        proxy: non_empty(r.proxy),
        proxy_status,
        dns_rcode: non_empty(r.dns_rcode),
        resolver_egress_ip: optional_ip(seq, "resolver_egress_ip", &r.resolver_egress_ip)?,
        resolver_nsid: non_empty(r.resolver_nsid),
        resolver_identity_error: non_empty(r.resolver_identity_error),
        echo_ip: optional_ip(seq, "echo_ip", &r.echo_ip)?,
        proxy_us: micros(seq, "timings.proxy_us", t.proxy_us)?,
        transfer_us: micros(seq, "timings.transfer_us", t.transfer_us)?,
        tls_version: non_empty(tls.version),
        tls_alpn: non_empty(tls.alpn),
        tls_cipher: non_empty(tls.cipher),
        cert_subject: non_empty(tls.cert_subject),
        cert_issuer: non_empty(tls.cert_issuer),
        cert_not_after,
        body_bytes,
        body_sha256: non_empty(r.body_sha256)
            .map(|sha| {
                if sha.len() % 2 == 0 && sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                    Ok(sha.to_ascii_lowercase())
                } else {
                    Err(bad(
                        "body_sha256",
                        format!("expected hexadecimal digits, got {sha:?}"),
                    ))
                }
            })
            .transpose()?,
        body_truncated: r.body_truncated,
        gateway: non_empty(r.gateway),
        edge_location: non_empty(r.edge_location),
        hops: serde_json::Value::Array(hops),
        interval_ms,
        proxy_ip: optional_ip(seq, "proxy_ip", &r.proxy_ip)?,
        check_version: positive(r.check_version).map_err(|p| bad("check_version", p))?,
        tls_insecure: r.tls_insecure,
        request_id: positive(r.request_id).map_err(|p| bad("request_id", p))?,
        path: path.map(Box::new),
    })
}

/// Probes one trace may carry at most: 64 hops of 10 probes, and one more
/// per hop for the black-hole test.
const MAX_PATH_PROBES: usize = 64 * 11;

/// Validates a trace.
fn stored_path(seq: u64, t: pb::PathTrace) -> Result<StoredPath, InvalidResult> {
    let bad = |field: &'static str, problem: String| InvalidResult {
        seq,
        field,
        problem,
    };
    let protocol = PathProtocol::parse(&t.protocol).ok_or_else(|| {
        bad(
            "path.protocol",
            format!("expected \"udp\" or \"tcp\", got {:?}", t.protocol),
        )
    })?;
    let end_reason = pb::PathEnd::try_from(t.end)
        .ok()
        .filter(|e| *e != pb::PathEnd::Unspecified)
        .ok_or_else(|| bad("path.end", format!("{} is not a PathEnd", t.end)))?
        .text();
    if t.probes.len() > MAX_PATH_PROBES {
        return Err(bad(
            "path.probes",
            format!(
                "{} probes: expected at most {MAX_PATH_PROBES}",
                t.probes.len()
            ),
        ));
    }
    let small = |field: &'static str, v: Option<u32>, max: u32| {
        v.map(|v| {
            if v <= max {
                Ok(v)
            } else {
                Err(bad(
                    field,
                    format!("{v} is out of range: expected at most {max}"),
                ))
            }
        })
        .transpose()
    };
    let ttl = |field: &'static str, v: Option<u32>| {
        small(field, v, 255).map(|v| v.and_then(|v| i16::try_from(v).ok()))
    };
    let size = |field: &'static str, v: Option<u32>| {
        small(field, v, 65_535).map(|v| v.and_then(|v| i32::try_from(v).ok()))
    };
    let mut probes = Vec::with_capacity(t.probes.len());
    for p in t.probes {
        let reply = match pb::HopReply::try_from(p.reply) {
            Ok(pb::HopReply::Unspecified) => None,
            Ok(reply) => Some(reply.text()),
            Err(_) => {
                return Err(bad(
                    "path.probes.reply",
                    format!("{} is not a HopReply", p.reply),
                ));
            }
        };
        probes.push(StoredPathProbe {
            ttl: ttl("path.probes.ttl", Some(p.ttl))?.unwrap_or(0),
            address: optional_ip(seq, "path.probes.from", &p.from)?,
            rtt_us: micros(seq, "path.probes.rtt_us", p.rtt_us)?,
            reply,
            size: size("path.probes.size", Some(p.size))?.unwrap_or(0),
        });
    }
    Ok(StoredPath {
        protocol,
        source_ip: optional_ip(seq, "path.source_ip", &t.source_ip)?,
        destination_ip: optional_ip(seq, "path.destination_ip", &t.destination_ip)?,
        destination_port: size("path.destination_port", Some(t.destination_port))?
            .filter(|p| *p > 0),
        via_proxy: t.via_proxy,
        end_reason,
        error: Some(t.error).filter(|s| !s.is_empty()),
        path_mtu: size("path.path_mtu", t.path_mtu)?,
        mtu_from: optional_ip(seq, "path.mtu_from", &t.mtu_from)?,
        black_hole_after_ttl: ttl("path.black_hole_after_ttl", t.black_hole_after_ttl)?,
        black_hole_largest_passed: size(
            "path.black_hole_largest_passed",
            t.black_hole_largest_passed,
        )?,
        black_hole_smallest_lost: size(
            "path.black_hole_smallest_lost",
            t.black_hole_smallest_lost,
        )?,
        port_answered_at: ttl("path.port_answered_at", t.port_answered_at)?,
        port_reached: t.port_reached,
        port_rtt_us: micros(seq, "path.port_rtt_us", t.port_rtt_us)?,
        port_error: Some(t.port_error).filter(|s| !s.is_empty()),
        duration_us: micros(seq, "path.duration_us", Some(t.duration_us))?.unwrap_or(0),
        probes,
    })
}

/// An optional positive id: 0 means absent.
fn positive(value: u64) -> Result<Option<i64>, String> {
    match value {
        0 => Ok(None),
        v => i64::try_from(v)
            .map(Some)
            .map_err(|_| format!("{v} is out of range: expected 1..=2^63-1 (or 0: none)")),
    }
}

/// Results whose start time is further than this from the collector's clock
/// are refused one by one (recorded as `timestamp_skew` gaps): they would
/// land in partitions nobody looks at, or pollute the detector's window.
#[derive(Debug, Clone, Copy)]
pub struct SkewLimits {
    pub max_past: chrono::Duration,
    pub max_future: chrono::Duration,
}

impl SkewLimits {
    /// Whether a result that started at `started_at` is acceptable at `now`.
    pub fn accepts(&self, started_at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        started_at >= now - self.max_past && started_at <= now + self.max_future
    }

    /// The highest sequence number any agent can have given by `now`
    /// ([`vantage_proto::plausible_seq_ceiling`]); results above it are
    /// refused as `implausible_seq` gaps and never advance an agent's
    /// progress.
    pub fn seq_ceiling(&self, now: DateTime<Utc>) -> i64 {
        let now_us = u64::try_from(now.timestamp_micros()).unwrap_or(0);
        let ahead_us = u64::try_from(self.max_future.num_microseconds().unwrap_or(0)).unwrap_or(0);
        i64::try_from(vantage_proto::plausible_seq_ceiling(now_us, ahead_us)).unwrap_or(i64::MAX)
    }
}

/// A gap the agent reported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("gap {first_seq}..={last_seq}: field `{field}`: {problem}")]
pub struct InvalidGap {
    pub first_seq: u64,
    pub last_seq: u64,
    pub field: &'static str,
    pub problem: String,
}

/// Validates one gap.
pub fn stored_gap(g: pb::Gap) -> Result<StoredGap, InvalidGap> {
    let bad = |field: &'static str, problem: String| InvalidGap {
        first_seq: g.first_seq,
        last_seq: g.last_seq,
        field,
        problem,
    };
    let seq = |v: u64, field| {
        i64::try_from(v)
            .ok()
            .filter(|s| *s > 0)
            .ok_or_else(|| bad(field, "expected 1..=2^63-1".into()))
    };
    let first_seq = seq(g.first_seq, "first_seq")?;
    let last_seq = seq(g.last_seq, "last_seq")?;
    if first_seq > last_seq {
        return Err(bad("last_seq", "must not be below first_seq".into()));
    }
    // The agent's own reasons; the collector's refusals are its own to
    // record.
    let reason = pb::GapReason::from_text(&g.reason)
        .filter(|r| r.recorded_by_agent())
        .map(pb::GapReason::text)
        .ok_or_else(|| bad("reason", format!("unknown reason {:?}", g.reason)))?;
    let count = g
        .count
        .map(|c| i64::try_from(c).map_err(|_| bad("count", format!("{c} is out of range"))))
        .transpose()?;
    let detected_at = g
        .detected_at
        .and_then(|ts| {
            u32::try_from(ts.nanos)
                .ok()
                .and_then(|nanos| DateTime::from_timestamp(ts.seconds, nanos))
        })
        .ok_or_else(|| bad("detected_at", "missing or not a valid timestamp".into()))?;
    Ok(StoredGap {
        first_seq,
        last_seq,
        count,
        reason,
        detected_at,
    })
}
