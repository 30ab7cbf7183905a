//! The HTTP probe: resolve through each of the check's resolvers, dial the
//! chosen address(es) on a fresh connection from the vantage (through its
//! proxy, if any), keep the original Host and SNI, time every phase at the
//! socket, and record what every layer said.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::time::{Instant as TokioInstant, timeout_at};
use url::{Host, Url};

use super::dns::{DnsResolver, LookupAnswer};
use super::tls::TlsConfigs;
use crate::probe::vantage::Vantage;
use vantage_check::{CheckConfig, Dial};

use super::tls::{TlsKey, TlsSetupError};

mod body;
mod exchange;
mod failure;
mod steps;

use super::{Outcome, ProbeResult, Sequenced};
use exchange::{Attempt, Exchange};

/// Response header bytes accepted at most (HTTP/1.1 buffer, HTTP/2 header
/// list). Far above any real site's, low enough that a hostile one cannot
/// make the agent buffer without limit.
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Response header fields accepted at most on HTTP/1.1.
const MAX_HEADERS: usize = 128;

/// Probes HTTP(S) targets; one per agent, shared by every check.
#[derive(Clone)]
pub struct HttpProber {
    agent_id: String,
    probe_header: bool,
    user_agent: String,
    tls: TlsConfigs,
}

/// One result of a round with what holds its sequence number.
pub struct Probed<T> {
    pub ticket: T,
    pub result: ProbeResult,
}

/// The address a request goes to, and how it was found.
struct Target {
    addr: SocketAddr,
    lookup: Option<LookupAnswer>,
}

impl HttpProber {
    pub fn new(agent_id: &str, probe_header: bool, tls: TlsConfigs) -> Self {
        Self {
            agent_id: agent_id.to_owned(),
            probe_header,
            user_agent: format!("vantage-agent/{}", env!("CARGO_PKG_VERSION")),
            tls,
        }
    }

    /// Makes `check` ready to run (a check assigned after start): reads
    /// its CA file and, to refuse it now rather than at every probe, its
    /// headers file.
    pub fn prepare(&self, check: &CheckConfig) -> Result<(), CheckSetupError> {
        self.tls.ensure(&TlsKey::of(check))?;
        check.file_headers().map_err(CheckSetupError::HeadersFile)?;
        Ok(())
    }

    /// One round of `check` from `vantage`: one result per resolver, and
    /// per resolved address when the check dials each. `reserve` hands out
    /// sequence numbers as requests start. Never fails: failures are in
    /// the outcomes.
    pub async fn round<T: Sequenced>(
        &self,
        check: &CheckConfig,
        vantage: &Vantage,
        reserve: &(dyn Fn() -> T + Sync),
    ) -> Vec<Probed<T>> {
        let mut out = Vec::new();
        let (domain, port) = match destination(check.url.url()) {
            Destination::Name { domain, port } => (domain, port),
            Destination::Literal(addr) => {
                let ticket = reserve();
                let start = Instant::now();
                let mut r = self.blank(check, vantage, ticket.seq());
                r.resolver = "literal".into();
                let target = Target { addr, lookup: None };
                self.fetch(&mut r, check, vantage, None, target, start)
                    .await;
                out.push(Probed { ticket, result: r });
                return out;
            }
        };
        for resolver in vantage.resolvers_for(check) {
            let start = Instant::now();
            let started_at = Utc::now();
            let deadline = TokioInstant::from_std(start + check.timeout);
            let resolver = &*resolver;
            let answer = match resolve(resolver, &domain, check, deadline).await {
                Ok(answer) => answer,
                Err(failed) => {
                    let ticket = reserve();
                    let mut r = self.blank(check, vantage, ticket.seq());
                    r.started_at = started_at;
                    r.resolver = resolver.name().to_owned();
                    r.resolver_identity = resolver.identity();
                    r.timings.dns = failed.elapsed;
                    r.dns_rcode = failed.rcode;
                    r.outcome = failed.outcome;
                    r.message = failed.message;
                    r.timings.total = Some(start.elapsed());
                    out.push(Probed { ticket, result: r });
                    continue;
                }
            };
            let mut addrs: Vec<IpAddr> = Vec::new();
            for a in &answer.addrs {
                if !addrs.contains(&a.ip) {
                    addrs.push(a.ip);
                }
            }
            if check.dial == Dial::First {
                addrs.truncate(1);
            }
            for (i, ip) in addrs.into_iter().enumerate() {
                let ticket = reserve();
                let mut r = self.blank(check, vantage, ticket.seq());
                // The first request shares the lookup's clock; the others
                // start when they start, each with the lookup's time.
                let begun = if i == 0 {
                    r.started_at = started_at;
                    start
                } else {
                    Instant::now()
                };
                let target = Target {
                    addr: SocketAddr::new(ip, port),
                    lookup: Some(answer.clone()),
                };
                self.fetch(&mut r, check, vantage, Some(resolver), target, begun)
                    .await;
                out.push(Probed { ticket, result: r });
            }
        }
        out
    }

    fn blank(&self, check: &CheckConfig, vantage: &Vantage, seq: u64) -> ProbeResult {
        let mut r = ProbeResult::new(
            check.name.get_ref().as_str(),
            check.url.url().as_str(),
            check.method.as_str(),
            &vantage.name,
            Utc::now(),
        );
        r.seq = seq;
        r.region = vantage.region.clone();
        r.proxy = vantage.proxy.as_ref().map(|p| p.redacted());
        r.echo_ip = vantage.echo_ip();
        r.local_ip = vantage.source_ip;
        r.interval = Some(check.interval);
        r.check_version = check.origin.central_version;
        r.request_id = check.origin.request_id;
        r.tls_insecure = check.tls_insecure_skip_verify && check.url.url().scheme() == "https";
        r
    }

