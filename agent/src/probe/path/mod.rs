//! Path probes: the route from a vantage's source address to the address a
//! probe dialled (or to the vantage's forward proxy, beyond which nothing
//! can be traced), hop by hop, with the path MTU, a black hole where large
//! packets vanish, and where on the path the target port first answers.
//!
//! Unprivileged ([`socket`]): UDP datagrams or TCP SYNs with rising TTLs,
//! answers read from the socket's error queue. Bounded by
//! [`PathSettings`]: hops, probes per hop, a timeout per probe, a total
//! time, hops probed at once.

mod mtu;
mod settings;
pub mod socket;
mod tracer;

use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;

pub use settings::{InvalidPathSetting, PathProtocol, PathSettings};
pub use socket::Reply;
use socket::{ProbeError, Probed};
pub use tracer::PathTracer;

/// Where a trace goes from and to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathTarget {
    /// The vantage's source address; `None`: the system's choice.
    pub source: Option<IpAddr>,
    /// The address (and port) the probe dialled.
    pub destination: SocketAddr,
    /// The destination is the vantage's forward proxy: the site is beyond
    /// it, out of reach of a trace from here.
    pub via_proxy: bool,
}

/// How a trace ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathEnd {
    /// The destination answered.
    Reached,
    /// A router answered that the destination cannot be reached.
    Unreachable,
    /// `max_hops` tried without reaching it.
    MaxHops,
    /// `max_duration` passed first.
    TimedOut,
    /// No probe could be sent (see [`PathTrace::error`]).
    Error,
}

/// One probe of one hop and its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HopProbe {
    pub ttl: u8,
    /// Who answered; `None` when nothing did. A TCP answer comes from the
    /// destination's address, whoever sent it.
    pub from: Option<IpAddr>,
    pub rtt: Option<Duration>,
    pub reply: Option<Reply>,
    /// The probe's size on the wire, IP header included.
    pub size: u32,
}

/// Large packets vanish beyond a hop that small ones pass: routers on a
/// smaller-MTU link drop them without the ICMP that would say so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlackHole {
    /// The last hop that answered large probes (0: none did).
    pub after_ttl: u8,
    /// The largest probe that crossed, and the smallest that did not.
    pub largest_passed: u32,
    pub smallest_lost: u32,
}

/// A plain TCP connection to the destination port at the end of a trace.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PortCheck {
    /// A SYN-ACK or a RST came back: something answers the port.
    pub reached: bool,
    pub rtt: Option<Duration>,
    /// Why nothing did.
    pub error: Option<String>,
}

/// Everything one trace found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTrace {
    pub protocol: PathProtocol,
    pub target: PathTarget,
    /// The address the probes left from: the vantage's, or the one the
    /// system chose.
    pub source: Option<IpAddr>,
    /// Every probe, by TTL and then in the order sent.
    pub probes: Vec<HopProbe>,
    pub end: PathEnd,
    /// Why the trace could not run, or what cut it short.
    pub error: Option<String>,
    /// The smallest MTU learnt on the way: from a router's
    /// "fragmentation needed" / "packet too big", the local link, or the
    /// black-hole search; `None` with TCP probes.
    pub path_mtu: Option<u32>,
    /// The router that reported `path_mtu`; `None`: this host (its link or
    /// what it already knew) or the black-hole search.
    pub mtu_from: Option<IpAddr>,
    pub black_hole: Option<BlackHole>,
    /// The first TTL at which the destination port answered a TCP SYN.
    /// Smaller than the destination's hop count: something on the path
    /// answers for it (a transparent proxy).
    pub port_answered_at: Option<u8>,
    pub port: PortCheck,
    pub duration: Duration,
}

impl PathTrace {
    /// The TTL the destination answered at, when it did.
    pub fn reached_at(&self) -> Option<u8> {
        (self.end == PathEnd::Reached)
            .then(|| self.probes.iter().map(|p| p.ttl).max())
            .flatten()
    }

