//! One session of the stream to the collector: Hello and Welcome, then a
//! window of batches and their cumulative acks, with what the collector
//! pushes in between passed on, until nothing is left after a stop.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use vantage_proto::v1 as pb;

use super::{ACK_TIMEOUT, ReportError, Reporter, Sent, fail_ack_read, refusal, send_answer};

/// A stream the collector welcomed, and the limits it set.
struct Opened {
    outbound: mpsc::Sender<pb::AgentMessage>,
    inbound: tonic::Streaming<pb::CollectorMessage>,
    /// Batches sent before the first is acknowledged.
    window: usize,
    max_batch: usize,
    max_bytes: usize,
}

/// What a session has sent and not yet seen acknowledged.
struct InFlight {
    /// The highest sequence number sent.
    cursor: u64,
    batches: VecDeque<Sent>,
    gaps: BTreeSet<u64>,
    batch_id: u64,
}

impl Reporter {
    /// One stream: Hello, Welcome, then a window of batches until nothing
    /// is left after `stop` fired (or an error).
    pub(super) async fn session(
        &self,
        stop: &CancellationToken,
        welcomed: &mut bool,
    ) -> Result<(), ReportError> {
        if stop.is_cancelled()
            && self.queue.is_empty()
            && self.queue.spool().pending_gaps().is_empty()
        {
            return Ok(());
        }
        let Opened {
            outbound,
            mut inbound,
            window,
            max_batch,
            max_bytes,
        } = self.open(welcomed).await?;
        let mut answers = self.control.answers.lock().await;
        let mut sent = InFlight {
            cursor: self.acked_through.load(Ordering::SeqCst),
            batches: VecDeque::new(),
            gaps: BTreeSet::new(),
            batch_id: 0,
        };
        loop {
            // Counted before the queue is read: a sync after the read wakes
            // the waits below even if it happens before they start.
            let syncs = self.queue.sync_count();
            self.fill_window(&mut sent, &outbound, window, max_batch, max_bytes)
                .await?;
            if sent.batches.is_empty() {
                if stop.is_cancelled() && self.queue.is_empty() {
                    return Ok(());
                }
                tokio::select! {
                    _ = stop.cancelled(), if !stop.is_cancelled() => {}
                    _ = self.queue.synced_since(syncs) => {}
                    answer = answers.recv() => {
                        send_answer(&outbound, answer).await?;
                    }
                    message = inbound.next() => {
                        let message = message.ok_or(ReportError::Closed)?.map_err(ReportError::from)?;
                        self.control(message.body, None)?;
                    }
                }
                continue;
            }
            let reply = tokio::select! {
                reply = tokio::time::timeout(ACK_TIMEOUT, inbound.next()) => reply,
                // More to send while the window has room.
                _ = self.queue.synced_since(syncs), if sent.batches.len() < window => continue,
                answer = answers.recv() => {
                    send_answer(&outbound, answer).await?;
                    continue;
                }
            };
            let reply = match reply.map_err(|_| ReportError::AckTimeout)? {
                // Fault tests: the ack arrived, the connection dies before
                // the agent acts on it.
                Some(Ok(_)) if fail_ack_read() => return Err(ReportError::FaultInjected),
                Some(Ok(m)) => m,
                Some(Err(status)) => return Err(refusal(status, &sent.batches)),
                None => return Err(ReportError::Closed),
            };
            let Some(ack) = self.control(reply.body, Some(()))? else {
                continue;
            };
            self.acknowledged(&ack, &mut sent).await?;
        }
    }

