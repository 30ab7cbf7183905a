//! The HTTP probe: resolve through each of the check's resolvers, dial the
//! chosen address(es) on a fresh connection from the vantage (through its
//! proxy, if any), keep the original Host and SNI, time every phase at the
//! socket, and record what every layer said.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use chrono::Utc;
use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;
use tokio::time::{Instant as TokioInstant, timeout_at};
use url::{Host, Position, Url};

use super::dns::{DnsResolver, LookupAnswer};
use super::gateway::{self, BODY_WINDOW, LAYER_HEADERS};
use super::tls::TlsConfigs;
use super::transport::{self, ClockedIo, SocketClock, TunnelError};
use super::{Hop, Outcome, ProbeResult, Sequenced, Timings};
use crate::config::{CheckConfig, Dial, HttpVersion};
use crate::vantage::Vantage;

/// Response header bytes accepted at most (HTTP/1.1 buffer, HTTP/2 header
/// list). Far above any real site's, low enough that a hostile one cannot
/// make the agent buffer without limit.
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Response header fields accepted at most on HTTP/1.1.
const MAX_HEADERS: usize = 128;

/// Probes HTTP(S) targets; one per agent, shared by every check.
#[derive(Clone)]
pub struct HttpProber {
    agent_id: String,
    probe_header: bool,
    user_agent: String,
    tls: TlsConfigs,
}

/// One result of a round with what holds its sequence number.
pub struct Probed<T> {
    pub ticket: T,
    pub result: ProbeResult,
}

/// The address a request goes to, and how it was found.
struct Target {
    addr: SocketAddr,
    lookup: Option<LookupAnswer>,
}

impl HttpProber {
    pub fn new(agent_id: &str, probe_header: bool, tls: TlsConfigs) -> Self {
        Self {
            agent_id: agent_id.to_owned(),
            probe_header,
            user_agent: format!("vantage-agent/{}", env!("CARGO_PKG_VERSION")),
            tls,
        }
    }

    /// Makes TLS ready for `check` (a check assigned after start): reads
    /// its CA file.
    pub fn prepare(&self, check: &CheckConfig) -> Result<(), super::tls::TlsSetupError> {
        self.tls
            .ensure(check.ca_file.as_deref(), check.http_version)
    }

    /// One round of `check` from `vantage`: one result per resolver, and
    /// per resolved address when the check dials each. `reserve` hands out
    /// sequence numbers as requests start. Never fails: failures are in
    /// the outcomes.
    pub async fn round<T: Sequenced>(
        &self,
        check: &CheckConfig,
        vantage: &Vantage,
        reserve: &(dyn Fn() -> T + Sync),
    ) -> Vec<Probed<T>> {
        let mut out = Vec::new();
        let (domain, port) = match destination(check.url.url()) {
            Destination::Name { domain, port } => (domain, port),
            Destination::Literal(addr) => {
                let ticket = reserve();
                let start = Instant::now();
                let mut r = self.blank(check, vantage, ticket.seq());
                r.resolver = "literal".into();
                let target = Target { addr, lookup: None };
                self.fetch(&mut r, check, vantage, None, target, start)
                    .await;
                out.push(Probed { ticket, result: r });
                return out;
            }
        };
        for resolver in vantage.resolvers_for(check) {
            let start = Instant::now();
            let started_at = Utc::now();
            let deadline = TokioInstant::from_std(start + check.timeout);
            let resolver = &*resolver;
            let answer = match resolve(resolver, &domain, check, deadline).await {
                Ok(answer) => answer,
                Err(failed) => {
                    let ticket = reserve();
                    let mut r = self.blank(check, vantage, ticket.seq());
                    r.started_at = started_at;
                    r.resolver = resolver.name().to_owned();
                    r.resolver_identity = resolver.identity();
                    r.timings.dns = failed.elapsed;
                    r.dns_rcode = failed.rcode;
                    r.outcome = failed.outcome;
                    r.message = failed.message;
                    r.timings.total = Some(start.elapsed());
                    out.push(Probed { ticket, result: r });
                    continue;
                }
            };
            let mut addrs: Vec<IpAddr> = Vec::new();
            for a in &answer.addrs {
                if !addrs.contains(&a.ip) {
                    addrs.push(a.ip);
                }
            }
            if check.dial == Dial::First {
                addrs.truncate(1);
            }
            for (i, ip) in addrs.into_iter().enumerate() {
                let ticket = reserve();
                let mut r = self.blank(check, vantage, ticket.seq());
                // The first request shares the lookup's clock; the others
                // start when they start, each with the lookup's time.
                let begun = if i == 0 {
                    r.started_at = started_at;
                    start
                } else {
                    Instant::now()
                };
                let target = Target {
                    addr: SocketAddr::new(ip, port),
                    lookup: Some(answer.clone()),
                };
                self.fetch(&mut r, check, vantage, Some(resolver), target, begun)
                    .await;
                out.push(Probed { ticket, result: r });
            }
        }
        out
    }

