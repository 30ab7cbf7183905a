//! The detector lease: one collector at a time runs detection passes.

use chrono::{DateTime, Utc};

use super::{Store, StoreError};

/// Takes or renews the lease (see [`Store::renew_detector_lease`]) on
/// `conn`; inside a transaction, the lease row stays locked until it ends.
pub(super) async fn renew_lease(
    conn: &mut sqlx::PgConnection,
    holder: &str,
    lease: chrono::Duration,
) -> Result<bool, StoreError> {
    let held: Option<String> = sqlx::query_scalar(
        "INSERT INTO detector_lease (holder, expires_at)
         VALUES ($1, now() + make_interval(secs => $2))
         ON CONFLICT (singleton) DO UPDATE
            SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
            WHERE detector_lease.holder = EXCLUDED.holder
               OR detector_lease.expires_at < now()
         RETURNING holder",
    )
    .bind(holder)
    .bind(lease.as_seconds_f64())
    .fetch_optional(conn)
    .await?;
    Ok(held.is_some())
}

impl Store {
    /// Takes or renews the detector lease for `holder` until now + `lease`.
    /// False when another holder's lease has not expired.
    pub async fn renew_detector_lease(
        &self,
        holder: &str,
        lease: chrono::Duration,
    ) -> Result<bool, StoreError> {
        let mut conn = self.pool.acquire().await?;
        renew_lease(&mut conn, holder, lease).await
    }

    /// The id of the latest detection pass recorded, if any: a pass
    /// applies only if no other collector recorded one since it began.
    pub async fn last_run_id(&self) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar("SELECT max(id) FROM detection_runs")
            .fetch_one(&self.pool)
            .await?)
    }

    /// Gives the lease up, if `holder` has it (at shutdown: another
    /// collector takes over at its next pass instead of two intervals
    /// later).
    pub async fn release_detector_lease(&self, holder: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM detector_lease WHERE holder = $1")
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// How long the current lease has left by the database's clock (zero
    /// once expired), if there is one.
    pub async fn detector_lease_remaining(
        &self,
    ) -> Result<Option<std::time::Duration>, StoreError> {
        let seconds: Option<f64> = sqlx::query_scalar(
            "SELECT greatest(extract(epoch FROM expires_at - now()), 0)::float8 FROM detector_lease",
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(seconds.map(|s| std::time::Duration::from_secs_f64(s.max(0.0))))
    }

    /// The current lease holder and its expiry, if any.
    pub async fn detector_lease(&self) -> Result<Option<(String, DateTime<Utc>)>, StoreError> {
        Ok(
            sqlx::query_as("SELECT holder, expires_at FROM detector_lease")
                .fetch_optional(&self.pool)
                .await?,
        )
    }
}
