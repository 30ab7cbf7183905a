//! An authoritative DNS server for the zone `test.` on a loopback port.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use hickory_server::Server;
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::proto::rr::rdata::{A, AAAA, SOA};
use hickory_server::proto::rr::{LowerName, Name, RData, Record};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
use tokio::net::{TcpListener, UdpSocket};

/// TTL given to every record the fixture serves.
pub const RECORD_TTL: u32 = 30;

/// A running DNS server; stops when dropped.
pub struct DnsServer {
    addr: SocketAddr,
    server: Server<Catalog>,
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

        let udp = UdpSocket::bind(SocketAddr::new(bind_ip, 0))
            .await
            .context("bind DNS UDP socket")?;
        let addr = udp.local_addr()?;
        let tcp = TcpListener::bind(addr)
            .await
            .context("bind DNS TCP listener")?;
        let mut server = Server::new(catalog);
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
