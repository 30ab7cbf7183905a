//! The database connection's TLS as libpq means it, against real
//! PostgreSQL servers: one with a version 1 self-signed certificate (as
//! Citus makes, and `openssl x509 -req` without extensions), one with a
//! certificate our CA signed for 127.0.0.1, one with a CA-signed
//! certificate for another name, and one with TLS off. For each, every
//! `sslmode`: whether the collector connects, whether the connection is
//! encrypted (the server's `pg_stat_ssl`), and what the error says.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use vantage_collector::app::connect_to;
use vantage_collector::config::database_options;
use vantage_testkit::TestCa;
use vantage_testkit::cluster::{ClusterSetup, PrivateCluster, find_server_binaries};

/// A version 1 self-signed certificate and its key (PEM), by the
/// `openssl` command line: rcgen makes only version 3.
fn v1_self_signed(dir: &Path, common_name: &str) -> (String, String) {
    let key = dir.join("v1.key");
    let csr = dir.join("v1.csr");
    let cert = dir.join("v1.crt");
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let subject = format!("/CN={common_name}");
    run(&[
        "req",
        "-new",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        key.to_str().unwrap(),
        "-subj",
        &subject,
        "-out",
        csr.to_str().unwrap(),
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        csr.to_str().unwrap(),
        "-signkey",
        key.to_str().unwrap(),
        "-days",
        "2",
        "-out",
        cert.to_str().unwrap(),
    ]);
    let text = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in", cert.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("Version: 1 (0x0)"),
        "openssl made a version 1 certificate"
    );
    (
        std::fs::read_to_string(cert).unwrap(),
        std::fs::read_to_string(key).unwrap(),
    )
}

fn tls_server(cert_pem: &str, key_pem: &str) -> PrivateCluster {
    let setup = ClusterSetup::default()
        .setting("ssl", "on")
        .setting("ssl_cert_file", "server.crt")
        .setting("ssl_key_file", "server.key")
        .file("server.crt", cert_pem)
        .file("server.key", key_pem);
    PrivateCluster::start_with(find_server_binaries().unwrap(), &setup).unwrap()
}

/// Connects with `query` added to the server's URL: `Ok(encrypted)` or
/// the collector's error, in full.
async fn connect(server: &PrivateCluster, query: &str) -> Result<bool, String> {
    let url = format!("{}?{query}", server.url());
    let options = database_options(&url)?;
    let pool = connect_to(options, "database.url", 1)
        .await
        .map_err(|e| format!("{e:#}"))?;
    let encrypted: bool =
        sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&pool)
            .await
            .unwrap();
    pool.close().await;
    Ok(encrypted)
}

fn failed_with(result: Result<bool, String>, words: &[&str]) {
    let error = result.expect_err("the connection is refused");
    for w in words {
        assert!(error.contains(w), "{w:?} missing from: {error}");
    }
}

