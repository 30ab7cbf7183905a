//! Who is on the other end of a stream: enrolment tokens (made, hashed,
//! read from gRPC metadata) and the agent named by a client certificate.
//!
//! The collector takes an agent's identity from its credential, never from
//! what the agent says about itself.

use base64::Engine;
use sha2::{Digest, Sha256};
use tonic::Status;
use tonic::metadata::MetadataMap;

/// Prefix of every token, so a leaked one is recognisable in logs and by
/// secret scanners.
const TOKEN_PREFIX: &str = "vantage_";

/// Why a stream was refused before its first batch.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(
        "no credential: send `authorization: Bearer <token>` (see `vantage-collector agent add`)"
    )]
    Missing,
    #[error("malformed authorization metadata: expected `Bearer <token>`")]
    Malformed,
    #[error("unknown token")]
    UnknownToken,
    #[error("token of agent {0:?} was revoked")]
    Revoked(String),
    #[error("token belongs to agent {owner:?}, but the Hello claims {claimed:?}")]
    Spoofed { owner: String, claimed: String },
    #[error("client certificate does not name agent {agent:?} (it names {names:?})")]
    CertificateMismatch { agent: String, names: Vec<String> },
    #[error("mutual TLS is required and no client certificate was presented")]
    NoCertificate,
}

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Self {
        metrics::counter!("vantage_ingest_auth_failures_total", "reason" => e.reason())
            .increment(1);
        match e {
            AuthError::Missing
            | AuthError::Malformed
            | AuthError::UnknownToken
            | AuthError::Revoked(_) => Status::unauthenticated(e.to_string()),
            AuthError::Spoofed { .. }
            | AuthError::CertificateMismatch { .. }
            | AuthError::NoCertificate => Status::permission_denied(e.to_string()),
        }
    }
}

impl AuthError {
    fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::UnknownToken => "unknown_token",
            Self::Revoked(_) => "revoked",
            Self::Spoofed { .. } => "spoofed_id",
            Self::CertificateMismatch { .. } => "certificate_mismatch",
            Self::NoCertificate => "no_certificate",
        }
    }
}

/// A fresh token: 256 random bits, URL-safe base64, with a fixed prefix.
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// What the database stores instead of the token.
pub fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The bearer token in a call's metadata. The scheme is matched without
/// regard to case (RFC 9110 §11.1): `bearer`, `BEARER` and `Bearer` alike.
pub fn bearer(metadata: &MetadataMap) -> Result<&str, AuthError> {
    let value = metadata
        .get(vantage_proto::AUTHORIZATION)
        .ok_or(AuthError::Missing)?;
    let value = value.to_str().map_err(|_| AuthError::Malformed)?.trim();
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Malformed)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(AuthError::Malformed);
    }
    Ok(token)
}

/// The names a client certificate (DER) gives its holder: the subject's
/// common names and the DNS names of its subject alternative names.
pub fn certificate_names(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                names.push((*dns).to_owned());
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_prefixed_and_hash_stably() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 43);
        assert_eq!(token_sha256(&a), token_sha256(&a));
        assert_ne!(token_sha256(&a), token_sha256(&b));
        assert_eq!(token_sha256(&a).len(), 64);
    }

    #[test]
    fn bearer_reads_the_authorization_metadata() {
        let mut m = MetadataMap::new();
        assert!(matches!(bearer(&m), Err(AuthError::Missing)));
        m.insert("authorization", "Basic abc".parse().expect("ascii"));
        assert!(matches!(bearer(&m), Err(AuthError::Malformed)));
        m.insert(
            "authorization",
            "Bearer vantage_xyz".parse().expect("ascii"),
        );
        assert_eq!(bearer(&m).expect("token"), "vantage_xyz");
        for scheme in ["bearer", "BEARER", "bEaReR"] {
            let value = format!("{scheme} vantage_xyz");
            m.insert("authorization", value.parse().expect("ascii"));
            assert_eq!(bearer(&m).expect("token"), "vantage_xyz", "{scheme}");
        }
        for malformed in [
            "Bearer",
            "Bearer   ",
            "Bearervantage_xyz",
            "Bearer_ vantage_xyz",
        ] {
            m.insert("authorization", malformed.parse().expect("ascii"));
            assert!(
                matches!(bearer(&m), Err(AuthError::Malformed)),
                "{malformed}"
            );
        }
    }

    #[test]
    fn certificate_names_include_common_name_and_dns_sans() {
        let mut params = rcgen::CertificateParams::new(vec!["fra-1".to_owned()]).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "fra-1-cn");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        let names = certificate_names(cert.der());
        assert!(names.contains(&"fra-1-cn".to_owned()), "{names:?}");
        assert!(names.contains(&"fra-1".to_owned()), "{names:?}");
        assert!(certificate_names(b"not a certificate").is_empty());
    }
}
