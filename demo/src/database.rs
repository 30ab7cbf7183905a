//! Where the demo's data lives: a private PostgreSQL cluster of its own,
//! or a throwaway database on the server `DATABASE_URL` names; removed at
//! the end either way.

use anyhow::{Context, Result, bail};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use vantage_testkit::cluster::{PrivateCluster, find_server_binaries};

/// Where the demo's data lives, and how to clean it up.
pub(crate) enum DemoDatabase {
    Private(PrivateCluster),
    /// A database created inside the server `DATABASE_URL` points at.
    Borrowed {
        admin: PgPool,
        name: String,
    },
}

pub(crate) async fn demo_database() -> Result<(DemoDatabase, String)> {
    if let Ok(url) = std::env::var("DATABASE_URL").map(|u| u.trim().to_owned())
        && !url.is_empty()
    {
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
            .context("connecting to DATABASE_URL")?;
        let name = format!("vantage_demo_{}", std::process::id());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .with_context(|| {
                format!("creating database {name} (DATABASE_URL's user needs CREATEDB)")
            })?;
        let mut demo_url: url::Url = url.parse().context("DATABASE_URL is not a URL")?;
        demo_url.set_path(&name);
        println!("  PostgreSQL  database {name} on the server of DATABASE_URL (dropped at exit)");
        return Ok((DemoDatabase::Borrowed { admin, name }, demo_url.to_string()));
    }
    let Some(bin) = find_server_binaries() else {
        bail!(
            "the demo needs PostgreSQL, and found neither DATABASE_URL nor the server binaries \
             (initdb and pg_ctl on PATH or under /usr/lib/postgresql/*/bin).\n\
             Fix: install the server (Debian/Ubuntu: `apt-get install postgresql`), or point \
             DATABASE_URL at a server whose user may CREATE DATABASE, e.g. \
             DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres"
        );
    };
    let cluster = PrivateCluster::start(bin.clone())?;
    println!(
        "  PostgreSQL  private cluster from {} on 127.0.0.1:{} (temporary, removed at exit)",
        bin.display(),
        cluster.port()
    );
    let url = cluster.url();
    Ok((DemoDatabase::Private(cluster), url))
}

impl DemoDatabase {
    pub(crate) async fn remove(self) -> Result<()> {
        match self {
            Self::Private(cluster) => cluster.stop(),
            Self::Borrowed { admin, name } => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&admin)
                .await?;
                Ok(())
            }
        }
    }
}
