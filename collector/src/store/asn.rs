//! The IP-to-ASN table behind the `asn` dimension.

use super::{Store, StoreError};
use crate::detect::asn::{AsnEntry, AsnRange};

impl Store {
    /// The id of the latest IP-to-ASN load, if any.
    pub async fn asn_version(&self) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar("SELECT max(id) FROM asn_loads")
            .fetch_one(&self.pool)
            .await?)
    }

    /// The whole IP-to-ASN table.
    pub async fn asn_ranges(&self) -> Result<Vec<AsnRange>, StoreError> {
        let rows: Vec<(String, String, i64, String, String)> = sqlx::query_as(
            "SELECT host(first_ip), host(last_ip), asn, country, name FROM asn_ranges",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(first, last, asn, country, name)| {
                Some(AsnRange {
                    first: first.parse().ok()?,
                    last: last.parse().ok()?,
                    entry: AsnEntry {
                        asn: u32::try_from(asn).ok()?,
                        country,
                        name,
                    },
                })
            })
            .collect())
    }

    /// Replaces the IP-to-ASN table with `ranges` in one transaction.
    pub async fn load_asn(&self, source: &str, ranges: &[AsnRange]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM asn_ranges")
            .execute(&mut *tx)
            .await?;
        for chunk in ranges.chunks(20_000) {
            sqlx::query(
                "INSERT INTO asn_ranges (first_ip, last_ip, asn, country, name)
                 SELECT f::inet, l::inet, a, c, n
                 FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::text[], $5::text[])
                      AS t(f, l, a, c, n)
                 ON CONFLICT (first_ip) DO UPDATE
                    SET last_ip = EXCLUDED.last_ip, asn = EXCLUDED.asn,
                        country = EXCLUDED.country, name = EXCLUDED.name",
            )
            .bind(
                chunk
                    .iter()
                    .map(|r| r.first.to_string())
                    .collect::<Vec<_>>(),
            )
            .bind(chunk.iter().map(|r| r.last.to_string()).collect::<Vec<_>>())
            .bind(
                chunk
                    .iter()
                    .map(|r| i64::from(r.entry.asn))
                    .collect::<Vec<_>>(),
            )
            .bind(
                chunk
                    .iter()
                    .map(|r| r.entry.country.clone())
                    .collect::<Vec<_>>(),
            )
            .bind(
                chunk
                    .iter()
                    .map(|r| r.entry.name.clone())
                    .collect::<Vec<_>>(),
            )
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("INSERT INTO asn_loads (source, ranges) VALUES ($1, $2)")
            .bind(source)
            .bind(i64::try_from(ranges.len()).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}
