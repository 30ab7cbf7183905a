//! The gRPC ingest service: authenticates a stream, then commits its
//! batches to PostgreSQL in order and acknowledges each strictly after
//! COMMIT. Acks are cumulative: batch N is acked only after every earlier
//! batch of the stream was.
//!
//! A stream is two tasks joined by a bounded channel: the reader decodes,
//! validates and rate-limits batch N+1 while the committer writes batch N,
//! so an agent's window of batches in flight keeps the database busy.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status, Streaming};
use vantage_proto::v1 as pb;
use vantage_proto::v1::ingest_server::Ingest;

use crate::auth::{self, AuthError};
use crate::store::{AgentHello, EnrolledAgent, Store, StoreError, StoredGap, StoredResult};
use crate::wire::{
    IMPLAUSIBLE_SEQ, InvalidGap, InvalidResult, SkewLimits, stored_gap, stored_result,
};

/// Batches validated ahead of the one being committed, per stream.
const PIPELINE_DEPTH: usize = 4;

/// What one agent may send.
#[derive(Debug, Clone, Copy)]
pub struct IngestLimits {
    /// Most results in one batch.
    pub max_batch: usize,
    /// Largest message decoded, in bytes (enforced by tonic, told to agents).
    pub max_message_bytes: usize,
    /// Results per second per agent, sustained; a full batch may burst.
    pub results_per_second: NonZeroU32,
    /// Streams one agent identity may hold open at once.
    pub max_streams_per_agent: usize,
    /// How long a stream may take to send its Hello.
    pub hello_timeout: Duration,
    pub skew: SkewLimits,
}

/// Why a stream was ended by the collector. Mapped to a gRPC status in
/// exactly one place ([`From<IngestError> for Status`]).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("the first message must be a Hello")]
    NoHello,
    #[error("unexpected message: {0}")]
    Unexpected(&'static str),
    #[error("batch {batch_id}: {problem}")]
    InvalidBatch { batch_id: u64, problem: String },
    #[error("storage unavailable, resend later: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("collector is shutting down")]
    ShuttingDown,
    /// A fault test's injection point fired (test builds only).
    #[error("fault injected: {0}")]
    FaultInjected(&'static str),
    /// A message that could not be decoded (too large, malformed): tonic's
    /// own status, passed on to the agent.
    #[error("undecodable message: {}", .0.message())]
    Decode(Status),
}

impl From<IngestError> for Status {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::Auth(e) => e.into(),
            IngestError::Store(StoreError::Revoked(agent)) => AuthError::Revoked(agent).into(),
            IngestError::NoHello | IngestError::Unexpected(_) => {
                Status::invalid_argument(e.to_string())
            }
            IngestError::InvalidBatch { batch_id, .. } => {
                let mut status = Status::invalid_argument(e.to_string());
                status
                    .metadata_mut()
                    .insert(vantage_proto::BATCH_ID_METADATA, batch_id.into());
                status
            }
            IngestError::Store(_) | IngestError::ShuttingDown | IngestError::FaultInjected(_) => {
                Status::unavailable(e.to_string())
            }
            IngestError::Decode(status) => {
                metrics::counter!("vantage_ingest_rejected_batches_total").increment(1);
                status
            }
        }
    }
}

/// The `vantage.v1.Ingest` service.
pub struct IngestService {
    store: Arc<Store>,
    shutdown: CancellationToken,
    limits: IngestLimits,
    rate: Arc<DefaultKeyedRateLimiter<String>>,
    require_client_cert: bool,
    /// Open streams per agent identity.
    streams: Arc<Mutex<HashMap<String, usize>>>,
}

