//! One request of a probe on a fresh connection, and its record: connect
//! (to the site or the vantage's proxy), tunnel, TLS handshake, request,
//! response and body, each phase timed. A probe that follows redirects
//! makes one [`Exchange`] per hop, and the result is assembled from them
//! at the end ([`settle`]), as blackbox_exporter keeps one trace per
//! redirect.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use chrono::Utc;
use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::task::JoinHandle;
use tokio::time::{Instant as TokioInstant, timeout_at};
use url::{Position, Url};

use super::super::dns::LookupAnswer;
use super::super::gateway::{self, layer_headers};
use super::super::transport::{self, ClockedIo, SocketClock, TunnelError};
use super::super::{Hop, Outcome, ProbeResult, Timings, TlsInfo};
use super::body::{BodyError, read_body, stall_threshold};
use super::{HttpProber, MAX_HEADER_BYTES, MAX_HEADERS};
use crate::probe::vantage::Vantage;
use vantage_check::{CheckConfig, HttpVersion};

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
    url: String,
    dialed: SocketAddr,
    /// The lookup that found `dialed`, if one did.
    pub(super) lookup: Option<LookupAnswer>,
    local_ip: Option<IpAddr>,
    proxy_ip: Option<IpAddr>,
    pub(super) timings: Timings,
    pub(super) http_status: Option<u16>,
    http_version: Option<String>,
    proxy_status: Option<u16>,
    tls: Option<TlsInfo>,
    body_bytes: Option<u64>,
    body_sha256: Option<String>,
    body_truncated: bool,
    /// Why the body read fails the check's body patterns, if it does.
    body_mismatch: Option<String>,
    gateway: Option<String>,
    edge_location: Option<String>,
    headers: BTreeMap<String, String>,
    outcome: Outcome,
    message: String,
}

impl Exchange {
    fn new(url: &Url, dialed: SocketAddr, dns: Option<Duration>) -> Self {
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

impl HttpProber {
    /// One request on a fresh connection: its record, and the redirect
    /// target when the check follows redirects and the response is one.
    pub(super) async fn request(
        &self,
        attempt: Attempt<'_>,
        dns: Option<Duration>,
    ) -> (Exchange, Option<Url>) {
        let check = attempt.check;
        let mut ex = Exchange::new(attempt.url, attempt.addr, dns);
        match self.exchange(&mut ex, attempt).await {
            Err(failure) => {
                ex.outcome = failure.outcome;
                ex.message = failure.message;
                (ex, None)
            }
            Ok(location) => {
                // A bad status or expiring certificate is reported over a
                // redirect to follow, so the probe stops where it failed.
                let status = ex.http_status.unwrap_or(0);
                let expiring = ex
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
                    ex.outcome = Outcome::CertExpiry;
                    ex.message = if left < chrono::Duration::zero() {
                        format!("certificate expired at {not_after}")
                    } else {
                        format!(
                            "certificate expires at {not_after}, in {}h, under the threshold of {:?}",
                            left.num_hours(),
                            check.cert_expiry_threshold
                        )
                    };
                    return (ex, None);
                }
                if let Some(location) = location.filter(|_| check.follow_redirects > 0) {
                    ex.outcome = Outcome::Ok;
                    return (ex, Some(location));
                }
                if check.expects(status) {
                    match ex.body_mismatch.take() {
                        Some(why) => {
                            ex.outcome = Outcome::BodyMatch;
                            ex.message = why;
                        }
                        None => ex.outcome = Outcome::Ok,
                    }
                } else {
                    ex.outcome = Outcome::Http;
                    ex.message = format!("unexpected status {status}");
                }
                (ex, None)
            }
        }
    }

    /// Connects, tunnels, handshakes, sends and reads, timing each step.
    /// Returns the `Location` of a 3xx response.
    async fn exchange(
        &self,
        ex: &mut Exchange,
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
                ex.proxy_ip = Some(hop.ip());
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
        ex.timings.connect = Some(t.elapsed());
        ex.local_ip = Some(local.ip());

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
                ex.timings.proxy = Some(t.elapsed());
                match tunnel {
                    Ok(io) => io,
                    Err(e) => {
                        ex.gateway = Some(gateway::FORWARD_PROXY.into());
                        if let TunnelError::Refused { status, headers } = &e {
                            ex.proxy_status = Some(*status);
                            ex.headers = headers.clone();
                        }
                        return Err(Failure {
                            outcome: Outcome::Proxy,
                            message: format!("{} for {addr}: {e}", proxy.redacted()),
                        });
                    }
                }
            }
        };

