//! Accepting connections within bounds, for both listeners: each
//! listener's [`Gate`] (caps on open and on unproven connections, eviction
//! of the oldest unproven ones to make room), each connection's deadlines
//! ([`BoundedIo`]), and the file descriptor limit (raised at start; at the
//! limit, accepting pauses and says so once a minute instead of spinning).
//!
//! Also the gRPC side's guard against a message that starts and stalls
//! ([`StallGuard`]), and the HTTP side's server ([`serve_http`]).

mod gate;
mod http;
mod io;
mod stall;

pub use gate::{Busy, Conn, Gate, Limits, Source};
pub use http::{HttpBounds, serve_http};
pub use io::BoundedIo;
pub use stall::StallGuard;

use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Descriptors kept free for what is not a client connection (database
/// pool, outgoing pages, log files): this many, or a quarter of a lower
/// limit.
const RESERVED_DESCRIPTORS: u64 = 256;
/// How long accepting pauses when the process is out of descriptors.
const DESCRIPTOR_PAUSE: Duration = Duration::from_millis(100);

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

/// The connections `listener` accepts into `gate`, until `shutdown`.
pub fn incoming(
    listener: TcpListener,
    gate: Arc<Gate>,
    shutdown: CancellationToken,
) -> impl Stream<Item = std::io::Result<BoundedIo>> + Send + 'static {
    futures_util::stream::unfold(
        (listener, gate, shutdown),
        move |(listener, gate, shutdown)| async move {
            loop {
                let accepted = tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    accepted = listener.accept() => accepted,
                };
                match accepted {
                    Ok((stream, peer)) => {
                        let Some(conn) = gate.admit(peer) else {
                            // Closed at once: the ones held keep being served.
                            drop(stream);
                            gate.record_refusal(
                                "max_connections",
                                &format!(
                                    "Refusing connections: {} are open and busy, the most allowed",
                                    gate.limits().max_connections
                                ),
                                &peer,
                            );
                            continue;
                        };
                        // An ack is a small write after others: Nagle would
                        // hold it for the peer's delayed ACK (40 ms).
                        if let Err(error) = stream.set_nodelay(true) {
                            tracing::debug!(%peer, %error, "Cannot set TCP_NODELAY.");
                        }
                        let io = BoundedIo::new(stream, gate.clone(), conn);
                        return Some((Ok(io), (listener, gate, shutdown)));
                    }
                    Err(error) if out_of_descriptors(&error) => {
                        let local = listener
                            .local_addr()
                            .unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
                        gate.record_refusal(
                            "descriptors",
                            &format!("Cannot accept connections: {error}"),
                            &local,
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

fn out_of_descriptors(error: &std::io::Error) -> bool {
    // EMFILE (process) and ENFILE (system).
    matches!(error.raw_os_error(), Some(24 | 23))
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
