//! Loopback fixtures shared by Vantage's integration tests and its demo.
//!
//! Everything here is a real server on a real socket bound to 127.0.0.0/8:
//! - [`DnsServer`]: an authoritative DNS server (hickory-server) for names
//!   under `test.`, UDP and TCP on the same port; other names under `test.`
//!   get NXDOMAIN.
//! - [`Target`]: an HTTP site that answers `502 Bad Gateway` (with an
//!   nginx-style error page) to clients in one source range and `200` to
//!   everyone else; the range can be changed while it runs. `/ip` echoes
//!   the caller's address (an IP-echo service for vantages).
//! - [`WebhookReceiver`]: records every JSON body POSTed to it.
//! - [`ScriptedSite`]: an HTTP(S) site with a test-time certificate that
//!   delays the handshake, headers and body by known amounts, or misbehaves
//!   on purpose (slowloris, endless body, garbage, oversized headers).
//! - [`ForwardProxy`]: an HTTP CONNECT or SOCKS5 proxy, with credentials.
//! - [`CuttingRelay`]: a TCP relay whose connections a test cuts at will.
//! - [`H2Flood`]: tokenless HTTP/2 connections kept alive with PINGs, the
//!   way an attacker holds a server's connection slots.
//! - [`config_fuzz`]: mutated configuration files for both programs' fuzz tests.
//! - [`cluster::PrivateCluster`]: a throwaway PostgreSQL cluster (the
//!   demo's, and a test run's without `DATABASE_URL`).
//! - [`citus::CitusCluster`]: a coordinator and workers, Citus built from
//!   the vendored source where missing.
//! - [`netns::Lab`]: network namespaces joined by veth pairs, with
//!   routers, MTUs and firewall rules: real multi-hop paths (root only).
//! - [`wait_until_listening`] and [`terminate`]: a started process is
//!   ready once it listens, and stops by SIGTERM.
//!
//! Each fixture stops when dropped.

mod accept;
pub mod citus;
pub mod cluster;
pub mod config_fuzz;
mod cut;
mod dns;
mod flood;
pub mod netns;
mod process;
mod proxy;
mod site;
mod target;
mod webhook;

pub use cut::CuttingRelay;
pub use dns::{DnsServer, NSID, RECORD_TTL, WHOAMI_NAMES};
pub use flood::H2Flood;
pub use process::{terminate, wait_until_listening};
pub use proxy::{ForwardProxy, PROXY_ERROR_BODY, ProxyKind};
pub use site::{Behaviour, Delays, Leaf, ScriptedSite, TestCa};
pub use target::Target;
pub use webhook::{Received, WebhookReceiver};

/// A port on `ip` that was free a moment ago (the OS picked it; nothing
/// holds it now, so a test can hand it to a process that binds it later).
pub fn free_port(ip: std::net::IpAddr) -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind((ip, 0))?.local_addr()?.port())
}
