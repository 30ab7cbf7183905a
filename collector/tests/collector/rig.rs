//! A fleet of real processes for the control-plane tests: a collector
//! process, enrolled agents started as `vantage-agent` processes, a target
//! behind a name and the DNS server that answers it, and the CLI.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use vantage_collector::store::Store;
use vantage_testkit::{DnsServer, Target};

use crate::database_url;
use crate::process::{Collector, agent_binary, kill9, start_collector_at};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A collector process, a target behind a name, enrolled agents.
pub struct Fleet {
    pub dir: tempfile::TempDir,
    pub pool: PgPool,
    pub target: Target,
    pub dns: DnsServer,
    pub grpc: SocketAddr,
    pub collector: Option<Collector>,
    pub collector_http: Option<SocketAddr>,
    pub tokens: Vec<(String, String)>,
}

/// An agent process, killed if the test fails before stopping it.
pub struct AgentProcess {
    pub child: Child,
}

impl std::borrow::Borrow<Child> for AgentProcess {
    fn borrow(&self) -> &Child {
        &self.child
    }
}

impl std::borrow::BorrowMut<Child> for AgentProcess {
    fn borrow_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            kill9(&mut self.child);
        }
    }
}

impl Fleet {
    /// Enrols `agents` ((id, region)), starts a target (`shop.test`), a
    /// DNS server and the collector.
    pub async fn start(pool: PgPool, agents: &[(&str, &str)], collector_extra: &str) -> Self {
        Self::start_env(pool, agents, collector_extra, &[]).await
    }

    /// [`Fleet::start`] with extra environment variables for the collector
    /// (`FAILPOINTS`).
    pub async fn start_env(
        pool: PgPool,
        agents: &[(&str, &str)],
        collector_extra: &str,
        collector_env: &[(&str, &str)],
    ) -> Self {
        let store = Store::new(pool.clone());
        store.migrate().await.unwrap();
        let mut tokens = Vec::new();
        for (id, region) in agents {
            let token = vantage_collector::enrol::enrol(&store, id, region)
                .await
                .unwrap();
            tokens.push((id.to_string(), token));
        }
        let target = Target::start(LOOPBACK, None).await.unwrap();
        let dns = DnsServer::start(LOOPBACK, &[("shop.test", target.addr().ip())])
            .await
            .unwrap();
        let mut fleet = Self {
            dir: tempfile::tempdir().unwrap(),
            pool,
            target,
            dns,
            grpc: SocketAddr::new(LOOPBACK, vantage_testkit::free_port(LOOPBACK).unwrap()),
            collector: None,
            collector_http: None,
            tokens,
        };
        fleet.start_collector_env(collector_extra, collector_env);
        fleet
    }

    pub fn start_collector(&mut self, extra: &str) {
        self.start_collector_env(extra, &[]);
    }

    pub fn start_collector_env(&mut self, extra: &str, env: &[(&str, &str)]) {
        let (collector, http) = start_collector_at(
            &self.pool,
            self.dir.path(),
            "collector",
            self.grpc,
            extra,
            env,
        );
        self.collector = Some(collector);
        self.collector_http = Some(http);
    }

    pub fn kill_collector(&mut self) {
        if let Some(mut c) = self.collector.take() {
            kill9(&mut c.0);
        }
    }

    /// The URL of `path` on the target, by name.
    pub fn url(&self, path: &str) -> String {
        format!("http://shop.test:{}{path}", self.target.addr().port())
    }

    /// Writes the config of agent `id` (its own checks: `checks`, TOML;
    /// `extra` goes before them) and starts it.
    pub fn start_agent(&self, id: &str, extra: &str, checks: &str) -> AgentProcess {
        self.start_agent_env(id, extra, checks, &[])
    }

    /// The failing-/24 fleet, up to its first incident: agents `east`,
    /// `west` and `eu` with two vantages each run the check `shop` on `/`
    /// every `interval`; the target answers 502 to 127.0.2.0/24, which
    /// holds one vantage of `east` and one of `west`, so only the prefix
    /// explains it. Returns once the collector (with `collector_extra`)
    /// has opened an incident.
    pub async fn prefix_incident(
        pool: PgPool,
        collector_extra: &str,
        interval: &str,
        timeout: &str,
    ) -> (Self, [AgentProcess; 3]) {
        let fleet = Self::start(
            pool,
            &[("east", "us-east"), ("west", "us-west"), ("eu", "eu")],
            collector_extra,
        )
        .await;
        fleet
            .target
            .set_failing(Some("127.0.2.0/24".parse().unwrap()));
        let check = format!(
            "[[check]]\nname = \"shop\"\nurl = \"{}\"\ninterval = \"{interval}\"\ntimeout = \"{timeout}\"\n",
            fleet.url("/")
        );
        let vantages = |a: &str, b: &str| {
            format!(
                "[[vantage]]\nname = \"v1\"\nsource_ip = \"{a}\"\n[[vantage]]\nname = \"v2\"\nsource_ip = \"{b}\"\n"
            )
        };
        let agents = [
            fleet.start_agent("east", &vantages("127.0.2.1", "127.0.3.1"), &check),
            fleet.start_agent("west", &vantages("127.0.2.2", "127.0.5.1"), &check),
            fleet.start_agent("eu", &vantages("127.0.7.1", "127.0.8.1"), &check),
        ];
        fleet
            .wait_for(
                "an incident",
                "SELECT count(*) FROM incidents",
                1,
                Duration::from_secs(60),
            )
            .await;
        (fleet, agents)
    }

