//! Probe results and delivery gaps: one batch of an agent in one
//! transaction (rows keyed by agent, seq and start, so a resend inserts
//! nothing twice), with the agent's progress. A result is stored as its
//! context ([`contexts`]: what repeats from one probe to the next) and its
//! row (what changes), which the `probe_results` view joins. The rows go
//! in by binary `COPY` ([`copy`]); a batch holding rows already stored
//! goes into a temporary table the same way, then only its new rows.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use chrono::{DateTime, NaiveDate, Utc};

use super::{Store, StoreError, cells};

mod contexts;
mod copy;

pub use contexts::{CONTEXT_HEADERS, KnownContexts, context_columns};
pub use copy::RESULT_ROW_COLUMNS;

/// One probe result as the collector stores it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StoredResult {
    pub seq: i64,
    pub started_at: DateTime<Utc>,
    pub check: String,
    pub url: String,
    pub method: String,
    pub outcome: &'static str,
    pub message: String,
    pub http_status: Option<i16>,
    pub http_version: Option<String>,
    pub resolver: Option<String>,
    pub resolved: Vec<(IpAddr, u32)>,
    pub dialed: Option<std::net::SocketAddr>,
    pub local_ip: Option<IpAddr>,
    pub egress_ip: Option<IpAddr>,
    pub dns_us: Option<i64>,
    pub connect_us: Option<i64>,
    pub tls_us: Option<i64>,
    pub ttfb_us: Option<i64>,
    pub total_us: Option<i64>,
    pub headers: BTreeMap<String, String>,
    /// The vantage's region override; `None`: the agent's region.
    pub region: Option<String>,
    pub vantage: String,
    pub proxy: Option<String>,
    pub proxy_status: Option<i16>,
    pub dns_rcode: Option<String>,
    pub resolver_egress_ip: Option<IpAddr>,
    pub resolver_nsid: Option<String>,
    pub resolver_identity_error: Option<String>,
    pub echo_ip: Option<IpAddr>,
    pub proxy_us: Option<i64>,
    pub transfer_us: Option<i64>,
    pub tls_version: Option<String>,
    pub tls_alpn: Option<String>,
    pub tls_cipher: Option<String>,
    pub cert_subject: Option<String>,
    pub cert_issuer: Option<String>,
    pub cert_not_after: Option<DateTime<Utc>>,
    pub body_bytes: Option<i64>,
    pub body_sha256: Option<String>,
    pub body_truncated: bool,
    pub gateway: Option<String>,
    pub edge_location: Option<String>,
    /// JSON array, one object per redirect hop.
    pub hops: serde_json::Value,
    /// The check's interval (one probe round), milliseconds.
    pub interval_ms: Option<i32>,
    /// The forward proxy's address as dialled.
    pub proxy_ip: Option<IpAddr>,
    /// The version of a check the collector assigned; `None`: the
    /// agent's own.
    pub check_version: Option<i64>,
    /// The site's certificate was not verified (the check's
    /// `tls_insecure_skip_verify`).
    pub tls_insecure: bool,
    /// The probe request a one-off result answers; `None`: scheduled.
    pub request_id: Option<i64>,
    /// The path traced after the probe, stored in `path_results` (not a
    /// column of the result).
    pub path: Option<Box<super::StoredPath>>,
}

/// Results an agent will never deliver, and why (a `delivery_gaps` row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredGap {
    pub first_seq: i64,
    pub last_seq: i64,
    pub count: Option<i64>,
    pub reason: &'static str,
    pub detected_at: DateTime<Utc>,
}

/// Outcome of inserting one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inserted {
    pub new_rows: u64,
    pub duplicates: u64,
}

/// How a batch's rows go in.
enum Insert<'a> {
    /// Binary `COPY` of the encoded rows, and the batch's cells with their
    /// keys' ids: fails whole on a row already stored.
    Copy(&'a [super::cells::SlotRow], &'a [i64]),
    /// The rows copied into a temporary table, then `INSERT ... ON
    /// CONFLICT DO NOTHING`: skips rows already stored.
    SkipStored,
}

impl Insert<'_> {
    fn label(&self) -> &'static str {
        match self {
            Self::Copy(..) => "copy",
            Self::SkipStored => "skip_stored",
        }
    }
}

