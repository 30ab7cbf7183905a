//! TLS for probes: the client configurations (trust roots, extra CAs, ALPN)
//! built once at start, and what a finished handshake revealed (version,
//! ALPN, cipher suite, the leaf certificate's subject, issuer and expiry).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};

use chrono::{DateTime, Utc};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::{CertInfo, TlsInfo};
use vantage_check::HttpVersion;

/// The TLS setup could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("{path}: cannot read CA certificates: {message}")]
    CaFile { path: PathBuf, message: String },
    #[error("{path}: no certificate in the file")]
    EmptyCaFile { path: PathBuf },
}

/// Which ALPN protocols a probe offers.
fn alpn(version: HttpVersion) -> Vec<Vec<u8>> {
    match version {
        HttpVersion::Auto => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        HttpVersion::Http1 => vec![b"http/1.1".to_vec()],
        HttpVersion::Http2 => vec![b"h2".to_vec()],
    }
}

/// What a check's TLS configuration depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsKey {
    /// Extra CAs trusted (the check's `ca_file`).
    pub ca_file: Option<PathBuf>,
    pub version: HttpVersion,
    /// Any certificate accepted (the check's `tls_insecure_skip_verify`).
    pub insecure: bool,
}

impl TlsKey {
    /// The key of `check`'s configuration.
    pub fn of(check: &vantage_check::CheckConfig) -> Self {
        Self {
            ca_file: check.ca_file.clone(),
            version: check.http_version,
            insecure: check.tls_insecure_skip_verify,
        }
    }

    fn is(&self, ca_file: Option<&Path>, version: HttpVersion, insecure: bool) -> bool {
        self.ca_file.as_deref() == ca_file && self.version == version && self.insecure == insecure
    }
}

/// A client configuration and what it is for.
type ConfigFor = (TlsKey, Arc<ClientConfig>);

/// Client configurations, one per distinct [`TlsKey`],
/// shared by every probe that needs it: building one reads the system's
/// trust store, which is too slow and too large to do per probe. Cloning
/// shares them; a check assigned later adds its own
/// ([`TlsConfigs::ensure`]).
///
/// The system's trust store is read again for each configuration rather
/// than kept: each configuration holds its own copy of it anyway, and a
/// kept one would be a copy more for the agent's whole life.
#[derive(Clone)]
pub struct TlsConfigs {
    /// A handful of entries at most: looked up by a scan that borrows the
    /// check's path, so a probe allocates nothing to find its config.
    configs: Arc<RwLock<Vec<ConfigFor>>>,
    /// For the HTTPS connection to a forward proxy (HTTP/1.1 only), built
    /// when a probe first goes through one.
    proxy: Arc<OnceLock<Arc<ClientConfig>>>,
}

impl TlsConfigs {
    /// Builds every configuration in `wanted`.
    pub fn build(wanted: impl IntoIterator<Item = TlsKey>) -> Result<Self, TlsSetupError> {
        vantage_service::install_crypto_provider();
        let configs = Self {
            configs: Arc::default(),
            proxy: Arc::default(),
        };
        for key in wanted {
            configs.ensure(&key)?;
        }
        Ok(configs)
    }

    /// Builds the configuration for `key` unless it is there already
    /// (reading the system's trust store and the CA file).
    pub fn ensure(&self, key: &TlsKey) -> Result<(), TlsSetupError> {
        if self
            .get(key.ca_file.as_deref(), key.version, key.insecure)
            .is_some()
        {
            return Ok(());
        }
        let config = if key.insecure {
            // Nothing to trust: the CA file is not read.
            insecure_client_config(key.version)
        } else {
            let mut roots = system_roots();
            if let Some(path) = &key.ca_file {
                add_ca_file(&mut roots, path)?;
            }
            client_config(roots, key.version)
        };
        let mut configs = self.configs.write().unwrap_or_else(|p| p.into_inner());
        if !configs.iter().any(|(k, _)| k == key) {
            configs.push((key.clone(), config));
        }
        Ok(())
    }

    /// The configuration for a check with `ca_file`, `version` and
    /// `insecure` (borrowed: a probe allocates nothing to find it).
    pub fn get(
        &self,
        ca_file: Option<&Path>,
        version: HttpVersion,
        insecure: bool,
    ) -> Option<Arc<ClientConfig>> {
        let configs = self.configs.read().unwrap_or_else(|p| p.into_inner());
        configs
            .iter()
            .find(|(key, _)| key.is(ca_file, version, insecure))
            .map(|(_, config)| config.clone())
    }

