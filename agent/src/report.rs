//! The reporter: streams queued results to the collector over gRPC and
//! removes them from the queue once the collector acknowledges a commit.
//!
//! One batch is in flight at a time. On any stream error it reconnects with
//! jittered exponential backoff; probing goes on meanwhile and results wait
//! in the bounded [`ResultQueue`].

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use vantage_proto::v1 as pb;
use vantage_proto::v1::ingest_client::IngestClient;

use crate::queue::ResultQueue;
use crate::wire::result_to_proto;

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
    #[error("collector rejected the stream: {0}")]
    Status(#[from] tonic::Status),
    #[error("collector closed the stream")]
    Closed,
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("no acknowledgement within {ACK_TIMEOUT:?}")]
    AckTimeout,
}

/// Who this agent is, as told to the collector in the Hello.
#[derive(Debug, Clone)]
pub struct Identity {
    pub agent_id: String,
    pub region: String,
    pub labels: BTreeMap<String, String>,
}

/// Delivers results from the queue to the collector.
pub struct Reporter {
    endpoint: String,
    identity: Identity,
    source_ip: Option<IpAddr>,
    queue: Arc<ResultQueue>,
    batch_size: usize,
    flush_interval: Duration,
    egress_ip: watch::Sender<Option<IpAddr>>,
    drain_timeout: Duration,
}

impl Reporter {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        endpoint: String,
        identity: Identity,
        source_ip: Option<IpAddr>,
        queue: Arc<ResultQueue>,
        batch_size: usize,
        flush_interval: Duration,
        egress_ip: watch::Sender<Option<IpAddr>>,
        drain_timeout: Duration,
    ) -> Self {
        Self {
            endpoint,
            identity,
            source_ip,
            queue,
            batch_size,
            flush_interval,
            egress_ip,
            drain_timeout,
        }
    }

    /// Reports until `shutdown`, then keeps delivering what is queued for
    /// at most the drain timeout.
    pub async fn run(self, shutdown: CancellationToken) {
        let deliver = self.deliver(&shutdown);
        let drain_deadline = async {
            shutdown.cancelled().await;
            tokio::time::sleep(self.drain_timeout).await;
        };
        tokio::select! {
            _ = deliver => {}
            _ = drain_deadline => {}
        }
        let left = self.queue.len();
        if left > 0 {
            tracing::error!(
                left,
                drain_timeout_s = self.drain_timeout.as_secs(),
                "Shutting down with results not delivered; they are lost."
            );
        }
    }

    /// Sessions with reconnects, until `shutdown` fired and the queue is
    /// empty.
    async fn deliver(&self, shutdown: &CancellationToken) {
        let backoff = || {
            ExponentialBuilder::new()
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(30))
                .with_jitter()
                .without_max_times()
                .build()
        };
        let mut delays = backoff();
        loop {
            if shutdown.is_cancelled() && self.queue.is_empty() {
                return;
            }
            let mut welcomed = false;
            match self.session(shutdown, &mut welcomed).await {
                Ok(()) => return,
                Err(error) => {
                    if welcomed {
                        delays = backoff();
                    }
                    let delay = delays.next().unwrap_or(Duration::from_secs(30));
                    tracing::warn!(
                        %error,
                        retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                        queued = self.queue.len(),
                        "Collector session ended, reconnecting."
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// One stream: Hello, Welcome, then batches until the queue is empty
    /// after `stop` fired (or an error).
    async fn session(
        &self,
        stop: &CancellationToken,
        welcomed: &mut bool,
    ) -> Result<(), ReportError> {
        let connect_error = |source| ReportError::Connect {
            endpoint: self.endpoint.clone(),
            source,
        };
        let channel = tonic::transport::Endpoint::from_shared(self.endpoint.clone())
            .map_err(connect_error)?
            .connect_timeout(Duration::from_secs(5))
            .local_address(self.source_ip)
            .connect()
            .await
            .map_err(connect_error)?;
        let mut client = IngestClient::new(channel);
        // Two slots: the Hello and one batch; the window is one batch.
        let (outbound, rx) = mpsc::channel(2);
        let hello = pb::AgentMessage {
            body: Some(pb::agent_message::Body::Hello(pb::Hello {
                agent_id: self.identity.agent_id.clone(),
                region: self.identity.region.clone(),
                labels: self.identity.labels.clone().into_iter().collect(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
            })),
        };
        outbound
            .send(hello)
            .await
            .map_err(|_| ReportError::Closed)?;
        let mut inbound = client.stream(ReceiverStream::new(rx)).await?.into_inner();
        let welcome = match inbound.message().await?.and_then(|m| m.body) {
            Some(pb::collector_message::Body::Welcome(w)) => w,
            Some(other) => {
                return Err(ReportError::Protocol(format!(
                    "expected Welcome, got {other:?}"
                )));
            }
            None => return Err(ReportError::Closed),
        };
        *welcomed = true;
        let observed: Option<IpAddr> = welcome.observed_ip.parse().ok();
        self.egress_ip.send_replace(observed);
        tracing::info!(
            endpoint = %self.endpoint,
            observed_ip = %welcome.observed_ip,
            queued = self.queue.len(),
            "Connected to collector."
        );

        let mut batch_id = 0u64;
        loop {
            if self.queue.is_empty() {
                if stop.is_cancelled() {
                    return Ok(());
                }
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = self.queue.wait_nonempty() => {}
                }
            }
            // Let a batch fill up, unless it is full already or we stop.
            if self.queue.len() < self.batch_size && !stop.is_cancelled() {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(self.flush_interval) => {}
                }
            }
            let results = self.queue.peek(self.batch_size);
            let Some(max_seq) = results.last().map(|r| r.seq) else {
                continue;
            };
            batch_id += 1;
            let batch = pb::AgentMessage {
                body: Some(pb::agent_message::Body::Batch(pb::ResultBatch {
                    batch_id,
                    results: results.iter().map(result_to_proto).collect(),
                })),
            };
            outbound
                .send(batch)
                .await
                .map_err(|_| ReportError::Closed)?;
            let reply = tokio::time::timeout(ACK_TIMEOUT, inbound.message())
                .await
                .map_err(|_| ReportError::AckTimeout)??;
            match reply.and_then(|m| m.body) {
                Some(pb::collector_message::Body::Ack(ack)) if ack.batch_id == batch_id => {
                    self.queue.ack_through(max_seq);
                    tracing::debug!(
                        batch_id,
                        inserted = ack.inserted,
                        duplicates = ack.duplicates,
                        max_seq,
                        "Batch acknowledged."
                    );
                }
                Some(other) => {
                    return Err(ReportError::Protocol(format!(
                        "expected Ack for batch {batch_id}, got {other:?}"
                    )));
                }
                None => return Err(ReportError::Closed),
            }
        }
    }
}
