//! A webhook receiver that records every request POSTed to it (any path):
//! headers, raw body and JSON. A test can make it refuse (any status) or
//! answer slowly, as a receiver that is down or overloaded would.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::post;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, DropGuard};

/// One request that was answered with a 2xx.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    /// Header names in lower case.
    pub headers: BTreeMap<String, String>,
    pub raw: Vec<u8>,
    /// The body as JSON (`Null` if it was not JSON).
    pub body: Value,
}

struct Inbox {
    requests: Mutex<Vec<Received>>,
    arrived: Notify,
    /// Requests that reached the handler, whatever it answered.
    attempts: AtomicU64,
    status: AtomicU16,
    delay_ms: AtomicU64,
}

/// A running receiver; stops when dropped.
pub struct WebhookReceiver {
    addr: SocketAddr,
    inbox: Arc<Inbox>,
    _stop: DropGuard,
}

impl WebhookReceiver {
    /// Starts the receiver on `bind_ip` (free port); it answers 204.
    pub async fn start(bind_ip: IpAddr) -> Result<Self> {
        let inbox = Arc::new(Inbox {
            requests: Mutex::default(),
            arrived: Notify::new(),
            attempts: AtomicU64::new(0),
            status: AtomicU16::new(204),
            delay_ms: AtomicU64::new(0),
        });
        let listener = TcpListener::bind(SocketAddr::new(bind_ip, 0))
            .await
            .context("bind webhook listener")?;
        let addr = listener.local_addr()?;
        let app = Router::new()
            .route("/", post(receive))
            .route("/{*path}", post(receive))
            .with_state(inbox.clone());
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stopped.cancelled_owned())
                .await;
        });
        Ok(Self {
            addr,
            inbox,
            _stop: stop.drop_guard(),
        })
    }

    /// The URL to configure as a webhook.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// `http://ip:port`, for sinks that add their own path.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answer every later request with `status` (e.g. 503: down).
    pub fn set_status(&self, status: u16) {
        self.inbox.status.store(status, Ordering::SeqCst);
    }

    /// Answer every later request only after `delay`; a request whose
    /// client gives up meanwhile is not recorded.
    pub fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.inbox.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Requests that reached the receiver, answered or not.
    pub fn attempts(&self) -> u64 {
        self.inbox.attempts.load(Ordering::SeqCst)
    }

    /// Every request answered with a 2xx, in arrival order.
    pub fn requests(&self) -> Vec<Received> {
        self.inbox
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Every JSON body answered with a 2xx, in arrival order.
    pub fn received(&self) -> Vec<Value> {
        self.requests().into_iter().map(|r| r.body).collect()
    }

    /// Waits until a received body satisfies `pred`, or `timeout` passes;
    /// returns the matching body.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let arrived = self.inbox.arrived.notified();
            if let Some(found) = self.received().into_iter().find(|b| pred(b)) {
                return Some(found);
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return None;
            }
        }
    }

    /// Waits until `n` requests were answered with a 2xx (or `timeout`);
    /// whether they were.
    pub async fn wait_for_count(&self, n: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let arrived = self.inbox.arrived.notified();
            if self.requests().len() >= n {
                return true;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return false;
            }
        }
    }
}

async fn receive(
    State(inbox): State<Arc<Inbox>>,
    uri: Uri,
    headers: HeaderMap,
    raw: Bytes,
) -> StatusCode {
    inbox.attempts.fetch_add(1, Ordering::SeqCst);
    let delay = inbox.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let status = StatusCode::from_u16(inbox.status.load(Ordering::SeqCst))
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if !status.is_success() {
        return status;
    }
    let request = Received {
        path: uri.path().to_owned(),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_ascii_lowercase(),
                    v.to_str().unwrap_or("").to_owned(),
                )
            })
            .collect(),
        body: serde_json::from_slice(&raw).unwrap_or(Value::Null),
        raw: raw.to_vec(),
    };
    inbox
        .requests
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(request);
    inbox.arrived.notify_waiters();
    status
}
