//! A batch as `result_rows` rows in PostgreSQL's binary `COPY` format:
//! the fast path of an insert, and the way a resent batch goes in too (into
//! a temporary table first, then only the rows not stored yet). The values
//! are encoded by `postgres-types` (the encoders of rust-postgres); only
//! the framing is here: a header, per row the field count and per field
//! its length (-1 for NULL) and bytes, and a trailer.

use bytes::{BufMut, BytesMut};
use postgres_types::{IsNull, Json, ToSql, Type};

use super::StoredResult;
use super::contexts::is_context_header;
use crate::store::StoreError;

/// The columns of `result_rows` a batch writes, in [`encode`]'s order
/// (`received_at` is the table's default).
pub(super) const ROW_COLUMNS: &str = "agent_id, seq, started_at, context_id, body_bytes, \
    request_id, dns_us, connect_us, tls_us, ttfb_us, total_us, proxy_us, transfer_us, \
    http_status, proxy_status, body_truncated, outcome, message, resolved_ttls, headers, \
    body_sha256, hops";

/// The statement the rows of [`encode`] are sent to (made once).
pub(super) static INTO_ROWS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!("COPY result_rows ({ROW_COLUMNS}) FROM STDIN (FORMAT binary)")
});

/// Inserts the rows of [`encode`] that are not stored yet (a resent
/// batch): copied into a temporary table, then inserted skipping those
/// the primary key already holds. The sequence numbers inserted.
pub(super) async fn insert_new(
    conn: &mut sqlx::PgConnection,
    rows: &[u8],
) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::raw_sql(
        "CREATE TEMPORARY TABLE resent_rows (LIKE result_rows INCLUDING DEFAULTS)
             ON COMMIT DROP",
    )
    .execute(&mut *conn)
    .await?;
    let mut copy = conn
        .copy_in_raw(&format!(
            "COPY resent_rows ({ROW_COLUMNS}) FROM STDIN (FORMAT binary)"
        ))
        .await?;
    copy.send(rows).await?;
    copy.finish().await?;
    sqlx::query_scalar(
        "INSERT INTO result_rows SELECT * FROM resent_rows ON CONFLICT DO NOTHING RETURNING seq",
    )
    .fetch_all(&mut *conn)
    .await
}

/// Columns per row: [`ROW_COLUMNS`], in its order.
const FIELDS: i16 = 22;

/// The signature, flags and header extension length of a binary COPY.
const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// One agent's batch, ready for a `COPY ... (ROW_COLUMNS) FROM STDIN
/// (FORMAT binary)`; `context_ids` in the order of `results`.
pub(super) fn encode(
    agent_id: &str,
    results: &[StoredResult],
    context_ids: &[i64],
) -> Result<BytesMut, StoreError> {
    // Rows of a real probe are 150-250 bytes.
    let mut out = BytesMut::with_capacity(HEADER.len() + 2 + results.len() * 250);
    out.put_slice(HEADER);
    for (r, context_id) in results.iter().zip(context_ids) {
        let mut row = Row {
            out: &mut out,
            fields: 0,
        };
        row.put(&agent_id, &Type::TEXT)?;
        row.put(&r.seq, &Type::INT8)?;
        row.put(&r.started_at, &Type::TIMESTAMPTZ)?;
        row.put(context_id, &Type::INT8)?;
        row.put(&r.body_bytes, &Type::INT8)?;
        row.put(&r.request_id, &Type::INT8)?;
        for us in [
            r.dns_us,
            r.connect_us,
            r.tls_us,
            r.ttfb_us,
            r.total_us,
            r.proxy_us,
            r.transfer_us,
        ] {
            row.put(&us.map(saturating_i32), &Type::INT4)?;
        }
        row.put(&r.http_status, &Type::INT2)?;
        row.put(&r.proxy_status, &Type::INT2)?;
        row.put(&r.body_truncated, &Type::BOOL)?;
        row.put(&r.outcome, &Type::TEXT)?;
        row.put(&(!r.message.is_empty()).then_some(&r.message), &Type::TEXT)?;
        let ttls: Option<Vec<i32>> = (!r.resolved.is_empty()).then(|| {
            r.resolved
                .iter()
                .map(|(_, ttl)| i32::try_from(*ttl).unwrap_or(i32::MAX))
                .collect()
        });
        row.put(&ttls, &Type::INT4_ARRAY)?;
        let headers: std::collections::BTreeMap<&str, &str> = r
            .headers
            .iter()
            .filter(|(name, _)| !is_context_header(name))
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        row.put(
            &(!headers.is_empty()).then_some(Json(&headers)),
            &Type::JSONB,
        )?;
        let sha = r
            .body_sha256
            .as_deref()
            .map(hex::decode)
            .transpose()
            .map_err(|e| StoreError::Encode {
                column: "body_sha256".into(),
                reason: format!("expected hexadecimal digits: {e}"),
            })?;
        row.put(&sha, &Type::BYTEA)?;
        let hops = r.hops.as_array().is_some_and(|h| !h.is_empty());
        row.put(&hops.then_some(&r.hops), &Type::JSONB)?;
        row.end()?;
    }
    out.put_i16(-1);
    Ok(out)
}

/// A phase duration as `result_rows` keeps it (4 bytes: up to 35.8
/// minutes, far beyond any probe's timeout).
fn saturating_i32(us: i64) -> i32 {
    i32::try_from(us).unwrap_or(if us < 0 { i32::MIN } else { i32::MAX })
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

/// The name of the `n`th column (from 1) of [`ROW_COLUMNS`].
fn column_name(n: i16) -> String {
    ROW_COLUMNS
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
            ROW_COLUMNS.split(',').count(),
            usize::try_from(FIELDS).unwrap()
        );
        assert_eq!(column_name(1), "agent_id");
        assert_eq!(column_name(FIELDS), "hops");
    }
}
