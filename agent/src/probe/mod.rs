//! Probing: one probe of one target, from this agent, producing a result.
//!
//! A failed probe is data, not an `Err`: every probe returns a
//! [`ProbeResult`] whose [`Outcome`] names what failed.

pub mod dns;
pub mod http;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use chrono::{DateTime, Utc};

pub use dns::DnsResolver;
pub use http::HttpProber;

/// How a probe ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response arrived with an expected status.
    Ok,
    /// Name resolution failed.
    Dns,
    /// The TCP connection could not be established.
    Connect,
    /// The TLS handshake failed.
    Tls,
    /// The check's timeout elapsed.
    Timeout,
    /// A response arrived with an unexpected status.
    Http,
    /// Anything else: protocol errors, body read errors, ...
    Other,
}

/// One address a resolver answered, with its TTL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolvedAddr {
    pub ip: IpAddr,
    pub ttl_seconds: u32,
}

/// Durations of the phases of a probe; `None` means not measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timings {
    pub dns: Option<Duration>,
    /// TCP connect alone. The reqwest-based probe cannot separate it from
    /// the TLS handshake, so it leaves this unset.
    pub connect: Option<Duration>,
    pub tls: Option<Duration>,
    /// From sending the request (including connection setup, as every probe
    /// uses a fresh connection) to the response headers.
    pub ttfb: Option<Duration>,
    /// From the start of the probe to the end of the body.
    pub total: Option<Duration>,
}

/// Everything one probe found out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    /// Per-agent sequence number, assigned when the result is queued.
    pub seq: u64,
    pub started_at: DateTime<Utc>,
    pub check: String,
    pub url: String,
    pub method: String,
    pub outcome: Outcome,
    /// Why the probe failed; empty when it did not.
    pub message: String,
    pub http_status: Option<u16>,
    pub http_version: Option<String>,
    /// The nameserver asked, e.g. `udp://127.0.0.1:53`; `literal` when the
    /// URL's host was an IP address.
    pub resolver: String,
    pub resolved: Vec<ResolvedAddr>,
    pub dialed: Option<SocketAddr>,
    pub local_ip: Option<IpAddr>,
    /// This agent's address as the collector last saw it.
    pub egress_ip: Option<IpAddr>,
    pub timings: Timings,
    /// Response headers that identify the responding layer.
    pub headers: BTreeMap<String, String>,
}

/// Response headers kept because they say which layer answered.
pub const LAYER_HEADERS: &[&str] = &[
    "server",
    "via",
    "cf-ray",
    "x-cache",
    "x-served-by",
    "x-amz-cf-pop",
];
