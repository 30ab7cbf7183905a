//! Partitions past a cutoff, found by name and dropped: the results' days
//! ([`super::partitions`]) and the roll-up's months ([`super::rollup`])
//! alike.

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};

use super::StoreError;

/// The partitions of `parent` named `<parent>_p<digits>` whose range (by
/// `range_of` the digits) ended at or before `cutoff`: name, start and
/// end, oldest first. Names whose digits do not parse are left alone.
pub(super) async fn expired(
    tx: &mut Transaction<'_, Postgres>,
    parent: &'static str,
    range_of: impl Fn(&str) -> Option<(DateTime<Utc>, DateTime<Utc>)>,
    cutoff: DateTime<Utc>,
) -> Result<Vec<(String, DateTime<Utc>, DateTime<Utc>)>, StoreError> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i
         JOIN pg_class c ON c.oid = i.inhrelid
         JOIN pg_class p ON p.oid = i.inhparent
         WHERE p.relname = $1 AND c.relname ~ ('^' || $1 || '_p[0-9]+$')
         ORDER BY c.relname",
    )
    .bind(parent)
    .fetch_all(&mut **tx)
    .await?;
    let prefix = format!("{parent}_p");
    Ok(names
        .into_iter()
        .filter_map(|name| {
            let (start, end) = range_of(name.strip_prefix(&prefix)?)?;
            (end <= cutoff).then_some((name, start, end))
        })
        .collect())
}

/// Drops one partition [`expired`] named.
pub(super) async fn drop_partition(
    tx: &mut Transaction<'_, Postgres>,
    name: &str,
) -> Result<(), StoreError> {
    // [`expired`] names only `<parent>_p<digits>` of a constant parent:
    // safe to splice.
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {name}")))
        .execute(&mut **tx)
        .await?;
    Ok(())
}
