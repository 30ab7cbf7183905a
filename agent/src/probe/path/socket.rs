//! One path probe on the wire: a UDP datagram or a TCP SYN sent with a
//! chosen TTL (hop limit) from the vantage's source address, and what came
//! back, read from the socket's error queue (`IP_RECVERR` /
//! `IPV6_RECVERR`), as `tracepath` does. No raw socket, so no
//! `CAP_NET_RAW`: the kernel hands an unprivileged socket the ICMP errors
//! its own packets caused, with the address of the router that sent them.
//!
//! Each probe has a socket of its own, so whatever its error queue holds
//! answers that probe and no other.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, SockaddrIn, SockaddrIn6, recvmsg, setsockopt, sockopt,
};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::Interest;
use tokio::net::{TcpStream, UdpSocket};

/// What answered one probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// A router on the way: the TTL ran out there.
    TimeExceeded,
    /// The destination itself: nothing listens on the UDP port.
    PortUnreachable,
    /// A router has no route to the network.
    NetUnreachable,
    /// A router cannot deliver to the host.
    HostUnreachable,
    /// A router or firewall refuses by policy.
    Prohibited,
    /// The packet is larger than the next link carries; the MTU is in
    /// [`Answer::mtu`].
    FragNeeded,
    /// Another ICMP error.
    OtherIcmp,
    /// The TCP port answered the SYN (SYN-ACK).
    TcpOpen,
    /// The TCP port refused the SYN (RST).
    TcpReset,
}

impl Reply {
    /// Whether the probe got as far as something answering the port (the
    /// destination, or whatever intercepts it).
    pub fn answers_port(self) -> bool {
        matches!(self, Self::PortUnreachable | Self::TcpOpen | Self::TcpReset)
    }

    /// Whether the answer says the destination cannot be reached through
    /// this router (the trace ends there).
    pub fn is_unreachable(self) -> bool {
        matches!(
            self,
            Self::NetUnreachable | Self::HostUnreachable | Self::Prohibited
        )
    }
}

/// The answer to one probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub reply: Reply,
    /// Who sent it (a TCP answer: the destination, as far as the socket
    /// can tell); `None` for a local error.
    pub from: Option<IpAddr>,
    pub rtt: Duration,
    /// The next-hop MTU a "fragmentation needed" / "packet too big"
    /// carried, or the local one a send was refused with.
    pub mtu: Option<u32>,
}

/// What a probe found: an answer, nothing within the timeout, or a packet
/// too large to leave this host (the MTU of the local link or of a path
/// the kernel has already learnt).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probed {
    Answer(Answer),
    Silent,
    TooLarge { mtu: u32 },
}

/// Why a probe could not be sent at all.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot open a {protocol} socket: {source}")]
    Open {
        protocol: &'static str,
        source: io::Error,
    },
    #[error("cannot use the source address {source_ip}: {source}")]
    Bind {
        source_ip: IpAddr,
        source: io::Error,
    },
    #[error("cannot send the probe: {}", send_words(.0))]
    Send(io::Error),
}

/// The source address the system picks for `destination` (what an
/// unbound probe leaves from): a connected UDP socket's local address; no
/// packet is sent.
pub fn source_for(destination: SocketAddr) -> Option<IpAddr> {
    let unspecified: IpAddr = match destination {
        SocketAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = std::net::UdpSocket::bind((unspecified, 0)).ok()?;
    socket.connect(destination).ok()?;
    Some(socket.local_addr().ok()?.ip())
}

/// IPv4 and UDP headers: a datagram of `size` bytes on the wire carries
/// `size - overhead` of payload.
fn header_bytes(ip: IpAddr) -> u32 {
    match ip {
        IpAddr::V4(_) => 20 + 8,
        IpAddr::V6(_) => 40 + 8,
    }
}

/// Sends one UDP datagram of `size` bytes on the wire (IP header
/// included) with `ttl`, to `destination`, and waits up to `timeout` for
/// what it causes.
pub async fn udp(
    source: Option<IpAddr>,
    destination: SocketAddr,
    ttl: u8,
    size: u32,
    timeout: Duration,
) -> Result<Probed, ProbeError> {
    let socket = open(source, destination, Type::DGRAM, Protocol::UDP, ttl)?;
    socket
        .connect(&SockAddr::from(destination))
        .map_err(ProbeError::Send)?;
    if destination.ip().is_ipv4() {
        // IPv4 sends with DF up to the path MTU the kernel knows and
        // fragments beyond it: never send more than it knows.
        if let Ok(known) = nix::sys::socket::getsockopt(&socket, sockopt::IpMtu)
            && let Ok(known) = u32::try_from(known)
            && size > known
        {
            return Ok(Probed::TooLarge { mtu: known });
        }
    }
    let payload = vec![0u8; size.saturating_sub(header_bytes(destination.ip())) as usize];
    let socket = UdpSocket::from_std(socket.into()).map_err(ProbeError::Send)?;
    let sent = Instant::now();
    match socket.send(&payload).await {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
            // IPv6 with DONTFRAG: the local error carries the MTU.
            let mtu = read_error_queue(&socket, sent)
                .ok()
                .flatten()
                .and_then(|a| a.mtu)
                .unwrap_or(0);
            return Ok(Probed::TooLarge { mtu });
        }
        Err(e) => return Err(ProbeError::Send(e)),
    }
    wait_for_error(&socket, sent, timeout).await
}

