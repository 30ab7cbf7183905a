//! gRPC over TLS with client certificates: real agents (the library, as the
//! binary runs it) against a real collector, certificates made at test time.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use vantage_collector::CollectorConfig;
use vantage_collector::config::TlsConfig;
use vantage_testkit::{DnsServer, Target, TestCa};

use crate::spawn_collector_with;

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[sqlx::test(migrations = false)]
async fn mutual_tls_admits_the_agent_its_certificate_names_only(pool: PgPool) {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new().unwrap();
    let server = ca.leaf(&["127.0.0.1"], Duration::from_secs(3600)).unwrap();
    let config = CollectorConfig {
        tls: Some(TlsConfig {
            cert_file: write(dir.path(), "server.pem", &server.cert_pem),
            key_file: write(dir.path(), "server.key", &server.key_pem),
            client_ca_file: Some(write(dir.path(), "ca.pem", ca.pem())),
        }),
        ..CollectorConfig::default()
    };
    let collector = spawn_collector_with(pool.clone(), config).await;
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let target = Target::start(loopback, None).await.unwrap();
    let dns = DnsServer::start(loopback, &[("shop.test", target.addr().ip())])
        .await
        .unwrap();

    let agent = |id: &str, cert_name: &str, token: &str| {
        let leaf = ca.leaf(&[cert_name], Duration::from_secs(3600)).unwrap();
        let cert = write(dir.path(), &format!("{id}.pem"), &leaf.cert_pem);
        let key = write(dir.path(), &format!("{id}.key"), &leaf.key_pem);
        let toml = format!(
            "agent_id = \"{id}\"\nregion = \"eu-west\"\n\
             [collector]\nendpoint = \"https://127.0.0.1:{port}\"\ntoken = \"{token}\"\n\
             ca_file = \"{ca}\"\nclient_cert_file = \"{cert}\"\nclient_key_file = \"{key}\"\n\
             [spool]\nsync_interval = \"50ms\"\n\
             [dns]\nresolvers = [\"udp://{dns}\"]\nidentity_queries = []\n\
             [[check]]\nname = \"shop\"\nurl = \"http://shop.test:{tport}/\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\n",
            port = collector.grpc_addr.port(),
            ca = dir.path().join("ca.pem").display(),
            cert = cert.display(),
            key = key.display(),
            dns = dns.addr(),
            tport = target.addr().port(),
        );
        let config = vantage_agent::AgentConfig::parse(Path::new("agent.toml"), &toml).unwrap();
        vantage_agent::App::build(config).unwrap()
    };

    // The certificate names the agent: its results arrive over TLS.
    let token = collector.enrol("tls-agent", "eu-west").await;
    let stop = CancellationToken::new();
    let good = tokio::spawn(agent("tls-agent", "tls-agent", &token).run(stop.clone()));
    let mut stored = 0i64;
    for _ in 0..200 {
        stored =
            sqlx::query_scalar("SELECT count(*) FROM probe_results WHERE agent_id = 'tls-agent'")
                .fetch_one(&pool)
                .await
                .unwrap();
        if stored >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(stored >= 3, "results delivered over mutual TLS");
    stop.cancel();
    good.await.unwrap().unwrap();

    // A valid token with another agent's certificate: refused, and the
    // agent stops instead of retrying.
    let token = collector.enrol("thief", "eu-west").await;
    let stop = CancellationToken::new();
    let refused = tokio::time::timeout(
        Duration::from_secs(30),
        agent("thief", "tls-agent", &token).run(stop.clone()),
    )
    .await
    .expect("the agent stops by itself")
    .expect_err("credentials refused");
    let vantage_agent::app::AgentExit::CredentialsRefused(refused) = refused else {
        panic!("expected the credentials refused, got {refused}");
    };
    assert_eq!(refused.code, tonic::Code::PermissionDenied);
    assert!(
        refused.message.contains("does not name agent \"thief\""),
        "{refused}"
    );
    collector.stop().await;
}
