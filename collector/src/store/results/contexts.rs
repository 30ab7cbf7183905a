//! A result's context: the fields that repeat from one probe of an agent
//! to the next (region, check, URL, resolver and its answer, addresses,
//! TLS session, certificate, the answering layer and its stable headers),
//! stored once in `result_contexts` and named by each `result_rows` row
//! (migration `20261209000001_result_contexts.sql`). A context's id is
//! the first 8 bytes of a SHA-256 of the agent and the fields, so that
//! every collector gives one context the same id without asking the
//! database; the contexts a collector has stored are remembered, so a
//! batch whose contexts are all known writes none.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use sqlx::PgConnection;

use super::StoredResult;

/// The response headers that belong to the context (the same on every
/// response of one layer); every other header stays with the result.
/// Held to the database's `result_context_header_names()` by a test.
pub const CONTEXT_HEADERS: [&str; 6] = [
    "server",
    "via",
    "x-cache",
    "x-served-by",
    "x-amz-cf-pop",
    "content-type",
];

/// Contexts remembered before the memory is cleared (an id and a day,
/// about 30 bytes with the map's own; a fleet has a few per agent and
/// check).
const REMEMBERED: usize = 1 << 20;

/// The fields of a context, named as `result_contexts`' columns.
#[derive(Debug, Serialize)]
struct Fields<'a> {
    region: &'a str,
    check_name: &'a str,
    url: &'a str,
    method: &'a str,
    http_version: Option<&'a str>,
    resolver: Option<&'a str>,
    resolved_ips: Vec<IpAddr>,
    dialed_ip: Option<IpAddr>,
    dialed_port: Option<u16>,
    local_ip: Option<IpAddr>,
    egress_ip: Option<IpAddr>,
    headers: BTreeMap<&'a str, &'a str>,
    vantage: &'a str,
    proxy: Option<&'a str>,
    dns_rcode: Option<&'a str>,
    resolver_egress_ip: Option<IpAddr>,
    resolver_nsid: Option<&'a str>,
    resolver_identity_error: Option<&'a str>,
    echo_ip: Option<IpAddr>,
    tls_version: Option<&'a str>,
    tls_alpn: Option<&'a str>,
    tls_cipher: Option<&'a str>,
    cert_subject: Option<&'a str>,
    cert_issuer: Option<&'a str>,
    cert_not_after: Option<DateTime<Utc>>,
    gateway: Option<&'a str>,
    edge_location: Option<&'a str>,
    interval_ms: Option<i32>,
    proxy_ip: Option<IpAddr>,
    check_version: Option<i64>,
    /// Left out when false (NULL in the column), so the contexts of
    /// verified probes keep the ids they had before the column existed.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    tls_insecure: bool,
}

impl<'a> Fields<'a> {
    fn of(r: &'a StoredResult, region: &'a str) -> Self {
        Self {
            region: r.region.as_deref().unwrap_or(region),
            check_name: &r.check,
            url: &r.url,
            method: &r.method,
            http_version: r.http_version.as_deref(),
            resolver: r.resolver.as_deref(),
            resolved_ips: r.resolved.iter().map(|(ip, _)| *ip).collect(),
            dialed_ip: r.dialed.map(|a| a.ip()),
            dialed_port: r.dialed.map(|a| a.port()),
            local_ip: r.local_ip,
            egress_ip: r.egress_ip,
            headers: r
                .headers
                .iter()
                .filter(|(name, _)| is_context_header(name))
                .map(|(name, value)| (name.as_str(), value.as_str()))
                .collect(),
            vantage: &r.vantage,
            proxy: r.proxy.as_deref(),
            dns_rcode: r.dns_rcode.as_deref(),
            resolver_egress_ip: r.resolver_egress_ip,
            resolver_nsid: r.resolver_nsid.as_deref(),
            resolver_identity_error: r.resolver_identity_error.as_deref(),
            echo_ip: r.echo_ip,
            tls_version: r.tls_version.as_deref(),
            tls_alpn: r.tls_alpn.as_deref(),
            tls_cipher: r.tls_cipher.as_deref(),
            cert_subject: r.cert_subject.as_deref(),
            cert_issuer: r.cert_issuer.as_deref(),
            cert_not_after: r.cert_not_after,
            gateway: r.gateway.as_deref(),
            edge_location: r.edge_location.as_deref(),
            interval_ms: r.interval_ms,
            proxy_ip: r.proxy_ip,
            check_version: r.check_version,
            tls_insecure: r.tls_insecure,
        }
    }
}

/// The columns of `result_contexts` a context writes (the keys of its
/// fields, every one present), and those the insert adds: the one list a
/// schema test holds to the table.
pub fn context_columns() -> Vec<String> {
    let everything = StoredResult {
        tls_insecure: true,
        ..StoredResult::default()
    };
    let fields = serde_json::to_value(Fields::of(&everything, "region"))
        .ok()
        .and_then(|v| v.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()))
        .unwrap_or_default();
    ["agent_id", "id", "last_used"]
        .into_iter()
        .map(str::to_owned)
        .chain(fields)
        .collect()
}

/// Whether a response header belongs to the context.
pub fn is_context_header(name: &str) -> bool {
    CONTEXT_HEADERS.contains(&name)
}

/// One `result_contexts` row.
#[derive(Debug, Serialize)]
struct Row<'a> {
    agent_id: &'a str,
    id: i64,
    last_used: NaiveDate,
    #[serde(flatten)]
    fields: Fields<'a>,
}

/// The contexts of one batch: each result's context id, in the batch's
/// order, and the contexts not known to be stored, as `result_contexts`
/// rows.
pub(super) struct BatchContexts<'a> {
    pub ids: Vec<i64>,
    missing: Vec<Row<'a>>,
}

