//! TLS for probes: the client configurations (trust roots, extra CAs, ALPN)
//! built once at start, and what a finished handshake revealed (version,
//! ALPN, cipher suite, the leaf certificate's subject, issuer and expiry).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};

use chrono::{DateTime, Utc};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};

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

/// A client configuration and the (extra CA file, HTTP version) it is for.
type ConfigFor = (Option<PathBuf>, HttpVersion, Arc<ClientConfig>);

/// Client configurations, one per distinct (extra CA file, HTTP version),
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
    pub fn build(
        wanted: impl IntoIterator<Item = (Option<PathBuf>, HttpVersion)>,
    ) -> Result<Self, TlsSetupError> {
        vantage_service::install_crypto_provider();
        let configs = Self {
            configs: Arc::default(),
            proxy: Arc::default(),
        };
        for (ca_file, version) in wanted {
            configs.ensure(ca_file.as_deref(), version)?;
        }
        Ok(configs)
    }

    /// Builds the configuration for `ca_file` and `version` unless it is
    /// there already (reading the system's trust store and the CA file).
    pub fn ensure(
        &self,
        ca_file: Option<&Path>,
        version: HttpVersion,
    ) -> Result<(), TlsSetupError> {
        if self.get(ca_file, version).is_some() {
            return Ok(());
        }
        let mut roots = system_roots();
        if let Some(path) = ca_file {
            add_ca_file(&mut roots, path)?;
        }
        let config = client_config(roots, version);
        let mut configs = self.configs.write().unwrap_or_else(|p| p.into_inner());
        if !configs
            .iter()
            .any(|(path, v, _)| path.as_deref() == ca_file && *v == version)
        {
            configs.push((ca_file.map(Path::to_owned), version, config));
        }
        Ok(())
    }

    /// The configuration for a check with `ca_file` and `version`.
    pub fn get(&self, ca_file: Option<&Path>, version: HttpVersion) -> Option<Arc<ClientConfig>> {
        let configs = self.configs.read().unwrap_or_else(|p| p.into_inner());
        configs
            .iter()
            .find(|(path, v, _)| path.as_deref() == ca_file && *v == version)
            .map(|(_, _, config)| config.clone())
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
    let mut config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn(version);
    // Every probe is a full handshake: resumption would hide the cost and
    // the failures of the handshake a new visitor makes.
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
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