    /// The configuration for TLS to an `https://` forward proxy.
    pub fn proxy(&self) -> Option<Arc<ClientConfig>> {
        Some(
            self.proxy
                .get_or_init(|| client_config(system_roots(), HttpVersion::Http1))
                .clone(),
        )
    }
}

fn client_config(roots: RootCertStore, version: HttpVersion) -> Arc<ClientConfig> {
    let config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    for_probes(config, version)
}

/// A configuration that accepts any certificate (the handshake's own
/// signatures are still checked, so the handshake is a real one).
fn insecure_client_config(version: HttpVersion) -> Arc<ClientConfig> {
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let config = ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    for_probes(config, version)
}

fn for_probes(mut config: ClientConfig, version: HttpVersion) -> Arc<ClientConfig> {
    config.alpn_protocols = alpn(version);
    // Every probe is a full handshake: resumption would hide the cost and
    // the failures of the handshake a new visitor makes.
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// Accepts whatever certificate the server presents, for a check with
/// `tls_insecure_skip_verify`; the signatures of the handshake itself are
/// verified with the provider's algorithms.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The operating system's trust store, what other clients on the host use.
/// Unreadable entries are skipped and logged, never fatal.
fn system_roots() -> RootCertStore {
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        tracing::warn!(%error, "Skipped part of the system trust store.");
    }
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    tracing::debug!(added, ignored, "Loaded the system trust store.");
    roots
}

fn add_ca_file(roots: &mut RootCertStore, path: &Path) -> Result<(), TlsSetupError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsSetupError::CaFile {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsSetupError::EmptyCaFile {
            path: path.to_owned(),
        });
    }
    for cert in certs {
        roots.add(cert).map_err(|e| TlsSetupError::CaFile {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    }
    Ok(())
}

/// What the finished handshake of `conn` negotiated and presented.
pub fn tls_info(conn: &rustls::ClientConnection) -> TlsInfo {
    let version = conn
        .protocol_version()
        .map(|v| match v {
            rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3".to_owned(),
            rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2".to_owned(),
            other => format!("{other:?}"),
        })
        .unwrap_or_default();
    TlsInfo {
        version,
        alpn: conn
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned()),
        cipher: conn
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_default(),
        cert: conn
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| cert_info(leaf.as_ref())),
    }
}

/// Subject, issuer and not-after of a DER certificate; `None` if it does
/// not parse (the handshake already verified it, so this is unexpected).
pub fn cert_info(der: &[u8]) -> Option<CertInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let not_after = DateTime::<Utc>::from_timestamp(cert.validity().not_after.timestamp(), 0)?;
    Some(CertInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        not_after,
    })
}

/// A certificate the handshake refused, in words that name the problem
/// and what a check can do about it (`server_name`: the name verified).
pub fn certificate_problem(problem: &rustls::CertificateError, server_name: &str) -> String {
    use rustls::CertificateError as E;
    match problem {
        E::UnknownIssuer => "the site's certificate is not signed by a trusted certificate \
            authority (neither the system's roots nor the check's ca_file): give the check \
            its CA as ca_file, or set tls_insecure_skip_verify"
            .to_owned(),
        E::NotValidForName | E::NotValidForNameContext { .. } => format!(
            "the site's certificate does not name {server_name}: probe the name it was issued \
             for, or set the check's tls_server_name to it"
        ),
        E::Expired | E::ExpiredContext { .. } => "the site's certificate has expired".to_owned(),
        E::NotValidYet | E::NotValidYetContext { .. } => {
            "the site's certificate is not valid yet (check both machines' clocks)".to_owned()
        }
        E::BadEncoding => "the site's certificate could not be read".to_owned(),
        E::BadSignature => {
            "the site's certificate (or its handshake) is not signed by the key it names".to_owned()
        }
        E::Revoked => "the site's certificate is revoked".to_owned(),
        E::InvalidPurpose | E::InvalidPurposeContext { .. } => {
            "the site's certificate is not issued for serving TLS (its extended key usage)"
                .to_owned()
        }
        E::Other(other) => match other.0.downcast_ref::<webpki::Error>() {
            Some(webpki::Error::CaUsedAsEndEntity) => "the site presents a CA certificate \
                (CA:TRUE) as its own: give the site a certificate issued by that CA, or set \
                tls_insecure_skip_verify"
                .to_owned(),
            Some(webpki::Error::UnsupportedCertVersion) => "the site's certificate is X.509 \
                version 1, which is not verified: give the site a version 3 certificate, or \
                set tls_insecure_skip_verify"
                .to_owned(),
            Some(other) => format!("the site's certificate was refused: {other}"),
            None => format!("the site's certificate was refused: {other}"),
        },
        other => format!("the site's certificate was refused: {other:?}"),
    }
}