    /// Each TTL's answering address (the most frequent, then the first),
    /// `None` for a hop nothing answered.
    pub fn hop_addresses(&self) -> Vec<(u8, Option<IpAddr>)> {
        let mut out: Vec<(u8, Option<IpAddr>)> = Vec::new();
        let last = self.probes.iter().map(|p| p.ttl).max().unwrap_or(0);
        for ttl in 1..=last {
            let mut counts: Vec<(IpAddr, usize)> = Vec::new();
            for from in self
                .probes
                .iter()
                .filter(|p| p.ttl == ttl)
                .filter_map(|p| p.from)
            {
                match counts.iter_mut().find(|(a, _)| *a == from) {
                    Some((_, n)) => *n += 1,
                    None => counts.push((from, 1)),
                }
            }
            // The first of the most frequent (max_by_key would take the last).
            let top = counts.iter().map(|(_, n)| *n).max().unwrap_or(0);
            let best = counts.iter().find(|(_, n)| *n == top).map(|(a, _)| *a);
            out.push((ttl, best));
        }
        out
    }
}

/// The smallest probe: an IPv6 minimum-MTU packet crosses any link, and
/// 128 bytes any IPv4 one.
fn small_size(ip: IpAddr) -> u32 {
    match ip {
        IpAddr::V4(_) => 128,
        IpAddr::V6(_) => 1280,
    }
}

/// The size to start from: the largest the local link takes; the kernel
/// refuses anything larger with the real MTU (IPv6) or we cap it at the
/// path MTU it knows (IPv4).
const START_SIZE: u32 = 65_000;

/// Sizes a probe may be made smaller at most before the hop gives up
/// (each router on the way can say "smaller" once).
const MAX_SHRINKS: u8 = 8;

/// What the hops share while they are probed at the same time.
struct Shared {
    /// The size probes are sent at now.
    size: AtomicU32,
    /// The smallest MTU learnt, and who said it.
    mtu: Mutex<Option<(u32, Option<IpAddr>)>>,
}

impl Shared {
    /// An MTU the way reported (the callers take only sizes between the
    /// small probe's and the one sent).
    fn learn(&self, mtu: u32, from: Option<IpAddr>) {
        self.size.fetch_min(mtu, Ordering::Relaxed);
        let mut known = self.mtu.lock().unwrap_or_else(|p| p.into_inner());
        // The kernel learns a router's report as it queues it, so another
        // probe can hear the same MTU from the kernel first: the router's
        // name is kept for it all the same.
        match *known {
            Some((m, _)) if mtu > m => {}
            Some((m, Some(_))) if mtu == m => {}
            _ => *known = Some((mtu, from)),
        }
    }
}

