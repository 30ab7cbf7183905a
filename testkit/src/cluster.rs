//! A throwaway PostgreSQL cluster in a temporary directory, for the demo
//! and for a test run without `DATABASE_URL`: initdb and pg_ctl from PATH
//! or the newest `/usr/lib/postgresql/*/bin`, trust authentication on
//! 127.0.0.1 only, on a free port; as root, run as the user `postgres`
//! (initdb refuses root). The calls block for as long as the server tool
//! runs (seconds at most).

use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use std::process::Command;

/// A running private cluster; stopped and deleted by [`PrivateCluster::stop`]
/// (or, as a last resort, on drop).
pub struct PrivateCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// The unprivileged user running the cluster when we are root.
    run_as: Option<&'static str>,
    port: u16,
    stopped: bool,
}

/// Where `initdb` and `pg_ctl` are: on PATH, else the newest
/// `/usr/lib/postgresql/*/bin`.
pub fn find_server_binaries() -> Option<PathBuf> {
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(path) = std::env::var_os("PATH")
        && let Some(dir) = std::env::split_paths(&path).find(|d| has_both(d))
    {
        return Some(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            has_both(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// What a cluster is given before it first starts: lines for its
/// `postgresql.conf` and files for its data directory (a server's TLS
/// certificate and key, say), owned by the server's user, mode 0600.
#[derive(Debug, Clone, Default)]
pub struct ClusterSetup {
    pub settings: Vec<(String, String)>,
    pub files: Vec<(String, Vec<u8>)>,
}

impl ClusterSetup {
    /// Adds `name = 'value'` to postgresql.conf.
    pub fn setting(mut self, name: &str, value: &str) -> Self {
        self.settings.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Adds a file to the data directory.
    pub fn file(mut self, name: &str, contents: impl Into<Vec<u8>>) -> Self {
        self.files.push((name.to_owned(), contents.into()));
        self
    }
}

impl PrivateCluster {
    /// initdb + pg_ctl start on a free loopback port.
    pub fn start(bin: PathBuf) -> Result<Self> {
        Self::start_with(bin, &ClusterSetup::default())
    }

    /// [`PrivateCluster::start`] with `setup` applied between initdb and
    /// the first start.
    pub fn start_with(bin: PathBuf, setup: &ClusterSetup) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("vantage-pg-")
            .tempdir()
            .context("creating a temporary directory for PostgreSQL")?;
        // initdb refuses to run as root: hand the cluster to `postgres`.
        let run_as = if running_as_root() {
            let status = Command::new("chown")
                .arg("-R")
                .arg("postgres:")
                .arg(dir.path())
                .status()
                .context("running chown")?;
            if !status.success() {
                bail!(
                    "running as root, and cannot give {} to the user `postgres` (initdb refuses root); \
                     create that user or run the demo as an unprivileged user",
                    dir.path().display()
                );
            }
            Some("postgres")
        } else {
            None
        };
        let port = crate::free_port(Ipv4Addr::LOCALHOST.into()).context("finding a free port")?;
        let mut cluster = Self {
            dir,
            bin,
            run_as,
            port,
            stopped: false,
        };
        let data = cluster.data_dir();
        cluster.pg_tool(
            "initdb",
            &[
                "-D",
                path_str(&data)?,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )?;
        cluster.apply(setup)?;
        let log = cluster.dir.path().join("postgres.log");
        let started = cluster.start_server();
        if let Err(e) = started {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            cluster.stopped = true;
            return Err(e.context(format!("PostgreSQL log:\n{log}")));
        }
        Ok(cluster)
    }

    fn apply(&self, setup: &ClusterSetup) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::{OpenOptionsExt, chown};
        let data = self.data_dir();
        let owner =
            std::fs::metadata(&data).with_context(|| format!("reading {}", data.display()))?;
        for (name, contents) in &setup.files {
            let path = data.join(name);
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("writing {}", path.display()))?;
            file.write_all(contents)
                .with_context(|| format!("writing {}", path.display()))?;
            chown(&path, Some(owner.uid()), Some(owner.gid()))
                .with_context(|| format!("giving {} to the server's user", path.display()))?;
        }
        if !setup.settings.is_empty() {
            let conf = data.join("postgresql.conf");
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .open(&conf)
                .with_context(|| format!("opening {}", conf.display()))?;
            for (name, value) in &setup.settings {
                writeln!(file, "{name} = '{}'", value.replace('\'', "''"))
                    .with_context(|| format!("writing {}", conf.display()))?;
            }
        }
        Ok(())
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Stops the server at once (as a crash would), keeping its data.
    pub fn kill_server(&self) -> Result<()> {
        let data = self.data_dir();
        self.pg_tool(
            "pg_ctl",
            &["-D", path_str(&data)?, "-m", "immediate", "-w", "stop"],
        )
    }

    /// Starts the server again after [`PrivateCluster::kill_server`].
    pub fn restart_server(&self) -> Result<()> {
        self.start_server()
    }

    /// `pg_ctl start` on the cluster's port, waiting until it accepts.
    fn start_server(&self) -> Result<()> {
        let data = self.data_dir();
        let log = self.dir.path().join("postgres.log");
        let options = self.server_options()?;
        self.pg_tool(
            "pg_ctl",
            &[
                "-D",
                path_str(&data)?,
                "-l",
                path_str(&log)?,
                "-o",
                &options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        )
    }

    fn server_options(&self) -> Result<String> {
        Ok(format!(
            // Tests run many at once, each with a pool and collectors.
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={} -c fsync=off \
             -c full_page_writes=off -c max_connections=500",
            self.port,
            path_str(self.dir.path())?
        ))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// URL of the cluster's `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A command running the server tool `tool`, as the cluster's owner.
    fn pg_command(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        match self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(exe);
                c
            }
            None => Command::new(exe),
        }
    }

    fn pg_tool(&self, tool: &str, args: &[&str]) -> Result<()> {
        let exe = self.bin.join(tool);
        let output = self
            .pg_command(tool)
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .with_context(|| format!("running {}", exe.display()))?;
        if !output.status.success() {
            bail!(
                "{} {} failed ({}): {}",
                exe.display(),
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }

    /// Stops the cluster and deletes its directory.
    pub fn stop(mut self) -> Result<()> {
        let data = self.data_dir();
        self.stopped = true;
        self.pg_tool(
            "pg_ctl",
            &["-D", path_str(&data)?, "-m", "fast", "-w", "stop"],
        )
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        // Last resort (an error or panic skipped `stop`): stop immediately so
        // the temporary directory can be removed.
        let data = self.data_dir();
        let _ = self
            .pg_command("pg_ctl")
            .arg("-D")
            .arg(data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str()
        .with_context(|| format!("path {} is not UTF-8", path.display()))
}
