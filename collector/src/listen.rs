//! Accepting connections within bounds, for both listeners: a cap on open
//! connections (refused beyond it, logged once a minute), the file
//! descriptor limit (raised at start; at the limit, accepting pauses and
//! says so once a minute instead of spinning), and connections that must
//! make progress: the first bytes within a handshake timeout, then no
//! silence longer than an idle timeout.
//!
//! Also the gRPC side's guard against a message that starts and stalls
//! ([`StallGuard`]), and the HTTP side's server with a header-read timeout
//! ([`serve_http`]).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Bytes of the HTTP/2 client preface: until a connection has sent this
/// many, it is still in its handshake.
const HANDSHAKE_BYTES: u64 = 24;
/// Descriptors kept free for what is not a client connection (database
/// pool, outgoing pages, log files): this many, or a quarter of a lower
/// limit.
const RESERVED_DESCRIPTORS: u64 = 256;
/// How long accepting pauses when the process is out of descriptors.
const DESCRIPTOR_PAUSE: Duration = Duration::from_millis(100);
/// At most one log line per this, per kind of refusal.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// How many connections a listener holds and how long each may dawdle.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub max_connections: usize,
    /// The first [`HANDSHAKE_BYTES`] must arrive within this.
    pub handshake_timeout: Duration,
    /// No byte read for this long closes the connection.
    pub idle_timeout: Duration,
}

/// Raises the soft descriptor limit to the hard one (where allowed); the
/// limit now in force.
pub fn raise_descriptor_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => Some(limit),
        Err(error) => {
            tracing::warn!(%error, "Cannot raise the file descriptor limit.");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .ok()
                .map(|(soft, _)| soft)
        }
    }
}

/// `wanted`, lowered so that every connection has a descriptor and some
/// are left for the rest of the process.
pub fn fit_to_descriptors(wanted: usize, descriptor_limit: Option<u64>, listeners: u64) -> usize {
    let Some(limit) = descriptor_limit else {
        return wanted;
    };
    let reserved = RESERVED_DESCRIPTORS.min(limit / 4);
    let room = limit.saturating_sub(reserved) / listeners.max(1);
    let fitted = wanted
        .min(usize::try_from(room).unwrap_or(usize::MAX))
        .max(1);
    if fitted < wanted {
        tracing::warn!(
            wanted,
            fitted,
            descriptor_limit = limit,
            "Fewer connections than configured: the file descriptor limit is too low (raise \
             LimitNOFILE)."
        );
    }
    fitted
}

/// Rate-limited logging of refusals.
struct Refusals {
    listener: &'static str,
    last_logged: Mutex<[Option<Instant>; 2]>,
}

impl Refusals {
    fn record(&self, kind: usize, reason: &'static str, message: &str) {
        metrics::counter!(
            "vantage_connections_refused_total",
            "listener" => self.listener,
            "reason" => reason
        )
        .increment(1);
        let now = Instant::now();
        let mut last = self.last_logged.lock().unwrap_or_else(|p| p.into_inner());
        if last[kind].is_none_or(|at| now.duration_since(at) >= LOG_EVERY) {
            last[kind] = Some(now);
            tracing::error!(
                listener = self.listener,
                reason,
                "{message} (logged once a minute)"
            );
        }
    }
}

/// The connections `listener` accepts, within `bounds`, until `shutdown`.
pub fn incoming(
    listener: TcpListener,
    name: &'static str,
    bounds: Bounds,
    shutdown: CancellationToken,
) -> impl Stream<Item = io::Result<BoundedIo>> + Send + 'static {
    let permits = Arc::new(Semaphore::new(bounds.max_connections));
    let refusals = Arc::new(Refusals {
        listener: name,
        last_logged: Mutex::new([None, None]),
    });
    futures_util::stream::unfold(
        (listener, permits, refusals, shutdown),
        move |(listener, permits, refusals, shutdown)| async move {
            loop {
                let accepted = tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    accepted = listener.accept() => accepted,
                };
                match accepted {
                    Ok((stream, peer)) => {
                        let Ok(permit) = permits.clone().try_acquire_owned() else {
                            // Closed at once: the ones held keep being served.
                            drop(stream);
                            refusals.record(
                                0,
                                "max_connections",
                                &format!(
                                    "Refusing connections: {} are open, the most allowed",
                                    bounds.max_connections
                                ),
                            );
                            continue;
                        };
                        // An ack is a small write after others: Nagle would
                        // hold it for the peer's delayed ACK (40 ms).
                        if let Err(error) = stream.set_nodelay(true) {
                            tracing::debug!(%peer, %error, "Cannot set TCP_NODELAY.");
                        }
                        metrics::gauge!("vantage_connections_open", "listener" => name)
                            .increment(1.0);
                        let io = BoundedIo::new(stream, peer, permit, bounds, name);
                        return Some((Ok(io), (listener, permits, refusals, shutdown)));
                    }
                    Err(error) if out_of_descriptors(&error) => {
                        refusals.record(
                            1,
                            "descriptors",
                            &format!("Cannot accept connections: {error}"),
                        );
                        tokio::time::sleep(DESCRIPTOR_PAUSE).await;
                    }
                    // The peer gave up before we accepted: nothing to do.
                    Err(_) => {}
                }
            }
        },
    )
}

fn out_of_descriptors(error: &io::Error) -> bool {
    // EMFILE (process) and ENFILE (system).
    matches!(error.raw_os_error(), Some(24 | 23))
}

/// An accepted connection that holds its place under the cap and is closed
/// when it stalls.
pub struct BoundedIo {
    stream: TcpStream,
    peer: SocketAddr,
    _permit: OwnedSemaphorePermit,
    listener: &'static str,
    bounds: Bounds,
    read: u64,
    deadline: Pin<Box<Sleep>>,
}

