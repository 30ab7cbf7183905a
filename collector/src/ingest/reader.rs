//! The reading half of a stream: decodes, validates (limits, clock skew,
//! plausible sequence numbers) and rate-limits each batch, and hands it to
//! the committer in stream order.

use super::*;

/// What the reader hands the committer, in stream order.
pub(super) enum Step {
    Commit(ValidBatch),
    /// The agent ran (or could not run) a probe request.
    ProbeDone(ProbeAnswer),
    /// End the stream with this error once everything before it is acked.
    Fail(IngestError),
}

pub(super) struct ValidBatch {
    pub(super) batch_id: u64,
    pub(super) results: Vec<StoredResult>,
    pub(super) gaps: Vec<StoredGap>,
    /// Highest seq the agent sent in the batch, refused results included.
    pub(super) max_seq: u64,
    /// Highest plausible seq stored (result or gap): the agent's progress.
    pub(super) progress_seq: i64,
    pub(super) refused: u32,
    /// Its cells for this collector's detector, counted here so that the
    /// committer need not (`None`: the database read counts them).
    pub(super) ticket: Option<Ticket>,
}

/// Longest error text of a probe answer kept.
const MAX_ANSWER_ERROR: usize = 1000;

/// A ProbeDone, checked.
fn probe_answer(done: pb::ProbeDone) -> Result<ProbeAnswer, IngestError> {
    let request_id = i64::try_from(done.request_id)
        .ok()
        .filter(|id| *id > 0)
        .ok_or(IngestError::Unexpected("ProbeDone without a request id"))?;
    let mut error = done.error;
    if error.len() > MAX_ANSWER_ERROR {
        let mut end = MAX_ANSWER_ERROR;
        while !error.is_char_boundary(end) {
            end -= 1;
        }
        error.truncate(end);
    }
    Ok(ProbeAnswer {
        request_id,
        results: i32::try_from(done.results).unwrap_or(i32::MAX),
        error: Some(error).filter(|e| !e.is_empty()),
    })
}

/// Decodes, validates and rate-limits one stream's batches.
pub(super) struct Reader {
    pub(super) agent_id: String,
    /// The stream's region, for the feed's cells.
    pub(super) region: String,
    pub(super) feed: Arc<Feed>,
    pub(super) observed_ip: IpAddr,
    pub(super) limits: IngestLimits,
    pub(super) rate: Arc<DefaultKeyedRateLimiter<String>>,
    pub(super) inbound: Streaming<pb::AgentMessage>,
    pub(super) steps: mpsc::Sender<Step>,
}

impl Reader {
    pub(super) async fn run(mut self, shutdown: CancellationToken) {
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
            let step = match message {
                Ok(pb::AgentMessage {
                    body: Some(pb::agent_message::Body::ProbeDone(done)),
                }) => match probe_answer(done) {
                    Ok(answer) => Step::ProbeDone(answer),
                    Err(e) => Step::Fail(e),
                },
                message => match message.and_then(|m| self.validate(m)) {
                    Ok(batch) => {
                        self.throttle(batch.results.len()).await;
                        Step::Commit(batch)
                    }
                    Err(e) => Step::Fail(e),
                },
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
            Some(pb::agent_message::Body::ProbeDone(_)) => {
                return Err(IngestError::Unexpected("ProbeDone out of place"));
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
                    reason: pb::GapReason::ImplausibleSeq.text(),
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
                    reason: pb::GapReason::TimestampSkew.text(),
                    detected_at: now,
                });
            }
        }
        if refused > 0 {
            metrics::counter!("vantage_ingest_refused_results_total", "reason" => pb::GapReason::TimestampSkew.text())
                .increment(u64::from(refused));
        }
        if implausible > 0 {
            metrics::counter!("vantage_ingest_refused_results_total", "reason" => pb::GapReason::ImplausibleSeq.text())
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
        let ticket = self.feed.prepare(&self.agent_id, &self.region, &results);
        Ok(ValidBatch {
            batch_id,
            results,
            gaps,
            max_seq,
            progress_seq,
            refused: refused + implausible,
            ticket,
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
