//! Starts the loopback fixtures a benchmark needs and prints where they
//! listen, one `KEY=VALUE` line each, then runs until killed:
//! `DNS` (answers `shop.test` with 127.0.0.1), `HTTP` (a healthy target),
//! `HTTPS` (a TLS site for `shop.test`) and `CA` (the PEM file trusting it,
//! written into the directory given as the first argument). With a prefix
//! as the second argument, `HTTP` answers 502 (as nginx does) to sources
//! inside it.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use vantage_testkit::{Behaviour, Delays, DnsServer, ScriptedSite, Target, TestCa};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir: PathBuf = std::env::args()
        .nth(1)
        .context("usage: vantage-fixtures DIR [FAILING_PREFIX]")?
        .into();
    let failing: Option<ipnet::IpNet> = std::env::args()
        .nth(2)
        .map(|p| {
            p.parse()
                .context("FAILING_PREFIX: expected a prefix such as 127.0.2.0/24")
        })
        .transpose()?;
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let dns = DnsServer::start(loopback, &[("shop.test", loopback)]).await?;
    let http = Target::start(loopback, failing).await?;
    let ca = TestCa::new()?;
    let leaf = ca.leaf(&["shop.test"], Duration::from_secs(365 * 86400))?;
    let page = Behaviour::Respond {
        status: 200,
        headers: vec![("server".into(), "vantage-fixtures".into())],
        body: b"ok\n".to_vec(),
    };
    let https = ScriptedSite::start(loopback, Some(leaf), Delays::default(), page).await?;
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).context("write ca.pem")?;
    println!("DNS={}", dns.addr());
    println!("HTTP={}", http.addr());
    println!("HTTPS={}", https.addr());
    println!("CA={}", ca_file.display());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
