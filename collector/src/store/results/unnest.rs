//! The insert that skips rows already stored: one `INSERT ... SELECT
//! FROM UNNEST(...) ON CONFLICT DO NOTHING` of a batch turned inside out
//! (one array per column). The path of a batch the agent resends, whose
//! binary `COPY` met a row it already delivered.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::{RESULT_COLUMNS, StoredResult};

/// The statement (made once).
static INSERT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "INSERT INTO probe_results ({RESULT_COLUMNS})
         SELECT $1, COALESCE(t.region, $2), t.seq, t.started_at, t.check_name, t.url,
            t.method, t.outcome, t.message, t.http_status, t.http_version, t.resolver,
            t.resolved_ips::inet[], t.resolved_ttls::integer[],
            t.dialed_ip::inet, t.dialed_port, t.local_ip::inet, t.egress_ip::inet,
            t.dns_us, t.connect_us, t.tls_us, t.ttfb_us, t.total_us, t.headers::jsonb,
            t.vantage, t.proxy, t.proxy_status, t.dns_rcode, t.resolver_egress_ip::inet,
            t.resolver_nsid, t.resolver_identity_error, t.echo_ip::inet, t.proxy_us,
            t.transfer_us, t.tls_version, t.tls_alpn, t.tls_cipher, t.cert_subject,
            t.cert_issuer, t.cert_not_after, t.body_bytes, t.body_sha256, t.body_truncated,
            t.gateway, t.edge_location, t.hops::jsonb, t.interval_ms, t.proxy_ip::inet,
            t.check_version, t.request_id
         FROM UNNEST(
            $3::bigint[], $4::timestamptz[], $5::text[], $6::text[], $7::text[], $8::text[],
            $9::text[], $10::smallint[], $11::text[], $12::text[], $13::text[], $14::text[],
            $15::text[], $16::integer[], $17::text[], $18::text[],
            $19::bigint[], $20::bigint[], $21::bigint[], $22::bigint[], $23::bigint[],
            $24::text[], $25::text[], $26::text[], $27::text[], $28::smallint[],
            $29::text[], $30::text[], $31::text[], $32::text[], $33::text[],
            $34::bigint[], $35::bigint[], $36::text[], $37::text[], $38::text[],
            $39::text[], $40::text[], $41::timestamptz[], $42::bigint[], $43::text[],
            $44::boolean[], $45::text[], $46::text[], $47::text[], $48::integer[],
            $49::text[], $50::bigint[], $51::bigint[]
         ) AS t(seq, started_at, check_name, url, method, outcome, message, http_status,
                http_version, resolver, resolved_ips, resolved_ttls, dialed_ip, dialed_port,
                local_ip, egress_ip, dns_us, connect_us, tls_us, ttfb_us, total_us, headers,
                region, vantage, proxy, proxy_status, dns_rcode, resolver_egress_ip,
                resolver_nsid, resolver_identity_error, echo_ip, proxy_us, transfer_us,
                tls_version, tls_alpn, tls_cipher, cert_subject, cert_issuer, cert_not_after,
                body_bytes, body_sha256, body_truncated, gateway, edge_location, hops,
                interval_ms, proxy_ip, check_version, request_id)
         ON CONFLICT DO NOTHING
         RETURNING seq"
    )
});