/// Sends one TCP SYN with `ttl` to `destination` and waits up to
/// `timeout`: a router's "time exceeded", the port's SYN-ACK or RST, or
/// nothing.
pub async fn tcp(
    source: Option<IpAddr>,
    destination: SocketAddr,
    ttl: u8,
    timeout: Duration,
) -> Result<Probed, ProbeError> {
    let socket = open(source, destination, Type::STREAM, Protocol::TCP, ttl)?;
    let sent = Instant::now();
    match socket.connect(&SockAddr::from(destination)) {
        Ok(()) => {
            return Ok(Probed::Answer(tcp_answer(
                Reply::TcpOpen,
                destination,
                sent,
            )));
        }
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            return Ok(Probed::Answer(tcp_answer(
                Reply::TcpReset,
                destination,
                sent,
            )));
        }
        Err(e) => return Err(ProbeError::Send(e)),
    }
    // Connecting: tokio watches it from here as it does its own connects.
    let stream =
        TcpStream::from_std(std::net::TcpStream::from(socket)).map_err(ProbeError::Send)?;
    let waited = tokio::time::timeout(timeout, async {
        loop {
            let ready = stream.ready(Interest::WRITABLE | Interest::ERROR).await?;
            // An ICMP error for the SYN is queued with its sender before
            // the connect fails with it.
            if let Some(answer) = read_error_queue(&stream, sent)? {
                return Ok(Probed::Answer(answer));
            }
            match stream.take_error()? {
                None if ready.is_writable() => {
                    return Ok(Probed::Answer(tcp_answer(
                        Reply::TcpOpen,
                        destination,
                        sent,
                    )));
                }
                None => {
                    // Woken for nothing: clear it and wait again.
                    let _ = stream.try_io(Interest::ERROR, || {
                        Err::<(), _>(io::Error::from(io::ErrorKind::WouldBlock))
                    });
                }
                Some(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    return Ok(Probed::Answer(tcp_answer(
                        Reply::TcpReset,
                        destination,
                        sent,
                    )));
                }
                // Unreachable without a queued ICMP: a local route error.
                Some(e) => return Err(e),
            }
        }
    })
    .await;
    match waited {
        Ok(Ok(probed)) => Ok(probed),
        Ok(Err(e)) => Err(ProbeError::Send(e)),
        Err(_) => Ok(Probed::Silent),
    }
}

/// A SYN-ACK or RST: its source is the destination's address (the socket
/// takes nothing else), whoever really sent it.
fn tcp_answer(reply: Reply, destination: SocketAddr, sent: Instant) -> Answer {
    Answer {
        reply,
        from: Some(destination.ip()),
        rtt: sent.elapsed(),
        mtu: None,
    }
}

/// A non-blocking socket of `kind` towards `destination`'s family, bound
/// to `source` when given, with `ttl` and the error queue on.
fn open(
    source: Option<IpAddr>,
    destination: SocketAddr,
    kind: Type,
    protocol: Protocol,
    ttl: u8,
) -> Result<Socket, ProbeError> {
    let name = if kind == Type::DGRAM { "UDP" } else { "TCP" };
    let open_error = |source| ProbeError::Open {
        protocol: name,
        source,
    };
    let socket =
        Socket::new(Domain::for_address(destination), kind, Some(protocol)).map_err(open_error)?;
    socket.set_nonblocking(true).map_err(open_error)?;
    let as_io = |e: nix::Error| open_error(io::Error::from(e));
    match destination {
        SocketAddr::V4(_) => {
            setsockopt(&socket, sockopt::Ipv4RecvErr, &true).map_err(as_io)?;
            setsockopt(&socket, sockopt::Ipv4Ttl, &i32::from(ttl)).map_err(as_io)?;
        }
        SocketAddr::V6(_) => {
            setsockopt(&socket, sockopt::Ipv6RecvErr, &true).map_err(as_io)?;
            setsockopt(&socket, sockopt::Ipv6Ttl, &i32::from(ttl)).map_err(as_io)?;
            // Too large is an error with the MTU, not a local fragment.
            setsockopt(&socket, sockopt::Ipv6DontFrag, &true).map_err(as_io)?;
        }
    }
    if let Some(source_ip) = source {
        socket
            .bind(&SockAddr::from(SocketAddr::new(source_ip, 0)))
            .map_err(|source| ProbeError::Bind { source_ip, source })?;
    }
    Ok(socket)
}

