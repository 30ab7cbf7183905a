//! Forward proxies on loopback, as a vantage's egress path: HTTP CONNECT
//! (hyper, optional Basic credentials, optionally refusing every tunnel
//! with a status of its own) and SOCKS5 (fast-socks5, optional
//! username/password).

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use base64::Engine as _;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::{CancellationToken, DropGuard};

/// Which proxy, and how it behaves.
#[derive(Debug, Clone)]
pub enum ProxyKind {
    /// HTTP CONNECT. `refuse_with` answers every CONNECT with that status
    /// and an error page of the proxy's own.
    Http {
        credentials: Option<(String, String)>,
        refuse_with: Option<u16>,
    },
    Socks5 {
        credentials: Option<(String, String)>,
    },
}

/// The error page the HTTP proxy sends when it refuses a tunnel.
pub const PROXY_ERROR_BODY: &str =
    "<html><body><h1>502 Bad Gateway</h1>vantage-testkit proxy: upstream unreachable</body></html>";

/// A running proxy; stops when dropped.
pub struct ForwardProxy {
    addr: SocketAddr,
    tunnels: Arc<AtomicU64>,
    /// An HTTP proxy's refusal status, changeable while it runs.
    refusing: Arc<std::sync::Mutex<Option<u16>>>,
    /// Ports its upstream cannot reach: a CONNECT to one gets the
    /// proxy's own 502, as behind a dead upstream route.
    unreachable: Arc<std::sync::Mutex<Vec<u16>>>,
    _stop: DropGuard,
}

impl ForwardProxy {
    pub async fn start(bind_ip: IpAddr, kind: ProxyKind) -> Result<Self> {
        let listener = TcpListener::bind(SocketAddr::new(bind_ip, 0))
            .await
            .context("bind proxy")?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let tunnels = Arc::new(AtomicU64::new(0));
        let count = tunnels.clone();
        let refusing = Arc::new(std::sync::Mutex::new(match &kind {
            ProxyKind::Http { refuse_with, .. } => *refuse_with,
            ProxyKind::Socks5 { .. } => None,
        }));
        let refusal = refusing.clone();
        let unreachable = Arc::new(std::sync::Mutex::new(Vec::new()));
        let dead = unreachable.clone();
        crate::accept::serve_connections(listener, stop.clone(), move |stream| {
            serve(
                stream,
                kind.clone(),
                count.clone(),
                refusal.clone(),
                dead.clone(),
            )
        });
        Ok(Self {
            addr,
            tunnels,
            refusing,
            unreachable,
            _stop: stop.drop_guard(),
        })
    }

    /// Makes an HTTP proxy refuse every tunnel with `status` from now on
    /// (`None`: tunnel again).
    pub fn set_refusing(&self, status: Option<u16>) {
        *self.refusing.lock().unwrap_or_else(|e| e.into_inner()) = status;
    }

    /// Makes an HTTP proxy answer its own 502 to every CONNECT to one of
    /// `ports` from now on (its upstream towards them is dead); empty:
    /// every port is reachable again.
    pub fn set_unreachable_ports(&self, ports: &[u16]) {
        *self.unreachable.lock().unwrap_or_else(|e| e.into_inner()) = ports.to_vec();
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Tunnels opened to a target.
    pub fn tunnels(&self) -> u64 {
        self.tunnels.load(Ordering::Relaxed)
    }
}

async fn serve(
    stream: TcpStream,
    kind: ProxyKind,
    tunnels: Arc<AtomicU64>,
    refusing: Arc<std::sync::Mutex<Option<u16>>>,
    unreachable: Arc<std::sync::Mutex<Vec<u16>>>,
) {
    match kind {
        ProxyKind::Socks5 { credentials } => {
            let _ = serve_socks5(stream, credentials, tunnels).await;
        }
        ProxyKind::Http { credentials, .. } => {
            let service = service_fn(move |req: Request<Incoming>| {
                let mut refuse_with = *refusing.lock().unwrap_or_else(|e| e.into_inner());
                let port = req.uri().port_u16();
                if refuse_with.is_none()
                    && port.is_some_and(|p| {
                        unreachable
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .contains(&p)
                    })
                {
                    refuse_with = Some(502);
                }
                connect(req, credentials.clone(), refuse_with, tunnels.clone())
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        }
    }
}

async fn serve_socks5(
    stream: TcpStream,
    credentials: Option<(String, String)>,
    tunnels: Arc<AtomicU64>,
) -> Result<()> {
    use fast_socks5::Socks5Command;
    use fast_socks5::server::{DnsResolveHelper as _, Socks5ServerProtocol, run_tcp_proxy};
    let proto = match credentials {
        None => Socks5ServerProtocol::accept_no_auth(stream).await?,
        Some((user, pass)) => {
            Socks5ServerProtocol::accept_password_auth(stream, move |u, p| u == user && p == pass)
                .await?
                .0
        }
    };
    let (proto, cmd, target) = proto.read_command().await?.resolve_dns().await?;
    anyhow::ensure!(
        cmd == Socks5Command::TCPConnect,
        "only CONNECT is supported"
    );
    tunnels.fetch_add(1, Ordering::Relaxed);
    run_tcp_proxy(proto, &target, Duration::from_secs(10), false).await?;
    Ok(())
}

fn reply(status: u16, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    response
}

async fn connect(
    req: Request<Incoming>,
    credentials: Option<(String, String)>,
    refuse_with: Option<u16>,
    tunnels: Arc<AtomicU64>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::CONNECT {
        return Ok(reply(405, "only CONNECT"));
    }
    if let Some((user, pass)) = credentials {
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        );
        let given = req
            .headers()
            .get(hyper::header::PROXY_AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if given != Some(expected.as_str()) {
            let mut response = reply(407, "proxy authentication required");
            response.headers_mut().insert(
                hyper::header::PROXY_AUTHENTICATE,
                hyper::header::HeaderValue::from_static("Basic realm=\"vantage\""),
            );
            return Ok(response);
        }
    }
    if let Some(status) = refuse_with {
        return Ok(reply(status, PROXY_ERROR_BODY));
    }
    let Some(target) = req.uri().authority().map(ToString::to_string) else {
        return Ok(reply(400, "CONNECT needs host:port"));
    };
    let upstream = match TcpStream::connect(&target).await {
        Ok(s) => s,
        Err(_) => return Ok(reply(502, PROXY_ERROR_BODY)),
    };
    tunnels.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(async move {
        if let Ok(upgraded) = hyper::upgrade::on(req).await {
            let mut client = TokioIo::new(upgraded);
            let mut upstream = upstream;
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        }
    });
    Ok(Response::new(Full::new(Bytes::new())))
}
