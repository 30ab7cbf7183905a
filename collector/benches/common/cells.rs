//! The detector's cells computed by PostgreSQL from stored results with
//! the dimension table's SQL sources: what the ingest writes for them
//! (the cells test holds the two equal). For the detect bench, which
//! fills millions of results server-side, and the detection tests, which
//! write theirs with SQL. Included by both (`#[path]` in the tests).

use vantage_collector::detect::dimensions;

/// The round of results that do not say theirs, as the ingest's default.
const DEFAULT_ROUND_MS: i32 = 30_000;

/// Which stored results.
pub enum StoredRows<'a> {
    /// Sequence numbers `first..=last`, of any agent.
    Seqs(i64, i64),
    /// The results of `agents[i]` numbered `seqs[i]`.
    Of(&'a [String], &'a [i64]),
}

impl StoredRows<'_> {
    fn filter(&self) -> &'static str {
        match self {
            Self::Seqs(..) => "seq BETWEEN $1 AND $2",
            Self::Of(..) => "(agent_id, seq) IN (SELECT * FROM unnest($1::text[], $2::int8[]))",
        }
    }

    fn bind<'q>(
        &self,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>
    where
        Self: 'q,
    {
        match self {
            Self::Seqs(first, last) => query.bind(*first).bind(*last),
            Self::Of(agents, seqs) => query.bind(agents.to_vec()).bind(seqs.to_vec()),
        }
    }
}

/// Writes the cells of `rows` (their partitions, keys, and one row per
/// key and slot), as the ingest would have written them. The rows'
/// sources are computed once, into a temporary table on this connection
/// (also what lets Citus join them with the cell keys on the
/// coordinator).
pub async fn write_cells_of(pool: &sqlx::PgPool, rows: StoredRows<'_>) {
    let sources = dimensions::sources();
    let values = sources
        .iter()
        .map(|s| format!("({s})::text"))
        .collect::<Vec<_>>()
        .join(", ");
    let filter = rows.filter();
    let mut conn = pool.acquire().await.unwrap();
    sqlx::raw_sql(
        "CREATE TEMP TABLE cell_sources (url text, check_name text, outcome text, status int2,
             agent_id text, vantage text, iv int4, src text[], started_at timestamptz,
             seq int8, slot int8)",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    rows.bind(sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO cell_sources
         SELECT url, check_name, outcome, COALESCE(http_status, proxy_status),
                agent_id, vantage, COALESCE(interval_ms, {DEFAULT_ROUND_MS}),
                ARRAY[{values}], started_at, seq,
                floor(extract(epoch FROM started_at) * 1000)::int8
                    / greatest(COALESCE(interval_ms, {DEFAULT_ROUND_MS}) / 4, 1)
         FROM probe_results
         WHERE {filter} AND request_id IS NULL"
    ))))
    .execute(&mut *conn)
    .await
    .unwrap();
    sqlx::query(
        "SELECT ensure_detector_cells_partition(h)
         FROM (SELECT min(started_at) AS lo, max(started_at) AS hi FROM cell_sources) r,
              generate_series(date_trunc('hour', r.lo), r.hi, interval '1 hour') h",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO detector_cell_keys (target, check_name, outcome, status, agent_id,
             vantage, interval_ms, confirmation, source_names, sources)
         SELECT DISTINCT url, check_name, outcome, status, agent_id, vantage, iv, false, $1,
                src
         FROM cell_sources
         ON CONFLICT DO NOTHING",
    )
    .bind(&sources)
    .execute(&mut *conn)
    .await
    .unwrap();
    // Equality on everything but the status (NULL for a connection
    // failure), so that PostgreSQL can hash the join.
    sqlx::query(
        "INSERT INTO detector_cells (key_id, slot, probes, first_at, last_at, last_seq)
         SELECT k.id, v.slot, count(*), min(v.started_at), max(v.started_at), max(v.seq)
         FROM cell_sources v
         JOIN detector_cell_keys k
           ON (k.target, k.check_name, k.outcome, k.agent_id, k.vantage, k.interval_ms,
               k.confirmation, k.source_names, k.sources)
              = (v.url, v.check_name, v.outcome, v.agent_id, v.vantage, v.iv, false, $1,
                 v.src)
              AND k.status IS NOT DISTINCT FROM v.status
         GROUP BY k.id, v.slot",
    )
    .bind(&sources)
    .execute(&mut *conn)
    .await
    .unwrap();
    sqlx::raw_sql("DROP TABLE cell_sources")
        .execute(&mut *conn)
        .await
        .unwrap();
}