    fn blank(&self, check: &CheckConfig, vantage: &Vantage, seq: u64) -> ProbeResult {
        let mut r = ProbeResult::new(
            check.name.get_ref().as_str(),
            check.url.url().as_str(),
            check.method.as_str(),
            &vantage.name,
            Utc::now(),
        );
        r.seq = seq;
        r.region = vantage.region.clone();
        r.proxy = vantage.proxy.as_ref().map(|p| p.redacted());
        r.echo_ip = vantage.echo_ip();
        r.local_ip = vantage.source_ip;
        r.interval = Some(check.interval);
        r.check_version = check.origin.central_version;
        r.request_id = check.origin.request_id;
        r
    }

    /// Requests `target` and follows redirects as the check allows; fills
    /// `r` with the last request's findings and every hop.
    async fn fetch(
        &self,
        r: &mut ProbeResult,
        check: &CheckConfig,
        vantage: &Vantage,
        resolver: Option<&DnsResolver>,
        first: Target,
        start: Instant,
    ) {
        let deadline = TokioInstant::from_std(start + check.timeout);
        let mut url = check.url.url().clone();
        let mut method = check.method.as_str().to_owned();
        let mut target = first;
        if let Some(resolver) = resolver {
            r.resolver = resolver.name().to_owned();
            r.resolver_identity = resolver.identity();
        }
        loop {
            let hop_start = Instant::now();
            if let Some(lookup) = &target.lookup {
                r.resolved = lookup.addrs.clone();
                r.dns_rcode = Some(lookup.rcode.clone());
            }
            let dns = target.lookup.as_ref().map(|l| l.elapsed);
            let attempt = Attempt {
                check,
                vantage,
                url: &url,
                method: &method,
                addr: target.addr,
                deadline,
            };
            let next = self.request(r, attempt, dns).await;
            let hop_total = hop_start.elapsed() + dns.unwrap_or_default();
            if check.follow_redirects > 0 {
                let mut timings = r.timings;
                timings.total = Some(hop_total);
                r.hops.push(Hop {
                    url: url.to_string(),
                    status: r.http_status,
                    dialed: r.dialed,
                    timings,
                });
            }
            let Some(location) = next else { break };
            if r.hops.len() > usize::from(check.follow_redirects) {
                r.outcome = Outcome::Http;
                r.message = format!(
                    "stopped after {} redirects (follow_redirects = {})",
                    check.follow_redirects, check.follow_redirects
                );
                break;
            }
            // 303 turns anything into GET; so do 301 and 302 for POST, as
            // browsers do.
            if r.http_status == Some(303)
                || (matches!(r.http_status, Some(301 | 302)) && method == "POST")
            {
                method = "GET".into();
            }
            match self.resolve_hop(&location, check, resolver, deadline).await {
                Ok(next) => {
                    url = location;
                    target = next;
                }
                Err((outcome, message)) => {
                    r.outcome = outcome;
                    r.message = message;
                    break;
                }
            }
        }
        r.timings.total = Some(start.elapsed());
    }

