//! Probing: one probe of one target, from this agent, producing a result.
//!
//! A failed probe is data, not an `Err`: every probe returns a
//! [`ProbeResult`] whose [`Outcome`] names what failed.

pub mod dns;
pub mod gateway;
pub mod http;
pub mod identity;
pub mod path;
pub mod proxy;
pub mod tls;
pub mod transport;
pub mod vantage;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use chrono::{DateTime, Utc};

pub use dns::DnsResolver;

/// A sequence number handed out as a request starts (it goes in the
/// request's `X-Vantage-Probe` header and is the result's). What holds it
/// is the caller's: the probe only reads the number.
pub trait Sequenced: Send {
    fn seq(&self) -> u64;
}
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
    /// Anything else.
    Other,
    /// The peer did not speak HTTP (garbage, oversized headers, a reset in
    /// the middle of the response).
    Protocol,
    /// The certificate expires within the check's threshold, or has.
    CertExpiry,
    /// The vantage's forward proxy failed or refused the tunnel: the site
    /// was never reached.
    Proxy,
    /// The response began and then stopped mid-body: nothing more arrived
    /// for the rest of the timeout.
    Stalled,
    /// The body read matched a `fail_if_body_matches` pattern of the
    /// check, or missed a `fail_if_body_not_matches` one.
    BodyMatch,
}

/// One address a resolver answered, with its TTL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolvedAddr {
    pub ip: IpAddr,
    pub ttl_seconds: u32,
}

/// Durations of the phases of one request; `None` means the phase did not
/// happen (no TLS on http://, no proxy on a direct vantage) or the probe
/// failed before it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timings {
    /// The DNS lookup.
    pub dns: Option<Duration>,
    /// TCP connect to the first hop (the site, or the vantage's proxy).
    pub connect: Option<Duration>,
    /// Getting a tunnel from the forward proxy (including TLS to an
    /// `https://` proxy).
    pub proxy: Option<Duration>,
    /// The TLS handshake with the site.
    pub tls: Option<Duration>,
    /// From the request written to the first response byte (HTTP/1.1,
    /// measured at the socket); from the request handed to the HTTP/2
    /// connection to the response headers on HTTP/2.
    pub ttfb: Option<Duration>,
    /// From the first response byte to the end of the body read.
    pub transfer: Option<Duration>,
    /// From the start of the probe to its end, all hops included.
    pub total: Option<Duration>,
}

/// What a TLS handshake negotiated and presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// `TLSv1.3`, `TLSv1.2`.
    pub version: String,
    pub alpn: Option<String>,
    /// e.g. `TLS13_AES_128_GCM_SHA256`.
    pub cipher: String,
    pub cert: Option<CertInfo>,
}

/// The leaf certificate the site presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    pub not_after: DateTime<Utc>,
}

/// One request of a probe that follows redirects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    pub url: String,
    pub status: Option<u16>,
    pub dialed: Option<SocketAddr>,
    pub timings: Timings,
}

/// What the resolver told about itself when last asked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolverIdentity {
    /// The address the resolver's queries come from, as whoami names see it.
    pub egress_ip: Option<IpAddr>,
    /// The resolver's NSID (EDNS option 3), printable.
    pub nsid: Option<String>,
    /// Why the identity could not be (fully) learned; empty when it was.
    pub error: String,
}

/// Everything one probe found out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    /// Per-agent sequence number, reserved when the probe started.
    pub seq: u64,
    pub started_at: DateTime<Utc>,
    pub check: String,
    /// The URL of the check (the first hop).
    pub url: String,
    pub method: String,
    /// The vantage (egress path) the probe went through.
    pub vantage: String,
    /// The vantage's region override; `None` means the agent's region.
    pub region: Option<String>,
    /// The vantage's forward proxy, without credentials.
    pub proxy: Option<String>,
    pub outcome: Outcome,
    /// Why the probe failed; empty when it did not.
    pub message: String,
    pub http_status: Option<u16>,
    pub http_version: Option<String>,
    /// The status the forward proxy answered a failed CONNECT with.
    pub proxy_status: Option<u16>,
    /// The nameserver asked, e.g. `udp://127.0.0.1:53`; `literal` when the
    /// URL's host was an IP address.
    pub resolver: String,
    /// The response code of the lookup (`NOERROR`, `NXDOMAIN`, ...); `None`
    /// when no response arrived.
    pub dns_rcode: Option<String>,
    pub resolved: Vec<ResolvedAddr>,
    pub resolver_identity: ResolverIdentity,
    pub dialed: Option<SocketAddr>,
    /// The local address of the probe's connection, read from the socket.
    pub local_ip: Option<IpAddr>,
    /// This agent's address as the collector last saw it.
    pub egress_ip: Option<IpAddr>,
    /// The vantage's public address as its IP-echo URL last reported it.
    pub echo_ip: Option<IpAddr>,
    /// The forward proxy's address as dialled (proxied vantages only).
    pub proxy_ip: Option<IpAddr>,
    /// The check's interval: one probe round.
    pub interval: Option<Duration>,
    pub timings: Timings,
    pub tls: Option<TlsInfo>,
    /// The site's certificate was not verified (the check's
    /// `tls_insecure_skip_verify`).
    pub tls_insecure: bool,
    /// Body bytes read (at most the check's `body_hash_bytes`).
    pub body_bytes: Option<u64>,
    /// SHA-256 of the body bytes read, hex.
    pub body_sha256: Option<String>,
    /// Whether the body was longer than what was read.
    pub body_truncated: bool,
    /// The layer that produced an error response (status ≥ 400), or that
    /// failed the tunnel.
    pub gateway: Option<String>,
    /// The CDN point of presence named by the response headers.
    pub edge_location: Option<String>,
    /// Every request when redirects are followed (the last is the one the
    /// top-level fields describe); empty when they are not.
    pub hops: Vec<Hop>,
    /// Response headers that identify the responding layer.
    pub headers: BTreeMap<String, String>,
    /// The version of a check the collector assigned; `None` for a check
    /// of the agent's own config.
    pub check_version: Option<u64>,
    /// The probe request this one-off probe answers; `None` on schedule.
    pub request_id: Option<u64>,
    /// The path to where the probe went, traced after it when asked.
    pub path: Option<crate::probe::path::PathTrace>,
}

pub use gateway::LAYER_HEADERS;

impl ProbeResult {
    /// A result with nothing found out yet: outcome `Other` until the probe
    /// says otherwise.
    pub fn new(
        check: &str,
        url: &str,
        method: &str,
        vantage: &str,
        started_at: DateTime<Utc>,
    ) -> Self {
        Self {
            seq: 0,
            started_at,
            check: check.to_owned(),
            url: url.to_owned(),
            method: method.to_owned(),
            vantage: vantage.to_owned(),
            region: None,
            proxy: None,
            outcome: Outcome::Other,
            message: String::new(),
            http_status: None,
            http_version: None,
            proxy_status: None,
            resolver: String::new(),
            dns_rcode: None,
            resolved: Vec::new(),
            resolver_identity: ResolverIdentity::default(),
            dialed: None,
            local_ip: None,
            egress_ip: None,
            echo_ip: None,
            proxy_ip: None,
            interval: None,
            timings: Timings::default(),
            tls: None,
            tls_insecure: false,
            body_bytes: None,
            body_sha256: None,
            body_truncated: false,
            gateway: None,
            edge_location: None,
            hops: Vec::new(),
            headers: BTreeMap::new(),
            check_version: None,
            request_id: None,
            path: None,
        }
    }
}
