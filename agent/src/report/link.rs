//! What the reporter is given: who the agent is (the Hello), how to reach
//! the collector, delivery settings, and the link to the agent's control
//! (what the collector pushes, the answers to send back).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use tokio::sync::mpsc;
use tonic::transport::{Certificate, ClientTlsConfig, Identity as TlsIdentity};
use vantage_proto::v1 as pb;

/// Who this agent is, as told to the collector in the Hello.
#[derive(Debug, Clone)]
pub struct Identity {
    pub agent_id: String,
    pub region: String,
    pub labels: BTreeMap<String, String>,
    /// The vantages' names and region overrides.
    pub vantages: Vec<pb::VantageInfo>,
}

/// What the collector asks of the agent beyond acks.
#[derive(Debug)]
pub enum Pushed {
    Checks(pb::CheckSet),
    Probe(pb::ProbeRequest),
}

/// The reporter's side of the agent's control plane: messages the
/// collector pushes go out on `pushed`; answers to send come in on
/// `answers` (probe answers and check reports; kept across sessions: an
/// answer waits for the next one).
pub struct ControlLink {
    pub pushed: mpsc::UnboundedSender<Pushed>,
    pub answers: tokio::sync::Mutex<mpsc::UnboundedReceiver<pb::agent_message::Body>>,
}

/// How to reach the collector.
#[derive(Debug, Clone)]
pub struct Connection {
    /// The collectors, tried in turn (at least one).
    pub endpoints: Vec<String>,
    pub source_ip: Option<IpAddr>,
    pub token: String,
    /// Used for the `https://` endpoints.
    pub tls: Option<ClientTlsConfig>,
}

impl Connection {
    /// TLS settings from PEM files: the collector's CA (default: the
    /// system's roots) and an optional client certificate.
    pub fn tls_config(ca: Option<&[u8]>, client: Option<(&[u8], &[u8])>) -> ClientTlsConfig {
        let mut tls = ClientTlsConfig::new();
        tls = match ca {
            Some(pem) => tls.ca_certificate(Certificate::from_pem(pem)),
            None => tls.with_native_roots(),
        };
        if let Some((cert, key)) = client {
            tls = tls.identity(TlsIdentity::from_pem(cert, key));
        }
        tls
    }
}

/// Delivery settings.
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    pub batch_size: usize,
    pub window: usize,
    pub drain_timeout: Duration,
}