    /// Finds the address of a redirect's target through the same resolver.
    async fn resolve_hop(
        &self,
        url: &Url,
        check: &CheckConfig,
        resolver: Option<&DnsResolver>,
        deadline: TokioInstant,
    ) -> Result<Target, (Outcome, String)> {
        let (domain, port) = match destination(url) {
            Destination::Literal(addr) => return Ok(Target { addr, lookup: None }),
            Destination::Name { domain, port } => (domain, port),
        };
        let Some(resolver) = resolver else {
            return Err((
                Outcome::Dns,
                format!("redirect to {domain} from a literal address: no resolver to ask"),
            ));
        };
        let answer = resolve(resolver, &domain, check, deadline)
            .await
            .map_err(|failed| (failed.outcome, failed.message))?;
        let ip = answer
            .addrs
            .first()
            .map(|a| a.ip)
            .ok_or((Outcome::Dns, format!("{domain}: no address")))?;
        Ok(Target {
            addr: SocketAddr::new(ip, port),
            lookup: Some(answer),
        })
    }

    /// One request on a fresh connection. Fills the per-request fields of
    /// `r` (resetting what an earlier hop left) and returns the redirect
    /// target when the check follows redirects and the response is one.
    async fn request(
        &self,
        r: &mut ProbeResult,
        attempt: Attempt<'_>,
        dns: Option<Duration>,
    ) -> Option<Url> {
        let Attempt { check, addr, .. } = attempt;
        r.timings = Timings {
            dns,
            ..Timings::default()
        };
        r.http_status = None;
        r.http_version = None;
        r.proxy_status = None;
        r.tls = None;
        r.body_bytes = None;
        r.body_sha256 = None;
        r.body_truncated = false;
        r.gateway = None;
        r.edge_location = None;
        r.headers.clear();
        r.dialed = Some(addr);
        r.outcome = Outcome::Other;
        r.message.clear();

        match self.exchange(r, attempt).await {
            Err(failure) => {
                r.outcome = failure.outcome;
                r.message = failure.message;
                None
            }
            Ok(location) => {
                // A bad status or expiring certificate is reported over a
                // redirect to follow, so the probe stops where it failed.
                let status = r.http_status.unwrap_or(0);
                let expiring = r
                    .tls
                    .as_ref()
                    .and_then(|t| t.cert.as_ref())
                    .filter(|_| !check.cert_expiry_threshold.is_zero())
                    .and_then(|cert| {
                        let left = cert.not_after - Utc::now();
                        let threshold =
                            chrono::Duration::from_std(check.cert_expiry_threshold).ok()?;
                        (left < threshold).then_some((cert.not_after, left))
                    });
                if let Some((not_after, left)) = expiring {
                    r.outcome = Outcome::CertExpiry;
                    r.message = if left < chrono::Duration::zero() {
                        format!("certificate expired at {not_after}")
                    } else {
                        format!(
                            "certificate expires at {not_after}, in {}h, under the threshold of {:?}",
                            left.num_hours(),
                            check.cert_expiry_threshold
                        )
                    };
                    return None;
                }
                if let Some(location) = location.filter(|_| check.follow_redirects > 0) {
                    r.outcome = Outcome::Ok;
                    return Some(location);
                }
                if check.expects(status) {
                    r.outcome = Outcome::Ok;
                } else {
                    r.outcome = Outcome::Http;
                    r.message = format!("unexpected status {status}");
                }
                None
            }
        }
    }