        // TLS with the site, SNI from the URL's host (or the check's
        // tls_server_name, on the check's own host).
        let https = url.scheme() == "https";
        let (io, h2) = if https {
            let config = self
                .tls
                .get(
                    check.ca_file.as_deref(),
                    check.http_version,
                    check.tls_insecure_skip_verify,
                )
                .ok_or_else(|| Failure {
                    outcome: Outcome::Other,
                    message: "no TLS configuration for this check".into(),
                })?;
            let host = match &check.tls_server_name {
                Some(name) if same_site(check, url) => name.as_str(),
                _ => url.host_str().unwrap_or_default(),
            };
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let name = ServerName::try_from(host.to_owned()).map_err(|e| Failure {
                outcome: Outcome::Tls,
                message: format!("server name {host:?}: {e}"),
            })?;
            let t = Instant::now();
            let (io, info) = timeout_at(deadline, transport::tls_handshake(io, name, config))
                .await
                .map_err(|_| timed_out("TLS handshake"))?
                .map_err(|e| tls_failure(e, host))?;
            ex.timings.tls = Some(t.elapsed());
            let h2 = info.alpn.as_deref() == Some("h2");
            ex.tls = Some(info);
            (io, h2)
        } else {
            (io, check.http_version == HttpVersion::Http2)
        };