impl BoundedIo {
    fn new(
        stream: TcpStream,
        peer: SocketAddr,
        permit: OwnedSemaphorePermit,
        bounds: Bounds,
        listener: &'static str,
    ) -> Self {
        Self {
            stream,
            peer,
            _permit: permit,
            listener,
            bounds,
            read: 0,
            deadline: Box::pin(tokio::time::sleep(bounds.handshake_timeout)),
        }
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }
}

impl Drop for BoundedIo {
    fn drop(&mut self) {
        metrics::gauge!("vantage_connections_open", "listener" => self.listener).decrement(1.0);
    }
}

impl AsyncRead for BoundedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let n = (buf.filled().len() - before) as u64;
                if n > 0 {
                    this.read += n;
                    let wait = if this.read < HANDSHAKE_BYTES {
                        // The handshake's deadline does not move.
                        return Poll::Ready(Ok(()));
                    } else {
                        this.bounds.idle_timeout
                    };
                    this.deadline.as_mut().reset(Instant::now() + wait);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                ready!(this.deadline.as_mut().poll(cx));
                let what = if this.read < HANDSHAKE_BYTES {
                    "no handshake"
                } else {
                    "idle"
                };
                metrics::counter!(
                    "vantage_connections_closed_total",
                    "listener" => this.listener,
                    "reason" => what
                )
                .increment(1);
                tracing::debug!(peer = %this.peer, listener = this.listener, what, "Closing a stalled connection.");
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connection closed: {what} within the timeout"),
                )))
            }
        }
    }
}

impl AsyncWrite for BoundedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl Connected for BoundedIo {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

/// A gRPC request body whose messages may not stall: once a message has
/// begun (its 5-byte header or part of its body has arrived), more of it
/// must arrive within the limit, or the stream fails with
/// `RESOURCE_EXHAUSTED` ("message stalled"). Between messages a stream may
/// be silent as long as it likes (the connection's keepalive watches it).
pub struct StallGuard {
    inner: tonic::body::Body,
    limit: Duration,
    header: usize,
    header_bytes: [u8; 5],
    body_left: u64,
    deadline: Pin<Box<Sleep>>,
}

impl StallGuard {
    pub fn wrap(inner: tonic::body::Body, limit: Duration) -> tonic::body::Body {
        tonic::body::Body::new(Self {
            inner,
            limit,
            header: 0,
            header_bytes: [0; 5],
            body_left: 0,
            deadline: Box::pin(tokio::time::sleep(limit)),
        })
    }

    fn mid_message(&self) -> bool {
        self.header > 0 || self.body_left > 0
    }

    /// Follows the gRPC framing over `data`.
    fn advance(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.body_left > 0 {
                let n = (self.body_left).min(data.len() as u64);
                self.body_left -= n;
                data = &data[n as usize..];
                continue;
            }
            let n = (5 - self.header).min(data.len());
            self.header_bytes[self.header..self.header + n].copy_from_slice(&data[..n]);
            self.header += n;
            data = &data[n..];
            if self.header == 5 {
                let len = u32::from_be_bytes([
                    self.header_bytes[1],
                    self.header_bytes[2],
                    self.header_bytes[3],
                    self.header_bytes[4],
                ]);
                self.body_left = u64::from(len);
                self.header = 0;
            }
        }
    }
}

impl http_body::Body for StallGuard {
    type Data = tonic::codegen::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.advance(data);
                    if this.mid_message() {
                        let limit = this.limit;
                        this.deadline.as_mut().reset(Instant::now() + limit);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending if this.mid_message() => {
                ready!(this.deadline.as_mut().poll(cx));
                metrics::counter!("vantage_ingest_stalled_messages_total").increment(1);
                Poll::Ready(Some(Err(tonic::Status::resource_exhausted(format!(
                    "protocol error: message stalled: no byte of it for {} s; send whole \
                     messages",
                    this.limit.as_secs()
                )))))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Serves `router` on `incoming` until it ends (at shutdown), with hyper's
/// header-read timeout (a slowloris client is closed after it) and a
/// graceful end for requests in flight.
pub async fn serve_http(
    incoming: impl Stream<Item = io::Result<BoundedIo>> + Send + 'static,
    router: axum::Router,
    header_read_timeout: Duration,
) {
    use futures_util::StreamExt as _;
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;

    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let mut incoming = std::pin::pin!(incoming);
    while let Some(accepted) = incoming.next().await {
        let Ok(io) = accepted else { continue };
        // The peer's address, for the pages' loopback-only rule.
        let peer = io.connect_info().remote_addr();
        let service = TowerToHyperService::new(tower::ServiceExt::map_request(
            router.clone(),
            move |mut request: axum::extract::Request<hyper::body::Incoming>| {
                if let Some(peer) = peer {
                    request
                        .extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                }
                request
            },
        ));
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        let connection = graceful.watch(connection.into_owned());
        tokio::spawn(async move {
            // A client that goes away or times out is not an error here.
            let _ = connection.await;
        });
    }
    // `incoming` ends at shutdown: let requests in flight finish.
    graceful.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_fit_within_the_descriptor_limit() {
        assert_eq!(fit_to_descriptors(1000, None, 2), 1000);
        assert_eq!(fit_to_descriptors(1000, Some(1024), 2), 384);
        assert_eq!(fit_to_descriptors(100, Some(65536), 2), 100);
        assert_eq!(fit_to_descriptors(1000, Some(200), 2), 75);
        assert_eq!(fit_to_descriptors(100, Some(1), 2), 1);
    }
}