impl IngestService {
    /// `require_client_cert`: the server is mutual TLS, and the client
    /// certificate must name the agent its token belongs to.
    pub fn new(
        store: Arc<Store>,
        shutdown: CancellationToken,
        limits: IngestLimits,
        require_client_cert: bool,
    ) -> Self {
        let burst = NonZeroU32::new(u32::try_from(limits.max_batch).unwrap_or(u32::MAX))
            .unwrap_or(NonZeroU32::MIN)
            .max(limits.results_per_second);
        let quota = Quota::per_second(limits.results_per_second).allow_burst(burst);
        Self {
            store,
            shutdown,
            limits,
            rate: Arc::new(RateLimiter::keyed(quota)),
            require_client_cert,
            streams: Arc::default(),
        }
    }

    /// A place for one more stream of `agent_id`, if it has fewer than
    /// the limit open.
    fn stream_slot(&self, agent_id: &str) -> Result<StreamSlot, Status> {
        let mut open = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(agent_id.to_owned()).or_default();
        if *count >= self.limits.max_streams_per_agent {
            metrics::counter!("vantage_ingest_refused_streams_total").increment(1);
            return Err(Status::resource_exhausted(format!(
                "agent {agent_id:?} already has {count} streams open, the most allowed \
                 (ingest.max_streams_per_agent)"
            )));
        }
        *count += 1;
        Ok(StreamSlot {
            streams: self.streams.clone(),
            agent_id: agent_id.to_owned(),
        })
    }

    /// The enrolled agent this call's credentials belong to.
    async fn authenticate(
        &self,
        request: &Request<Streaming<pb::AgentMessage>>,
    ) -> Result<EnrolledAgent, IngestError> {
        let token = auth::bearer(request.metadata())?;
        let agent = self
            .store
            .agent_by_token(&auth::token_sha256(token))
            .await?
            .ok_or(AuthError::UnknownToken)?;
        if agent.revoked_at.is_some() {
            return Err(AuthError::Revoked(agent.agent_id).into());
        }
        if self.require_client_cert {
            let certs = request.peer_certs().ok_or(AuthError::NoCertificate)?;
            let names = certs
                .first()
                .map(|c| auth::certificate_names(c.as_ref()))
                .unwrap_or_default();
            if !names.contains(&agent.agent_id) {
                return Err(AuthError::CertificateMismatch {
                    agent: agent.agent_id,
                    names,
                }
                .into());
            }
        }
        Ok(agent)
    }
}

type Outbound = Pin<Box<dyn Stream<Item = Result<pb::CollectorMessage, Status>> + Send>>;
type Replies = mpsc::Sender<Result<pb::CollectorMessage, Status>>;

#[tonic::async_trait]
impl Ingest for IngestService {
    type StreamStream = Outbound;