    /// Connects, tunnels, handshakes, sends and reads, timing each step.
    /// Returns the `Location` of a 3xx response.
    async fn exchange(
        &self,
        r: &mut ProbeResult,
        attempt: Attempt<'_>,
    ) -> Result<Option<Url>, Failure> {
        let Attempt {
            check,
            vantage,
            url,
            addr,
            deadline,
            ..
        } = attempt;
        let timed_out = |phase: &str| Failure {
            outcome: Outcome::Timeout,
            message: format!("timed out after {:?} during {phase}", check.timeout),
        };

        // TCP, to the site or to the vantage's proxy.
        let first_hop = match &vantage.proxy {
            None => addr,
            Some(proxy) => {
                let hop = vantage.proxy_addr(proxy).await.map_err(|message| Failure {
                    outcome: Outcome::Proxy,
                    message,
                })?;
                r.proxy_ip = Some(hop.ip());
                hop
            }
        };
        let t = Instant::now();
        let (stream, local) = timeout_at(
            deadline,
            transport::tcp_connect(first_hop, vantage.source_ip),
        )
        .await
        .map_err(|_| timed_out("connect"))?
        .map_err(|e| Failure {
            outcome: if vantage.proxy.is_some() {
                Outcome::Proxy
            } else {
                Outcome::Connect
            },
            message: format!("connecting to {first_hop}: {e}"),
        })?;
        r.timings.connect = Some(t.elapsed());
        r.local_ip = Some(local.ip());

        // The tunnel through the proxy.
        let io: transport::BoxIo = match &vantage.proxy {
            None => Box::new(stream),
            Some(proxy) => {
                let t = Instant::now();
                let tunnel = timeout_at(
                    deadline,
                    transport::tunnel(stream, proxy, self.tls.proxy(), addr),
                )
                .await
                .map_err(|_| timed_out("proxy tunnel"))?;
                r.timings.proxy = Some(t.elapsed());
                match tunnel {
                    Ok(io) => io,
                    Err(e) => {
                        r.gateway = Some(gateway::FORWARD_PROXY.into());
                        if let TunnelError::Refused { status, headers } = &e {
                            r.proxy_status = Some(*status);
                            r.headers = headers.clone();
                        }
                        return Err(Failure {
                            outcome: Outcome::Proxy,
                            message: format!("{} for {addr}: {e}", proxy.redacted()),
                        });
                    }
                }
            }
        };

        // TLS with the site, SNI from the URL's host.
        let https = url.scheme() == "https";
        let (io, h2) = if https {
            let config = self
                .tls
                .get(check.ca_file.as_deref(), check.http_version)
                .ok_or_else(|| Failure {
                    outcome: Outcome::Other,
                    message: "no TLS configuration for this check".into(),
                })?;
            let host = url.host_str().unwrap_or_default();
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let name = ServerName::try_from(host.to_owned()).map_err(|e| Failure {
                outcome: Outcome::Tls,
                message: format!("server name {host:?}: {e}"),
            })?;
            let t = Instant::now();
            let (io, info) = timeout_at(deadline, transport::tls_handshake(io, name, config))
                .await
                .map_err(|_| timed_out("TLS handshake"))?
                .map_err(tls_failure)?;
            r.timings.tls = Some(t.elapsed());
            let h2 = info.alpn.as_deref() == Some("h2");
            r.tls = Some(info);
            (io, h2)
        } else {
            (io, check.http_version == HttpVersion::Http2)
        };

        // The request.
        let clock = SocketClock::new();
        let io = TokioIo::new(ClockedIo::new(io, clock.clone()));
        let request = self.build_request(attempt, h2, r.seq)?;
        let sent = Instant::now();
        // The connection task lives as long as `_conn`: to the end of this
        // exchange, body included.
        let (waiting, _conn) = if h2 {
            let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .max_header_list_size(u32::try_from(MAX_HEADER_BYTES).unwrap_or(u32::MAX))
                .handshake::<_, Empty<Bytes>>(io)
                .await
                .map_err(protocol_failure)?;
            let waiting: ResponseFuture =
                Box::pin(async move { sender.send_request(request).await });
            (waiting, AbortOnDrop::spawn(conn))
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
                .max_buf_size(MAX_HEADER_BYTES)
                .max_headers(MAX_HEADERS)
                .handshake::<_, Empty<Bytes>>(io)
                .await
                .map_err(protocol_failure)?;
            let waiting: ResponseFuture =
                Box::pin(async move { sender.send_request(request).await });
            (waiting, AbortOnDrop::spawn(conn))
        };
        let response = timeout_at(deadline, waiting)
            .await
            .map_err(|_| timed_out("waiting for the response"))?
            .map_err(protocol_failure)?;
        let headers_at = Instant::now();
        // HTTP/1.1: from the last request byte written to the first response
        // byte read. HTTP/2 multiplexes frames (SETTINGS arrive before the
        // response), so there it runs from handing over the request.
        let first_byte = if h2 { None } else { clock.first_byte() };
        r.timings.ttfb = Some(match (clock.request_written(), first_byte) {
            (Some(written), Some(first)) if first >= written => first - written,
            _ => headers_at - sent,
        });
        let status = response.status().as_u16();
        r.http_status = Some(status);
        r.http_version = Some(version_name(response.version()).to_owned());
        r.headers = layer_headers(response.headers());
        let location = (300..400)
            .contains(&status)
            .then(|| response.headers().get(http::header::LOCATION))
            .flatten()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| url.join(v).ok())
            .filter(|u| matches!(u.scheme(), "http" | "https"));

