//! A webhook receiver that records every JSON body POSTed to it.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, DropGuard};

#[derive(Default)]
struct Inbox {
    bodies: Mutex<Vec<Value>>,
    arrived: Notify,
}

/// A running receiver; stops when dropped.
pub struct WebhookReceiver {
    addr: SocketAddr,
    inbox: Arc<Inbox>,
    _stop: DropGuard,
}

impl WebhookReceiver {
    /// Starts the receiver on `bind_ip` (free port), path `/hook`.
    pub async fn start(bind_ip: IpAddr) -> Result<Self> {
        let inbox = Arc::new(Inbox::default());
        let listener = TcpListener::bind(SocketAddr::new(bind_ip, 0))
            .await
            .context("bind webhook listener")?;
        let addr = listener.local_addr()?;
        let app = Router::new()
            .route("/hook", post(receive))
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

    /// Every body received so far, in arrival order.
    pub fn received(&self) -> Vec<Value> {
        self.inbox
            .bodies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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
}

async fn receive(State(inbox): State<Arc<Inbox>>, Json(body): Json<Value>) -> StatusCode {
    inbox
        .bodies
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(body);
    inbox.arrived.notify_waiters();
    StatusCode::NO_CONTENT
}