    async fn stream(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let peer_ip = request
            .remote_addr()
            .map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip());
        let enrolled = match self.authenticate(&request).await {
            Ok(agent) => agent,
            Err(error) => {
                tracing::warn!(%peer_ip, %error, "Refused a stream.");
                return Err(error.into());
            }
        };
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(self.limits.hello_timeout, inbound.message())
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "no Hello within {} s",
                    self.limits.hello_timeout.as_secs()
                ))
            })??;
        let hello = match first.and_then(|m| m.body) {
            Some(pb::agent_message::Body::Hello(h)) => h,
            _ => return Err(IngestError::NoHello.into()),
        };
        if hello.agent_id != enrolled.agent_id {
            let error = AuthError::Spoofed {
                owner: enrolled.agent_id,
                claimed: hello.agent_id,
            };
            tracing::warn!(%peer_ip, %error, "Refused a stream.");
            return Err(error.into());
        }
        let slot = self.stream_slot(&enrolled.agent_id).inspect_err(|status| {
            tracing::warn!(%peer_ip, agent_id = %enrolled.agent_id, %status, "Refused a stream.");
        })?;
        let agent = AgentHello {
            agent_id: enrolled.agent_id,
            labels: hello.labels.into_iter().collect(),
            version: hello.version,
            observed_ip: peer_ip,
        };
        let last_seq = self
            .store
            .record_hello(&agent, self.limits.skew.seq_ceiling(chrono::Utc::now()))
            .await
            .map_err(IngestError::from)?;
        tracing::info!(agent_id = %agent.agent_id, region = %enrolled.region, %peer_ip, last_seq, "Agent connected.");

        let (replies, rx) = mpsc::channel(PIPELINE_DEPTH * 2);
        let welcome = pb::CollectorMessage {
            body: Some(pb::collector_message::Body::Welcome(pb::Welcome {
                observed_ip: peer_ip.to_string(),
                last_committed_seq: last_seq,
                max_batch: u32::try_from(self.limits.max_batch).unwrap_or(u32::MAX),
                max_message_bytes: self.limits.max_message_bytes as u64,
            })),
        };
        replies
            .send(Ok(welcome))
            .await
            .map_err(|_| Status::cancelled("agent went away"))?;

        let (steps, pending) = mpsc::channel(PIPELINE_DEPTH);
        let reader = Reader {
            agent_id: agent.agent_id.clone(),
            observed_ip: peer_ip,
            limits: self.limits,
            rate: self.rate.clone(),
            inbound,
            steps,
        };
        let committer = Committer {
            _slot: slot,
            store: self.store.clone(),
            agent_id: agent.agent_id,
            region: enrolled.region,
            replies,
        };
        let (agent_id, replies) = (committer.agent_id.clone(), committer.replies.clone());
        spawn_stream_task("reader", agent_id.clone(), replies.clone(), {
            let shutdown = self.shutdown.clone();
            async move { reader.run(shutdown).await }
        });
        spawn_stream_task("committer", agent_id, replies, committer.run(pending));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Runs one half of a stream's work. Streams are supervised by their
/// agent: a panic is logged at ERROR and counted
/// (`vantage_component_restarts_total{component="ingest"}`), the stream
/// ends with INTERNAL, and the agent reconnects and resends what was not
/// acknowledged (acks follow commits, so nothing is lost).
fn spawn_stream_task(
    part: &'static str,
    agent_id: String,
    replies: Replies,
    task: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let task = tokio::spawn(task);
    tokio::spawn(async move {
        let Err(join) = task.await else { return };
        if !join.is_panic() {
            return;
        }
        tracing::error!(%agent_id, part, "Ingest stream task panicked; ending the stream (the agent resends).");
        metrics::counter!("vantage_component_restarts_total", "component" => "ingest").increment(1);
        let _ = replies
            .send(Err(Status::internal(
                "collector error while handling this stream: reconnect and resend",
            )))
            .await;
    });
}

/// What the reader hands the committer, in stream order.
enum Step {
    Commit(ValidBatch),
    /// End the stream with this error once everything before it is acked.
    Fail(IngestError),
}

struct ValidBatch {
    batch_id: u64,
    results: Vec<StoredResult>,
    gaps: Vec<StoredGap>,
    /// Highest seq the agent sent in the batch, refused results included.
    max_seq: u64,
    /// Highest plausible seq stored (result or gap): the agent's progress.
    progress_seq: i64,
    refused: u32,
}

/// Decodes, validates and rate-limits one stream's batches.
struct Reader {
    agent_id: String,
    observed_ip: IpAddr,
    limits: IngestLimits,
    rate: Arc<DefaultKeyedRateLimiter<String>>,
    inbound: Streaming<pb::AgentMessage>,
    steps: mpsc::Sender<Step>,
}