#[tokio::test]
async fn every_sslmode_against_v1_self_signed_ca_signed_wrong_name_and_plain_servers() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new().unwrap();
        let ca_file = dir.path().join("ca.crt");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        let ca_file = ca_file.to_str().unwrap().to_owned();

        // A version 1 self-signed certificate, as Citus makes.
        let (v1_cert, v1_key) = v1_self_signed(dir.path(), "v1-self");
        let v1_file = dir.path().join("v1.crt").to_str().unwrap().to_owned();
        let v1 = tls_server(&v1_cert, &v1_key);
        assert!(
            !connect(&v1, "sslmode=disable").await.unwrap(),
            "disable: plain"
        );
        assert!(
            connect(&v1, "").await.unwrap(),
            "the default (prefer) encrypts"
        );
        assert!(connect(&v1, "sslmode=prefer").await.unwrap());
        assert!(connect(&v1, "sslmode=require").await.unwrap());
        failed_with(
            connect(&v1, "sslmode=verify-ca").await,
            &["sslmode=verify-ca", "X.509 version 1", "sslrootcert"],
        );
        // Pinned: the certificate is its own root.
        assert!(
            connect(&v1, &format!("sslmode=verify-ca&sslrootcert={v1_file}"))
                .await
                .unwrap()
        );
        failed_with(
            connect(&v1, &format!("sslmode=verify-full&sslrootcert={v1_file}")).await,
            &["sslmode=verify-full", "does not name the host 127.0.0.1"],
        );
        // libpq: require with a root certificate verifies like verify-ca.
        failed_with(
            connect(&v1, &format!("sslmode=require&sslrootcert={ca_file}")).await,
            &["sslmode=verify-ca", "X.509 version 1"],
        );
        drop(v1);

        // A certificate our CA signed for 127.0.0.1.
        let leaf = ca
            .leaf(&["127.0.0.1", "localhost"], Duration::from_secs(86400))
            .unwrap();
        let signed = tls_server(&leaf.cert_pem, &leaf.key_pem);
        assert!(!connect(&signed, "sslmode=disable").await.unwrap());
        assert!(connect(&signed, "sslmode=prefer").await.unwrap());
        assert!(connect(&signed, "sslmode=require").await.unwrap());
        assert!(
            connect(&signed, &format!("sslmode=require&sslrootcert={ca_file}"))
                .await
                .unwrap()
        );
        assert!(
            connect(&signed, &format!("sslmode=verify-ca&sslrootcert={ca_file}"))
                .await
                .unwrap()
        );
        assert!(
            connect(
                &signed,
                &format!("sslmode=verify-full&sslrootcert={ca_file}")
            )
            .await
            .unwrap()
        );
        // Not in the system's roots.
        failed_with(
            connect(&signed, "sslmode=verify-full").await,
            &[
                "sslmode=verify-full",
                "not signed by a certificate authority",
            ],
        );
        failed_with(
            connect(&signed, "sslmode=verify-full&sslrootcert=system").await,
            &[
                "sslmode=verify-full",
                "not signed by a certificate authority",
            ],
        );
        // Verifying against a root that is not there is refused up front.
        let missing = dir.path().join("missing.crt");
        let missing = missing.to_str().unwrap();
        failed_with(
            connect(&signed, &format!("sslmode=verify-ca&sslrootcert={missing}")).await,
            &["sslrootcert", missing, "no such file", "sslmode=verify-ca"],
        );
        drop(signed);

        // A CA-signed certificate for another host name.
        let leaf = ca
            .leaf(&["db.example.internal"], Duration::from_secs(86400))
            .unwrap();
        let wrong_name = tls_server(&leaf.cert_pem, &leaf.key_pem);
        assert!(!connect(&wrong_name, "sslmode=disable").await.unwrap());
        assert!(connect(&wrong_name, "sslmode=prefer").await.unwrap());
        assert!(connect(&wrong_name, "sslmode=require").await.unwrap());
        assert!(
            connect(
                &wrong_name,
                &format!("sslmode=verify-ca&sslrootcert={ca_file}")
            )
            .await
            .unwrap(),
            "verify-ca does not check the name"
        );
        failed_with(
            connect(
                &wrong_name,
                &format!("sslmode=verify-full&sslrootcert={ca_file}"),
            )
            .await,
            &["sslmode=verify-full", "does not name the host 127.0.0.1"],
        );
        drop(wrong_name);

        // TLS off on the server.
        let plain = PrivateCluster::start(find_server_binaries().unwrap()).unwrap();
        assert!(!connect(&plain, "sslmode=disable").await.unwrap());
        assert!(
            !connect(&plain, "sslmode=prefer").await.unwrap(),
            "prefer falls back to plain"
        );
        for mode in ["require", "verify-ca", "verify-full"] {
            let query = if mode == "require" {
                format!("sslmode={mode}")
            } else {
                format!("sslmode={mode}&sslrootcert={ca_file}")
            };
            failed_with(
                connect(&plain, &query).await,
                &[&format!("sslmode={mode}"), "does not accept TLS"],
            );
        }
        plain.stop().unwrap();
    })
    .await
    .expect("the matrix ran within two minutes");
}
