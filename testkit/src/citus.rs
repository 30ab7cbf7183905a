//! A real Citus cluster for tests and benchmarks: a coordinator and its
//! workers, each a [`PrivateCluster`] on loopback with Citus preloaded.
//! Citus is installed from the vendored source where this machine's
//! PostgreSQL lacks it (`testkit/citus/build.sh`, as CI does), never from
//! the network.
//!
//! Citus keeps its metadata per database: [`CitusCluster::database`]
//! makes a database on every node, creates the extension in each and
//! registers the workers with the coordinator for it, so tests on one
//! cluster stay apart as they do on one server.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use sqlx::Connection;
use sqlx::postgres::PgConnection;

use crate::cluster::{ClusterSetup, PrivateCluster, find_server_binaries};

/// Installs Citus into the PostgreSQL whose server binaries are in `bin`,
/// from the vendored source, unless it is there (minutes the first time).
pub fn ensure_installed(bin: &Path) -> Result<()> {
    let script = build_script();
    // `initdb` on PATH may be a link into the server's own directory,
    // where its `pg_config` is.
    let server_bin = std::fs::canonicalize(bin.join("initdb"))
        .ok()
        .and_then(|initdb| initdb.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| bin.to_path_buf());
    let output = Command::new(&script)
        .arg(server_bin.join("pg_config"))
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !output.status.success() {
        bail!(
            "{} failed ({}): {}",
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// A coordinator and its workers.
pub struct CitusCluster {
    pub coordinator: PrivateCluster,
    pub workers: Vec<PrivateCluster>,
}

impl CitusCluster {
    /// Installs Citus where missing, then starts a coordinator and
    /// `workers` workers.
    pub fn start(workers: usize) -> Result<Self> {
        let bin = find_server_binaries().context(
            "no PostgreSQL server binaries (initdb, pg_ctl) on PATH or in /usr/lib/postgresql",
        )?;
        ensure_installed(&bin)?;
        let node = || -> Result<PrivateCluster> {
            let setup = ClusterSetup::default()
                .setting("shared_preload_libraries", "citus")
                // Distributed transactions commit in two phases.
                .setting("max_prepared_transactions", "200")
                // Few shards: tests make many small databases.
                .setting("citus.shard_count", "4");
            PrivateCluster::start_with(bin.clone(), &setup)
        };
        let coordinator = node().context("starting the Citus coordinator")?;
        let workers = (0..workers)
            .map(|i| node().with_context(|| format!("starting Citus worker {i}")))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            coordinator,
            workers,
        })
    }

    /// Creates `name` on every node with the extension in each and the
    /// workers registered: the coordinator's URL of that database.
    pub async fn database(&self, name: &str) -> Result<String> {
        create_database(&self.ports(), name).await
    }

    /// The coordinator's port, then the workers'.
    pub fn ports(&self) -> Vec<u16> {
        std::iter::once(self.coordinator.port())
            .chain(self.workers.iter().map(PrivateCluster::port))
            .collect()
    }

    /// Stops every node and deletes their directories.
    pub fn stop(self) -> Result<()> {
        for worker in self.workers {
            worker.stop()?;
        }
        self.coordinator.stop()
    }
}

/// The URL of database `name` on the node at `port`.
pub fn database_url(port: u16, name: &str) -> String {
    format!("postgres://postgres@127.0.0.1:{port}/{name}")
}

/// [`CitusCluster::database`] on the nodes at `ports` (the coordinator
/// first).
pub async fn create_database(ports: &[u16], name: &str) -> Result<String> {
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        bail!("database name {name:?}: expected letters, digits and _");
    }
    let Some((&coordinator, workers)) = ports.split_first() else {
        bail!("a Citus cluster needs a coordinator");
    };
    for &port in ports {
        let mut admin = PgConnection::connect(&database_url(port, "postgres")).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut admin)
            .await
            .with_context(|| format!("creating {name} on port {port}"))?;
        admin.close().await?;
        let mut db = PgConnection::connect(&database_url(port, name)).await?;
        sqlx::raw_sql("CREATE EXTENSION citus")
            .execute(&mut db)
            .await
            .with_context(|| format!("CREATE EXTENSION citus on port {port}"))?;
        db.close().await?;
    }
    let url = database_url(coordinator, name);
    let mut db = PgConnection::connect(&url).await?;
    sqlx::query("SELECT citus_set_coordinator_host('127.0.0.1', $1)")
        .bind(i32::from(coordinator))
        .execute(&mut db)
        .await
        .context("citus_set_coordinator_host")?;
    for &port in workers {
        // The coordinator's first connection to a worker can fail when the
        // machine is loaded (many tests' clusters and collectors at once):
        // a few tries before the error is the test's.
        let mut tries = 0;
        loop {
            tries += 1;
            let added = sqlx::query("SELECT citus_add_node('127.0.0.1', $1)")
                .bind(i32::from(port))
                .execute(&mut db)
                .await;
            match added {
                Ok(_) => break,
                Err(e) if tries < 4 => {
                    eprintln!("citus_add_node for port {port} (try {tries}): {e}; again");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("citus_add_node for port {port}"));
                }
            }
        }
    }
    db.close().await?;
    Ok(url)
}

/// Where the vendored build script is (for messages).
pub fn build_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("citus/build.sh")
}
