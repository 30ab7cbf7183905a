//! The reporter: streams spooled results to the collector over gRPC and
//! removes them from the spool once the collector acknowledges a commit.
//!
//! Up to `window` batches are in flight; acks are cumulative and come in
//! batch order. After any break the next session resends everything above
//! the last ack (the collector ignores what it already has).
//!
//! Retry rules, by the status the collector ends a stream with:
//! - UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED and transport
//!   failures: reconnect with jittered exponential backoff;
//! - INVALID_ARGUMENT / OUT_OF_RANGE naming a batch: that batch is never
//!   retried: it is quarantined in the spool, counted and recorded as a
//!   `rejected` gap, and delivery goes on;
//! - UNAUTHENTICATED, PERMISSION_DENIED: stop, with a clear log line (the
//!   agent exits; results stay in the spool for when the credential is
//!   fixed).

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Code, Status};
use vantage_proto::v1 as pb;

use crate::queue::ResultQueue;

mod link;
mod session;
pub use link::{Connection, ControlLink, Delivery, Identity, Pushed};

/// How long the collector may take to acknowledge a batch before the stream
/// is considered broken. A commit of one batch takes milliseconds; a minute
/// covers a PostgreSQL checkpoint or failover without flapping.
const ACK_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a session with the collector ended.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        source: tonic::transport::Error,
    },
    #[error("collector ended the stream: {0}")]
    Status(#[from] tonic::Status),
    #[error("collector refused batch {batch_id}: {message}")]
    Rejected {
        batch_id: u64,
        after_seq: u64,
        through_seq: u64,
        gap_ids: Vec<u64>,
        message: String,
    },
    #[error("collector closed the stream")]
    Closed,
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("no acknowledgement within {ACK_TIMEOUT:?}")]
    AckTimeout,
    #[error("fault injected: connection dropped with an ack unread")]
    FaultInjected,
}

/// The collector refused this agent's credentials: delivery stopped.
#[derive(Debug, thiserror::Error)]
#[error("the collector refused this agent's credentials ({code:?}): {message}")]
pub struct CredentialsRefused {
    pub code: Code,
    pub message: String,
}

/// Delivers results from the queue to the collector.
pub struct Reporter {
    connection: Connection,
    identity: Identity,
    queue: Arc<ResultQueue>,
    delivery: Delivery,
    egress_ip: watch::Sender<Option<IpAddr>>,
    control: ControlLink,
    /// Everything up to here is committed by the collector.
    acked_through: AtomicU64,
    /// Which of the collectors this session uses (an index into
    /// `connection.endpoints`, modulo their number).
    current: AtomicUsize,
}

/// A batch sent and not yet acknowledged.
struct Sent {
    batch_id: u64,
    after_seq: u64,
    through_seq: u64,
    gap_ids: Vec<u64>,
}

impl Reporter {
    pub fn new(
        connection: Connection,
        identity: Identity,
        queue: Arc<ResultQueue>,
        delivery: Delivery,
        egress_ip: watch::Sender<Option<IpAddr>>,
        control: ControlLink,
    ) -> Self {
        Self {
            connection,
            identity,
            queue,
            delivery,
            egress_ip,
            control,
            acked_through: AtomicU64::new(0),
            current: AtomicUsize::new(0),
        }
    }

    /// The collector this session uses.
    fn endpoint(&self) -> &str {
        let endpoints = &self.connection.endpoints;
        &endpoints[self.current.load(Ordering::SeqCst) % endpoints.len().max(1)]
    }

