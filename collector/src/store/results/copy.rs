//! A batch as `probe_results` rows in PostgreSQL's binary `COPY` format:
//! the fast path of an insert. The values are encoded by `postgres-types`
//! (the encoders of rust-postgres); only the framing is here: a header,
//! per row the field count and per field its length (-1 for NULL) and
//! bytes, and a trailer.

use bytes::{BufMut, BytesMut};
use postgres_types::{IsNull, Json, ToSql, Type};

use super::{RESULT_COLUMNS, StoredResult};
use crate::store::StoreError;

/// The statement the rows of [`encode`] are sent to (made once).
pub(super) static STATEMENT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!("COPY probe_results ({RESULT_COLUMNS}) FROM STDIN (FORMAT binary)")
});

/// Columns per row: [`RESULT_COLUMNS`], in its order.
const FIELDS: i16 = 50;

/// The signature, flags and header extension length of a binary COPY.
const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// One agent's batch, ready for [`STATEMENT`].
pub(super) fn encode(
    agent_id: &str,
    region: &str,
    results: &[StoredResult],
) -> Result<BytesMut, StoreError> {
    // Rows of a real probe are 500-800 bytes.
    let mut out = BytesMut::with_capacity(HEADER.len() + 2 + results.len() * 800);
    out.put_slice(HEADER);
    for r in results {
        let mut row = Row {
            out: &mut out,
            fields: 0,
        };
        row.put(&agent_id, &Type::TEXT)?;
        row.put(&r.region.as_deref().unwrap_or(region), &Type::TEXT)?;
        row.put(&r.seq, &Type::INT8)?;
        row.put(&r.started_at, &Type::TIMESTAMPTZ)?;
        row.put(&r.check, &Type::TEXT)?;
        row.put(&r.url, &Type::TEXT)?;
        row.put(&r.method, &Type::TEXT)?;
        row.put(&r.outcome, &Type::TEXT)?;
        row.put(&r.message, &Type::TEXT)?;
        row.put(&r.http_status, &Type::INT2)?;
        row.put(&r.http_version, &Type::TEXT)?;
        row.put(&r.resolver, &Type::TEXT)?;
        let ips: Vec<std::net::IpAddr> = r.resolved.iter().map(|(ip, _)| *ip).collect();
        row.put(&ips, &Type::INET_ARRAY)?;
        let ttls: Vec<i32> = r
            .resolved
            .iter()
            .map(|(_, ttl)| i32::try_from(*ttl).unwrap_or(i32::MAX))
            .collect();
        row.put(&ttls, &Type::INT4_ARRAY)?;
        row.put(&r.dialed.map(|a| a.ip()), &Type::INET)?;
        row.put(&r.dialed.map(|a| i32::from(a.port())), &Type::INT4)?;
        row.put(&r.local_ip, &Type::INET)?;
        row.put(&r.egress_ip, &Type::INET)?;
        row.put(&r.dns_us, &Type::INT8)?;
        row.put(&r.connect_us, &Type::INT8)?;
        row.put(&r.tls_us, &Type::INT8)?;
        row.put(&r.ttfb_us, &Type::INT8)?;
        row.put(&r.total_us, &Type::INT8)?;
        row.put(&Json(&r.headers), &Type::JSONB)?;
        row.put(&r.vantage, &Type::TEXT)?;
        row.put(&r.proxy, &Type::TEXT)?;
        row.put(&r.proxy_status, &Type::INT2)?;
        row.put(&r.dns_rcode, &Type::TEXT)?;
        row.put(&r.resolver_egress_ip, &Type::INET)?;
        row.put(&r.resolver_nsid, &Type::TEXT)?;
        row.put(&r.resolver_identity_error, &Type::TEXT)?;
        row.put(&r.echo_ip, &Type::INET)?;
        row.put(&r.proxy_us, &Type::INT8)?;
        row.put(&r.transfer_us, &Type::INT8)?;
        row.put(&r.tls_version, &Type::TEXT)?;
        row.put(&r.tls_alpn, &Type::TEXT)?;
        row.put(&r.tls_cipher, &Type::TEXT)?;
        row.put(&r.cert_subject, &Type::TEXT)?;
        row.put(&r.cert_issuer, &Type::TEXT)?;
        row.put(&r.cert_not_after, &Type::TIMESTAMPTZ)?;
        row.put(&r.body_bytes, &Type::INT8)?;
        row.put(&r.body_sha256, &Type::TEXT)?;
        row.put(&r.body_truncated, &Type::BOOL)?;
        row.put(&r.gateway, &Type::TEXT)?;
        row.put(&r.edge_location, &Type::TEXT)?;
        row.put(&r.hops, &Type::JSONB)?;
        row.put(&r.interval_ms, &Type::INT4)?;
        row.put(&r.proxy_ip, &Type::INET)?;
        row.put(&r.check_version, &Type::INT8)?;
        row.put(&r.request_id, &Type::INT8)?;
        row.end()?;
    }
    out.put_i16(-1);
    Ok(out)
}

/// One row being written: its field count goes first.
struct Row<'a> {
    out: &'a mut BytesMut,
    fields: i16,
}

impl Row<'_> {
    fn put(&mut self, value: &(dyn ToSql + Sync), ty: &Type) -> Result<(), StoreError> {
        if self.fields == 0 {
            self.out.put_i16(FIELDS);
        }
        self.fields += 1;
        let at = self.out.len();
        self.out.put_i32(0);
        let written = value
            .to_sql_checked(ty, self.out)
            .map_err(|e| StoreError::Encode {
                column: column_name(self.fields),
                reason: e.to_string(),
            })?;
        let len = match written {
            IsNull::Yes => -1,
            IsNull::No => {
                i32::try_from(self.out.len() - at - 4).map_err(|_| StoreError::Encode {
                    column: column_name(self.fields),
                    reason: "a value over 2 GiB".into(),
                })?
            }
        };
        self.out[at..at + 4].copy_from_slice(&len.to_be_bytes());
        Ok(())
    }

    /// Every column was written, in order.
    fn end(self) -> Result<(), StoreError> {
        if self.fields == FIELDS {
            Ok(())
        } else {
            Err(StoreError::Encode {
                column: column_name(self.fields),
                reason: format!("{} of {FIELDS} columns written", self.fields),
            })
        }
    }
}

/// The name of the `n`th column (from 1) of [`RESULT_COLUMNS`].
fn column_name(n: i16) -> String {
    RESULT_COLUMNS
        .split(',')
        .nth(usize::try_from(n - 1).unwrap_or(0))
        .map_or_else(|| format!("column {n}"), |c| c.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_field_count_is_the_column_list() {
        assert_eq!(
            RESULT_COLUMNS.split(',').count(),
            usize::try_from(FIELDS).unwrap()
        );
        assert_eq!(column_name(1), "agent_id");
        assert_eq!(column_name(FIELDS), "request_id");
    }
}
