//! What start-up checks before it touches the database or a socket, so
//! that `check-config`, a reload and `serve` refuse the same files: the
//! database URL parses and the gRPC listener's TLS files load.

use anyhow::{Context, Result};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::config::{CollectorConfig, TlsConfig};

/// Start-up's own checks of `config`, without connecting or listening.
pub fn preflight(config: &CollectorConfig) -> Result<()> {
    config.database().map_err(anyhow::Error::msg)?;
    if let Some(tls) = &config.tls {
        let (tls_config, _) = server_tls(tls)?;
        tonic::transport::Server::builder()
            .tls_config(tls_config)
            .context("configuring gRPC TLS")?;
    }
    Ok(())
}

/// The gRPC listener's TLS settings from `[tls]`; true when mutual.
pub fn server_tls(tls: &TlsConfig) -> Result<(ServerTlsConfig, bool)> {
    let read = |path: &std::path::Path, what: &str| {
        std::fs::read(path).with_context(|| format!("reading the TLS {what} {}", path.display()))
    };
    let identity = Identity::from_pem(
        read(&tls.cert_file, "certificate")?,
        read(&tls.key_file, "key")?,
    );
    let mut config = ServerTlsConfig::new().identity(identity);
    let mutual = tls.client_ca_file.is_some();
    if let Some(ca) = &tls.client_ca_file {
        config = config.client_ca_root(Certificate::from_pem(read(ca, "client CA")?));
    }
    Ok((config, mutual))
}
