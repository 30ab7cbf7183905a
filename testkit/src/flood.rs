//! [`H2Flood`]: a hostile client holding many tokenless HTTP/2
//! connections open the way an attacker would: the client preface and
//! SETTINGS, a PING every second, each PING and SETTINGS of the server
//! acknowledged, never a request. Each connection the server closes is
//! opened again a second later. Connections come from several loopback
//! source addresses, as a botnet's would.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_SETTINGS: u8 = 0x4;
const FRAME_PING: u8 = 0x6;
const FLAG_ACK: u8 = 0x1;
/// How often each connection sends a PING of its own.
const PING_EVERY: Duration = Duration::from_secs(1);
/// How long a closed connection waits before it is opened again.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// What the flood saw, shared by its connections.
#[derive(Debug, Default)]
struct Counts {
    opened: AtomicU64,
    open: AtomicU64,
    closed: AtomicU64,
    /// The longest a connection lived before the server closed it, in ms.
    longest_ms: AtomicU64,
}

/// A running flood; it stops when dropped.
#[derive(Debug)]
pub struct H2Flood {
    counts: Arc<Counts>,
    _tasks: JoinSet<()>,
}

impl H2Flood {
    /// Starts `connections` connections to `target`, spread over
    /// `sources` (loopback addresses to bind to).
    pub fn start(target: SocketAddr, connections: usize, sources: &[IpAddr]) -> Self {
        let counts = Arc::new(Counts::default());
        let mut tasks = JoinSet::new();
        for i in 0..connections {
            let source = sources[i % sources.len().max(1)];
            let counts = counts.clone();
            tasks.spawn(async move {
                loop {
                    if let Ok(stream) = connect(source, target).await {
                        counts.opened.fetch_add(1, Ordering::Relaxed);
                        counts.open.fetch_add(1, Ordering::Relaxed);
                        let opened = Instant::now();
                        hold(stream).await;
                        let lived = opened.elapsed().as_millis() as u64;
                        counts.open.fetch_sub(1, Ordering::Relaxed);
                        counts.closed.fetch_add(1, Ordering::Relaxed);
                        counts.longest_ms.fetch_max(lived, Ordering::Relaxed);
                    }
                    tokio::time::sleep(RECONNECT_AFTER).await;
                }
            });
        }
        Self {
            counts,
            _tasks: tasks,
        }
    }

    /// Connections open now.
    pub fn open(&self) -> u64 {
        self.counts.open.load(Ordering::Relaxed)
    }

    /// Connections opened so far.
    pub fn opened(&self) -> u64 {
        self.counts.opened.load(Ordering::Relaxed)
    }

    /// Connections the server closed so far.
    pub fn closed(&self) -> u64 {
        self.counts.closed.load(Ordering::Relaxed)
    }

    /// The longest any connection lived before the server closed it.
    pub fn longest_lived(&self) -> Duration {
        Duration::from_millis(self.counts.longest_ms.load(Ordering::Relaxed))
    }
}

async fn connect(source: IpAddr, target: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = match source {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(target).await
}

/// Keeps one connection alive until the server closes it.
async fn hold(mut stream: TcpStream) {
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(FRAME_SETTINGS, 0, &[]));
    if stream.write_all(&hello).await.is_err() {
        return;
    }
    let (mut read, mut write) = stream.split();
    let mut ping = tokio::time::interval(PING_EVERY);
    let mut header = [0u8; 9];
    let mut counter = 0u64;
    loop {
        tokio::select! {
            _ = ping.tick() => {
                counter += 1;
                if write.write_all(&frame(FRAME_PING, 0, &counter.to_be_bytes())).await.is_err() {
                    return;
                }
            }
            got = read.read_exact(&mut header) => {
                if got.is_err() {
                    return;
                }
                let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
                let mut payload = vec![0u8; len];
                if read.read_exact(&mut payload).await.is_err() {
                    return;
                }
                let (kind, flags) = (header[3], header[4]);
                let ack = match kind {
                    FRAME_PING if flags & FLAG_ACK == 0 => Some(frame(FRAME_PING, FLAG_ACK, &payload)),
                    FRAME_SETTINGS if flags & FLAG_ACK == 0 => Some(frame(FRAME_SETTINGS, FLAG_ACK, &[])),
                    _ => None,
                };
                if let Some(ack) = ack
                    && write.write_all(&ack).await.is_err()
                {
                    return;
                }
            }
        }
    }
}

/// One HTTP/2 frame on stream 0.
fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut bytes = vec![len[1], len[2], len[3], kind, flags, 0, 0, 0, 0];
    bytes.extend_from_slice(payload);
    bytes
}
