//! The reading half of a stream: decodes, validates (limits, clock skew,
//! plausible sequence numbers) and rate-limits each batch, and hands it to
//! the committer in stream order.

use super::cardinality::{Cardinality, OverCap};
use super::*;
use crate::store::{CheckStatus, ChecksReport};

/// What the reader hands the committer, in stream order.
pub(super) enum Step {
    Commit(ValidBatch),
    /// The agent ran (or could not run) a probe request.
    ProbeDone(ProbeAnswer),
    /// What the agent made of the central checks it holds.
    ChecksApplied(ChecksReport),
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
    truncate_at_char(&mut error, MAX_ANSWER_ERROR);
    Ok(ProbeAnswer {
        request_id,
        results: i32::try_from(done.results).unwrap_or(i32::MAX),
        error: Some(error).filter(|e| !e.is_empty()),
    })
}

/// A batch's results refused one by one, each recorded as a gap (runs of
/// consecutive sequence numbers refused for the same reason as one).
#[derive(Default)]
struct Refused {
    counts: Vec<(pb::GapReason, u32)>,
    over_cap: Option<OverCap>,
}

impl Refused {
    fn add(
        &mut self,
        gaps: &mut Vec<StoredGap>,
        seq: i64,
        reason: pb::GapReason,
        now: chrono::DateTime<chrono::Utc>,
    ) {
        match self.counts.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, count)) => *count += 1,
            None => self.counts.push((reason, 1)),
        }
        let text = reason.text();
        if let Some(last) = gaps.last_mut()
            && last.reason == text
            && last.detected_at == now
            && last.last_seq.checked_add(1) == Some(seq)
        {
            last.last_seq = seq;
            last.count = last.count.map(|c| c + 1);
            return;
        }
        gaps.push(StoredGap {
            first_seq: seq,
            last_seq: seq,
            count: Some(1),
            reason: text,
            detected_at: now,
        });
    }

    fn count(&self, reason: pb::GapReason) -> u32 {
        self.counts
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, c)| *c)
    }

    fn total(&self) -> u32 {
        self.counts.iter().map(|(_, c)| c).sum()
    }
}

/// A ChecksApplied, checked: at most the agent's check cap, names and
/// reasons of bounded length.
fn checks_report(
    report: pb::ChecksApplied,
    max_checks: usize,
) -> Result<ChecksReport, IngestError> {
    if report.checks.len() > max_checks {
        return Err(IngestError::Unexpected(
            "ChecksApplied names more checks than ingest.max_checks_per_agent",
        ));
    }
    let set_version = i64::try_from(report.set_version)
        .map_err(|_| IngestError::Unexpected("ChecksApplied with a set version beyond i64"))?;
    let checks = report
        .checks
        .into_iter()
        .map(|c| {
            let mut reason = c.refused;
            truncate_at_char(&mut reason, MAX_ANSWER_ERROR);
            let mut name = c.name;
            truncate_at_char(&mut name, MAX_ANSWER_ERROR);
            CheckStatus {
                name,
                version: i64::try_from(c.version).unwrap_or(i64::MAX),
                refused: Some(reason).filter(|r| !r.is_empty()),
            }
        })
        .collect();
    Ok(ChecksReport {
        set_version,
        checks,
    })
}

fn truncate_at_char(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

/// Decodes, validates and rate-limits one stream's batches.
pub(super) struct Reader {
    pub(super) agent_id: String,
    pub(super) observed_ip: IpAddr,
    pub(super) limits: IngestLimits,
    pub(super) rate: Arc<DefaultKeyedRateLimiter<String>>,
    pub(super) cardinality: Arc<Cardinality>,
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
                Ok(pb::AgentMessage {
                    body: Some(pb::agent_message::Body::ChecksApplied(report)),
                }) => match checks_report(report, self.limits.max_checks_per_agent) {
                    Ok(report) => Step::ChecksApplied(report),
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
            Some(pb::agent_message::Body::ChecksApplied(_)) => {
                return Err(IngestError::Unexpected("ChecksApplied out of place"));
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
        let mut refused = Refused::default();
        for r in batch.results {
            let r = stored_result(r, self.observed_ip)
                .map_err(|e: InvalidResult| invalid(e.to_string()))?;
            let reason = if r.seq > ceiling {
                tracing::warn!(
                    agent_id = %self.agent_id, seq = r.seq, ceiling,
                    "Refused a result whose sequence number is far beyond any this agent can \
                     have given (a forged or corrupted result); recorded as an implausible_seq gap."
                );
                pb::GapReason::ImplausibleSeq
            } else if !self.limits.skew.accepts(r.started_at, now) {
                tracing::warn!(agent_id = %self.agent_id, seq = r.seq, started_at = %r.started_at, "Refused a result whose start time is too far from the collector's clock.");
                pb::GapReason::TimestampSkew
            } else if let Err(over) = self.cardinality.admit(&self.agent_id, &r.vantage, &r.check) {
                refused.over_cap.get_or_insert(over);
                pb::GapReason::Cardinality
            } else {
                results.push(r);
                continue;
            };
            refused.add(&mut gaps, r.seq, reason, now);
        }
        if let Some(over) = refused.over_cap
            && self.cardinality.due_a_log_line(&self.agent_id)
        {
            tracing::error!(
                agent_id = %self.agent_id,
                refused = refused.count(pb::GapReason::Cardinality),
                "Refused results of an agent reporting {over}; recorded as cardinality gaps \
                 (logged once a minute per agent; vantage_ingest_refused_results_total counts \
                 them all)."
            );
        }
        for (reason, count) in &refused.counts {
            metrics::counter!("vantage_ingest_refused_results_total", "reason" => reason.text())
                .increment(u64::from(*count));
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
            refused: refused.total(),
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