    /// Requests `target` and follows redirects as the check allows, one
    /// [`Exchange`] per request; fills `r` from them at the end.
    async fn fetch(
        &self,
        r: &mut ProbeResult,
        check: &CheckConfig,
        vantage: &Vantage,
        resolver: Option<&DnsResolver>,
        first: Target,
        start: Instant,
    ) {
        let deadline = TokioInstant::from_std(start + check.timeout);
        let mut url = check.url.url().clone();
        let mut method = check.method.as_str().to_owned();
        let mut target = first;
        if let Some(resolver) = resolver {
            r.resolver = resolver.name().to_owned();
            r.resolver_identity = resolver.identity();
        }
        let mut exchanges: Vec<Exchange> = Vec::new();
        let mut stopped = None;
        loop {
            let hop_start = Instant::now();
            let dns = target.lookup.as_ref().map(|l| l.elapsed);
            let attempt = Attempt {
                check,
                vantage,
                url: &url,
                method: &method,
                addr: target.addr,
                deadline,
                seq: r.seq,
            };
            let (mut exchange, next) = self.request(attempt, dns).await;
            exchange.lookup = target.lookup.take();
            exchange.timings.total = Some(hop_start.elapsed() + dns.unwrap_or_default());
            let status = exchange.http_status;
            exchanges.push(exchange);
            let Some(location) = next else { break };
            if exchanges.len() > usize::from(check.follow_redirects) {
                stopped = Some((
                    Outcome::Http,
                    format!(
                        "stopped after {} redirects (follow_redirects = {})",
                        check.follow_redirects, check.follow_redirects
                    ),
                ));
                break;
            }
            // 303 turns anything into GET; so do 301 and 302 for POST, as
            // browsers do.
            if status == Some(303) || (matches!(status, Some(301 | 302)) && method == "POST") {
                method = "GET".into();
            }
            match self.resolve_hop(&location, check, resolver, deadline).await {
                Ok(next) => {
                    url = location;
                    target = next;
                }
                Err(failed) => {
                    stopped = Some(failed);
                    break;
                }
            }
        }
        exchange::settle(r, exchanges, check.follow_redirects > 0, stopped);
        r.timings.total = Some(start.elapsed());
    }

    /// Finds the address of a redirect's target through the same resolver.
    async fn resolve_hop(
        &self,
        url: &Url,
        check: &CheckConfig,
        resolver: Option<&DnsResolver>,
        deadline: TokioInstant,
    ) -> Result<Target, (Outcome, String)> {
        let (domain, port) = match destination(url) {
            Destination::Literal(addr) => return Ok(Target { addr, lookup: None }),
            Destination::Name { domain, port } => (domain, port),
        };
        let Some(resolver) = resolver else {
            return Err((
                Outcome::Dns,
                format!("redirect to {domain} from a literal address: no resolver to ask"),
            ));
        };
        let answer = resolve(resolver, &domain, check, deadline)
            .await
            .map_err(|failed| (failed.outcome, failed.message))?;
        let ip = answer
            .addrs
            .first()
            .map(|a| a.ip)
            .ok_or((Outcome::Dns, format!("{domain}: no address")))?;
        Ok(Target {
            addr: SocketAddr::new(ip, port),
            lookup: Some(answer),
        })
    }
}

/// Where a URL points: an address already, or a name to resolve.
enum Destination {
    Literal(SocketAddr),
    Name { domain: String, port: u16 },
}

fn destination(url: &Url) -> Destination {
    // Config validation and the redirect filter admit only http(s) URLs,
    // which always have a known default port.
    let port = url.port_or_known_default().unwrap_or(0);
    match url.host() {
        Some(Host::Ipv4(ip)) => Destination::Literal(SocketAddr::new(IpAddr::V4(ip), port)),
        Some(Host::Ipv6(ip)) => Destination::Literal(SocketAddr::new(IpAddr::V6(ip), port)),
        Some(Host::Domain(domain)) => Destination::Name {
            domain: domain.to_owned(),
            port,
        },
        // Config validation admits only URLs with a host, and so does
        // `Url::join` for http(s); 0.0.0.0:0 would fail visibly.
        None => Destination::Literal(SocketAddr::new(IpAddr::from([0, 0, 0, 0]), 0)),
    }
}

/// A lookup that failed or ran out of the check's time.
struct LookupFailed {
    outcome: Outcome,
    message: String,
    elapsed: Option<Duration>,
    rcode: Option<String>,
}

/// Looks `domain` up through `resolver` within the probe's deadline.
async fn resolve(
    resolver: &DnsResolver,
    domain: &str,
    check: &CheckConfig,
    deadline: TokioInstant,
) -> Result<LookupAnswer, LookupFailed> {
    match timeout_at(deadline, resolver.lookup(domain, check.ip_family)).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(failure)) => Err(LookupFailed {
            outcome: Outcome::Dns,
            message: failure.message,
            elapsed: Some(failure.elapsed),
            rcode: failure.rcode,
        }),
        Err(_) => Err(LookupFailed {
            outcome: Outcome::Timeout,
            message: format!("timed out after {:?} resolving {domain}", check.timeout),
            elapsed: None,
            rcode: None,
        }),
    }
}

/// A check that cannot be made ready to run.
#[derive(Debug, thiserror::Error)]
pub enum CheckSetupError {
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    #[error("{0}")]
    HeadersFile(String),
}
