//! A TCP relay whose connections the test can cut at once: what a broken
//! network path does to a stream between agent and collector. Bytes the
//! relay holds when cut are lost, like bytes in flight on a dead link.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::{CancellationToken, DropGuard};

/// A relay from a loopback port to `upstream`; stops when dropped.
pub struct CuttingRelay {
    addr: SocketAddr,
    connections: Arc<Mutex<JoinSet<()>>>,
    _stop: DropGuard,
}

impl CuttingRelay {
    pub async fn start(upstream: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind((upstream.ip(), 0))
            .await
            .context("bind relay listener")?;
        let addr = listener.local_addr()?;
        let connections: Arc<Mutex<JoinSet<()>>> = Arc::default();
        let stop = CancellationToken::new();
        let (stopped, conns) = (stop.clone(), connections.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stopped.cancelled() => break,
                    a = listener.accept() => a,
                };
                let Ok((mut inbound, _)) = accepted else {
                    continue;
                };
                let relay = async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                };
                conns.lock().unwrap_or_else(|e| e.into_inner()).spawn(relay);
            }
            conns.lock().unwrap_or_else(|e| e.into_inner()).abort_all();
        });
        Ok(Self {
            addr,
            connections,
            _stop: stop.drop_guard(),
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts every open connection (new ones are still relayed); returns how
    /// many were cut.
    pub fn cut_all(&self) -> usize {
        let mut connections = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        let n = connections.len();
        connections.abort_all();
        while connections.try_join_next().is_some() {}
        n
    }
}