    /// [`Fleet::start_agent`] with extra environment variables.
    pub fn start_agent_env(
        &self,
        id: &str,
        extra: &str,
        checks: &str,
        env: &[(&str, &str)],
    ) -> AgentProcess {
        self.write_agent_config(id, extra, checks);
        self.spawn_agent(id, env)
    }

    /// [`Fleet::start_agent`] streaming to `collectors` (an `endpoints`
    /// list, tried in turn) instead of the fleet's collector.
    pub fn start_agent_to(
        &self,
        id: &str,
        checks: &str,
        collectors: &[SocketAddr],
    ) -> AgentProcess {
        let list: Vec<String> = collectors
            .iter()
            .map(|c| format!("\"http://{c}\""))
            .collect();
        self.write_agent_config_with(
            id,
            "",
            checks,
            &format!("endpoints = [{}]", list.join(", ")),
        );
        self.spawn_agent(id, &[])
    }

    /// [`Fleet::start_agent`] inside network namespace `netns` (a test's
    /// lab), streaming to the collector through `relay` (a loopback
    /// address of that namespace that reaches the fleet's collector).
    pub fn start_agent_in_netns(
        &self,
        id: &str,
        netns: &str,
        relay: SocketAddr,
        extra: &str,
        checks: &str,
    ) -> AgentProcess {
        self.write_agent_config_with(id, extra, checks, &format!("endpoint = \"http://{relay}\""));
        self.spawn(id, &[], Some(netns))
    }

    fn spawn_agent(&self, id: &str, env: &[(&str, &str)]) -> AgentProcess {
        self.spawn(id, env, None)
    }

    fn spawn(&self, id: &str, env: &[(&str, &str)], netns: Option<&str>) -> AgentProcess {
        let config = self.dir.path().join(format!("{id}.toml"));
        let log = self.log(&format!("{id}.log"));
        // `ip netns exec` enters the namespace and execs the agent: the
        // child is the agent itself.
        let mut command = match netns {
            Some(netns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", netns]).arg(agent_binary());
                c
            }
            None => Command::new(agent_binary()),
        };
        let child = command
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        AgentProcess { child }
    }

    /// (Re)writes agent `id`'s config file.
    pub fn write_agent_config(&self, id: &str, extra: &str, checks: &str) {
        let endpoint = format!("endpoint = \"http://{}\"", self.grpc);
        self.write_agent_config_with(id, extra, checks, &endpoint);
    }

    fn write_agent_config_with(&self, id: &str, extra: &str, checks: &str, endpoint: &str) {
        let token = &self.tokens.iter().find(|(a, _)| a == id).unwrap().1;
        let text = format!(
            "agent_id = \"{id}\"\nregion = \"ignored\"\n{extra}\n\
             [collector]\n{endpoint}\ntoken = \"{token}\"\n\
             [spool]\npath = \"{spool}\"\nsync_interval = \"50ms\"\n\
             [dns]\nresolvers = [\"udp://{dns}\"]\nidentity_queries = []\n{checks}",
            spool = self.dir.path().join(format!("{id}.spool")).display(),
            dns = self.dns.addr(),
        );
        std::fs::write(self.dir.path().join(format!("{id}.toml")), text).unwrap();
    }

    pub fn spool_of(&self, id: &str) -> PathBuf {
        self.dir.path().join(format!("{id}.spool"))
    }

    fn log(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(name))
            .unwrap()
    }

    /// Every agent's log, each under its name.
    pub fn agent_logs(&self) -> String {
        let mut logs = String::new();
        for (id, _) in &self.tokens {
            let log = self.read_log(&format!("{id}.log"));
            if !log.is_empty() {
                logs.push_str(&format!("[{id}]\n{log}"));
            }
        }
        logs
    }

    pub fn read_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    /// Runs `vantage-collector ARGS` against the fleet's database (without
    /// blocking the test's runtime, which serves the target and DNS).
    pub async fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_vantage-collector"))
            .args(args)
            .env("DATABASE_URL", database_url(&self.pool))
            .env("RUST_LOG", "error")
            .output()
            .await
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `check apply` of `text`; panics if refused.
    pub async fn apply(&self, text: &str) -> String {
        let (code, out, err) = self.try_apply(text).await;
        assert_eq!(code, 0, "check apply failed: {err}");
        out
    }

    /// Waits until `n` agents that take central checks have said hello.
    pub async fn wait_for_central_agents(&self, n: i64) {
        self.wait_for(
            "agents connected",
            "SELECT count(*) FROM agents WHERE 'central_checks' = ANY(capabilities)",
            n,
            Duration::from_secs(30),
        )
        .await;
    }

    /// Writes `text` to a check file in the fleet's directory and runs
    /// `check apply` on it: exit code, stdout, stderr.
    pub async fn try_apply(&self, text: &str) -> (i32, String, String) {
        let file = self.dir.path().join("checks.toml");
        std::fs::write(&file, text).unwrap();
        self.cli(&["check", "apply", file.to_str().unwrap()]).await
    }

    /// Waits until `sql` (one bigint) reaches `at_least`.
    pub async fn wait_for(&self, what: &str, sql: &str, at_least: i64, within: Duration) -> i64 {
        let deadline = Instant::now() + within;
        loop {
            let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
                .fetch_one(&self.pool)
                .await
                .unwrap();
            if n >= at_least {
                return n;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {n} < {at_least} after {within:?}\n--- collector ---\n{}\n--- agents ---\n{}",
                self.read_log("collector.log"),
                self.agent_logs(),
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
