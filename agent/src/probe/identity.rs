//! Resolver identity: which address a resolver's own queries leave from
//! (asked with "whoami" names whose answer is the address of the resolver
//! that asked) and its NSID (EDNS option 3, RFC 5001).
//!
//! These are single raw queries rather than resolver lookups because the
//! NSID lives in the response's OPT record, which a resolver API hides.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use hickory_resolver::proto::op::{Edns, Message, Query};
use hickory_resolver::proto::rr::rdata::opt::{EdnsCode, EdnsOption, NSIDPayload};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, UdpSocket};
use tokio::time::timeout;

use super::ResolverIdentity;

/// One whoami question: a name and the record type that carries the
/// asking resolver's address (`TXT` or `A`/`AAAA`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct IdentityQuery {
    pub name: String,
    pub record_type: IdentityRecord,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityRecord {
    Txt,
    A,
    Aaaa,
}

impl FromStr for IdentityQuery {
    type Err = String;
    /// `NAME TYPE`, e.g. `whoami.ds.akahelp.net TXT`.
    fn from_str(s: &str) -> Result<Self, String> {
        let expected = "expected `NAME TXT`, `NAME A` or `NAME AAAA`";
        let mut parts = s.split_whitespace();
        let (Some(name), Some(kind), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!("invalid identity query {s:?}: {expected}"));
        };
        let record_type = match kind.to_ascii_uppercase().as_str() {
            "TXT" => IdentityRecord::Txt,
            "A" => IdentityRecord::A,
            "AAAA" => IdentityRecord::Aaaa,
            _ => return Err(format!("invalid identity query {s:?}: {expected}")),
        };
        Name::from_str(name).map_err(|e| format!("invalid identity query {s:?}: {e}"))?;
        Ok(Self {
            name: name.to_owned(),
            record_type,
        })
    }
}

