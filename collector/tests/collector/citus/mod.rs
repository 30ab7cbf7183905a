//! The collector on a real Citus cluster: a coordinator and two workers
//! (three private clusters on loopback, Citus built from the vendored
//! source where missing), shared by these tests, each in a database of its
//! own with its own Citus metadata.

mod closed_days;
mod connect;
mod delivery;
mod detection;
mod operations;
mod refusals;

use std::sync::{Mutex, OnceLock};

use vantage_testkit::citus::CitusCluster;

/// The run's Citus cluster, started by the first test that asks.
static CLUSTER: OnceLock<Mutex<Option<CitusCluster>>> = OnceLock::new();

/// The shared cluster's ports (coordinator first), the cluster started by
/// the first test that asks.
pub fn cluster_ports() -> Vec<u16> {
    let cell = CLUSTER.get_or_init(|| {
        Mutex::new(Some(
            CitusCluster::start(2).expect("starting a Citus coordinator and two workers"),
        ))
    });
    cell.lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .expect("the cluster runs until the last test")
        .ports()
}

/// A new database on the shared cluster, with the workers registered:
/// its coordinator URL (the user's default: no sslmode).
pub async fn citus_database(name: &str) -> String {
    // The lock is not held while the database is made.
    let ports = cluster_ports();
    vantage_testkit::citus::create_database(&ports, name)
        .await
        .expect("a database on every Citus node")
}

/// A pool on a new database of the shared cluster (not yet migrated).
pub async fn citus_pool(name: &str) -> sqlx::PgPool {
    sqlx::PgPool::connect(&citus_database(name).await)
        .await
        .expect("connecting to the Citus coordinator")
}

/// After the last test: stop the cluster and delete its directories.
#[ctor::dtor]
#[allow(unsafe_code)]
unsafe fn stop_citus() {
    if let Some(cell) = CLUSTER.get()
        && let Some(cluster) = cell.lock().unwrap_or_else(|p| p.into_inner()).take()
        && let Err(e) = cluster.stop()
    {
        eprintln!("stopping the tests' Citus cluster: {e:#}");
    }
}