impl Reader {
    async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => Err(IngestError::ShuttingDown),
                m = self.inbound.message() => match m {
                    Ok(Some(m)) => Ok(m),
                    Ok(None) => return,
                    // Too large, not protobuf, or not a gRPC frame (e.g. the
                    // compressed flag without an encoding): the client's
                    // fault, so tell it (tonic's status: INTERNAL for a bad
                    // flag, as the gRPC spec requires); an agent then
                    // quarantines the batch instead of resending it.
                    Err(status) if status.code() == Code::OutOfRange
                        || status.message().starts_with("failed to decode")
                        || status.message().starts_with("protocol error") => {
                        Err(IngestError::Decode(status))
                    }
                    Err(status) => {
                        tracing::info!(agent_id = %self.agent_id, %status, "Agent stream broke.");
                        return;
                    }
                },
            };
            let step = match message.and_then(|m| self.validate(m)) {
                Ok(batch) => {
                    self.throttle(batch.results.len()).await;
                    Step::Commit(batch)
                }
                Err(e) => Step::Fail(e),
            };
            let last = matches!(step, Step::Fail(_));
            if self.steps.send(step).await.is_err() || last {
                return;
            }
        }
    }

    fn validate(&self, message: pb::AgentMessage) -> Result<ValidBatch, IngestError> {
        let batch = match message.body {
            Some(pb::agent_message::Body::Batch(b)) => b,
            Some(pb::agent_message::Body::Hello(_)) => {
                return Err(IngestError::Unexpected("second Hello"));
            }
            None => return Err(IngestError::Unexpected("empty message")),
        };
        let batch_id = batch.batch_id;
        let invalid = |problem: String| {
            metrics::counter!("vantage_ingest_rejected_batches_total").increment(1);
            IngestError::InvalidBatch { batch_id, problem }
        };
        if batch.results.len() > self.limits.max_batch {
            return Err(invalid(format!(
                "{} results exceed the limit of {} per batch",
                batch.results.len(),
                self.limits.max_batch
            )));
        }
        let max_seq = batch.results.iter().map(|r| r.seq).max().unwrap_or(0);
        let now = chrono::Utc::now();
        let mut gaps = batch
            .gaps
            .into_iter()
            .map(stored_gap)
            .collect::<Result<Vec<_>, InvalidGap>>()
            .map_err(|e| invalid(e.to_string()))?;
        let ceiling = self.limits.skew.seq_ceiling(now);
        let mut results = Vec::with_capacity(batch.results.len());
        let mut refused = 0u32;
        let mut implausible = 0u32;
        for r in batch.results {
            let r = stored_result(r, self.observed_ip)
                .map_err(|e: InvalidResult| invalid(e.to_string()))?;
            if r.seq > ceiling {
                tracing::warn!(
                    agent_id = %self.agent_id, seq = r.seq, ceiling,
                    "Refused a result whose sequence number is far beyond any this agent can \
                     have given (a forged or corrupted result); recorded as an implausible_seq gap."
                );
                implausible += 1;
                gaps.push(StoredGap {
                    first_seq: r.seq,
                    last_seq: r.seq,
                    count: Some(1),
                    reason: IMPLAUSIBLE_SEQ,
                    detected_at: now,
                });
            } else if self.limits.skew.accepts(r.started_at, now) {
                results.push(r);
            } else {
                tracing::warn!(agent_id = %self.agent_id, seq = r.seq, started_at = %r.started_at, "Refused a result whose start time is too far from the collector's clock.");
                refused += 1;
                gaps.push(StoredGap {
                    first_seq: r.seq,
                    last_seq: r.seq,
                    count: Some(1),
                    reason: "timestamp_skew",
                    detected_at: now,
                });
            }
        }
        if refused > 0 {
            metrics::counter!("vantage_ingest_refused_results_total", "reason" => "timestamp_skew")
                .increment(u64::from(refused));
        }
        if implausible > 0 {
            metrics::counter!("vantage_ingest_refused_results_total", "reason" => IMPLAUSIBLE_SEQ)
                .increment(u64::from(implausible));
        }
        // What the agent's progress may advance to: never past the
        // ceiling, whatever a gap or a refused result claimed.
        let progress_seq = results
            .iter()
            .map(|r| r.seq)
            .chain(gaps.iter().map(|g| g.last_seq))
            .filter(|seq| *seq <= ceiling)
            .max()
            .unwrap_or(0);
        Ok(ValidBatch {
            batch_id,
            results,
            gaps,
            max_seq,
            progress_seq,
            refused: refused + implausible,
        })
    }

    /// Waits until this agent may send `n` more results. Waiting here stops
    /// reading its stream, so HTTP/2 flow control slows only this agent.
    async fn throttle(&self, n: usize) {
        let Some(n) = NonZeroU32::new(u32::try_from(n).unwrap_or(u32::MAX)) else {
            return;
        };
        if self
            .rate
            .check_key_n(&self.agent_id, n)
            .is_ok_and(|r| r.is_ok())
        {
            return;
        }
        metrics::counter!("vantage_ingest_throttled_batches_total").increment(1);
        tracing::debug!(agent_id = %self.agent_id, results = n, "Agent above its rate; throttling.");
        // n never exceeds the burst (max_batch), so this cannot fail.
        let _ = self.rate.until_key_n_ready(&self.agent_id, n).await;
    }
}

