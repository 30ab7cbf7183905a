//! The transport under a probe, one step at a time so each is timed on its
//! own: the TCP connection (bound to the vantage's source address), the
//! tunnel through the vantage's forward proxy, and the TLS handshake. Also
//! the socket-level clock that tells when the request was written and when
//! the first response byte arrived.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use base64::Engine as _;
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};

use super::TlsInfo;
use super::proxy::{ProxyKind, ProxyUrl};

/// Any byte stream a probe can speak HTTP over.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}
pub type BoxIo = Box<dyn Io>;

/// Opens a TCP connection to `addr`, from `source_ip` when given. Returns
/// the stream and the local address the OS chose.
pub async fn tcp_connect(
    addr: SocketAddr,
    source_ip: Option<IpAddr>,
) -> io::Result<(TcpStream, SocketAddr)> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source_ip {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(addr).await?;
    // Requests are written in one go; Nagle would only delay the timing.
    stream.set_nodelay(true)?;
    let local = stream.local_addr()?;
    Ok((stream, local))
}

/// Why a forward proxy did not give a tunnel.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The proxy answered the CONNECT with a non-2xx status: the proxy's
    /// failure, not the site's.
    #[error("proxy answered CONNECT with {status}")]
    Refused {
        status: u16,
        headers: std::collections::BTreeMap<String, String>,
    },
    #[error("TLS to the proxy failed: {0}")]
    ProxyTls(io::Error),
    #[error("proxy protocol error: {0}")]
    Protocol(String),
}

/// Asks the proxy on `stream` for a tunnel to `target`. An `https://`
/// proxy is first spoken to over TLS (with `proxy_tls`).
pub async fn tunnel(
    stream: TcpStream,
    proxy: &ProxyUrl,
    proxy_tls: Option<Arc<ClientConfig>>,
    target: SocketAddr,
) -> Result<BoxIo, TunnelError> {
    match proxy.kind {
        ProxyKind::Socks5 => {
            let result = match &proxy.credentials {
                Some((user, pass)) => {
                    tokio_socks::tcp::Socks5Stream::connect_with_password_and_socket(
                        stream, target, user, pass,
                    )
                    .await
                }
                None => tokio_socks::tcp::Socks5Stream::connect_with_socket(stream, target).await,
            };
            result
                .map(|s| Box::new(s) as BoxIo)
                .map_err(|e| TunnelError::Protocol(format!("SOCKS5: {e}")))
        }
        ProxyKind::Http => http_connect(Box::new(stream), proxy, target).await,
        ProxyKind::Https => {
            let config = proxy_tls.ok_or_else(|| {
                TunnelError::Protocol("no TLS configuration for the proxy".into())
            })?;
            let name = ServerName::try_from(proxy.host.clone())
                .map_err(|e| TunnelError::Protocol(format!("proxy host: {e}")))?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, stream)
                .await
                .map_err(TunnelError::ProxyTls)?;
            http_connect(Box::new(tls), proxy, target).await
        }
    }
}

/// An HTTP/1.1 CONNECT over `io`, with Basic credentials when configured.
async fn http_connect(
    io: BoxIo,
    proxy: &ProxyUrl,
    target: SocketAddr,
) -> Result<BoxIo, TunnelError> {
    let protocol = |e: hyper::Error| TunnelError::Protocol(e.to_string());
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(io))
            .await
            .map_err(protocol)?;
    // The connection task ends once the tunnel is handed over (or fails).
    tokio::spawn(async move {
        if let Err(error) = conn.with_upgrades().await {
            tracing::debug!(%error, "Proxy CONNECT connection ended.");
        }
    });
    let authority = target.to_string();
    let mut request =
        http::Request::connect(authority.as_str()).header(http::header::HOST, &authority);
    if let Some((user, pass)) = &proxy.credentials {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        request = request.header(http::header::PROXY_AUTHORIZATION, format!("Basic {token}"));
    }
    let request = request
        .body(Empty::new())
        .map_err(|e| TunnelError::Protocol(e.to_string()))?;
    let response = sender.send_request(request).await.map_err(protocol)?;
    if !response.status().is_success() {
        let headers = super::gateway::layer_headers(response.headers());
        return Err(TunnelError::Refused {
            status: response.status().as_u16(),
            headers,
        });
    }
    let upgraded = hyper::upgrade::on(response).await.map_err(protocol)?;
    Ok(Box::new(TokioIo::new(upgraded)))
}

/// Runs the TLS handshake for `server_name` over `io`.
pub async fn tls_handshake(
    io: BoxIo,
    server_name: ServerName<'static>,
    config: Arc<ClientConfig>,
) -> io::Result<(BoxIo, TlsInfo)> {
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(server_name, io)
        .await?;
    let info = super::tls::tls_info(stream.get_ref().1);
    Ok((Box::new(stream), info))
}

/// When, on one connection, the request was last written and the first
/// response byte arrived, in nanoseconds since `origin` (0 = not yet).
#[derive(Debug)]
pub struct SocketClock {
    origin: Instant,
    written: AtomicU64,
    first_byte: AtomicU64,
}

impl SocketClock {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            origin: Instant::now(),
            written: AtomicU64::new(0),
            first_byte: AtomicU64::new(0),
        })
    }

    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    fn at(&self, nanos: u64) -> Option<Instant> {
        (nanos != 0).then(|| self.origin + Duration::from_nanos(nanos))
    }

    /// Records a write that moved bytes, until the response has begun.
    fn stamp_write(&self, poll: &Poll<io::Result<usize>>) {
        if matches!(poll, Poll::Ready(Ok(n)) if *n > 0)
            && self.first_byte.load(Ordering::Acquire) == 0
        {
            self.written.store(self.now(), Ordering::Release);
        }
    }

    /// When the last write before the first response byte completed.
    pub fn request_written(&self) -> Option<Instant> {
        self.at(self.written.load(Ordering::Acquire))
    }

    /// When the first response byte was read.
    pub fn first_byte(&self) -> Option<Instant> {
        self.at(self.first_byte.load(Ordering::Acquire))
    }
}

/// A stream that stamps `clock` as bytes cross it.
pub struct ClockedIo {
    inner: BoxIo,
    clock: Arc<SocketClock>,
}

impl ClockedIo {
    pub fn new(inner: BoxIo, clock: Arc<SocketClock>) -> Self {
        Self { inner, clock }
    }
}

impl AsyncRead for ClockedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let now = self.clock.now();
            let _ =
                self.clock
                    .first_byte
                    .compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire);
        }
        poll
    }
}

impl AsyncWrite for ClockedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.clock.stamp_write(&poll);
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.clock.stamp_write(&poll);
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
