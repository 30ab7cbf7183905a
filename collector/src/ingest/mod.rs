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

mod cardinality;
mod commit;
mod reader;

use cardinality::{Cardinality, OverCap};
use commit::{Committer, StreamSlot};
use reader::{Reader, Step};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status, Streaming};
use vantage_proto::v1 as pb;
use vantage_proto::v1::ingest_server::Ingest;

use crate::auth::{self, AuthError};
use crate::control::{AgentView, ControlHub};
use crate::store::{
    AgentHello, EnrolledAgent, ProbeAnswer, Store, StoreError, StoredGap, StoredResult,
};
use crate::wire::{InvalidGap, InvalidResult, SkewLimits, stored_gap, stored_result};

/// Streams one source may open per second, sustained, and at once: far
/// above what agents behind one address reconnect at.
const STREAM_ATTEMPTS_PER_SECOND: NonZeroU32 = NonZeroU32::new(20).expect("20 is not 0");
const STREAM_ATTEMPTS_BURST: NonZeroU32 = NonZeroU32::new(50).expect("50 is not 0");
/// Sources the attempt limiter remembers before it forgets idle ones.
const ATTEMPT_SOURCES_KEPT: usize = 10_000;

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
    /// Distinct vantage names one agent may report.
    pub max_vantages_per_agent: usize,
    /// Distinct check names one agent may report.
    pub max_checks_per_agent: usize,
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
    #[error("the Hello names {named} vantages: {over}")]
    TooManyVantages { named: usize, over: OverCap },
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
            // Not the agent's to retry: a value the collector cannot encode.
            IngestError::Store(StoreError::Encode { .. }) => Status::internal(e.to_string()),
            IngestError::TooManyVantages { .. } => Status::resource_exhausted(e.to_string()),
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
    /// Distinct vantage and check names per agent, capped.
    cardinality: Arc<Cardinality>,
    /// Streams opened per source (IPv4 address, IPv6 /64), before any
    /// token is looked up: a client cycling bad tokens cannot keep the
    /// database answering it.
    attempts: Arc<DefaultKeyedRateLimiter<crate::listen::Source>>,
    require_client_cert: bool,
    /// Open streams per agent identity.
    streams: Arc<Mutex<HashMap<String, usize>>>,
    /// What agents that announced the capabilities are sent.
    control: Arc<ControlHub>,
    /// The gRPC listener's connections: an authenticated stream marks its
    /// connection busy there.
    gate: Option<Arc<crate::listen::Gate>>,
}

impl IngestService {
    /// `require_client_cert`: the server is mutual TLS, and the client
    /// certificate must name the agent its token belongs to.
    pub fn new(
        store: Arc<Store>,
        shutdown: CancellationToken,
        limits: IngestLimits,
        require_client_cert: bool,
        control: Arc<ControlHub>,
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
            attempts: Arc::new(RateLimiter::keyed(
                Quota::per_second(STREAM_ATTEMPTS_PER_SECOND).allow_burst(STREAM_ATTEMPTS_BURST),
            )),
            cardinality: Arc::new(Cardinality::new(
                limits.max_vantages_per_agent,
                limits.max_checks_per_agent,
            )),
            require_client_cert,
            streams: Arc::default(),
            control,
            gate: None,
        }
    }

    /// Marks each authenticated stream's connection busy in `gate`.
    pub fn with_gate(mut self, gate: Arc<crate::listen::Gate>) -> Self {
        self.gate = Some(gate);
        self
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
        let peer = request.remote_addr();
        let peer_ip = peer.map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip());
        let source = crate::listen::Source::of(peer_ip);
        if self.attempts.len() > ATTEMPT_SOURCES_KEPT {
            self.attempts.retain_recent();
        }
        if self.attempts.check_key(&source).is_err() {
            metrics::counter!("vantage_ingest_refused_stream_attempts_total").increment(1);
            return Err(Status::resource_exhausted(format!(
                "too many streams opened from {peer_ip} ({STREAM_ATTEMPTS_PER_SECOND} a second at \
                 most); retry later"
            )));
        }
        let enrolled = match self.authenticate(&request).await {
            Ok(agent) => agent,
            Err(error) => {
                tracing::warn!(%peer_ip, %error, "Refused a stream.");
                return Err(error.into());
            }
        };
        // Authenticated: the connection is no longer a stranger's.
        let busy = match (&self.gate, peer) {
            (Some(gate), Some(peer)) => gate.find(peer).and_then(|conn| gate.busy(&conn)),
            _ => None,
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
        if let Err(over) = self.cardinality.admit_hello(hello.vantages.len()) {
            let error = IngestError::TooManyVantages {
                named: hello.vantages.len(),
                over,
            };
            tracing::error!(%peer_ip, agent_id = %enrolled.agent_id, %error, "Refused a stream.");
            return Err(error.into());
        }
        let slot = self.stream_slot(&enrolled.agent_id).inspect_err(|status| {
            tracing::warn!(%peer_ip, agent_id = %enrolled.agent_id, %status, "Refused a stream.");
        })?;
        let view = AgentView::new(&hello, &enrolled.region);
        let agent = AgentHello {
            agent_id: enrolled.agent_id,
            labels: view.labels.clone(),
            version: hello.version,
            observed_ip: peer_ip,
            capabilities: view.capability_names(),
            vantages: view.vantages.clone(),
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
            cardinality: self.cardinality.clone(),
            inbound,
            steps,
        };
        let ended = CancellationToken::new();
        let committer = Committer {
            _slot: slot,
            _busy: busy,
            _ended: ended.clone().drop_guard(),
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
        if view.central_checks || view.probe_requests {
            let pusher = crate::control::push_to_agent(
                view,
                self.control.clone(),
                self.store.clone(),
                replies.clone(),
                ended,
            );
            spawn_stream_task("pusher", agent_id.clone(), replies.clone(), pusher);
        }
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

/// How long an agent's stream may stay silent before the collector's
/// HTTP/2 keepalive notices a dead peer.
pub const KEEPALIVE: Duration = Duration::from_secs(30);
