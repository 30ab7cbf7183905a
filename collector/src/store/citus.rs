//! Running on a Citus coordinator. Where the database has the `citus`
//! extension, `migrate` checks the cluster first (a recent enough Citus,
//! at least one worker, every worker answering) and, after the
//! migrations, distributes the per-agent tables by `agent_id`, colocated
//! with `agents`, so that one batch (its results, gaps, paths and the
//! agent's progress row) is a single-shard transaction and ingest scales
//! with the workers. The small, shared tables (incidents, the detector's
//! state, the outbox, silences, checks, probe requests, the ASN table)
//! stay on the coordinator, which also keeps the advisory locks and
//! `LISTEN`. Every step is idempotent: `migrate` runs at every start.

use sqlx::PgPool;

use super::StoreError;

/// The oldest Citus release `migrate` accepts: it distributes partitioned
/// tables with colocated foreign keys and propagates views and functions
/// (11.3 and later), and 12.1 is the oldest release with PostgreSQL 16
/// support still maintained. Tested with 13.2.
pub const MIN_VERSION: (u32, u32) = (12, 1);

/// Distributed by `agent_id`, colocated with `agents`, in this order (a
/// table before those referring to it).
pub const DISTRIBUTED: [&str; 8] = [
    "agents",
    "agent_checks",
    "delivery_gaps",
    "result_contexts",
    "result_rows",
    "path_results",
    "path_hops",
    "probe_rollups",
];

/// What `migrate` found and did on a Citus coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CitusLayout {
    pub version: String,
    pub workers: Vec<String>,
    /// Tables distributed by this run (none when they already were).
    pub distributed_now: Vec<String>,
}

/// The coordinator's Citus version, if the extension is there.
async fn version(pool: &PgPool) -> Result<Option<String>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT extversion FROM pg_extension WHERE extname = 'citus'")
            .fetch_optional(pool)
            .await?,
    )
}

/// `major.minor` of an extension version such as `13.2-1`.
pub fn parse_version(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.split(['.', '-']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Before the migrations: on a Citus coordinator, a recent enough Citus
/// and every registered worker answering. `None` without Citus.
pub async fn preflight(pool: &PgPool) -> Result<Option<(String, Vec<String>)>, StoreError> {
    let Some(version) = version(pool).await? else {
        return Ok(None);
    };
    match parse_version(&version) {
        Some(v) if v >= MIN_VERSION => {}
        _ => {
            return Err(StoreError::Citus(format!(
                "Citus {version} on the coordinator: Vantage needs {}.{} or later (install it, \
                 then ALTER EXTENSION citus UPDATE on every node)",
                MIN_VERSION.0, MIN_VERSION.1
            )));
        }
    }
    let workers: Vec<(String, i32, bool, String)> = sqlx::query_as(
        "SELECT nodename, nodeport, success, result FROM run_command_on_workers('SELECT 1')",
    )
    .fetch_all(pool)
    .await?;
    if workers.is_empty() {
        return Err(StoreError::Citus(
            "the Citus coordinator has no worker: add each with SELECT \
             citus_add_node('HOST', PORT) on the coordinator, then run migrate again \
             (the results would otherwise all stay on the coordinator)"
                .into(),
        ));
    }
    let down: Vec<String> = workers
        .iter()
        .filter(|(_, _, success, _)| !success)
        .map(|(host, port, _, result)| format!("{host}:{port} ({})", result.trim()))
        .collect();
    if !down.is_empty() {
        return Err(StoreError::Citus(format!(
            "Citus worker{} not answering: {}; start {} (or remove it with citus_remove_node) \
             and run migrate again",
            if down.len() > 1 { "s" } else { "" },
            down.join(", "),
            if down.len() > 1 { "them" } else { "it" }
        )));
    }
    let names = workers
        .into_iter()
        .map(|(host, port, _, _)| format!("{host}:{port}"))
        .collect();
    Ok(Some((version, names)))
}

/// After the migrations: distributes what is not yet, and the functions
/// the workers evaluate.
pub async fn distribute(
    pool: &PgPool,
    version: String,
    workers: Vec<String>,
) -> Result<CitusLayout, StoreError> {
    let mut distributed_now = Vec::new();
    for (i, table) in DISTRIBUTED.iter().enumerate() {
        let done: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = $1::regclass)",
        )
        .bind(table)
        .fetch_one(pool)
        .await?;
        if done {
            continue;
        }
        let mut tx = pool.begin().await?;
        if *table == "agents" {
            // A distributed table's unique constraints must hold the
            // distribution column. The token's hash is of 256 random bits:
            // its uniqueness is not at risk; lookups keep an index.
            sqlx::raw_sql(
                "ALTER TABLE agents DROP CONSTRAINT IF EXISTS agents_token_sha256_key;
                 CREATE INDEX IF NOT EXISTS agents_token_sha256 ON agents (token_sha256)",
            )
            .execute(&mut *tx)
            .await?;
        }
        let colocate = if i == 0 { "default" } else { "agents" };
        sqlx::query("SELECT create_distributed_table($1, 'agent_id', colocate_with => $2)")
            .bind(table)
            .bind(colocate)
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::Citus(format!("distributing {table}: {e}")))?;
        tx.commit().await?;
        distributed_now.push((*table).to_owned());
    }
    // Rows that were there before were copied to the shards and stay in
    // the coordinator's own copy of each table, unseen: remove them, once
    // no table left local refers to them (referring tables first).
    for table in distributed_now.iter().rev() {
        sqlx::query("SELECT truncate_local_data_after_distributing_table($1)")
            .bind(table)
            .execute(pool)
            .await
            .map_err(|e| StoreError::Citus(format!("removing {table}'s local copy: {e}")))?;
    }
    // Functions the workers evaluate in distributed queries (the egress
    // expressions the views and the detector use). Those that take a
    // `probe_results` row (storing through the view) run on the
    // coordinator only: the workers have no such view.
    let functions: Vec<String> = sqlx::query_scalar(
        "SELECT p.oid::regprocedure::text FROM pg_proc p
         JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = current_schema() AND p.prokind = 'f'
           AND NOT 'probe_results'::regtype::oid = ANY (p.proargtypes::oid[])
           AND NOT EXISTS (SELECT 1 FROM pg_dist_object o
                           WHERE o.classid = 'pg_proc'::regclass AND o.objid = p.oid)",
    )
    .fetch_all(pool)
    .await?;
    for function in functions {
        sqlx::query("SELECT create_distributed_function($1)")
            .bind(&function)
            .execute(pool)
            .await
            .map_err(|e| StoreError::Citus(format!("distributing function {function}: {e}")))?;
    }
    Ok(CitusLayout {
        version,
        workers,
        distributed_now,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_older_than_the_minimum_are_told_apart() {
        assert_eq!(parse_version("13.2-1"), Some((13, 2)));
        assert_eq!(parse_version("12.1"), Some((12, 1)));
        assert!(parse_version("11.3-1").unwrap() < MIN_VERSION);
        assert!(parse_version("12.0").unwrap() < MIN_VERSION);
        assert!(parse_version("12.1-2").unwrap() >= MIN_VERSION);
        assert_eq!(parse_version("devel"), None);
    }
}