/// Inserts `results` of one agent, skipping those already stored;
/// returns the sequence numbers of the rows inserted.
pub(super) async fn insert(
    conn: &mut PgConnection,
    agent_id: &str,
    region: &str,
    results: &[StoredResult],
) -> Result<Vec<i64>, sqlx::Error> {
    let columns = Columns::from(results);
    sqlx::query_scalar(sqlx::AssertSqlSafe(INSERT.as_str()))
        .bind(agent_id)
        .bind(region)
        .bind(columns.seq)
        .bind(columns.started_at)
        .bind(columns.check)
        .bind(columns.url)
        .bind(columns.method)
        .bind(columns.outcome)
        .bind(columns.message)
        .bind(columns.http_status)
        .bind(columns.http_version)
        .bind(columns.resolver)
        .bind(columns.resolved_ips)
        .bind(columns.resolved_ttls)
        .bind(columns.dialed_ip)
        .bind(columns.dialed_port)
        .bind(columns.local_ip)
        .bind(columns.egress_ip)
        .bind(columns.dns_us)
        .bind(columns.connect_us)
        .bind(columns.tls_us)
        .bind(columns.ttfb_us)
        .bind(columns.total_us)
        .bind(columns.headers)
        .bind(columns.region)
        .bind(columns.vantage)
        .bind(columns.proxy)
        .bind(columns.proxy_status)
        .bind(columns.dns_rcode)
        .bind(columns.resolver_egress_ip)
        .bind(columns.resolver_nsid)
        .bind(columns.resolver_identity_error)
        .bind(columns.echo_ip)
        .bind(columns.proxy_us)
        .bind(columns.transfer_us)
        .bind(columns.tls_version)
        .bind(columns.tls_alpn)
        .bind(columns.tls_cipher)
        .bind(columns.cert_subject)
        .bind(columns.cert_issuer)
        .bind(columns.cert_not_after)
        .bind(columns.body_bytes)
        .bind(columns.body_sha256)
        .bind(columns.body_truncated)
        .bind(columns.gateway)
        .bind(columns.edge_location)
        .bind(columns.hops)
        .bind(columns.interval_ms)
        .bind(columns.proxy_ip)
        .bind(columns.check_version)
        .bind(columns.request_id)
        .fetch_all(&mut *conn)
        .await
}

/// A batch turned inside out: one array per column, for UNNEST.
struct Columns {
    seq: Vec<i64>,
    started_at: Vec<DateTime<Utc>>,
    check: Vec<String>,
    url: Vec<String>,
    method: Vec<String>,
    outcome: Vec<&'static str>,
    message: Vec<String>,
    http_status: Vec<Option<i16>>,
    http_version: Vec<Option<String>>,
    resolver: Vec<Option<String>>,
    resolved_ips: Vec<String>,
    resolved_ttls: Vec<String>,
    dialed_ip: Vec<Option<String>>,
    dialed_port: Vec<Option<i32>>,
    local_ip: Vec<Option<String>>,
    egress_ip: Vec<Option<String>>,
    dns_us: Vec<Option<i64>>,
    connect_us: Vec<Option<i64>>,
    tls_us: Vec<Option<i64>>,
    ttfb_us: Vec<Option<i64>>,
    total_us: Vec<Option<i64>>,
    headers: Vec<String>,
    region: Vec<Option<String>>,
    vantage: Vec<String>,
    proxy: Vec<Option<String>>,
    proxy_status: Vec<Option<i16>>,
    dns_rcode: Vec<Option<String>>,
    resolver_egress_ip: Vec<Option<String>>,
    resolver_nsid: Vec<Option<String>>,
    resolver_identity_error: Vec<Option<String>>,
    echo_ip: Vec<Option<String>>,
    proxy_us: Vec<Option<i64>>,
    transfer_us: Vec<Option<i64>>,
    tls_version: Vec<Option<String>>,
    tls_alpn: Vec<Option<String>>,
    tls_cipher: Vec<Option<String>>,
    cert_subject: Vec<Option<String>>,
    cert_issuer: Vec<Option<String>>,
    cert_not_after: Vec<Option<DateTime<Utc>>>,
    body_bytes: Vec<Option<i64>>,
    body_sha256: Vec<Option<String>>,
    body_truncated: Vec<bool>,
    gateway: Vec<Option<String>>,
    edge_location: Vec<Option<String>>,
    hops: Vec<String>,
    interval_ms: Vec<Option<i32>>,
    proxy_ip: Vec<Option<String>>,
    check_version: Vec<Option<i64>>,
    request_id: Vec<Option<i64>>,
}