/// Traces the path to `target`. Never fails: what could not be done is in
/// [`PathTrace::end`] and [`PathTrace::error`].
pub async fn trace(target: PathTarget, settings: &PathSettings) -> PathTrace {
    let started = Instant::now();
    let deadline = started + settings.max_duration;
    let mut out = PathTrace {
        protocol: settings.protocol,
        target,
        source: target
            .source
            .or_else(|| socket::source_for(target.destination)),
        probes: Vec::new(),
        end: PathEnd::MaxHops,
        error: None,
        path_mtu: None,
        mtu_from: None,
        black_hole: None,
        port_answered_at: None,
        port: PortCheck::default(),
        duration: Duration::ZERO,
    };
    if let Err(invalid) = settings.validate() {
        out.end = PathEnd::Error;
        out.error = Some(invalid.to_string());
        return out;
    }
    let shared = Shared {
        size: AtomicU32::new(START_SIZE),
        mtu: Mutex::new(None),
    };
    match tokio::time::timeout_at(deadline, hops(&target, settings, &shared, &mut out)).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            out.end = PathEnd::Error;
            out.error = Some(error.to_string());
            out.duration = started.elapsed();
            return out;
        }
        Err(_) => {
            out.end = PathEnd::TimedOut;
            out.error = Some(format!(
                "stopped after path.max_duration ({})",
                humantime::format_duration(settings.max_duration)
            ));
        }
    }
    if settings.protocol == PathProtocol::Udp {
        if let Some((mtu, from)) = *shared.mtu.lock().unwrap_or_else(|p| p.into_inner()) {
            out.path_mtu = Some(mtu);
            out.mtu_from = from;
        }
        let lost = mtu::black_hole_hop(&out.probes, small_size(target.destination.ip()));
        if let Some(ttl) = lost {
            let large = shared.size.load(Ordering::Relaxed);
            if let Some(hole) =
                mtu::search(&target, ttl, large, settings.hop_timeout, deadline).await
            {
                out.path_mtu = Some(
                    out.path_mtu
                        .map_or(hole.largest_passed, |m| m.min(hole.largest_passed)),
                );
                out.mtu_from = None;
                out.black_hole = Some(hole);
            }
        }
    }
    out.port_answered_at = match (settings.protocol, out.reached_at()) {
        (PathProtocol::Tcp, reached) => reached,
        (PathProtocol::Udp, Some(hops)) => {
            port_answers_from(&target, hops, settings.hop_timeout, deadline).await
        }
        (PathProtocol::Udp, None) => None,
    };
    out.port = port_check(&target, settings.hop_timeout * 2, deadline).await;
    out.duration = started.elapsed();
    out
}

/// Probes the hops in TTL order, `hops_in_flight` at a time, until one
/// answers for the destination or says it cannot be reached.
async fn hops(
    target: &PathTarget,
    settings: &PathSettings,
    shared: &Shared,
    out: &mut PathTrace,
) -> Result<(), ProbeError> {
    let mut pending = futures_util::stream::iter(1..=settings.max_hops)
        .map(|ttl| hop(target, settings, shared, ttl))
        .buffered(usize::from(settings.hops_in_flight));
    while let Some(probes) = pending.next().await {
        let probes = probes?;
        let reached = probes.iter().any(|p| {
            p.reply.is_some_and(Reply::answers_port) && p.from == Some(target.destination.ip())
        });
        let unreachable = probes
            .iter()
            .any(|p| p.reply.is_some_and(Reply::is_unreachable));
        out.probes.extend(probes);
        if reached {
            out.end = PathEnd::Reached;
            return Ok(());
        }
        if unreachable {
            out.end = PathEnd::Unreachable;
            return Ok(());
        }
    }
    out.end = PathEnd::MaxHops;
    Ok(())
}

/// The probes of one hop; with UDP, a last small one when no large one
/// was answered (the black-hole test).
async fn hop(
    target: &PathTarget,
    settings: &PathSettings,
    shared: &Shared,
    ttl: u8,
) -> Result<Vec<HopProbe>, ProbeError> {
    let small = small_size(target.destination.ip());
    let mut probes = Vec::with_capacity(usize::from(settings.probes_per_hop) + 1);
    for index in 0..settings.probes_per_hop {
        probes.push(one(target, settings, shared, ttl, index, None).await?);
    }
    if settings.protocol == PathProtocol::Udp
        && probes.iter().all(|p| p.reply.is_none())
        && probes.iter().any(|p| p.size > small)
    {
        probes.push(
            one(
                target,
                settings,
                shared,
                ttl,
                settings.probes_per_hop,
                Some(small),
            )
            .await?,
        );
    }
    Ok(probes)
}

