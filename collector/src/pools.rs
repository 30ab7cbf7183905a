//! The database connections per kind of work, each pool with its own size
//! and `statement_timeout`, so that no kind can hold another's
//! connections or run a query without end: a page that a client can ask
//! for at will never takes the ingest's or the detector's connections,
//! and a query of a kind ends at its kind's bound.
//!
//! | kind       | pool                                  | statement_timeout |
//! |------------|---------------------------------------|-------------------|
//! | ingest     | `database.max_connections` (the main pool: streams, alerter, control, `/healthz`) | 60 s |
//! | detector   | 4                                      | 120 s |
//! | pages      | 3, waiting at most 2 s for a connection (503 beyond) | 15 s, and cancelled when the reader leaves |
//! | upkeep     | 2 (partitions, retention, roll-ups)    | 30 min |

use std::time::Duration;

use sqlx::Connection as _;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// The main pool's statement bound: a batch's COMMIT, an outbox upkeep.
pub const INGEST_STATEMENT_TIMEOUT: Duration = Duration::from_secs(60);
const DETECTOR_CONNECTIONS: u32 = 4;
const DETECTOR_STATEMENT_TIMEOUT: Duration = Duration::from_secs(120);
const PAGES_CONNECTIONS: u32 = 3;
const PAGES_STATEMENT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a page waits for one of its connections before it answers 503.
const PAGES_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a page's connection, given back, may take to answer a ping
/// before it is taken for one whose query its reader left running.
const PAGES_RELEASE_PING: Duration = Duration::from_millis(500);
/// How often PostgreSQL looks, while a page's query runs, whether the
/// collector's side of the connection is still there.
const PAGES_CLIENT_CHECK: Duration = Duration::from_secs(1);
const UPKEEP_CONNECTIONS: u32 = 2;
const UPKEEP_STATEMENT_TIMEOUT: Duration = Duration::from_secs(30 * 60);
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// `options` with a session `statement_timeout` of `timeout`.
pub fn with_statement_timeout(options: PgConnectOptions, timeout: Duration) -> PgConnectOptions {
    options.options([("statement_timeout", format!("{}ms", timeout.as_millis()))])
}

/// The pools besides the main one, connected lazily with the main pool's
/// options.
#[derive(Debug, Clone)]
pub struct Pools {
    pub detector: PgPool,
    pub pages: PgPool,
    pub upkeep: PgPool,
}

impl Pools {
    pub fn beside(main: &PgPool) -> Self {
        let options = (*main.connect_options()).clone();
        let pool = |size: u32, timeout: Duration, acquire: Duration| {
            PgPoolOptions::new()
                .max_connections(size)
                .acquire_timeout(acquire)
                .connect_lazy_with(with_statement_timeout(options.clone(), timeout))
        };
        // A reader who leaves (or a request past its time) drops the
        // page's query future, and its connection comes back with the query
        // still running in PostgreSQL. Such a connection does not answer a
        // ping at once: it is closed instead of kept, and PostgreSQL, which
        // checks every second during a query whether its client is still
        // there, cancels the query.
        let pages = PgPoolOptions::new()
            .max_connections(PAGES_CONNECTIONS)
            .acquire_timeout(PAGES_ACQUIRE_TIMEOUT)
            .after_release(|conn, _| {
                Box::pin(async move {
                    let answered = tokio::time::timeout(PAGES_RELEASE_PING, conn.ping()).await;
                    if answered.is_err() {
                        metrics::counter!("vantage_page_queries_abandoned_total").increment(1);
                    }
                    Ok(answered.is_ok_and(|pinged| pinged.is_ok()))
                })
            })
            .connect_lazy_with(
                with_statement_timeout(options.clone(), PAGES_STATEMENT_TIMEOUT).options([(
                    "client_connection_check_interval",
                    format!("{}ms", PAGES_CLIENT_CHECK.as_millis()),
                )]),
            );
        Self {
            detector: pool(
                DETECTOR_CONNECTIONS,
                DETECTOR_STATEMENT_TIMEOUT,
                ACQUIRE_TIMEOUT,
            ),
            pages,
            upkeep: pool(
                UPKEEP_CONNECTIONS,
                UPKEEP_STATEMENT_TIMEOUT,
                ACQUIRE_TIMEOUT,
            ),
        }
    }
}