impl Store {
    /// Inserts a batch of one agent's results in one transaction; rows that
    /// are already stored (a resent batch) are skipped. Returns only after
    /// COMMIT.
    ///
    /// The rows go in by binary `COPY`, at the speed of a bulk load. A
    /// batch the agent resends because its ack was lost holds rows already
    /// stored: its `COPY` fails on the primary key, the transaction rolls
    /// back whole, and the batch goes in again with `ON CONFLICT DO
    /// NOTHING`, so no row is stored twice and none is lost.
    pub async fn insert_batch(
        &self,
        agent_id: &str,
        region: &str,
        results: &[StoredResult],
        gaps: &[StoredGap],
        progress_seq: i64,
    ) -> Result<Inserted, StoreError> {
        self.insert_batch_cells(agent_id, region, results, gaps, progress_seq)
            .await
    }

    async fn insert_batch_cells(
        &self,
        agent_id: &str,
        region: &str,
        results: &[StoredResult],
        gaps: &[StoredGap],
        progress_seq: i64,
    ) -> Result<Inserted, StoreError> {
        if results.is_empty() && gaps.is_empty() {
            return Ok(Inserted {
                new_rows: 0,
                duplicates: 0,
            });
        }
        let mut days: Vec<NaiveDate> = results.iter().map(|r| r.started_at.date_naive()).collect();
        days.sort_unstable();
        days.dedup();
        self.ensure_partitions(&days).await?;
        // The detector's cells of the batch, their keys stored first.
        let cells = self.batch_cells(agent_id, region, results, None).await?;
        let key_ids = self.cell_key_ids(&cells).await?;
        self.ensure_cell_partitions(cells.iter().map(|c| c.counts.last_at))
            .await?;

        let contexts = self
            .contexts
            .of_batch(agent_id, region, results)
            .map_err(|e| StoreError::Encode {
                column: "result_contexts".into(),
                reason: e.to_string(),
            })?;
        let rows = copy::encode(agent_id, results, &contexts.ids)?;
        let batch = Batch {
            agent_id,
            region,
            results,
            contexts: &contexts,
            rows: &rows,
            gaps,
            progress_seq,
        };
        let inserted = match self
            .insert_batch_by(&batch, Insert::Copy(&cells, &key_ids))
            .await
        {
            Err(StoreError::Database(e)) if is_unique_violation(&e) => {
                tracing::debug!(
                    agent_id,
                    results = results.len(),
                    "Batch holds rows already stored; inserting the rest."
                );
                self.insert_batch_by(&batch, Insert::SkipStored).await
            }
            other => other,
        }?;
        self.contexts.stored(&contexts);
        Ok(inserted)
    }

    async fn insert_batch_by(
        &self,
        b: &Batch<'_>,
        how: Insert<'_>,
    ) -> Result<Inserted, StoreError> {
        let label = how.label();
        let mut tx = self.pool.begin().await?;
        contexts::insert(&mut tx, b.contexts).await?;
        let inserted = match how {
            Insert::Copy(cells_rows, key_ids) => {
                let mut copy = tx.copy_in_raw(&copy::INTO_ROWS).await?;
                copy.send(b.rows.as_ref()).await?;
                let inserted = copy.finish().await?;
                cells::insert(&mut tx, cells_rows, key_ids).await?;
                inserted
            }
            Insert::SkipStored => {
                let stored = copy::insert_new(&mut tx, b.rows).await?;
                // Only the rows that went in are counted.
                let new: HashSet<i64> = stored.iter().copied().collect();
                let cells_rows = self
                    .batch_cells(b.agent_id, b.region, b.results, Some(&new))
                    .await?;
                let key_ids = self.cell_key_ids(&cells_rows).await?;
                cells::insert(&mut tx, &cells_rows, &key_ids).await?;
                stored.len() as u64
            }
        };
        super::paths::insert(&mut tx, b.agent_id, b.results).await?;
        if !b.gaps.is_empty() {
            sqlx::query(
                "INSERT INTO delivery_gaps (agent_id, first_seq, last_seq, count, reason,
                                            detected_at)
                 SELECT $1, * FROM UNNEST($2::bigint[], $3::bigint[], $4::bigint[], $5::text[],
                                          $6::timestamptz[])
                 ON CONFLICT DO NOTHING",
            )
            .bind(b.agent_id)
            .bind(b.gaps.iter().map(|g| g.first_seq).collect::<Vec<_>>())
            .bind(b.gaps.iter().map(|g| g.last_seq).collect::<Vec<_>>())
            .bind(b.gaps.iter().map(|g| g.count).collect::<Vec<_>>())
            .bind(b.gaps.iter().map(|g| g.reason).collect::<Vec<_>>())
            .bind(b.gaps.iter().map(|g| g.detected_at).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        // The progress row, in the same transaction; it also re-checks the
        // credential, so a revocation stops an open stream at its next batch.
        let progressed = sqlx::query(
            "UPDATE agents SET last_seq = GREATEST(last_seq, $2), last_seen = now()
             WHERE agent_id = $1 AND revoked_at IS NULL",
        )
        .bind(b.agent_id)
        .bind(b.progress_seq)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if progressed == 0 {
            tx.rollback().await?;
            return Err(StoreError::Revoked(b.agent_id.to_owned()));
        }
        tx.commit().await?;
        metrics::counter!("vantage_ingest_batches_total", "insert" => label).increment(1);
        let total = b.results.len() as u64;
        Ok(Inserted {
            new_rows: inserted,
            duplicates: total.saturating_sub(inserted),
        })
    }
}

/// One agent's batch, as [`Store::insert_batch`] takes it.
struct Batch<'a> {
    agent_id: &'a str,
    region: &'a str,
    results: &'a [StoredResult],
    contexts: &'a contexts::BatchContexts<'a>,
    /// The results as `result_rows`, binary COPY ([`copy::encode`]).
    rows: &'a [u8],
    gaps: &'a [StoredGap],
    progress_seq: i64,
}

