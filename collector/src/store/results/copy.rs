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

/// The columns of `result_rows` a batch writes, each once: its name, its
/// PostgreSQL type and its value for a result (`r`, of an agent's batch,
/// with its `context_id`). [`ROW_COLUMNS`], the field count and
/// [`encode`]'s order all come from this one table; a schema test holds
/// it to the table's columns (`received_at` is the table's default).
macro_rules! row_columns {
    (
        |$agent_id:ident, $r:ident, $context_id:ident|
        $( $name:ident : $ty:ident = $value:expr ),+ $(,)?
    ) => {
        /// The column names, in the order of [`encode`]'s fields.
        pub const RESULT_ROW_COLUMNS: &[&str] = &[$(stringify!($name)),+];

        /// Writes the fields of one row, in [`RESULT_ROW_COLUMNS`]' order.
        fn put_row(
            row: &mut Row<'_>,
            $agent_id: &str,
            $r: &StoredResult,
            $context_id: i64,
        ) -> Result<(), StoreError> {
            $( row.put(&$value, &Type::$ty)?; )+
            Ok(())
        }
    };
}

row_columns! {
    |agent_id, r, context_id|
    agent_id: TEXT = agent_id,
    seq: INT8 = r.seq,
    started_at: TIMESTAMPTZ = r.started_at,
    context_id: INT8 = context_id,
    body_bytes: INT8 = r.body_bytes,
    request_id: INT8 = r.request_id,
    dns_us: INT4 = r.dns_us.map(saturating_i32),
    connect_us: INT4 = r.connect_us.map(saturating_i32),
    tls_us: INT4 = r.tls_us.map(saturating_i32),
    ttfb_us: INT4 = r.ttfb_us.map(saturating_i32),
    total_us: INT4 = r.total_us.map(saturating_i32),
    proxy_us: INT4 = r.proxy_us.map(saturating_i32),
    transfer_us: INT4 = r.transfer_us.map(saturating_i32),
    http_status: INT2 = r.http_status,
    proxy_status: INT2 = r.proxy_status,
    body_truncated: BOOL = r.body_truncated,
    outcome: TEXT = r.outcome,
    message: TEXT = (!r.message.is_empty()).then_some(&r.message),
    resolved_ttls: INT4_ARRAY = resolved_ttls(r),
    headers: JSONB = row_headers(r).map(Json),
    body_sha256: BYTEA = body_sha256(r)?,
    hops: JSONB = r.hops.as_array().is_some_and(|h| !h.is_empty()).then_some(&r.hops),
}

/// [`RESULT_ROW_COLUMNS`] as a statement's column list.
pub(super) static ROW_COLUMNS: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| RESULT_ROW_COLUMNS.join(", "));

/// The statement the rows of [`encode`] are sent to (made once).
pub(super) static INTO_ROWS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "COPY result_rows ({}) FROM STDIN (FORMAT binary)",
        *ROW_COLUMNS
    )
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
            "COPY resent_rows ({}) FROM STDIN (FORMAT binary)",
            *ROW_COLUMNS
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

/// Columns per row: [`RESULT_ROW_COLUMNS`], in its order.
const FIELDS: i16 = RESULT_ROW_COLUMNS.len() as i16;

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
        put_row(&mut row, agent_id, r, *context_id)?;
        row.end()?;
    }
    out.put_i16(-1);
    Ok(out)
}

/// The TTLs of the resolved addresses, in their order; NULL for none.
fn resolved_ttls(r: &StoredResult) -> Option<Vec<i32>> {
    (!r.resolved.is_empty()).then(|| {
        r.resolved
            .iter()
            .map(|(_, ttl)| i32::try_from(*ttl).unwrap_or(i32::MAX))
            .collect()
    })
}

/// The headers the context does not keep; NULL for none.
fn row_headers(r: &StoredResult) -> Option<std::collections::BTreeMap<&str, &str>> {
    let headers: std::collections::BTreeMap<&str, &str> = r
        .headers
        .iter()
        .filter(|(name, _)| !is_context_header(name))
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    (!headers.is_empty()).then_some(headers)
}

/// The body's hash as bytes; NULL without one.
fn body_sha256(r: &StoredResult) -> Result<Option<Vec<u8>>, StoreError> {
    r.body_sha256
        .as_deref()
        .map(hex::decode)
        .transpose()
        .map_err(|e| StoreError::Encode {
            column: "body_sha256".into(),
            reason: format!("expected hexadecimal digits: {e}"),
        })
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

/// The name of the `n`th column (from 1) of [`RESULT_ROW_COLUMNS`].
fn column_name(n: i16) -> String {
    usize::try_from(n - 1)
        .ok()
        .and_then(|i| RESULT_ROW_COLUMNS.get(i))
        .map_or_else(|| format!("column {n}"), |c| (*c).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_field_count_is_the_column_list() {
        assert_eq!(RESULT_ROW_COLUMNS.len(), usize::try_from(FIELDS).unwrap());
        assert_eq!(ROW_COLUMNS.split(", ").count(), RESULT_ROW_COLUMNS.len());
        assert_eq!(column_name(1), "agent_id");
        assert_eq!(column_name(FIELDS), "hops");
    }
}
