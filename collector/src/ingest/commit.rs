//! The committing half of a stream: writes each batch in one transaction,
//! acknowledges it only after COMMIT, in order; and the stream's place
//! under the per-agent limit, held while it lives.

use super::reader::ValidBatch;
use super::*;
use crate::store::ChecksReport;

/// One open stream of an agent, counted until dropped.
pub(super) struct StreamSlot {
    pub(super) streams: Arc<Mutex<HashMap<String, usize>>>,
    pub(super) agent_id: String,
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
pub(super) struct Committer {
    /// Held while the stream lives (the committer outlives the reader).
    pub(super) _slot: StreamSlot,
    /// Keeps the stream's connection busy in its listener's gate (never
    /// evicted, no handshake deadline) while the stream lives.
    pub(super) _busy: Option<crate::listen::Busy>,
    /// Ends the stream's pusher with the committer.
    pub(super) _ended: tokio_util::sync::DropGuard,
    pub(super) store: Arc<Store>,
    pub(super) agent_id: String,
    pub(super) region: String,
    pub(super) replies: Replies,
}

impl Committer {
    pub(super) async fn run(self, mut pending: mpsc::Receiver<Step>) {
        while let Some(step) = pending.recv().await {
            let result = match step {
                Step::Commit(batch) => self.commit(batch).await,
                Step::ProbeDone(answer) => self
                    .store
                    .record_probe_answer(&self.agent_id, &answer)
                    .await
                    .map_err(IngestError::from),
                Step::ChecksApplied(report) => self.checks_applied(report).await,
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

    /// Records which central checks the agent runs and which it refused;
    /// a refusal is logged (the agent has logged why, on its own host).
    async fn checks_applied(&self, report: ChecksReport) -> Result<(), IngestError> {
        let refused: Vec<&str> = report
            .checks
            .iter()
            .filter(|c| c.refused.is_some())
            .map(|c| c.name.as_str())
            .collect();
        metrics::gauge!("vantage_central_checks_refused", "agent_id" => self.agent_id.clone())
            .set(refused.len() as f64);
        if !refused.is_empty() {
            tracing::warn!(
                agent_id = %self.agent_id,
                set_version = report.set_version,
                checks = ?refused,
                "An agent refused central checks (`vantage-collector check list` shows why)."
            );
        }
        self.store
            .record_checks_applied(&self.agent_id, &report)
            .await
            .map_err(IngestError::from)
    }

    async fn commit(&self, batch: ValidBatch) -> Result<(), IngestError> {
        let started = Instant::now();
        // Fault tests: a slow commit (`sleep(ms)`).
        fail::fail_point!("ingest-before-commit");
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