/// One open stream of an agent, counted until dropped.
struct StreamSlot {
    streams: Arc<Mutex<HashMap<String, usize>>>,
    agent_id: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.agent_id) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.agent_id);
            }
        }
    }
}

/// Commits one stream's batches in order and acknowledges each.
struct Committer {
    /// Held while the stream lives (the committer outlives the reader).
    _slot: StreamSlot,
    store: Arc<Store>,
    agent_id: String,
    region: String,
    replies: Replies,
}

impl Committer {
    async fn run(self, mut pending: mpsc::Receiver<Step>) {
        while let Some(step) = pending.recv().await {
            let result = match step {
                Step::Commit(batch) => self.commit(batch).await,
                Step::Fail(e) => Err(e),
            };
            if let Err(error) = result {
                tracing::warn!(agent_id = %self.agent_id, %error, "Ending agent stream.");
                let _ = self.replies.send(Err(error.into())).await;
                return;
            }
        }
        tracing::info!(agent_id = %self.agent_id, "Agent disconnected.");
    }

    async fn commit(&self, batch: ValidBatch) -> Result<(), IngestError> {
        let started = Instant::now();
        let inserted = self
            .store
            .insert_batch(
                &self.agent_id,
                &self.region,
                &batch.results,
                &batch.gaps,
                batch.progress_seq,
            )
            .await?;
        let elapsed = started.elapsed();
        metrics::histogram!("vantage_ingest_commit_seconds").record(elapsed.as_secs_f64());
        metrics::counter!("vantage_ingest_results_total").increment(inserted.new_rows);
        metrics::counter!("vantage_ingest_duplicates_total").increment(inserted.duplicates);
        fail::fail_point!("ingest-after-commit", |_| Err(IngestError::FaultInjected(
            "stream ended after commit, before the ack"
        )));
        // Only now, after COMMIT, is the batch acknowledged.
        let ack = pb::CollectorMessage {
            body: Some(pb::collector_message::Body::Ack(pb::BatchAck {
                batch_id: batch.batch_id,
                inserted: u32::try_from(inserted.new_rows).unwrap_or(u32::MAX),
                duplicates: u32::try_from(inserted.duplicates).unwrap_or(u32::MAX),
                max_seq: batch.max_seq,
                refused: batch.refused,
            })),
        };
        tracing::debug!(
            agent_id = %self.agent_id,
            batch_id = batch.batch_id,
            new_rows = inserted.new_rows,
            commit_ms = elapsed.as_secs_f64() * 1000.0,
            "Batch committed."
        );
        // If the agent is gone the ack is lost; it will resend, and the
        // resend adds no rows.
        let _ = self.replies.send(Ok(ack)).await;
        Ok(())
    }
}

/// How long an agent's stream may stay silent before the collector's
/// HTTP/2 keepalive notices a dead peer.
pub const KEEPALIVE: Duration = Duration::from_secs(30);
