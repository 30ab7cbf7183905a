//! Loopback fixtures shared by Vantage's integration tests and its demo.
//!
//! Everything here is a real server on a real socket bound to 127.0.0.0/8:
//! - [`DnsServer`]: an authoritative DNS server (hickory-server) for names
//!   under `test.`, UDP and TCP on the same port; other names under `test.`
//!   get NXDOMAIN.
//! - [`Target`]: an HTTP site that answers `502 Bad Gateway` (with an
//!   nginx-style error page) to clients in one source range and `200` to
//!   everyone else; the range can be changed while it runs.
//! - [`WebhookReceiver`]: records every JSON body POSTed to it.
//!
//! Each fixture stops when dropped.

mod dns;
mod target;
mod webhook;

pub use dns::{DnsServer, RECORD_TTL};
pub use target::Target;
pub use webhook::WebhookReceiver;
