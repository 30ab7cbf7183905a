//! The HTTP probe: resolve, dial the chosen address on a fresh connection
//! keeping the original Host and SNI, and record what happened.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use chrono::Utc;
use tokio::time::timeout_at;
use url::Host;

use super::dns::DnsResolver;
use super::{LAYER_HEADERS, Outcome, ProbeResult, ResolvedAddr, Timings};
use crate::config::CheckConfig;

/// Bytes of body read at most; the rest is not downloaded. Enough to time a
/// transfer and see an error page, bounded so a hostile target cannot make
/// the agent buffer without limit.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// Probes HTTP(S) targets from one source address through one resolver.
#[derive(Clone)]
pub struct HttpProber {
    resolver: DnsResolver,
    source_ip: Option<IpAddr>,
    user_agent: String,
}

impl HttpProber {
    pub fn new(resolver: DnsResolver, source_ip: Option<IpAddr>) -> Self {
        crate::install_crypto_provider();
        Self {
            resolver,
            source_ip,
            user_agent: format!("vantage-agent/{}", env!("CARGO_PKG_VERSION")),
        }
    }

    /// Runs one probe of `check`. Never fails: failures are in the outcome.
    pub async fn probe(&self, check: &CheckConfig) -> ProbeResult {
        let url = check.url.url();
        let started_at = Utc::now();
        let start = Instant::now();
        let deadline = tokio::time::Instant::from_std(start + check.timeout);
        let mut result = ProbeResult {
            seq: 0,
            started_at,
            check: check.name.get_ref().to_string(),
            url: url.to_string(),
            method: check.method.as_str().to_owned(),
            outcome: Outcome::Other,
            message: String::new(),
            http_status: None,
            http_version: None,
            resolver: String::new(),
            resolved: Vec::new(),
            dialed: None,
            local_ip: self.source_ip,
            egress_ip: None,
            timings: Timings::default(),
            headers: BTreeMap::new(),
        };
        let finish = |mut r: ProbeResult, outcome: Outcome, message: String| {
            r.outcome = outcome;
            r.message = message;
            r.timings.total = Some(start.elapsed());
            r
        };

        // `port_or_known_default` is always Some for the http(s) URLs that
        // config validation admits; 0 would make the dial fail visibly.
        let port = url.port_or_known_default().unwrap_or(0);
        let (domain, ip) = match url.host() {
            Some(Host::Ipv4(ip)) => (None, IpAddr::V4(ip)),
            Some(Host::Ipv6(ip)) => (None, IpAddr::V6(ip)),
            Some(Host::Domain(domain)) => {
                result.resolver = self.resolver.name().to_owned();
                match timeout_at(deadline, self.resolver.lookup(domain)).await {
                    Err(_) => {
                        let msg = format!("timed out after {:?} resolving {domain}", check.timeout);
                        return finish(result, Outcome::Timeout, msg);
                    }
                    Ok(Err(failure)) => {
                        result.timings.dns = Some(failure.elapsed);
                        return finish(result, Outcome::Dns, failure.message);
                    }
                    Ok(Ok(answer)) => {
                        result.timings.dns = Some(answer.elapsed);
                        result.resolved = answer.addrs;
                        (Some(domain.to_owned()), choose(&result.resolved))
                    }
                }
            }
            None => return finish(result, Outcome::Other, "URL has no host".into()),
        };
        if domain.is_none() {
            result.resolver = "literal".into();
        }
        let dialed = SocketAddr::new(ip, port);
        result.dialed = Some(dialed);

        // A client per probe: a pooled connection would hide path problems
        // (a new connection may take another route, edge or backend).
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(0)
            .user_agent(&self.user_agent)
            .local_address(self.source_ip);
        if let Some(domain) = &domain {
            builder = builder.resolve_to_addrs(domain, &[dialed]);
        }
        let client = match builder.build() {
            Ok(c) => c,
            Err(e) => return finish(result, Outcome::Other, format!("building client: {e}")),
        };
        let method = match reqwest::Method::from_bytes(check.method.as_str().as_bytes()) {
            Ok(m) => m,
            Err(e) => return finish(result, Outcome::Other, format!("method: {e}")),
        };

        let sent = Instant::now();
        let response = match timeout_at(deadline, client.request(method, url.clone()).send()).await
        {
            Err(_) => {
                let msg = format!("timed out after {:?} waiting for {dialed}", check.timeout);
                return finish(result, Outcome::Timeout, msg);
            }
            Ok(Err(e)) => {
                let (outcome, msg) = classify(&e);
                return finish(result, outcome, msg);
            }
            Ok(Ok(response)) => response,
        };
        result.timings.ttfb = Some(sent.elapsed());
        let status = response.status().as_u16();
        result.http_status = Some(status);
        result.http_version = Some(format!("{:?}", response.version()));
        for name in LAYER_HEADERS {
            if let Some(value) = response.headers().get(*name) {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                result.headers.insert((*name).to_owned(), value);
            }
        }

        let mut response = response;
        let mut read = 0usize;
        while read < MAX_BODY_BYTES {
            match timeout_at(deadline, response.chunk()).await {
                Err(_) => {
                    let msg = format!("timed out after {:?} reading the body", check.timeout);
                    return finish(result, Outcome::Timeout, msg);
                }
                Ok(Err(e)) => return finish(result, Outcome::Other, format!("reading body: {e}")),
                Ok(Ok(None)) => break,
                Ok(Ok(Some(chunk))) => read += chunk.len(),
            }
        }

        if check.expects(status) {
            finish(result, Outcome::Ok, String::new())
        } else {
            finish(result, Outcome::Http, format!("unexpected status {status}"))
        }
    }
}

/// The address to dial: the first answer, as a stub resolver's client would.
fn choose(addrs: &[ResolvedAddr]) -> IpAddr {
    // The lookup guarantees at least one answer.
    addrs.first().map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip)
}

/// Maps a reqwest error to a failure kind and a message with its cause chain.
fn classify(error: &reqwest::Error) -> (Outcome, String) {
    let mut message = error.to_string();
    let mut is_tls = false;
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        if cause.is::<rustls::Error>()
            || cause
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .is_some_and(|inner| inner.is::<rustls::Error>())
        {
            is_tls = true;
        }
        source = cause.source();
    }
    let outcome = if error.is_timeout() {
        Outcome::Timeout
    } else if is_tls {
        Outcome::Tls
    } else if error.is_connect() {
        Outcome::Connect
    } else {
        Outcome::Other
    };
    (outcome, message)
}