        // The body, up to the check's limit, hashed as it arrives.
        let body = read_body(response.into_body(), check.body_hash_bytes, deadline).await;
        let body_end = Instant::now();
        r.timings.transfer = Some(body_end - first_byte.unwrap_or(headers_at));
        r.body_bytes = Some(body.bytes);
        r.body_sha256 = Some(body.sha256);
        r.body_truncated = body.truncated;
        if let Some(layer) = gateway::classify(status, &r.headers, &body.window) {
            r.gateway = Some(layer.gateway);
            r.edge_location = layer.edge_location;
        } else {
            r.edge_location = gateway::edge_location(&r.headers);
        }
        match body.error {
            None => Ok(location),
            Some(BodyError::Timeout) => Err(timed_out("the body transfer")),
            Some(BodyError::Broken(message)) => Err(Failure {
                outcome: Outcome::Protocol,
                message: format!("reading the body: {message}"),
            }),
        }
    }

    fn build_request(
        &self,
        attempt: Attempt<'_>,
        h2: bool,
        seq: u64,
    ) -> Result<http::Request<Empty<Bytes>>, Failure> {
        let Attempt {
            check,
            vantage,
            url,
            method,
            ..
        } = attempt;
        let uri = if h2 {
            url.as_str().to_owned()
        } else {
            url[Position::BeforePath..Position::AfterQuery].to_owned()
        };
        let mut builder = http::Request::builder()
            .method(method)
            .uri(uri)
            .header(http::header::USER_AGENT, &self.user_agent)
            .header(http::header::ACCEPT, "*/*");
        if !h2 {
            let host = &url[Position::BeforeHost..Position::AfterPort];
            builder = builder.header(http::header::HOST, host);
        }
        if self.probe_header {
            builder = builder.header(
                "x-vantage-probe",
                format!("{}/{}/{seq}", self.agent_id, vantage.name),
            );
        }
        for (name, value) in &check.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        builder.body(Empty::new()).map_err(|e| Failure {
            outcome: Outcome::Other,
            message: format!("building the request: {e}"),
        })
    }
}

/// One request of a probe: what to ask, of which address, from which
/// vantage, by when.
#[derive(Clone, Copy)]
struct Attempt<'a> {
    check: &'a CheckConfig,
    vantage: &'a Vantage,
    url: &'a Url,
    method: &'a str,
    addr: SocketAddr,
    deadline: TokioInstant,
}

/// Where a URL points: an address already, or a name to resolve.
enum Destination {
    Literal(SocketAddr),
    Name { domain: String, port: u16 },
}

fn destination(url: &Url) -> Destination {
    // Config validation and the redirect filter admit only http(s) URLs,
    // which always have a known default port.
    let port = url.port_or_known_default().unwrap_or(0);
    match url.host() {
        Some(Host::Ipv4(ip)) => Destination::Literal(SocketAddr::new(IpAddr::V4(ip), port)),
        Some(Host::Ipv6(ip)) => Destination::Literal(SocketAddr::new(IpAddr::V6(ip), port)),
        Some(Host::Domain(domain)) => Destination::Name {
            domain: domain.to_owned(),
            port,
        },
        // Config validation admits only URLs with a host, and so does
        // `Url::join` for http(s); 0.0.0.0:0 would fail visibly.
        None => Destination::Literal(SocketAddr::new(IpAddr::from([0, 0, 0, 0]), 0)),
    }
}

/// A lookup that failed or ran out of the check's time.
struct LookupFailed {
    outcome: Outcome,
    message: String,
    elapsed: Option<Duration>,
    rcode: Option<String>,
}