/// Waits until the socket's error queue holds an answer, or `timeout`.
async fn wait_for_error(
    socket: &UdpSocket,
    sent: Instant,
    timeout: Duration,
) -> Result<Probed, ProbeError> {
    let waited = tokio::time::timeout(timeout, async {
        loop {
            let ready = socket.ready(Interest::ERROR | Interest::READABLE).await?;
            // Read under try_io, so an empty queue clears the readiness.
            match socket.try_io(Interest::ERROR, || {
                read_error_queue(socket, sent)?.ok_or(io::ErrorKind::WouldBlock.into())
            }) {
                Ok(answer) => return Ok::<_, io::Error>(answer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if ready.is_readable() {
                // A datagram back (a UDP service on the port) says nothing
                // of the path: drop it (until it would block, which clears
                // the readiness) and go on waiting.
                let mut sink = [0u8; 64];
                while socket.try_recv(&mut sink).is_ok() {}
            }
        }
    })
    .await;
    match waited {
        Ok(Ok(answer)) => Ok(Probed::Answer(answer)),
        Ok(Err(e)) => Err(ProbeError::Send(e)),
        Err(_) => Ok(Probed::Silent),
    }
}

/// The oldest entry of the socket's error queue, if any: what kind of
/// ICMP error (or local error), from whom, with which MTU.
fn read_error_queue(socket: &impl AsRawFd, sent: Instant) -> io::Result<Option<Answer>> {
    let mut data = [0u8; 512];
    let mut iov = [IoSliceMut::new(&mut data)];
    let mut control = nix::cmsg_space!(libc::sock_extended_err, libc::sockaddr_in6);
    let message = match recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut control),
        MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT,
    ) {
        Ok(message) => message,
        Err(nix::Error::EAGAIN) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let rtt = sent.elapsed();
    for cmsg in message.cmsgs().map_err(io::Error::from)? {
        let (err, from) = match cmsg {
            ControlMessageOwned::Ipv4RecvErr(err, from) => (
                err,
                from.map(|a| IpAddr::V4(*SocketAddrV4::from(SockaddrIn::from(a)).ip())),
            ),
            ControlMessageOwned::Ipv6RecvErr(err, from) => (
                err,
                from.map(|a| IpAddr::V6(*SocketAddrV6::from(SockaddrIn6::from(a)).ip())),
            ),
            _ => continue,
        };
        return Ok(Some(classify(&err, from, rtt)));
    }
    Ok(None)
}

const SO_EE_ORIGIN_LOCAL: u8 = 1;
const SO_EE_ORIGIN_ICMP: u8 = 2;
const SO_EE_ORIGIN_ICMP6: u8 = 3;

/// An extended socket error as a [`Reply`] (RFC 792 and RFC 4443 types
/// and codes).
fn classify(err: &libc::sock_extended_err, from: Option<IpAddr>, rtt: Duration) -> Answer {
    let mtu = Some(err.ee_info).filter(|m| *m > 0);
    let (reply, mtu) = match (err.ee_origin, err.ee_type, err.ee_code) {
        (SO_EE_ORIGIN_ICMP, 11, _) | (SO_EE_ORIGIN_ICMP6, 3, _) => (Reply::TimeExceeded, None),
        (SO_EE_ORIGIN_ICMP, 3, 3) | (SO_EE_ORIGIN_ICMP6, 1, 4) => (Reply::PortUnreachable, None),
        (SO_EE_ORIGIN_ICMP, 3, 4) | (SO_EE_ORIGIN_ICMP6, 2, _) => (Reply::FragNeeded, mtu),
        (SO_EE_ORIGIN_ICMP, 3, 0 | 6 | 11) | (SO_EE_ORIGIN_ICMP6, 1, 0) => {
            (Reply::NetUnreachable, None)
        }
        (SO_EE_ORIGIN_ICMP, 3, 1 | 7 | 12) | (SO_EE_ORIGIN_ICMP6, 1, 3) => {
            (Reply::HostUnreachable, None)
        }
        (SO_EE_ORIGIN_ICMP, 3, 9 | 10 | 13) | (SO_EE_ORIGIN_ICMP6, 1, 1 | 5 | 6) => {
            (Reply::Prohibited, None)
        }
        (SO_EE_ORIGIN_LOCAL, _, _) if err.ee_errno == libc::EMSGSIZE as u32 => {
            (Reply::FragNeeded, mtu)
        }
        _ => (Reply::OtherIcmp, None),
    };
    Answer {
        reply,
        from: from.filter(|_| err.ee_origin != SO_EE_ORIGIN_LOCAL),
        rtt,
        mtu,
    }
}

/// A refused send in words: a local firewall refuses with EPERM, which the
/// system words as if it were about the process.
fn send_words(e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::PermissionDenied {
        format!("this host refused to send it (a local firewall rule?): {e}")
    } else {
        e.to_string()
    }
}
