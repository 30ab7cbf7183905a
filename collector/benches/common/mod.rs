//! What the benchmarks share: settings from the environment and a
//! throwaway database on the server `DATABASE_URL` points at.

#![allow(dead_code, clippy::unwrap_used)]

pub mod cells;

use sqlx::{Connection, PgConnection};

/// Creates `copy_reference`, the table the ingest is compared with: the
/// columns of `probe_results` with the indexes it had as a table (primary
/// key, target and time, time, probe request), before results were split
/// into contexts and rows.
pub async fn create_copy_reference(conn: &mut PgConnection) {
    sqlx::raw_sql(
        "CREATE TABLE copy_reference (LIKE probe_results, PRIMARY KEY (agent_id, seq, started_at));
         CREATE INDEX ON copy_reference (url, started_at);
         CREATE INDEX ON copy_reference (started_at);
         CREATE INDEX ON copy_reference (request_id) WHERE request_id IS NOT NULL",
    )
    .execute(conn)
    .await
    .unwrap();
}

/// A numeric setting from the environment, or `default`.
pub fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A database created for one run and dropped by [`ScratchDatabase::drop_now`].
pub struct ScratchDatabase {
    admin: PgConnection,
    name: String,
    /// Its URL.
    pub url: String,
}

impl ScratchDatabase {
    /// Creates `{prefix}_{pid}` on the server of `DATABASE_URL`.
    pub async fn create(prefix: &str) -> Self {
        let url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!("{prefix}_{}", std::process::id());
        let mut admin = PgConnection::connect(&url).await.unwrap();
        // The name is made here from the process id: nothing to inject.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap();
        let mut db_url: url::Url = url.parse().unwrap();
        db_url.set_path(&name);
        Self {
            admin,
            name,
            url: db_url.to_string(),
        }
    }

    /// Drops the database (closing whatever still uses it).
    pub async fn drop_now(mut self) {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE {} WITH (FORCE)",
            self.name
        )))
        .execute(&mut self.admin)
        .await
        .unwrap();
    }
}
