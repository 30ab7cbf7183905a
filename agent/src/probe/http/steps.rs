//! The steps of one request on a fresh connection, each timed on its own:
//! TCP from the vantage's source, the proxy's tunnel, the TLS handshake,
//! the request and the response's head, then the body. Each step records
//! what it found in the [`Exchange`] and fails as what it was.

use std::time::{Duration, Instant};

use chrono::Utc;

use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::task::JoinHandle;
use tokio::time::timeout_at;
use url::{Position, Url};
use vantage_check::{CheckConfig, HttpVersion};

use super::super::Outcome;
use super::super::gateway::{self, layer_headers};
use super::super::transport::{self, ClockedIo, SocketClock, TunnelError};
use super::body::{BodyError, read_body, stall_threshold};
use super::exchange::{Attempt, Exchange};
use super::failure::{Failure, protocol_failure, timed_out, tls_failure};
use super::{HttpProber, MAX_HEADER_BYTES, MAX_HEADERS};

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
        let stream = self.connect(ex, attempt).await?;
        let io = self.tunnel(ex, attempt, stream).await?;
        let (io, h2) = self.handshake(ex, attempt, io).await?;
        let answer = self.send(ex, attempt, io, h2).await?;
        self.read(ex, attempt, answer).await
    }

    /// TCP, to the site or to the vantage's proxy, from the vantage's
    /// source address.
    pub(super) async fn connect(
        &self,
        ex: &mut Exchange,
        attempt: Attempt<'_>,
    ) -> Result<tokio::net::TcpStream, Failure> {
        let Attempt {
            check,
            vantage,
            addr,
            deadline,
            ..
        } = attempt;
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
        .map_err(|_| timed_out(check, "connect"))?
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

        Ok(stream)
    }

    /// The tunnel through the vantage's proxy, if it has one.
    pub(super) async fn tunnel(
        &self,
        ex: &mut Exchange,
        attempt: Attempt<'_>,
        stream: tokio::net::TcpStream,
    ) -> Result<transport::BoxIo, Failure> {
        let Attempt {
            check,
            vantage,
            addr,
            deadline,
            ..
        } = attempt;
        Ok(match &vantage.proxy {
            None => Box::new(stream),
            Some(proxy) => {
                let t = Instant::now();
                let tunnel = timeout_at(
                    deadline,
                    transport::tunnel(stream, proxy, self.tls.proxy(), addr),
                )
                .await
                .map_err(|_| timed_out(check, "proxy tunnel"))?;
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
        })
    }

    /// TLS with the site on https (SNI from the URL's host, or the
    /// check's tls_server_name on its own host); whether HTTP/2 was agreed.
    pub(super) async fn handshake(
        &self,
        ex: &mut Exchange,
        attempt: Attempt<'_>,
        io: transport::BoxIo,
    ) -> Result<(transport::BoxIo, bool), Failure> {
        let Attempt {
            check,
            url,
            deadline,
            ..
        } = attempt;
        let https = url.scheme() == "https";
        Ok(if https {
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
                .map_err(|_| timed_out(check, "TLS handshake"))?
                .map_err(|e| tls_failure(e, host))?;
            ex.timings.tls = Some(t.elapsed());
            let h2 = info.alpn.as_deref() == Some("h2");
            ex.tls = Some(info);
            (io, h2)
        } else {
            (io, check.http_version == HttpVersion::Http2)
        })
    }

    /// Sends the request on the connection and waits for the response's
    /// head, timing the wait at the socket.
    pub(super) async fn send(
        &self,
        ex: &mut Exchange,
        attempt: Attempt<'_>,
        io: transport::BoxIo,
        h2: bool,
    ) -> Result<Answer, Failure> {
        let Attempt {
            check,
            url,
            deadline,
            ..
        } = attempt;
        let clock = SocketClock::new();
        let io = TokioIo::new(ClockedIo::new(io, clock.clone()));
        let request = self.build_request(attempt, h2)?;
        let sent = Instant::now();
        // The connection task lives as long as `_conn`: to the end of this
        // exchange, body included.
        let (waiting, conn) = if h2 {
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
            .map_err(|_| timed_out(check, "waiting for the response"))?
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

        Ok(Answer {
            response,
            location,
            headers_at,
            first_byte,
            _conn: conn,
        })
    }

    /// Reads the body up to the check's limit, hashing it, and says how it
    /// ended; the `Location` to follow of a 3xx.
    pub(super) async fn read(
        &self,
        ex: &mut Exchange,
        attempt: Attempt<'_>,
        answer: Answer,
    ) -> Result<Option<Url>, Failure> {
        let Attempt {
            check, deadline, ..
        } = attempt;
        let Answer {
            response,
            location,
            headers_at,
            first_byte,
            _conn,
        } = answer;
        let status = ex.http_status.unwrap_or(0);
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
            Some(BodyError::Timeout { .. }) => Err(timed_out(check, "the body transfer")),
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

/// A response's head as [`HttpProber::send`] got it, for
/// [`HttpProber::read`].
pub(super) struct Answer {
    response: http::Response<Incoming>,
    /// Where a 3xx points.
    location: Option<Url>,
    headers_at: Instant,
    /// HTTP/1.1: when the first response byte was read.
    first_byte: Option<Instant>,
    /// The connection's task, alive to the end of the body.
    _conn: AbortOnDrop,
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

pub(super) fn version_name(v: http::Version) -> &'static str {
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
pub(super) fn same_site(check: &CheckConfig, url: &Url) -> bool {
    let own = check.url.url();
    own.scheme() == url.scheme()
        && own.host_str() == url.host_str()
        && own.port_or_known_default() == url.port_or_known_default()
}

/// Why `body` fails the check's body patterns: the first pattern it
/// matches of `fail_if_body_matches`, or misses of
/// `fail_if_body_not_matches`.
fn body_mismatch(check: &CheckConfig, bytes: &[u8]) -> Option<String> {
    // Once for every pattern: bytes that are not UTF-8 read as U+FFFD.
    let text = String::from_utf8_lossy(bytes);
    let body: &str = &text;
    if let Some(p) = check.fail_if_body_matches.iter().find(|p| p.is_match(body)) {
        return Some(format!(
            "the body matched fail_if_body_matches {:?} (in the {} bytes read)",
            p.as_str(),
            bytes.len()
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
                bytes.len()
            )
        })
}
