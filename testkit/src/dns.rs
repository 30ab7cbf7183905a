//! An authoritative DNS server for the zone `test.` on a loopback port,
//! which also answers the public "whoami" names with the asking client's
//! address and identifies itself with an NSID, as real resolvers do.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use hickory_server::Server;
use hickory_server::net::runtime::{Time, TokioRuntimeProvider};
use hickory_server::proto::op::{Edns, Header, HeaderCounts, Metadata};
use hickory_server::proto::rr::rdata::opt::{EdnsOption, NSIDPayload};
use hickory_server::proto::rr::rdata::{A, AAAA, SOA, TXT};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, MessageResponseBuilder, ZoneType};
use tokio::net::{TcpListener, UdpSocket};

/// TTL given to every record the fixture serves.
pub const RECORD_TTL: u32 = 30;

/// The names answered with the asking client's address (TXT `"ns" ADDR`,
/// or A/AAAA), as Akamai's, Google's and PowerDNS's whoami services do.
pub const WHOAMI_NAMES: &[&str] = &[
    "whoami.ds.akahelp.net.",
    "o-o.myaddr.l.google.com.",
    "whoami.v4.powerdns.org.",
];

/// The NSID every response to a whoami name carries.
pub const NSID: &str = "vantage-testkit-ns1";

/// A running DNS server; stops when dropped.
pub struct DnsServer {
    addr: SocketAddr,
    server: Server<Handler>,
}

/// The zone, plus whoami answers and NSID.
pub struct Handler {
    catalog: Catalog,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let Ok(info) = request.request_info() else {
            return self
                .catalog
                .handle_request::<R, T>(request, response_handle)
                .await;
        };
        let name = info.query.name().to_string().to_ascii_lowercase();
        if !WHOAMI_NAMES.contains(&name.as_str()) {
            return self
                .catalog
                .handle_request::<R, T>(request, response_handle)
                .await;
        }
        let asker = request.src().ip();
        let owner = Name::from(info.query.name().clone());
        let rdata = match (info.query.query_type(), asker) {
            (RecordType::TXT, ip) => Some(RData::TXT(TXT::new(vec!["ns".into(), ip.to_string()]))),
            (RecordType::A, IpAddr::V4(v4)) => Some(RData::A(A(v4))),
            (RecordType::AAAA, IpAddr::V6(v6)) => Some(RData::AAAA(AAAA(v6))),
            _ => None,
        };
        let answers: Vec<Record> = rdata
            .map(|r| Record::from_rdata(owner, 0, r))
            .into_iter()
            .collect();
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        if let Ok(payload) = NSIDPayload::new(NSID.as_bytes().to_vec()) {
            edns.options_mut().insert(EdnsOption::NSID(payload));
        }
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        let mut builder = MessageResponseBuilder::from_message_request(request);
        builder.edns(&edns);
        let response = builder.build(metadata, answers.iter(), [], [], []);
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(_) => ResponseInfo::from(Header {
                metadata,
                counts: HeaderCounts::default(),
            }),
        }
    }
}

impl DnsServer {
    /// Starts a server on `bind_ip` (port chosen by the OS, the same for UDP
    /// and TCP) answering the given `(name, address)` records. Names must be
    /// under `test.`, e.g. `shop.test`.
    pub async fn start(bind_ip: IpAddr, records: &[(&str, IpAddr)]) -> Result<Self> {
        let origin = Name::from_str("test.").context("zone origin")?;
        // An empty zone plus an SOA upserted first is the documented way to
        // build a zone record by record.
        let mut zone = InMemoryZoneHandler::<TokioRuntimeProvider>::empty(
            origin.clone(),
            ZoneType::Primary,
            AxfrPolicy::Deny,
        );
        let soa = SOA::new(
            Name::from_str("ns.test.")?,
            Name::from_str("hostmaster.test.")?,
            1,
            3600,
            600,
            86400,
            RECORD_TTL,
        );
        zone.upsert_mut(
            Record::from_rdata(origin.clone(), RECORD_TTL, RData::SOA(soa)),
            1,
        );
        for (name, ip) in records {
            let fqdn = Name::from_str(&format!("{}.", name.trim_end_matches('.')))
                .with_context(|| format!("record name {name:?}"))?;
            anyhow::ensure!(
                origin.zone_of(&fqdn),
                "record name {name:?} is not under the fixture's zone `test.`"
            );
            let rdata = match ip {
                IpAddr::V4(v4) => RData::A(A(*v4)),
                IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
            };
            zone.upsert_mut(Record::from_rdata(fqdn, RECORD_TTL, rdata), 1);
        }

        let mut catalog = Catalog::new();
        catalog.upsert(LowerName::new(&origin), vec![Arc::new(zone)]);

        let (udp, tcp) = bind_udp_and_tcp(bind_ip).await?;
        let addr = udp.local_addr()?;
        let mut server = Server::new(Handler { catalog });
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 64);
        Ok(Self { addr, server })
    }

    /// The address (UDP and TCP) the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.server.shutdown_token().cancel();
    }
}

/// A UDP socket and a TCP listener on the same free port. The OS picks the
/// UDP port; the same TCP port may be in use already (by another test's
/// connection, say), so a few ports are tried.
async fn bind_udp_and_tcp(bind_ip: IpAddr) -> Result<(UdpSocket, TcpListener)> {
    let mut last_error = None;
    for _ in 0..16 {
        let udp = UdpSocket::bind(SocketAddr::new(bind_ip, 0))
            .await
            .context("bind DNS UDP socket")?;
        match TcpListener::bind(udp.local_addr()?).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => last_error = Some(e),
            Err(e) => return Err(e).context("bind DNS TCP listener"),
        }
    }
    Err(last_error.map_or_else(|| anyhow::anyhow!("no port"), anyhow::Error::from))
        .context("bind DNS TCP listener: every port tried was taken")
}