        // The request.
        let clock = SocketClock::new();
        let io = TokioIo::new(ClockedIo::new(io, clock.clone()));
        let request = self.build_request(attempt, h2)?;
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
        ex.timings.ttfb = Some(match (clock.request_written(), first_byte) {
            (Some(written), Some(first)) if first >= written => first - written,
            _ => headers_at - sent,
        });
        let status = response.status().as_u16();
        ex.http_status = Some(status);
        ex.http_version = Some(version_name(response.version()).to_owned());
        ex.headers = layer_headers(response.headers());
        let location = (300..400)
            .contains(&status)
            .then(|| response.headers().get(http::header::LOCATION))
            .flatten()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| url.join(v).ok())
            .filter(|u| matches!(u.scheme(), "http" | "https"));

        // The body, up to the check's limit, hashed as it arrives.
        let keep_all =
            !check.fail_if_body_matches.is_empty() || !check.fail_if_body_not_matches.is_empty();
        let body = read_body(
            response.into_body(),
            check.body_hash_bytes,
            keep_all,
            deadline,
        )
        .await;
        let body_end = Instant::now();
        ex.timings.transfer = Some(body_end - first_byte.unwrap_or(headers_at));
        ex.body_bytes = Some(body.bytes);
        ex.body_sha256 = Some(body.sha256);
        ex.body_truncated = body.truncated;
        if let Some(layer) = gateway::classify(status, &ex.headers, &body.window) {
            ex.gateway = Some(layer.gateway);
            ex.edge_location = layer.edge_location;
        } else {
            ex.edge_location = gateway::edge_location(&ex.headers);
        }
        match body.error {
            None => {
                if keep_all {
                    ex.body_mismatch = body_mismatch(check, &body.window);
                }
                Ok(location)
            }
            Some(BodyError::Timeout { stalled_for })
                if stalled_for >= stall_threshold(check.timeout) =>
            {
                Err(Failure {
                    outcome: Outcome::Stalled,
                    message: format!(
                        "the body stopped after {} bytes: nothing more for the last {:.1}s of the \
                         {:?} timeout (large packets lost on the way, as in a path-MTU black \
                         hole, look like this)",
                        body.bytes,
                        stalled_for.as_secs_f64(),
                        check.timeout
                    ),
                })
            }
            Some(BodyError::Timeout { .. }) => Err(timed_out("the body transfer")),
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
    ) -> Result<http::Request<Empty<Bytes>>, Failure> {
        let Attempt {
            check,
            vantage,
            url,
            method,
            seq,
            ..
        } = attempt;
        // The check's host_header stands for the URL's host and port on
        // the check's own site (`Host`, or HTTP/2's `:authority`).
        let host_header = check
            .host_header
            .as_ref()
            .filter(|_| same_site(check, url))
            .map(|h| h.as_str());
        let uri = match (h2, host_header) {
            (true, None) => url.as_str().to_owned(),
            (true, Some(host)) => format!(
                "{}://{host}{}",
                url.scheme(),
                &url[Position::BeforePath..Position::AfterQuery]
            ),
            (false, _) => url[Position::BeforePath..Position::AfterQuery].to_owned(),
        };
        let mut builder = http::Request::builder()
            .method(method)
            .uri(uri)
            .header(http::header::USER_AGENT, &self.user_agent)
            .header(http::header::ACCEPT, "*/*");
        if !h2 {
            let host = host_header.unwrap_or(&url[Position::BeforeHost..Position::AfterPort]);
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
        // Read at every request: a rotated secret is used from the next.
        let file_headers = check.file_headers().map_err(|message| Failure {
            outcome: Outcome::Other,
            message,
        })?;
        for (name, value) in file_headers {
            builder = builder.header(name, value);
        }
        builder.body(Empty::new()).map_err(|e| Failure {
            outcome: Outcome::Other,
            message: format!("building the request: {e}"),
        })
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

/// Whether `url` is the check's own site (scheme, host and port), where
/// its `tls_server_name` and `host_header` apply; a redirect elsewhere
/// gets its own URL's.
fn same_site(check: &CheckConfig, url: &Url) -> bool {
    let own = check.url.url();
    own.scheme() == url.scheme()
        && own.host_str() == url.host_str()
        && own.port_or_known_default() == url.port_or_known_default()
}

/// Why `body` fails the check's body patterns: the first pattern it
/// matches of `fail_if_body_matches`, or misses of
/// `fail_if_body_not_matches`.
fn body_mismatch(check: &CheckConfig, body: &[u8]) -> Option<String> {
    if let Some(p) = check.fail_if_body_matches.iter().find(|p| p.is_match(body)) {
        return Some(format!(
            "the body matched fail_if_body_matches {:?} (in the {} bytes read)",
            p.as_str(),
            body.len()
        ));
    }
    check
        .fail_if_body_not_matches
        .iter()
        .find(|p| !p.is_match(body))
        .map(|p| {
            format!(
                "the body did not match fail_if_body_not_matches {:?} (in the {} bytes read)",
                p.as_str(),
                body.len()
            )
        })
}

/// A TLS failure, its certificate problem in words; an expired
/// certificate is its own kind.
fn tls_failure(error: std::io::Error, server_name: &str) -> Failure {
    let rustls_error = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let expired = rustls_error.is_some_and(|e| {
        matches!(
            e,
            rustls::Error::InvalidCertificate(rustls::CertificateError::Expired)
                | rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ExpiredContext { .. }
                )
        )
    });
    let message = match rustls_error {
        Some(rustls::Error::InvalidCertificate(problem)) => format!(
            "TLS handshake: {}",
            super::super::tls::certificate_problem(problem, server_name)
        ),
        _ => format!("TLS handshake: {error}"),
    };
    Failure {
        outcome: if expired {
            Outcome::CertExpiry
        } else {
            Outcome::Tls
        },
        message,
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
