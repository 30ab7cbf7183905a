//! How a step of a probe's request fails: the outcome it stands for and
//! the cause in words (a timeout names its phase, a refused certificate
//! its problem).

use vantage_check::CheckConfig;

use super::super::Outcome;

/// The check's timeout ran out during `phase`.
pub(super) fn timed_out(check: &CheckConfig, phase: &str) -> Failure {
    Failure {
        outcome: Outcome::Timeout,
        message: format!("timed out after {:?} during {phase}", check.timeout),
    }
}

/// A failed step: what kind, and why.
pub(super) struct Failure {
    pub(super) outcome: Outcome,
    pub(super) message: String,
}

/// A TLS failure, its certificate problem in words; an expired
/// certificate is its own kind.
pub(super) fn tls_failure(error: std::io::Error, server_name: &str) -> Failure {
    let rustls_error = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let expired = rustls_error.is_some_and(|e| {
        matches!(
            e,
            rustls::Error::InvalidCertificate(rustls::CertificateError::Expired)
                | rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ExpiredContext { .. }
                )
        )
    });
    let message = match rustls_error {
        Some(rustls::Error::InvalidCertificate(problem)) => format!(
            "TLS handshake: {}",
            super::super::tls::certificate_problem(problem, server_name)
        ),
        _ => format!("TLS handshake: {error}"),
    };
    Failure {
        outcome: if expired {
            Outcome::CertExpiry
        } else {
            Outcome::Tls
        },
        message,
    }
}

/// A failure while speaking HTTP: the peer's bytes were not a valid
/// response (or the connection broke in the middle of one).
pub(super) fn protocol_failure(error: hyper::Error) -> Failure {
    let mut message = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    Failure {
        outcome: Outcome::Protocol,
        message,
    }
}
