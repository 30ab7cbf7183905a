//! The record of one request of a probe ([`Exchange`]: where it went, each
//! phase's time, the response's head and body, how it ended) and what it
//! is asked with ([`Attempt`]). A probe that follows redirects makes one
//! per hop, and its result is assembled from them at the end
//! ([`settle`]), as blackbox_exporter keeps one trace per redirect. The
//! steps that fill a record are in [`super::steps`], how they fail in
//! [`super::failure`].

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::time::Instant as TokioInstant;
use url::Url;
use vantage_check::CheckConfig;

use super::super::dns::LookupAnswer;
use super::super::{Hop, Outcome, ProbeResult, Timings, TlsInfo};
use crate::probe::vantage::Vantage;

/// One request of a probe: what to ask, of which address, from which
/// vantage, by when.
#[derive(Clone, Copy)]
pub(super) struct Attempt<'a> {
    pub(super) check: &'a CheckConfig,
    pub(super) vantage: &'a Vantage,
    pub(super) url: &'a Url,
    pub(super) method: &'a str,
    pub(super) addr: SocketAddr,
    pub(super) deadline: TokioInstant,
    /// The probe's sequence number, for the `X-Vantage-Probe` header.
    pub(super) seq: u64,
}

/// What one request found. Fresh for every hop: nothing of an earlier
/// hop's response can leak into a later one's.
pub(super) struct Exchange {
    pub(super) url: String,
    pub(super) dialed: SocketAddr,
    /// The lookup that found `dialed`, if one did.
    pub(super) lookup: Option<LookupAnswer>,
    pub(super) local_ip: Option<IpAddr>,
    pub(super) proxy_ip: Option<IpAddr>,
    pub(super) timings: Timings,
    pub(super) http_status: Option<u16>,
    pub(super) http_version: Option<String>,
    pub(super) proxy_status: Option<u16>,
    pub(super) tls: Option<TlsInfo>,
    pub(super) body_bytes: Option<u64>,
    pub(super) body_sha256: Option<String>,
    pub(super) body_truncated: bool,
    /// Why the body read fails the check's body patterns, if it does.
    pub(super) body_mismatch: Option<String>,
    pub(super) gateway: Option<String>,
    pub(super) edge_location: Option<String>,
    pub(super) headers: BTreeMap<String, String>,
    pub(super) outcome: Outcome,
    pub(super) message: String,
}

impl Exchange {
    pub(super) fn new(url: &Url, dialed: SocketAddr, dns: Option<Duration>) -> Self {
        Self {
            url: url.to_string(),
            dialed,
            lookup: None,
            local_ip: None,
            proxy_ip: None,
            timings: Timings {
                dns,
                ..Timings::default()
            },
            http_status: None,
            http_version: None,
            proxy_status: None,
            tls: None,
            body_bytes: None,
            body_sha256: None,
            body_truncated: false,
            body_mismatch: None,
            gateway: None,
            edge_location: None,
            headers: BTreeMap::new(),
            outcome: Outcome::Other,
            message: String::new(),
        }
    }

    fn hop(&self) -> Hop {
        Hop {
            url: self.url.clone(),
            status: self.http_status,
            dialed: Some(self.dialed),
            timings: self.timings,
        }
    }
}

/// Fills `r` from the exchanges of a probe, in order: the last one's
/// findings are the result's; the addresses are the last learned; every
/// hop is kept when the check follows redirects. `stopped`: why the probe
/// ended after its last exchange (a redirect it could not follow).
pub(super) fn settle(
    r: &mut ProbeResult,
    mut exchanges: Vec<Exchange>,
    keep_hops: bool,
    stopped: Option<(Outcome, String)>,
) {
    for ex in &exchanges {
        if let Some(lookup) = &ex.lookup {
            r.resolved = lookup.addrs.clone();
            r.dns_rcode = Some(lookup.rcode.clone());
        }
        if ex.local_ip.is_some() {
            r.local_ip = ex.local_ip;
        }
        if ex.proxy_ip.is_some() {
            r.proxy_ip = ex.proxy_ip;
        }
    }
    if keep_hops {
        r.hops = exchanges.iter().map(Exchange::hop).collect();
    }
    if let Some(last) = exchanges.pop() {
        r.dialed = Some(last.dialed);
        r.timings = last.timings;
        r.http_status = last.http_status;
        r.http_version = last.http_version;
        r.proxy_status = last.proxy_status;
        r.tls = last.tls;
        r.body_bytes = last.body_bytes;
        r.body_sha256 = last.body_sha256;
        r.body_truncated = last.body_truncated;
        r.gateway = last.gateway;
        r.edge_location = last.edge_location;
        r.headers = last.headers;
        r.outcome = last.outcome;
        r.message = last.message;
    }
    if let Some((outcome, message)) = stopped {
        r.outcome = outcome;
        r.message = message;
    }
}