    /// Reports until `shutdown`, then keeps delivering what is spooled for
    /// at most the drain timeout. Fails only when the collector refuses
    /// the credentials.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), CredentialsRefused> {
        let deliver = self.deliver(&shutdown);
        let drain_deadline = async {
            shutdown.cancelled().await;
            tokio::time::sleep(self.delivery.drain_timeout).await;
        };
        let outcome = tokio::select! {
            outcome = deliver => outcome,
            _ = drain_deadline => Ok(()),
        };
        let left = self.queue.len();
        if left > 0 {
            let stats = self.queue.stats();
            if stats.degraded {
                tracing::error!(
                    left,
                    "Stopping with results held in memory only; they are lost."
                );
            } else {
                tracing::warn!(
                    left,
                    "Stopping with results not yet delivered; they stay in the spool for the next start."
                );
            }
        }
        outcome
    }

    /// Sessions with reconnects, until `shutdown` fired and nothing is left.
    async fn deliver(&self, shutdown: &CancellationToken) -> Result<(), CredentialsRefused> {
        let backoff = || {
            ExponentialBuilder::new()
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(30))
                .with_jitter()
                .without_max_times()
                .build()
        };
        let mut delays = backoff();
        // Collectors tried without a welcome since the last one that
        // welcomed this agent: the next is tried at once until every one
        // has failed; then the backoff applies.
        let mut failed_in_turn = 0;
        loop {
            let mut welcomed = false;
            let error = match self.session(shutdown, &mut welcomed).await {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            if welcomed {
                delays = backoff();
                failed_in_turn = 0;
            }
            failed_in_turn += 1;
            match &error {
                ReportError::Status(status)
                    if matches!(
                        status.code(),
                        Code::Unauthenticated | Code::PermissionDenied
                    ) =>
                {
                    tracing::error!(
                        endpoint = %self.endpoint(),
                        agent_id = %self.identity.agent_id,
                        code = ?status.code(),
                        message = status.message(),
                        "The collector refused this agent's credentials. Delivery stopped: check collector.token (re-enrol with `vantage-collector agent add`). Results stay in the spool."
                    );
                    return Err(CredentialsRefused {
                        code: status.code(),
                        message: status.message().to_owned(),
                    });
                }
                ReportError::Rejected {
                    batch_id,
                    after_seq,
                    through_seq,
                    gap_ids,
                    message,
                } => {
                    tracing::error!(batch_id, first_seq = after_seq + 1, last_seq = through_seq, %message, "The collector refused a batch as invalid; it is quarantined and not retried.");
                    let (queue, after, through) = (self.queue.clone(), *after_seq, *through_seq);
                    let gap_ids = gap_ids.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        queue.spool().quarantine(after, through);
                        // Gaps it carried are dropped with it: resending
                        // them would be refused again.
                        queue.spool().forget_gaps(&gap_ids);
                    })
                    .await;
                    self.acked_through.fetch_max(through, Ordering::SeqCst);
                }
                _ => {}
            }
            let collectors = self.connection.endpoints.len();
            let failed = self.endpoint().to_owned();
            let delay = if collectors > 1 && failed_in_turn < collectors {
                // Another collector may be up: try it now (a short pause
                // so a flapping pair cannot spin).
                Duration::from_millis(100)
            } else {
                failed_in_turn = 0;
                delays.next().unwrap_or(Duration::from_secs(30))
            };
            if collectors > 1 {
                self.current.fetch_add(1, Ordering::SeqCst);
            }
            tracing::warn!(
                %error,
                endpoint = %failed,
                next = %self.endpoint(),
                retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                pending = self.queue.len(),
                "Collector session ended, reconnecting."
            );
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                // Still stopping within the drain timeout when shut down.
                _ = shutdown.cancelled(), if !shutdown.is_cancelled() => {}
            }
        }
    }

    async fn connect(&self) -> Result<Channel, ReportError> {
        let connect_error = |source| ReportError::Connect {
            endpoint: self.endpoint().to_owned(),
            source,
        };
        let target = self.endpoint().to_owned();
        let https = target.starts_with("https://");
        let mut endpoint = tonic::transport::Endpoint::from_shared(target)
            .map_err(connect_error)?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20))
            .local_address(self.connection.source_ip);
        if let Some(tls) = self.connection.tls.as_ref().filter(|_| https) {
            endpoint = endpoint.tls_config(tls.clone()).map_err(connect_error)?;
        }
        endpoint.connect().await.map_err(connect_error)
    }
}

impl Reporter {
    /// Passes what the collector pushed to the agent's control; returns an
    /// Ack when one is expected (`acks` is set while batches are in
    /// flight).
    fn control(
        &self,
        body: Option<pb::collector_message::Body>,
        acks: Option<()>,
    ) -> Result<Option<pb::BatchAck>, ReportError> {
        use pb::collector_message::Body;
        let pushed = match body {
            Some(Body::Ack(ack)) if acks.is_some() => return Ok(Some(ack)),
            Some(Body::Checks(set)) => Pushed::Checks(set),
            Some(Body::Probe(request)) => Pushed::Probe(request),
            other => {
                return Err(ReportError::Protocol(format!(
                    "unexpected message from the collector: {other:?}"
                )));
            }
        };
        if self.control.pushed.send(pushed).is_err() {
            tracing::error!(
                "The agent's control has stopped; a message from the collector was not applied."
            );
        }
        Ok(None)
    }
}

/// Sends an answer to a probe request or a check report (`None`: nobody
/// answers any more).
async fn send_answer(
    outbound: &mpsc::Sender<pb::AgentMessage>,
    answer: Option<pb::agent_message::Body>,
) -> Result<(), ReportError> {
    let Some(body) = answer else {
        return Ok(());
    };
    outbound
        .send(pb::AgentMessage { body: Some(body) })
        .await
        .map_err(|_| ReportError::Closed)
}

/// Turns the status a stream ended with into the error to act on: a
/// refused batch is located in the window.
fn refusal(status: Status, in_flight: &VecDeque<Sent>) -> ReportError {
    if !matches!(status.code(), Code::InvalidArgument | Code::OutOfRange) {
        return status.into();
    }
    let named = status
        .metadata()
        .get(vantage_proto::BATCH_ID_METADATA)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // Without a name (a message too large to decode), it is the oldest
    // unacknowledged batch: acks are in order.
    let sent = match named {
        Some(id) => in_flight.iter().find(|s| s.batch_id == id),
        None => in_flight.front(),
    };
    match sent {
        Some(sent) => ReportError::Rejected {
            batch_id: sent.batch_id,
            after_seq: sent.after_seq,
            through_seq: sent.through_seq,
            gap_ids: sent.gap_ids.clone(),
            message: status.message().to_owned(),
        },
        None => status.into(),
    }
}

/// The `report-drop-ack` fault injection point (compiled in test builds).
fn fail_ack_read() -> bool {
    fail::fail_point!("report-drop-ack", |_| true);
    false
}