    /// Connects, says Hello, reads the Welcome: where to continue and the
    /// collector's limits.
    async fn open(&self, welcomed: &mut bool) -> Result<Opened, ReportError> {
        let channel = self.connect().await?;
        let mut client = vantage_proto::authenticated_client(channel, &self.connection.token)
            .map_err(|e| ReportError::Protocol(e.to_string()))?;
        let window = self.delivery.window.max(1);
        let (outbound, rx) = mpsc::channel(window + 1);
        let hello = pb::AgentMessage {
            body: Some(pb::agent_message::Body::Hello(pb::Hello {
                agent_id: self.identity.agent_id.clone(),
                region: self.identity.region.clone(),
                labels: self.identity.labels.clone().into_iter().collect(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                capabilities: vec![
                    pb::Capability::CentralChecks as i32,
                    pb::Capability::ProbeRequests as i32,
                    pb::Capability::PathProbes as i32,
                ],
                vantages: self.identity.vantages.clone(),
            })),
        };
        outbound
            .send(hello)
            .await
            .map_err(|_| ReportError::Closed)?;
        let mut inbound = client.stream(ReceiverStream::new(rx)).await?.into_inner();
        let welcome = match inbound.next().await.transpose()?.and_then(|m| m.body) {
            Some(pb::collector_message::Body::Welcome(w)) => w,
            Some(other) => {
                return Err(ReportError::Protocol(format!(
                    "expected Welcome, got {other:?}"
                )));
            }
            None => return Err(ReportError::Closed),
        };
        *welcomed = true;
        self.egress_ip
            .send_replace(welcome.observed_ip.parse().ok());
        self.queue.continue_above(welcome.last_committed_seq);
        self.queue
            .spool()
            .resolve_unknown_starts(welcome.last_committed_seq);
        let max_batch = usize::try_from(welcome.max_batch)
            .ok()
            .filter(|m| *m > 0)
            .unwrap_or(usize::MAX)
            .min(self.delivery.batch_size);
        // Half the collector's message limit leaves room for encoding
        // overhead over the stored bytes.
        let max_bytes = usize::try_from(welcome.max_message_bytes / 2)
            .ok()
            .filter(|m| *m > 0)
            .unwrap_or(4 << 20);
        tracing::info!(
            endpoint = %self.endpoint(),
            observed_ip = %welcome.observed_ip,
            last_committed_seq = welcome.last_committed_seq,
            pending = self.queue.len(),
            "Connected to collector."
        );
        Ok(Opened {
            outbound,
            inbound,
            window,
            max_batch,
            max_bytes,
        })
    }

    /// Sends what is sendable while the window has room: results read from
    /// the spool after `cursor`, and the gaps not in flight yet.
    async fn fill_window(
        &self,
        sent: &mut InFlight,
        outbound: &mpsc::Sender<pb::AgentMessage>,
        window: usize,
        max_batch: usize,
        max_bytes: usize,
    ) -> Result<(), ReportError> {
        while sent.batches.len() < window {
            let (queue, cursor) = (self.queue.clone(), sent.cursor);
            let batch =
                tokio::task::spawn_blocking(move || queue.read(cursor, max_batch, max_bytes))
                    .await
                    .map_err(|e| ReportError::Protocol(format!("spool read failed: {e}")))?;
            let gaps: Vec<(u64, pb::Gap)> = self
                .queue
                .spool()
                .pending_gaps()
                .into_iter()
                .filter(|(id, g)| g.first_seq != 0 && !sent.gaps.contains(id))
                .map(|(id, g)| (id, g.to_proto()))
                .collect();
            if batch.results.is_empty() && gaps.is_empty() && batch.through_seq == sent.cursor {
                break;
            }
            sent.batch_id += 1;
            let batch_sent = Sent {
                batch_id: sent.batch_id,
                after_seq: sent.cursor,
                through_seq: batch.through_seq.max(sent.cursor),
                gap_ids: gaps.iter().map(|(id, _)| *id).collect(),
            };
            sent.gaps.extend(batch_sent.gap_ids.iter().copied());
            let message = pb::AgentMessage {
                body: Some(pb::agent_message::Body::Batch(pb::ResultBatch {
                    batch_id: sent.batch_id,
                    results: batch.results,
                    gaps: gaps.into_iter().map(|(_, g)| g).collect(),
                })),
            };
            outbound
                .send(message)
                .await
                .map_err(|_| ReportError::Closed)?;
            sent.cursor = batch_sent.through_seq;
            sent.batches.push_back(batch_sent);
        }
        Ok(())
    }

    /// The oldest batch in flight is acknowledged: it must be `ack`'s;
    /// its results and gaps are forgotten.
    async fn acknowledged(
        &self,
        ack: &pb::BatchAck,
        sent: &mut InFlight,
    ) -> Result<(), ReportError> {
        let Some(batch) = sent.batches.pop_front() else {
            return Err(ReportError::Protocol(
                "an Ack with no batch in flight".into(),
            ));
        };
        if ack.batch_id != batch.batch_id {
            return Err(ReportError::Protocol(format!(
                "expected the Ack of batch {}, got batch {}",
                batch.batch_id, ack.batch_id
            )));
        }
        let queue = self.queue.clone();
        let (through, gap_ids) = (batch.through_seq, batch.gap_ids);
        let _ = tokio::task::spawn_blocking(move || {
            queue.ack_through(through);
            queue.spool().forget_gaps(&gap_ids);
        })
        .await;
        self.acked_through.fetch_max(through, Ordering::SeqCst);
        tracing::debug!(
            batch_id = ack.batch_id,
            inserted = ack.inserted,
            duplicates = ack.duplicates,
            refused = ack.refused,
            through,
            "Batch acknowledged."
        );
        Ok(())
    }
}
