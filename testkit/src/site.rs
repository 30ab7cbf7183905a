//! A scripted HTTP(S) site for measuring probes: it delays the TLS
//! handshake, the response headers and the body by known amounts, serves a
//! certificate made at test time, and can misbehave on purpose (slowloris
//! headers, an endless body, garbage instead of HTTP, oversized headers).
//!
//! The response is written by hand on the raw (TLS) stream, so each delay
//! lands exactly between the bytes it is meant to separate.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::{CancellationToken, DropGuard};

/// A certificate authority made at test time, and leaf certificates it
/// signs.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
    /// The CA's own certificate and key, for a site that presents it.
    der: CertificateDer<'static>,
    key_der: Vec<u8>,
    key_pem: String,
}

/// A leaf certificate chain and its key, ready for a rustls server.
pub struct Leaf {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// The same certificate and key, PEM (for config files).
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    pub fn new() -> Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "Vantage Test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            pem: cert.pem(),
            der: cert.der().clone(),
            key_der: key.serialize_der(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA's own certificate as a site's: what a site misconfigured
    /// with its CA (CA:TRUE) instead of a leaf presents.
    pub fn as_leaf(&self) -> Leaf {
        Leaf {
            chain: vec![self.der.clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone())),
            cert_pem: self.pem.clone(),
            key_pem: self.key_pem.clone(),
        }
    }

    /// The CA certificate, PEM, for a client's trust store (`ca_file`).
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A leaf for `names` (DNS names or IP addresses) valid until
    /// `valid_for` from now.
    pub fn leaf(&self, names: &[&str], valid_for: Duration) -> Result<Leaf> {
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())?;
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or("leaf"));
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
        params.not_after = time::OffsetDateTime::now_utc()
            + time::Duration::try_from(valid_for).context("validity")?;
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Leaf {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// How the site answers once the request has arrived.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// A well-formed response; the body is written in two halves with the
    /// body delay between them.
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// A status line, then one header byte every 50 ms, forever.
    SlowlorisHeaders,
    /// A 200 with a chunked body that never ends.
    EndlessBody,
    /// Bytes that are not HTTP.
    Garbage,
    /// 1 MiB of response headers.
    HugeHeaders,
    /// Bytes that are not TLS, in answer to the ClientHello (TLS ignored).
    TlsGarbage,
}

/// The delays between the steps of one exchange.
#[derive(Debug, Clone, Copy, Default)]
pub struct Delays {
    /// Before the server starts its TLS handshake.
    pub handshake: Duration,
    /// After the request arrived, before the response headers.
    pub headers: Duration,
    /// Between the two halves of the body.
    pub body: Duration,
}

/// A running scripted site; stops when dropped.
pub struct ScriptedSite {
    addr: SocketAddr,
    requests: Arc<AtomicU64>,
    last_request: Arc<std::sync::Mutex<String>>,
    _stop: DropGuard,
}

impl ScriptedSite {
    /// Starts the site on `bind_ip` (free port); TLS when `leaf` is given.
    pub async fn start(
        bind_ip: IpAddr,
        leaf: Option<Leaf>,
        delays: Delays,
        behaviour: Behaviour,
    ) -> Result<Self> {
        let listener = TcpListener::bind(SocketAddr::new(bind_ip, 0))
            .await
            .context("bind scripted site")?;
        let addr = listener.local_addr()?;
        let acceptor = match leaf {
            None => None,
            Some(leaf) => {
                let mut config = rustls::ServerConfig::builder()
                    .with_no_client_auth()
                    .with_single_cert(leaf.chain, leaf.key)
                    .context("server certificate")?;
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
            }
        };
        let stop = CancellationToken::new();
        let requests = Arc::new(AtomicU64::new(0));
        let last_request = Arc::new(std::sync::Mutex::new(String::new()));
        let (count, last) = (requests.clone(), last_request.clone());
        crate::accept::serve_connections(listener, stop.clone(), move |stream| {
            let (acceptor, behaviour) = (acceptor.clone(), behaviour.clone());
            let (count, last) = (count.clone(), last.clone());
            async move {
                let _ = stream.set_nodelay(true);
                if matches!(behaviour, Behaviour::TlsGarbage) {
                    let mut stream = stream;
                    let mut hello = [0u8; 512];
                    let _ = stream.read(&mut hello).await;
                    let _ = stream.write_all(b"this is not TLS at all\r\n").await;
                    return;
                }
                tokio::time::sleep(delays.handshake).await;
                match acceptor {
                    Some(acceptor) => {
                        if let Ok(tls) = acceptor.accept(stream).await {
                            exchange(tls, delays, &behaviour, &count, &last).await;
                        }
                    }
                    None => exchange(stream, delays, &behaviour, &count, &last).await,
                }
            }
        });
        Ok(Self {
            addr,
            requests,
            last_request,
            _stop: stop.drop_guard(),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests whose head arrived completely.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// The head (request line and headers) of the latest request.
    pub fn last_request(&self) -> String {
        self.last_request
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Reads one request head, then answers as `behaviour` says.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    delays: Delays,
    behaviour: &Behaviour,
    count: &AtomicU64,
    last: &std::sync::Mutex<String>,
) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 64 * 1024 {
            return;
        }
    }
    count.fetch_add(1, Ordering::Relaxed);
    *last.lock().unwrap_or_else(|e| e.into_inner()) = String::from_utf8_lossy(&head).into_owned();
    tokio::time::sleep(delays.headers).await;
    let _ = respond(&mut stream, delays, behaviour).await;
    let _ = stream.shutdown().await;
}

async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    delays: Delays,
    behaviour: &Behaviour,
) -> std::io::Result<()> {
    match behaviour {
        Behaviour::Respond {
            status,
            headers,
            body,
        } => {
            let mut head = format!(
                "HTTP/1.1 {status} {}\r\ncontent-length: {}\r\nconnection: close\r\n",
                reason(*status),
                body.len()
            );
            for (name, value) in headers {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str("\r\n");
            let half = body.len() / 2;
            // Headers and the first half together: the first response byte
            // and the start of the body arrive at once, so the transfer
            // phase holds the body delay and nothing else.
            let mut first = head.into_bytes();
            first.extend_from_slice(&body[..half]);
            stream.write_all(&first).await?;
            stream.flush().await?;
            tokio::time::sleep(delays.body).await;
            stream.write_all(&body[half..]).await?;
            stream.flush().await
        }
        Behaviour::SlowlorisHeaders => {
            stream.write_all(b"HTTP/1.1 200 OK\r\n").await?;
            loop {
                stream.write_all(b"x").await?;
                stream.flush().await?;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Behaviour::EndlessBody => {
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                .await?;
            let chunk = format!("{:x}\r\n{}\r\n", 16 * 1024, "v".repeat(16 * 1024));
            loop {
                stream.write_all(chunk.as_bytes()).await?;
            }
        }
        Behaviour::Garbage => {
            stream
                .write_all(b"\x00\x01\x02 SSH-2.0-OpenSSH_9.6 definitely not http\r\n\r\n")
                .await
        }
        Behaviour::HugeHeaders => {
            stream.write_all(b"HTTP/1.1 200 OK\r\n").await?;
            let line = format!("x-padding: {}\r\n", "p".repeat(1000));
            for _ in 0..1024 {
                stream.write_all(line.as_bytes()).await?;
            }
            stream.write_all(b"\r\n").await
        }
        Behaviour::TlsGarbage => Ok(()),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        301 => "Moved Permanently",
        302 => "Found",
        404 => "Not Found",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}
