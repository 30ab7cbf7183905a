//! An HTTP target that fails with 502 for some source ranges.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use ipnet::IpNet;
use tokio::net::TcpListener;
use tokio_util::sync::{CancellationToken, DropGuard};

/// The error page nginx serves for a 502, so the layer is recognisable.
const NGINX_502_BODY: &str = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";

#[derive(Default)]
struct Shared {
    failing: RwLock<Vec<IpNet>>,
    requests: AtomicU64,
    failures: AtomicU64,
    /// `(agent, seq)` of every probe seen, from its `X-Vantage-Probe`.
    probes: std::sync::Mutex<Vec<(String, u64)>>,
}

/// A running target site; stops when dropped.
pub struct Target {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _stop: DropGuard,
}

impl Target {
    /// Starts the site on `bind_ip` (free port), failing for `failing`.
    pub async fn start(bind_ip: IpAddr, failing: Option<IpNet>) -> Result<Self> {
        Self::start_at(SocketAddr::new(bind_ip, 0), failing).await
    }

    /// Starts the site on `addr` (e.g. a second address of a name, on the
    /// same port as the first), failing for `failing`.
    pub async fn start_at(addr: SocketAddr, failing: Option<IpNet>) -> Result<Self> {
        let shared = Arc::new(Shared::default());
        *shared.failing.write().unwrap_or_else(|e| e.into_inner()) = failing.into_iter().collect();
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("bind target listener on {addr}"))?;
        let addr = listener.local_addr()?;
        let app = Router::new()
            .route("/ip", axum::routing::get(echo_ip))
            .fallback(serve)
            .with_state(shared.clone());
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            let service = app.into_make_service_with_connect_info::<SocketAddr>();
            let _ = axum::serve(listener, service)
                .with_graceful_shutdown(stopped.cancelled_owned())
                .await;
        });
        Ok(Self {
            addr,
            shared,
            _stop: stop.drop_guard(),
        })
    }

    /// The socket address the site listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes (or clears, with `None`) the range that gets 502.
    pub fn set_failing(&self, failing: Option<IpNet>) {
        self.set_failing_ranges(&failing.into_iter().collect::<Vec<_>>());
    }

    /// Changes the ranges that get 502 (none: healthy; `0.0.0.0/0`:
    /// everyone).
    pub fn set_failing_ranges(&self, ranges: &[IpNet]) {
        *self
            .shared
            .failing
            .write()
            .unwrap_or_else(|e| e.into_inner()) = ranges.to_vec();
    }

    /// Sequence numbers of the probes `agent` sent here (from their
    /// `X-Vantage-Probe: agent/vantage/seq` header): what the agent
    /// produced, as seen from outside it.
    pub fn probe_seqs(&self, agent: &str) -> std::collections::BTreeSet<u64> {
        self.shared
            .probes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(a, _)| a == agent)
            .map(|(_, seq)| *seq)
            .collect()
    }

    /// Requests served so far, and how many of them got 502.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.shared.requests.load(Ordering::Relaxed),
            self.shared.failures.load(Ordering::Relaxed),
        )
    }
}

/// An IP-echo service: the caller's address as plain text (not counted).
async fn echo_ip(ConnectInfo(peer): ConnectInfo<SocketAddr>) -> String {
    peer.ip().to_string()
}

async fn serve(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
) -> Response {
    shared.requests.fetch_add(1, Ordering::Relaxed);
    let probe = headers
        .get("x-vantage-probe")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let mut parts = v.split('/');
            let agent = parts.next()?.to_owned();
            let seq = parts.nth(1)?.parse().ok()?;
            Some((agent, seq))
        });
    if let Some(probe) = probe {
        shared
            .probes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(probe);
    }
    let failing = shared
        .failing
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .any(|net| net.contains(&peer.ip()));
    if failing {
        shared.failures.fetch_add(1, Ordering::Relaxed);
        return (
            StatusCode::BAD_GATEWAY,
            [
                (header::SERVER, "nginx/1.25.3"),
                (header::CONTENT_TYPE, "text/html"),
            ],
            NGINX_502_BODY,
        )
            .into_response();
    }
    (
        StatusCode::OK,
        [(header::SERVER, "vantage-testkit")],
        "ok\n",
    )
        .into_response()
}
