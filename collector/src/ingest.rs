//! The gRPC ingest service: Hello/Welcome, then batches inserted into
//! PostgreSQL and acknowledged strictly after COMMIT.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use vantage_proto::v1 as pb;
use vantage_proto::v1::ingest_server::Ingest;

use crate::store::{AgentHello, Store, StoreError};
use crate::wire::{InvalidResult, stored_result};

/// Most results accepted in one batch; larger batches are rejected.
pub const MAX_BATCH: usize = 10_000;

/// Why a stream was ended by the collector. Mapped to a gRPC status in
/// exactly one place ([`From<IngestError> for Status`]).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("the first message must be a Hello")]
    NoHello,
    #[error("invalid Hello: {0}")]
    BadHello(&'static str),
    #[error("unexpected message: {0}")]
    Unexpected(&'static str),
    #[error("batch of {0} results exceeds the limit of {MAX_BATCH}")]
    BatchTooLarge(usize),
    #[error(transparent)]
    InvalidResult(#[from] InvalidResult),
    #[error("storage unavailable, resend later: {0}")]
    Store(#[from] StoreError),
    #[error("collector is shutting down")]
    ShuttingDown,
}

impl From<IngestError> for Status {
    fn from(e: IngestError) -> Self {
        match &e {
            IngestError::NoHello
            | IngestError::BadHello(_)
            | IngestError::Unexpected(_)
            | IngestError::BatchTooLarge(_)
            | IngestError::InvalidResult(_) => Status::invalid_argument(e.to_string()),
            IngestError::Store(_) | IngestError::ShuttingDown => Status::unavailable(e.to_string()),
        }
    }
}

/// The `vantage.v1.Ingest` service.
pub struct IngestService {
    store: Arc<Store>,
    shutdown: CancellationToken,
}

impl IngestService {
    pub fn new(store: Arc<Store>, shutdown: CancellationToken) -> Self {
        Self { store, shutdown }
    }
}

type Outbound = Pin<Box<dyn Stream<Item = Result<pb::CollectorMessage, Status>> + Send>>;

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
        let mut inbound = request.into_inner();
        let hello = match inbound.message().await?.and_then(|m| m.body) {
            Some(pb::agent_message::Body::Hello(h)) => h,
            _ => return Err(IngestError::NoHello.into()),
        };
        if hello.agent_id.trim().is_empty() {
            return Err(IngestError::BadHello("agent_id is empty").into());
        }
        if hello.region.trim().is_empty() {
            return Err(IngestError::BadHello("region is empty").into());
        }
        let agent = AgentHello {
            agent_id: hello.agent_id,
            region: hello.region,
            labels: hello.labels.into_iter().collect(),
            version: hello.version,
            observed_ip: peer_ip,
        };
        let last_seq = self
            .store
            .upsert_agent(&agent)
            .await
            .map_err(IngestError::from)?;
        tracing::info!(agent_id = %agent.agent_id, region = %agent.region, %peer_ip, last_seq, "Agent connected.");

        // One ack in flight per batch in flight; the agent's window is small.
        let (tx, rx) = mpsc::channel(8);
        let welcome = pb::CollectorMessage {
            body: Some(pb::collector_message::Body::Welcome(pb::Welcome {
                observed_ip: peer_ip.to_string(),
                last_committed_seq: last_seq,
            })),
        };
        tx.send(Ok(welcome))
            .await
            .map_err(|_| Status::cancelled("agent went away"))?;

        let session = Session {
            store: self.store.clone(),
            agent,
            inbound,
            outbound: tx,
        };
        tokio::spawn(session.run(self.shutdown.clone()));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// One agent's stream after the Hello.
struct Session {
    store: Arc<Store>,
    agent: AgentHello,
    inbound: Streaming<pb::AgentMessage>,
    outbound: mpsc::Sender<Result<pb::CollectorMessage, Status>>,
}

impl Session {
    async fn run(mut self, shutdown: CancellationToken) {
        let agent_id = self.agent.agent_id.clone();
        let ended = loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => break Err(IngestError::ShuttingDown),
                m = self.inbound.message() => m,
            };
            match message {
                Ok(Some(m)) => {
                    if let Err(e) = self.handle(m).await {
                        break Err(e);
                    }
                }
                Ok(None) => break Ok(()),
                Err(status) => {
                    tracing::info!(%agent_id, %status, "Agent stream broke.");
                    return;
                }
            }
        };
        match ended {
            Ok(()) => tracing::info!(%agent_id, "Agent disconnected."),
            Err(error) => {
                tracing::warn!(%agent_id, %error, "Ending agent stream.");
                let _ = self.outbound.send(Err(error.into())).await;
            }
        }
    }

    async fn handle(&mut self, message: pb::AgentMessage) -> Result<(), IngestError> {
        let batch = match message.body {
            Some(pb::agent_message::Body::Batch(b)) => b,
            Some(pb::agent_message::Body::Hello(_)) => {
                return Err(IngestError::Unexpected("second Hello"));
            }
            None => return Err(IngestError::Unexpected("empty message")),
        };
        if batch.results.len() > MAX_BATCH {
            return Err(IngestError::BatchTooLarge(batch.results.len()));
        }
        let max_seq = batch.results.iter().map(|r| r.seq).max().unwrap_or(0);
        let results = batch
            .results
            .into_iter()
            .map(|r| stored_result(r, self.agent.observed_ip))
            .collect::<Result<Vec<_>, _>>()?;
        let inserted = self
            .store
            .insert_batch(&self.agent.agent_id, &self.agent.region, &results)
            .await?;
        // Only now, after COMMIT, is the batch acknowledged.
        let ack = pb::CollectorMessage {
            body: Some(pb::collector_message::Body::Ack(pb::BatchAck {
                batch_id: batch.batch_id,
                inserted: u32::try_from(inserted.new_rows).unwrap_or(u32::MAX),
                duplicates: u32::try_from(inserted.duplicates).unwrap_or(u32::MAX),
                max_seq,
            })),
        };
        tracing::debug!(agent_id = %self.agent.agent_id, batch_id = batch.batch_id, new_rows = inserted.new_rows, "Batch committed.");
        // If the agent is gone the ack is lost; it will resend, and the
        // resend adds no rows.
        let _ = self.outbound.send(Ok(ack)).await;
        Ok(())
    }
}
