//! PostgreSQL access, one module per aggregate: migrations and the
//! [`Store`] here; results and gaps in [`results`]; agents in [`agents`];
//! partitions in [`partitions`]; the roll-up in [`rollup`]; the IP-to-ASN
//! table in [`asn`]; the detector's lease
//! in [`lease`], its tracked state, runs and pass in [`detection`];
//! incidents in [`incidents`]; the notification outbox and silences in
//! [`outbox`]; central checks in [`checks`]; probe requests and control
//! notices in [`requests`]; the incident pages' own reads in [`pages`];
//! the detector's cells, written by the ingest, in [`cells`];
//! distributing the tables on a Citus coordinator in [`citus`]; closed
//! days compacted in [`closed_days`].
//! Every SQL statement of the collector lives in
//! this module.

mod agents;
mod asn;
pub mod cells;
mod check_status;
mod checks;
pub mod citus;
mod closed_days;
mod detection;
mod expiry;
mod incidents;
mod lease;
mod outbox;
mod pages;
mod partitions;
mod paths;
mod requests;
mod results;
mod rollup;

pub use agents::{AgentHello, AgentListing, EnrolledAgent};
pub use cells::{CellRead, CellRow, CellSettings, SlotRow, StoredKey, slot_of};
pub use check_status::{AgentCheck, CheckReporter, CheckState, CheckStatus, ChecksReport};
pub use checks::StoredCheck;
pub use closed_days::Compaction;
pub use detection::{Applied, RunRecord};
pub use incidents::Incident;
pub use outbox::{
    AttemptOutcome, Claimed, DeliveryState, EventKind, Expired, Silence, SilenceMatch, SinkSpec,
    Upkeep,
};
pub use pages::{FailureRule, RoundCell, VANTAGE_ROWS_SQL, VantageRow};
pub use paths::{PathHop, PathProtocol, StoredPath, StoredPathProbe, TracedPath};
pub use requests::{
    CONTROL_CHANNEL, ConfirmationRecord, ControlNotice, NewProbeRequest, ProbeAnswer, ProbeRequest,
    Purpose, RequestAgent,
};
pub use results::{
    CONTEXT_HEADERS, Inserted, RESULT_ROW_COLUMNS, ResultPath, StoredGap, StoredResult,
    context_columns,
};

use std::collections::HashSet;
use std::sync::Mutex;

use chrono::NaiveDate;
use sqlx::PgPool;

/// Embedded migrations from `migrations/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// A storage failure. All are transient from the agent's point of view:
/// the batch was not committed and may be resent.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The agent's token was revoked while its stream was open; the batch
    /// was rolled back.
    #[error("agent {0:?} was revoked")]
    Revoked(String),
    /// A Citus cluster `migrate` cannot use as it is.
    #[error("{0}")]
    Citus(String),
    /// A value could not be encoded for its column.
    #[error("column {column}: {reason}")]
    Encode { column: String, reason: String },
}

/// The collector's database.
pub struct Store {
    pool: PgPool,
    /// Days whose partition is known to exist, to skip the DDL round trip.
    partitions: Mutex<HashSet<NaiveDate>>,
    /// The detector's cells: settings, keys and partitions known.
    cells: cells::CellState,
    /// The result contexts this collector has stored.
    contexts: results::KnownContexts,
}

impl Store {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            partitions: Mutex::new(HashSet::new()),
            cells: cells::CellState::default(),
            contexts: results::KnownContexts::default(),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies pending migrations; on a Citus coordinator, checks the
    /// cluster first and distributes the per-agent tables after
    /// ([`citus`]).
    pub async fn migrate(&self) -> Result<Option<citus::CitusLayout>, StoreError> {
        let cluster = citus::preflight(&self.pool).await?;
        MIGRATOR.run(&self.pool).await?;
        self.ensure_columnar().await?;
        match cluster {
            Some((version, workers)) => {
                Ok(Some(citus::distribute(&self.pool, version, workers).await?))
            }
            None => Ok(None),
        }
    }
}
