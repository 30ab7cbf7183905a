//! An accepted connection's socket, closed when its [`Gate`] evicts it or
//! its deadline passes. The deadline follows the connection's phase:
//!
//! - never busy yet: fixed at [`Limits::handshake_timeout`] after accept,
//!   whatever the peer sends (PINGs and SETTINGS are not progress), and at
//!   most [`Limits::unproven_read_budget`] bytes read meanwhile;
//! - busy: [`Limits::busy_timeout`] after it became so, and then pushed to
//!   [`Limits::idle_timeout`] after each byte read *or written* (a long
//!   response being sent is progress, a peer that stopped reading is not);
//! - no longer busy: fixed at `idle_timeout` after that, with the same
//!   byte budget.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, TcpConnectInfo};

use super::gate::{Conn, Gate, Limits};

/// Why a connection was closed, as the metric's `reason` label.
#[derive(Debug, Clone, Copy)]
enum Closed {
    Evicted,
    /// Never busy within the handshake timeout.
    NotAuthenticated,
    /// Sent more than its budget while unproven.
    Flood,
    /// Busy, and no byte either way for the idle timeout.
    Stalled,
    /// Not busy for the idle timeout.
    Idle,
}

impl Closed {
    fn as_str(self) -> &'static str {
        match self {
            Self::Evicted => "evicted",
            Self::NotAuthenticated => "no_handshake",
            Self::Flood => "flood",
            Self::Stalled => "stalled",
            Self::Idle => "idle",
        }
    }

    fn message(self, limits: &Limits) -> String {
        match self {
            Self::Evicted => "connection evicted to make room for others".to_owned(),
            Self::NotAuthenticated => format!(
                "connection closed: no authenticated stream or request within {} ms",
                limits.handshake_timeout.as_millis()
            ),
            Self::Flood => format!(
                "connection closed: more than {} bytes before authenticating",
                limits.unproven_read_budget
            ),
            Self::Stalled => format!(
                "connection closed: no byte either way for {} ms",
                limits.idle_timeout.as_millis()
            ),
            Self::Idle => format!(
                "connection closed: idle for {} ms",
                limits.idle_timeout.as_millis()
            ),
        }
    }
}

/// An accepted connection that holds its place in its [`Gate`] and is
/// closed when it is evicted or stalls; see the module doc.
pub struct BoundedIo {
    stream: TcpStream,
    gate: Arc<Gate>,
    conn: Arc<Conn>,
    phase_seen: u64,
    busy: bool,
    ever_busy: bool,
    /// Bytes read since the connection was last unproven.
    unproven_read: u64,
    /// The last byte read or written while busy.
    progress_at: Instant,
    deadline: Pin<Box<Sleep>>,
    closed: Option<Closed>,
}

impl BoundedIo {
    pub(super) fn new(stream: TcpStream, gate: Arc<Gate>, conn: Arc<Conn>) -> Self {
        let now = Instant::now();
        let deadline = Box::pin(tokio::time::sleep_until(
            now + gate.limits().handshake_timeout,
        ));
        Self {
            stream,
            gate,
            phase_seen: conn.phase(),
            conn,
            busy: false,
            ever_busy: false,
            unproven_read: 0,
            progress_at: now,
            deadline,
            closed: None,
        }
    }

    /// The connection's place in its gate: the HTTP server marks it busy
    /// per request.
    pub fn conn(&self) -> Arc<Conn> {
        self.conn.clone()
    }

    pub fn gate(&self) -> Arc<Gate> {
        self.gate.clone()
    }

    /// Ok while the connection may go on; registers the task to be woken
    /// at its deadline or eviction.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if let Some(closed) = self.closed {
            return Err(self.error(closed));
        }
        self.conn.register(cx.waker());
        if self.conn.is_evicted() {
            return self.close(Closed::Evicted);
        }
        let phase = self.conn.phase();
        if phase != self.phase_seen {
            self.phase_seen = phase;
            let limits = *self.gate.limits();
            let now = Instant::now();
            self.busy = self.conn.is_busy();
            if self.busy {
                self.ever_busy = true;
                self.progress_at = now;
                self.deadline.as_mut().reset(now + limits.busy_timeout);
            } else {
                self.unproven_read = 0;
                self.deadline.as_mut().reset(now + limits.idle_timeout);
            }
        }
        while self.deadline.as_mut().poll(cx).is_ready() {
            let limits = self.gate.limits();
            let pushed = self.progress_at + limits.idle_timeout;
            if self.busy && pushed > self.deadline.deadline() {
                self.deadline.as_mut().reset(pushed);
                continue;
            }
            let why = match (self.ever_busy, self.busy) {
                (false, _) => Closed::NotAuthenticated,
                (true, true) => Closed::Stalled,
                (true, false) => Closed::Idle,
            };
            return self.close(why);
        }
        Ok(())
    }

    fn read_bytes(&mut self, n: usize) -> io::Result<()> {
        if self.busy {
            self.progress_at = Instant::now();
            return Ok(());
        }
        self.unproven_read += n as u64;
        if self.unproven_read > self.gate.limits().unproven_read_budget {
            return self.close(Closed::Flood);
        }
        Ok(())
    }

    fn wrote_bytes(&mut self, n: usize) {
        if self.busy && n > 0 {
            self.progress_at = Instant::now();
        }
    }

    fn close(&mut self, why: Closed) -> io::Result<()> {
        if self.closed.is_none() {
            self.closed = Some(why);
            metrics::counter!(
                "vantage_connections_closed_total",
                "listener" => self.gate.name(),
                "reason" => why.as_str()
            )
            .increment(1);
            tracing::debug!(peer = %self.conn.peer, listener = self.gate.name(), reason = why.as_str(), "Closing a connection.");
        }
        Err(self.error(why))
    }

    fn error(&self, why: Closed) -> io::Error {
        io::Error::new(io::ErrorKind::TimedOut, why.message(self.gate.limits()))
    }
}

impl Drop for BoundedIo {
    fn drop(&mut self) {
        self.gate.release(&self.conn);
    }
}

impl AsyncRead for BoundedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.read_bytes(buf.filled().len() - before)?;
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl AsyncWrite for BoundedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        let written = std::task::ready!(Pin::new(&mut this.stream).poll_write(cx, buf))?;
        this.wrote_bytes(written);
        Poll::Ready(Ok(written))
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
        let this = self.get_mut();
        this.check(cx)?;
        let written = std::task::ready!(Pin::new(&mut this.stream).poll_write_vectored(cx, bufs))?;
        this.wrote_bytes(written);
        Poll::Ready(Ok(written))
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