/// The contexts this collector has stored, and the latest day each is
/// stored as used on. A context retention removed was last used before
/// every day still kept, so a result of a kept day never finds it here
/// as stored.
#[derive(Debug, Default)]
pub struct KnownContexts(Mutex<HashMap<i64, NaiveDate>>);

impl KnownContexts {
    /// Splits `results` of `agent_id` into context ids and the contexts
    /// to store (new, or used on a later day than stored).
    pub(super) fn of_batch<'a>(
        &self,
        agent_id: &'a str,
        region: &'a str,
        results: &'a [StoredResult],
    ) -> Result<BatchContexts<'a>, serde_json::Error> {
        // Hashed before the memory is locked: other batches' lookups wait
        // only for this batch's.
        let mut ids = Vec::with_capacity(results.len());
        let mut distinct: HashMap<i64, Row<'a>> = HashMap::new();
        for r in results {
            let fields = Fields::of(r, region);
            let mut hash = Sha256::new();
            hash.update(agent_id.as_bytes());
            hash.update([0]);
            hash.update(serde_json::to_vec(&fields)?);
            let digest = hash.finalize();
            let mut first = [0u8; 8];
            first.copy_from_slice(&digest[..8]);
            let id = i64::from_be_bytes(first);
            ids.push(id);
            let day = r.started_at.date_naive();
            distinct
                .entry(id)
                .and_modify(|row| row.last_used = row.last_used.max(day))
                .or_insert(Row {
                    agent_id,
                    id,
                    last_used: day,
                    fields,
                });
        }
        let known = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let missing = distinct
            .into_values()
            .filter(|row| {
                known
                    .get(&row.id)
                    .is_none_or(|stored| *stored < row.last_used)
            })
            .collect();
        Ok(BatchContexts { ids, missing })
    }

    /// Remembers a batch's contexts as stored (after its commit).
    pub(super) fn stored(&self, batch: &BatchContexts<'_>) {
        let mut known = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if known.len() + batch.missing.len() > REMEMBERED {
            known.clear();
        }
        for row in &batch.missing {
            let day = known.entry(row.id).or_insert(row.last_used);
            *day = (*day).max(row.last_used);
        }
    }
}

/// Stores the batch's missing contexts (a context already stored only
/// moves its `last_used` on).
pub(super) async fn insert(
    conn: &mut PgConnection,
    batch: &BatchContexts<'_>,
) -> Result<(), super::super::StoreError> {
    if batch.missing.is_empty() {
        return Ok(());
    }
    let rows =
        serde_json::to_value(&batch.missing).map_err(|e| super::super::StoreError::Encode {
            column: "result_contexts".into(),
            reason: e.to_string(),
        })?;
    sqlx::query(
        "INSERT INTO result_contexts
         SELECT * FROM jsonb_populate_recordset(NULL::result_contexts, $1)
         ON CONFLICT (agent_id, id) DO UPDATE SET last_used = EXCLUDED.last_used
             WHERE result_contexts.last_used < EXCLUDED.last_used",
    )
    .bind(rows)
    .execute(conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vantage_proto::v1 as pb;

    fn result(seq: u64, headers: &[(&str, &str)], dialed: &str) -> StoredResult {
        let r = pb::ProbeResult {
            seq,
            started_at: Some(prost_types::Timestamp {
                seconds: 1_800_000_000 + seq as i64,
                nanos: 0,
            }),
            check: "shop".into(),
            url: "https://shop.test/".into(),
            method: "GET".into(),
            dialed_addr: dialed.into(),
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            vantage: "direct".into(),
            outcome: pb::Outcome::Ok as i32,
            ..Default::default()
        };
        crate::wire::stored_result(r, [127, 0, 0, 1].into()).unwrap()
    }

    #[test]
    fn what_repeats_shares_a_context_and_what_differs_does_not() {
        let known = KnownContexts::default();
        let results = [
            result(
                1,
                &[("server", "nginx"), ("cf-ray", "a-FRA")],
                "10.0.0.1:443",
            ),
            // Only a per-request header differs: the same context.
            result(
                2,
                &[("server", "nginx"), ("cf-ray", "b-FRA")],
                "10.0.0.1:443",
            ),
            // Another address dialled, another server: two more.
            result(3, &[("server", "nginx")], "10.0.0.2:443"),
            result(4, &[("server", "envoy")], "10.0.0.1:443"),
        ];
        let batch = known.of_batch("agent-a", "eu", &results).unwrap();
        assert_eq!(batch.ids[0], batch.ids[1]);
        assert_ne!(batch.ids[0], batch.ids[2]);
        assert_ne!(batch.ids[0], batch.ids[3]);
        assert_eq!(batch.missing.len(), 3);
        // Another agent's same context is its own.
        let other = known.of_batch("agent-b", "eu", &results[..1]).unwrap();
        assert_ne!(other.ids[0], batch.ids[0]);

        // Once stored, the same day's batch writes no context; a later
        // day's moves its last_used on.
        known.stored(&batch);
        assert!(
            known
                .of_batch("agent-a", "eu", &results)
                .unwrap()
                .missing
                .is_empty()
        );
        let mut tomorrow = result(5, &[("server", "nginx")], "10.0.0.2:443");
        tomorrow.started_at += chrono::Duration::days(1);
        let later = known
            .of_batch("agent-a", "eu", std::slice::from_ref(&tomorrow))
            .unwrap();
        assert_eq!(later.ids[0], batch.ids[2]);
        assert_eq!(later.missing.len(), 1);
        assert_eq!(later.missing[0].last_used, tomorrow.started_at.date_naive());
    }
}