/// One probe, made smaller and sent again while the way says "too large".
async fn one(
    target: &PathTarget,
    settings: &PathSettings,
    shared: &Shared,
    ttl: u8,
    index: u8,
    size: Option<u32>,
) -> Result<HopProbe, ProbeError> {
    let small = small_size(target.destination.ip());
    let mut shrinks = 0;
    loop {
        let size = size.unwrap_or_else(|| shared.size.load(Ordering::Relaxed));
        let probed = match settings.protocol {
            PathProtocol::Udp => {
                // A port per probe, as traceroute numbers them: an answer
                // can be told from a late one of another probe.
                let port = 33434u16
                    .wrapping_add(
                        u16::from(ttl.saturating_sub(1)) * u16::from(settings.probes_per_hop + 1),
                    )
                    .wrapping_add(u16::from(index));
                let destination = SocketAddr::new(target.destination.ip(), port);
                socket::udp(target.source, destination, ttl, size, settings.hop_timeout).await?
            }
            PathProtocol::Tcp => {
                socket::tcp(target.source, target.destination, ttl, settings.hop_timeout).await?
            }
        };
        let answer = match probed {
            Probed::TooLarge { mtu } if shrinks < MAX_SHRINKS && mtu >= small && mtu < size => {
                shared.learn(mtu, None);
                shrinks += 1;
                continue;
            }
            Probed::TooLarge { .. } | Probed::Silent => None,
            Probed::Answer(answer)
                if answer.reply == Reply::FragNeeded
                    && shrinks < MAX_SHRINKS
                    && answer.mtu.is_some_and(|m| m >= small && m < size) =>
            {
                shared.learn(answer.mtu.unwrap_or(size), answer.from);
                shrinks += 1;
                continue;
            }
            Probed::Answer(answer) => Some(answer),
        };
        return Ok(HopProbe {
            ttl,
            from: answer.and_then(|a| a.from),
            rtt: answer.map(|a| a.rtt),
            reply: answer.map(|a| a.reply),
            size: if settings.protocol == PathProtocol::Tcp {
                0
            } else {
                size
            },
        });
    }
}

/// The first TTL (of `1..=hops`) at which the destination port answers a
/// TCP SYN: `hops` when only the destination does.
async fn port_answers_from(
    target: &PathTarget,
    hops: u8,
    timeout: Duration,
    deadline: Instant,
) -> Option<u8> {
    let tries = (1..=hops).map(|ttl| async move {
        let probed = socket::tcp(target.source, target.destination, ttl, timeout).await;
        matches!(probed, Ok(Probed::Answer(a)) if a.reply.answers_port()).then_some(ttl)
    });
    tokio::time::timeout_at(deadline, futures_util::future::join_all(tries))
        .await
        .ok()?
        .into_iter()
        .flatten()
        .min()
}

/// A TCP connection to the destination port with the system's TTL.
async fn port_check(target: &PathTarget, timeout: Duration, deadline: Instant) -> PortCheck {
    let within = timeout.min(deadline.saturating_duration_since(Instant::now()));
    match socket::tcp(target.source, target.destination, 64, within).await {
        Ok(Probed::Answer(answer)) if answer.reply.answers_port() => PortCheck {
            reached: true,
            rtt: Some(answer.rtt),
            error: None,
        },
        Ok(Probed::Answer(answer)) => PortCheck {
            reached: false,
            rtt: None,
            error: Some(format!(
                "{} answered {}",
                answer.from.map_or("a router".to_owned(), |a| a.to_string()),
                reply_words(answer.reply)
            )),
        },
        Ok(_) => PortCheck {
            reached: false,
            rtt: None,
            error: Some(format!(
                "no answer to a TCP SYN within {}",
                humantime::format_duration(within)
            )),
        },
        Err(e) => PortCheck {
            reached: false,
            rtt: None,
            error: Some(e.to_string()),
        },
    }
}

/// A reply in words, for messages.
pub fn reply_words(reply: Reply) -> &'static str {
    match reply {
        Reply::TimeExceeded => "time exceeded",
        Reply::PortUnreachable => "port unreachable",
        Reply::NetUnreachable => "network unreachable",
        Reply::HostUnreachable => "host unreachable",
        Reply::Prohibited => "administratively prohibited",
        Reply::FragNeeded => "fragmentation needed",
        Reply::OtherIcmp => "another ICMP error",
        Reply::TcpOpen => "SYN-ACK",
        Reply::TcpReset => "RST",
    }
}