impl TryFrom<String> for IdentityQuery {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

/// The public defaults: Akamai's, Google's and PowerDNS's whoami names.
pub fn default_queries() -> Vec<IdentityQuery> {
    [
        "whoami.ds.akahelp.net TXT",
        "o-o.myaddr.l.google.com TXT",
        "whoami.v4.powerdns.org A",
    ]
    .iter()
    .filter_map(|q| q.parse().ok())
    .collect()
}

/// Asks `server` each of `queries` in turn until one names the resolver's
/// egress address; the NSID comes from whichever response carries one.
/// Never fails: what could not be learned is said in `error`.
pub async fn learn(
    server: SocketAddr,
    protocol: &str,
    source_ip: Option<IpAddr>,
    budget: Duration,
    queries: &[IdentityQuery],
) -> ResolverIdentity {
    let mut identity = ResolverIdentity::default();
    let mut errors = Vec::new();
    for query in queries {
        let response = timeout(budget, exchange(server, protocol, source_ip, query)).await;
        let message = match response {
            Err(_) => {
                errors.push(format!("{}: timed out after {budget:?}", query.name));
                continue;
            }
            Ok(Err(e)) => {
                errors.push(format!("{}: {e}", query.name));
                continue;
            }
            Ok(Ok(message)) => message,
        };
        if identity.nsid.is_none() {
            identity.nsid = nsid(&message);
        }
        match egress_ip(&message) {
            Some(ip) => {
                identity.egress_ip = Some(ip);
                break;
            }
            None => errors.push(format!("{}: no address in the answer", query.name)),
        }
    }
    if identity.egress_ip.is_none() {
        identity.error = if queries.is_empty() {
            "no identity queries configured".into()
        } else {
            errors.join("; ")
        };
    }
    identity
}

/// Sends one query with the NSID option and returns the response.
async fn exchange(
    server: SocketAddr,
    protocol: &str,
    source_ip: Option<IpAddr>,
    query: &IdentityQuery,
) -> Result<Message, String> {
    let name = Name::from_str(&format!("{}.", query.name.trim_end_matches('.')))
        .map_err(|e| e.to_string())?;
    let record_type = match query.record_type {
        IdentityRecord::Txt => RecordType::TXT,
        IdentityRecord::A => RecordType::A,
        IdentityRecord::Aaaa => RecordType::AAAA,
    };
    let id: u16 = rand::random();
    let mut request = Message::query();
    request.metadata.id = id;
    request.metadata.recursion_desired = true;
    request.add_query(Query::query(name, record_type));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    edns.options_mut().insert(EdnsOption::NSID(
        NSIDPayload::new(Vec::new()).map_err(|e| e.to_string())?,
    ));
    request.set_edns(edns);
    let bytes = request.to_vec().map_err(|e| e.to_string())?;
    let local = SocketAddr::new(
        source_ip.unwrap_or(if server.is_ipv4() {
            IpAddr::from([0, 0, 0, 0])
        } else {
            IpAddr::from([0u16; 8])
        }),
        0,
    );
    let response = if protocol == "tcp" {
        let socket = if server.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(|e| e.to_string())?;
        socket.bind(local).map_err(|e| e.to_string())?;
        let mut stream = socket.connect(server).await.map_err(|e| e.to_string())?;
        let len = u16::try_from(bytes.len()).map_err(|_| "query too large".to_owned())?;
        stream
            .write_all(&len.to_be_bytes())
            .await
            .map_err(|e| e.to_string())?;
        stream.write_all(&bytes).await.map_err(|e| e.to_string())?;
        let len = stream.read_u16().await.map_err(|e| e.to_string())?;
        let mut buf = vec![0; usize::from(len)];
        stream
            .read_exact(&mut buf)
            .await
            .map_err(|e| e.to_string())?;
        buf
    } else {
        let socket = UdpSocket::bind(local).await.map_err(|e| e.to_string())?;
        socket.connect(server).await.map_err(|e| e.to_string())?;
        socket.send(&bytes).await.map_err(|e| e.to_string())?;
        let mut buf = vec![0; 4096];
        loop {
            let n = socket.recv(&mut buf).await.map_err(|e| e.to_string())?;
            // A datagram with another id is not ours (a late answer to an
            // earlier query); keep waiting within the caller's budget.
            if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id {
                buf.truncate(n);
                break buf;
            }
        }
    };
    Message::from_vec(&response).map_err(|e| format!("malformed response: {e}"))
}

/// The resolver address a whoami answer names: an A/AAAA record, a TXT
/// `"ns" "ADDR"` pair (Akamai), or the first TXT string that is an address
/// (Google's `o-o.myaddr`).
fn egress_ip(message: &Message) -> Option<IpAddr> {
    let mut txt_fallback = None;
    for record in &message.answers {
        match &record.data {
            RData::A(a) => return Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => return Some(IpAddr::V6(a.0)),
            RData::TXT(txt) => {
                let strings: Vec<String> = txt
                    .txt_data
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect();
                if strings.len() >= 2
                    && strings[0].eq_ignore_ascii_case("ns")
                    && let Ok(ip) = strings[1].trim().parse()
                {
                    return Some(ip);
                }
                if txt_fallback.is_none() {
                    txt_fallback = strings.iter().find_map(|s| s.trim().parse().ok());
                }
            }
            _ => {}
        }
    }
    txt_fallback
}

/// The NSID in the response's OPT record, printable: as text when it is
/// printable ASCII, else as hex.
fn nsid(message: &Message) -> Option<String> {
    let Some(EdnsOption::NSID(payload)) = message.edns.as_ref()?.option(EdnsCode::NSID) else {
        return None;
    };
    let bytes = payload.as_ref();
    if bytes.is_empty() {
        return None;
    }
    Some(
        if bytes.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
            String::from_utf8_lossy(bytes).into_owned()
        } else {
            hex::encode(bytes)
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_query_parses_name_and_type() {
        let q: IdentityQuery = "whoami.v4.powerdns.org A".parse().unwrap();
        assert_eq!(q.name, "whoami.v4.powerdns.org");
        assert_eq!(q.record_type, IdentityRecord::A);
        assert_eq!(default_queries().len(), 3);
    }

    #[test]
    fn identity_query_without_type_says_what_is_expected() {
        let e = "whoami.ds.akahelp.net"
            .parse::<IdentityQuery>()
            .unwrap_err();
        assert!(e.contains("expected `NAME TXT`"), "{e}");
        let e = "whoami.ds.akahelp.net MX"
            .parse::<IdentityQuery>()
            .unwrap_err();
        assert!(e.contains("expected"), "{e}");
    }
}