/// A row already stored: the primary key refused it. (Citus reports a
/// worker's refusal of a `COPY` row as an internal error, XX000, with
/// PostgreSQL's words.)
fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error().is_some_and(|d| {
        d.kind() == sqlx::error::ErrorKind::UniqueViolation
            || (d.code().as_deref() == Some("XX000")
                && d.message()
                    .starts_with("duplicate key value violates unique constraint"))
    })
}

impl Store {
    /// The stored results named by (agent, seq, started_at), with their
    /// whole path, in the order asked for (missing ones left out: a
    /// sample's partition may have been dropped).
    pub async fn result_paths(
        &self,
        keys: &[(String, i64, DateTime<Utc>)],
    ) -> Result<Vec<ResultPath>, StoreError> {
        let agents: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
        let seqs: Vec<i64> = keys.iter().map(|k| k.1).collect();
        let times: Vec<DateTime<Utc>> = keys.iter().map(|k| k.2).collect();
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {RESULT_PATH_COLUMNS}
             FROM unnest($1::text[], $2::int8[], $3::timestamptz[]) WITH ORDINALITY
                  AS k(agent_id, seq, started_at, n)
             JOIN probe_results r ON r.agent_id = k.agent_id AND r.seq = k.seq
                                 AND r.started_at = k.started_at
             ORDER BY k.n"
        )))
        .bind(agents)
        .bind(seqs)
        .bind(times)
        .fetch_all(&self.pool)
        .await?)
    }
}

/// One stored result with its whole path: where it left from, which
/// resolver answered what, the address dialled, who answered and how long
/// each phase took. What `vantage-collector probe` prints side by side and
/// what the incident page shows for each sample.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ResultPath {
    pub agent_id: String,
    pub vantage: String,
    pub region: String,
    pub seq: i64,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub egress_ip: Option<String>,
    pub proxy: Option<String>,
    pub resolver: Option<String>,
    pub resolved: Vec<String>,
    pub dialed: Option<String>,
    pub outcome: String,
    pub http_status: Option<i16>,
    pub message: String,
    pub gateway: Option<String>,
    pub edge_location: Option<String>,
    pub dns_us: Option<i64>,
    pub connect_us: Option<i64>,
    pub proxy_us: Option<i64>,
    pub tls_us: Option<i64>,
    pub ttfb_us: Option<i64>,
    pub total_us: Option<i64>,
}

/// The columns of [`ResultPath`] over `probe_results r`. The egress is
/// the address the target saw (`probe_egress`, as the detector reads it).
pub(super) const RESULT_PATH_COLUMNS: &str = "r.agent_id, r.vantage, r.region, r.seq, r.started_at,
    host(probe_egress(r.echo_ip, r.local_ip, r.proxy, r.proxy_ip, r.egress_ip)) AS egress_ip,
    r.proxy, r.resolver,
    ARRAY(SELECT host(a) FROM unnest(r.resolved_ips) a) AS resolved,
    CASE WHEN r.dialed_ip IS NULL THEN NULL
         WHEN family(r.dialed_ip) = 6 THEN '[' || host(r.dialed_ip) || ']:' || r.dialed_port
         ELSE host(r.dialed_ip) || ':' || r.dialed_port END AS dialed,
    r.outcome, r.http_status, r.message, r.gateway, r.edge_location,
    r.dns_us, r.connect_us, r.proxy_us, r.tls_us, r.ttfb_us, r.total_us";