/// Looks `domain` up through `resolver` within the probe's deadline.
async fn resolve(
    resolver: &DnsResolver,
    domain: &str,
    check: &CheckConfig,
    deadline: TokioInstant,
) -> Result<LookupAnswer, LookupFailed> {
    match timeout_at(deadline, resolver.lookup(domain, check.ip_family)).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(failure)) => Err(LookupFailed {
            outcome: Outcome::Dns,
            message: failure.message,
            elapsed: Some(failure.elapsed),
            rcode: failure.rcode,
        }),
        Err(_) => Err(LookupFailed {
            outcome: Outcome::Timeout,
            message: format!("timed out after {:?} resolving {domain}", check.timeout),
            elapsed: None,
            rcode: None,
        }),
    }
}

/// A failed step: what kind, and why.
struct Failure {
    outcome: Outcome,
    message: String,
}

/// A response on its way, from either HTTP version's connection.
type ResponseFuture =
    std::pin::Pin<Box<dyn Future<Output = hyper::Result<http::Response<Incoming>>> + Send>>;

/// Aborts the connection task when the probe is done with it, so an
/// endless body or a stalled peer never outlives its probe.
struct AbortOnDrop(JoinHandle<()>);

impl AbortOnDrop {
    /// Drives `conn` (a hyper connection) on its own task.
    fn spawn<F>(conn: F) -> Self
    where
        F: Future + Send + 'static,
    {
        Self(tokio::spawn(async move {
            let _ = conn.await;
        }))
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn version_name(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/?",
    }
}

/// The response headers that say which layer answered, lower-case names.
pub fn layer_headers(headers: &http::HeaderMap) -> BTreeMap<String, String> {
    LAYER_HEADERS
        .iter()
        .filter_map(|name| {
            let values: Vec<String> = headers
                .get_all(*name)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect();
            (!values.is_empty()).then(|| ((*name).to_owned(), values.join(", ")))
        })
        .collect()
}

/// A TLS failure; an expired certificate is its own kind.
fn tls_failure(error: std::io::Error) -> Failure {
    let expired = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|e| {
            matches!(
                e,
                rustls::Error::InvalidCertificate(rustls::CertificateError::Expired)
                    | rustls::Error::InvalidCertificate(
                        rustls::CertificateError::ExpiredContext { .. }
                    )
            )
        });
    Failure {
        outcome: if expired {
            Outcome::CertExpiry
        } else {
            Outcome::Tls
        },
        message: format!("TLS handshake: {error}"),
    }
}

/// A failure while speaking HTTP: the peer's bytes were not a valid
/// response (or the connection broke in the middle of one).
fn protocol_failure(error: hyper::Error) -> Failure {
    let mut message = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    Failure {
        outcome: Outcome::Protocol,
        message,
    }
}

enum BodyError {
    Timeout,
    Broken(String),
}

/// What was read of a body.
struct Body {
    bytes: u64,
    sha256: String,
    truncated: bool,
    /// The first bytes, for the gateway signatures.
    window: Vec<u8>,
    error: Option<BodyError>,
}

/// Reads at most `limit` bytes of `body`, hashing them; never more, so an
/// endless body costs `limit` bytes and the check's timeout at most.
async fn read_body(mut body: Incoming, limit: usize, deadline: TokioInstant) -> Body {
    let mut hasher = Sha256::new();
    let mut read = 0usize;
    let mut window = Vec::new();
    let mut truncated = false;
    let mut error = None;
    while read < limit {
        match timeout_at(deadline, body.frame()).await {
            Err(_) => {
                error = Some(BodyError::Timeout);
                break;
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                error = Some(BodyError::Broken(e.to_string()));
                break;
            }
            Ok(Some(Ok(frame))) => {
                let Ok(data) = frame.into_data() else {
                    continue; // trailers
                };
                let take = data.len().min(limit - read);
                if take < data.len() {
                    truncated = true;
                }
                let chunk = &data[..take];
                hasher.update(chunk);
                if window.len() < BODY_WINDOW {
                    let room = BODY_WINDOW - window.len();
                    window.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                read += take;
            }
        }
    }
    if error.is_none() && read >= limit && !hyper::body::Body::is_end_stream(&body) {
        truncated = true;
    }
    Body {
        bytes: u64::try_from(read).unwrap_or(u64::MAX),
        sha256: hex::encode(hasher.finalize()),
        truncated,
        window,
        error,
    }
}
