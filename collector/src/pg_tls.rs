//! The database connection's TLS as libpq means it: which `sslmode` a URL
//! asks for, libpq's rules that sqlx does not apply by itself (`require`
//! with a root certificate verifies like `verify-ca`; `sslrootcert=system`),
//! and a failed handshake put in words that name the mode and what failed.
//!
//! The handshake itself is sqlx's on rustls, patched in
//! `vendor/sqlx-core` so that `prefer` and `require` accept a certificate
//! of any X.509 version and `verify-ca` / `verify-full` trust a certificate
//! that is itself one of `sslrootcert`'s (see vendor/README.md).

use std::path::Path;

use rustls::{CertificateError, Error as TlsError};
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use url::Url;

/// libpq's name of a mode.
pub fn mode_name(mode: PgSslMode) -> &'static str {
    match mode {
        PgSslMode::Disable => "disable",
        PgSslMode::Allow => "allow",
        PgSslMode::Prefer => "prefer",
        PgSslMode::Require => "require",
        PgSslMode::VerifyCa => "verify-ca",
        PgSslMode::VerifyFull => "verify-full",
    }
}

/// Where a URL's root certificates come from (`sslrootcert`, else
/// `PGSSLROOTCERT`).
fn root_cert(url: &Url) -> Option<String> {
    url.query_pairs()
        .find(|(key, _)| matches!(key.as_ref(), "sslrootcert" | "ssl-root-cert" | "ssl-ca"))
        .map(|(_, value)| value.into_owned())
        .or_else(|| std::env::var("PGSSLROOTCERT").ok())
        .filter(|path| !path.is_empty())
}

/// Whether the URL (or `PGSSLMODE`) names a mode itself.
fn mode_given(url: &Url) -> bool {
    url.query_pairs()
        .any(|(key, _)| matches!(key.as_ref(), "sslmode" | "ssl-mode"))
        || std::env::var("PGSSLMODE").is_ok_and(|m| !m.is_empty())
}

/// Applies libpq's rules to options sqlx parsed from `url`:
/// - `sslrootcert=system`: the system's trusted roots, and `verify-full`
///   unless a mode is given (libpq 16);
/// - `require` with a root certificate file verifies like `verify-ca`;
/// - `verify-ca` / `verify-full` with a root certificate file that is not
///   there is refused now, naming the file, rather than at each connect.
pub fn libpq_rules(mut options: PgConnectOptions, url: &Url) -> Result<PgConnectOptions, String> {
    let root = root_cert(url);
    if root.as_deref() == Some("system") {
        // The system store is what the verifier loads without a file.
        let mode = if mode_given(url) {
            options.get_ssl_mode()
        } else {
            PgSslMode::VerifyFull
        };
        let mut plain = url.clone();
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(key, _)| !matches!(key.as_ref(), "sslrootcert" | "ssl-root-cert" | "ssl-ca"))
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        plain.query_pairs_mut().clear().extend_pairs(kept);
        // sqlx would read "system" as a file: parse the URL without it.
        options = plain
            .as_str()
            .parse::<PgConnectOptions>()
            .map_err(|e| e.to_string())?
            .ssl_mode(mode);
        if matches!(
            mode,
            PgSslMode::Disable | PgSslMode::Allow | PgSslMode::Prefer | PgSslMode::Require
        ) {
            return Err(format!(
                "sslrootcert=system needs sslmode=verify-full (or verify-ca), not sslmode={}",
                mode_name(mode)
            ));
        }
        return Ok(options);
    }
    let Some(root) = root else {
        return Ok(options);
    };
    let exists = Path::new(&root).is_file();
    match options.get_ssl_mode() {
        PgSslMode::Require if exists => Ok(options.ssl_mode(PgSslMode::VerifyCa)),
        mode @ (PgSslMode::VerifyCa | PgSslMode::VerifyFull) if !exists => Err(format!(
            "sslrootcert {root}: no such file; sslmode={} verifies the server's certificate \
             against it: give the file, use sslrootcert=system for the system's trusted roots, \
             or sslmode=require to encrypt without verifying",
            mode_name(mode)
        )),
        _ => Ok(options),
    }
}

/// A failed connection's TLS cause in words, naming the mode, or `None`
/// when TLS is not what failed.
pub fn explain(error: &sqlx::Error, options: &PgConnectOptions) -> Option<String> {
    let mode = options.get_ssl_mode();
    let what = match error {
        sqlx::Error::Tls(inner) => {
            let text = inner.to_string();
            if text.contains("server does not support TLS") {
                "the server does not accept TLS connections (its ssl setting is off): \
                 use sslmode=prefer or disable, or turn ssl on in its postgresql.conf"
                    .to_owned()
            } else {
                text
            }
        }
        sqlx::Error::Io(io) => {
            let tls = io.get_ref()?.downcast_ref::<TlsError>()?;
            words(tls, options)
        }
        _ => return None,
    };
    Some(format!(
        "database TLS with sslmode={} failed: {what}",
        mode_name(mode)
    ))
}

fn words(error: &TlsError, options: &PgConnectOptions) -> String {
    let host = options.get_host();
    let TlsError::InvalidCertificate(certificate) = error else {
        return format!("the TLS handshake failed: {error}");
    };
    match certificate {
        CertificateError::UnknownIssuer => "the server's certificate is not signed by a \
             certificate authority in sslrootcert or the system's trusted roots"
            .to_owned(),
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            format!(
                "the server's certificate does not name the host {host} (sslmode=verify-full \
                 checks the name; verify-ca does not)"
            )
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "the server's certificate has expired".to_owned()
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "the server's certificate is not valid yet (check both machines' clocks)".to_owned()
        }
        CertificateError::BadEncoding => "the server's certificate could not be read".to_owned(),
        CertificateError::BadSignature => {
            "the server's certificate (or its handshake) is not signed by the key it names"
                .to_owned()
        }
        CertificateError::Revoked => "the server's certificate is revoked".to_owned(),
        CertificateError::Other(other) => match other.0.downcast_ref::<webpki::Error>() {
            Some(webpki::Error::UnsupportedCertVersion) => {
                "the server's certificate is X.509 version 1, which only pinning verifies: put \
                 that very certificate in sslrootcert, or use sslmode=require to encrypt \
                 without verifying"
                    .to_owned()
            }
            Some(webpki::Error::CaUsedAsEndEntity) => {
                "the server's certificate is a CA certificate (CA:TRUE) presented as the \
                 server's own: put that very certificate in sslrootcert, or give the server a \
                 certificate issued by the CA"
                    .to_owned()
            }
            Some(other) => format!("the server's certificate was refused: {other}"),
            None => format!("the server's certificate was refused: {other}"),
        },
        other => format!("the server's certificate was refused: {other:?}"),
    }
}