impl From<&[StoredResult]> for Columns {
    fn from(results: &[StoredResult]) -> Self {
        // Per-row arrays cannot be UNNESTed (Postgres arrays are
        // rectangular), so they travel as array literals and are cast.
        let array_literal = |items: Vec<String>| format!("{{{}}}", items.join(","));
        Self {
            seq: results.iter().map(|r| r.seq).collect(),
            started_at: results.iter().map(|r| r.started_at).collect(),
            check: results.iter().map(|r| r.check.clone()).collect(),
            url: results.iter().map(|r| r.url.clone()).collect(),
            method: results.iter().map(|r| r.method.clone()).collect(),
            outcome: results.iter().map(|r| r.outcome).collect(),
            message: results.iter().map(|r| r.message.clone()).collect(),
            http_status: results.iter().map(|r| r.http_status).collect(),
            http_version: results.iter().map(|r| r.http_version.clone()).collect(),
            resolver: results.iter().map(|r| r.resolver.clone()).collect(),
            resolved_ips: results
                .iter()
                .map(|r| array_literal(r.resolved.iter().map(|(ip, _)| ip.to_string()).collect()))
                .collect(),
            resolved_ttls: results
                .iter()
                .map(|r| array_literal(r.resolved.iter().map(|(_, ttl)| ttl.to_string()).collect()))
                .collect(),
            dialed_ip: results
                .iter()
                .map(|r| r.dialed.map(|a| a.ip().to_string()))
                .collect(),
            dialed_port: results
                .iter()
                .map(|r| r.dialed.map(|a| i32::from(a.port())))
                .collect(),
            local_ip: results
                .iter()
                .map(|r| r.local_ip.map(|a| a.to_string()))
                .collect(),
            egress_ip: results
                .iter()
                .map(|r| r.egress_ip.map(|a| a.to_string()))
                .collect(),
            dns_us: results.iter().map(|r| r.dns_us).collect(),
            connect_us: results.iter().map(|r| r.connect_us).collect(),
            tls_us: results.iter().map(|r| r.tls_us).collect(),
            ttfb_us: results.iter().map(|r| r.ttfb_us).collect(),
            total_us: results.iter().map(|r| r.total_us).collect(),
            headers: results
                .iter()
                .map(|r| serde_json::to_string(&r.headers).unwrap_or_else(|_| "{}".into()))
                .collect(),
            region: results.iter().map(|r| r.region.clone()).collect(),
            vantage: results.iter().map(|r| r.vantage.clone()).collect(),
            proxy: results.iter().map(|r| r.proxy.clone()).collect(),
            proxy_status: results.iter().map(|r| r.proxy_status).collect(),
            dns_rcode: results.iter().map(|r| r.dns_rcode.clone()).collect(),
            resolver_egress_ip: results
                .iter()
                .map(|r| r.resolver_egress_ip.map(|a| a.to_string()))
                .collect(),
            resolver_nsid: results.iter().map(|r| r.resolver_nsid.clone()).collect(),
            resolver_identity_error: results
                .iter()
                .map(|r| r.resolver_identity_error.clone())
                .collect(),
            echo_ip: results
                .iter()
                .map(|r| r.echo_ip.map(|a| a.to_string()))
                .collect(),
            proxy_us: results.iter().map(|r| r.proxy_us).collect(),
            transfer_us: results.iter().map(|r| r.transfer_us).collect(),
            tls_version: results.iter().map(|r| r.tls_version.clone()).collect(),
            tls_alpn: results.iter().map(|r| r.tls_alpn.clone()).collect(),
            tls_cipher: results.iter().map(|r| r.tls_cipher.clone()).collect(),
            cert_subject: results.iter().map(|r| r.cert_subject.clone()).collect(),
            cert_issuer: results.iter().map(|r| r.cert_issuer.clone()).collect(),
            cert_not_after: results.iter().map(|r| r.cert_not_after).collect(),
            body_bytes: results.iter().map(|r| r.body_bytes).collect(),
            body_sha256: results.iter().map(|r| r.body_sha256.clone()).collect(),
            body_truncated: results.iter().map(|r| r.body_truncated).collect(),
            gateway: results.iter().map(|r| r.gateway.clone()).collect(),
            edge_location: results.iter().map(|r| r.edge_location.clone()).collect(),
            hops: results.iter().map(|r| r.hops.to_string()).collect(),
            interval_ms: results.iter().map(|r| r.interval_ms).collect(),
            proxy_ip: results
                .iter()
                .map(|r| r.proxy_ip.map(|a| a.to_string()))
                .collect(),
            check_version: results.iter().map(|r| r.check_version).collect(),
            request_id: results.iter().map(|r| r.request_id).collect(),
        }
    }
}
