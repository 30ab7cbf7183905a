//! Who may read the incident pages: loopback only unless a token is
//! configured; with `[ui] token`, every reader presents it, as a bearer
//! token (`Authorization: Bearer …`) or as the password of HTTP basic auth
//! (any user name), so a browser can prompt for it.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use sha2::{Digest, Sha256};

/// The pages' access rule, from `[ui]`.
#[derive(Debug, Clone)]
pub struct Access {
    /// SHA-256 of the token; compared digest to digest, so the time a
    /// comparison takes says nothing about the token.
    token_sha256: Option<[u8; 32]>,
}

impl Access {
    pub fn new(token: Option<&str>) -> Self {
        Self {
            token_sha256: token.map(digest),
        }
    }

    fn admits(&self, peer: Option<SocketAddr>, headers: &HeaderMap) -> Decision {
        match &self.token_sha256 {
            None if peer.is_some_and(|p| p.ip().is_loopback()) => Decision::Admit,
            None => Decision::LoopbackOnly,
            Some(expected) => match presented(headers) {
                Some(token) if digest(&token) == *expected => Decision::Admit,
                _ => Decision::AskForToken,
            },
        }
    }
}

enum Decision {
    Admit,
    LoopbackOnly,
    AskForToken,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The token in `Authorization`: a bearer token, or basic auth's password.
fn presented(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.trim().to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        return text
            .split_once(':')
            .map(|(_, password)| password.to_owned());
    }
    None
}

/// The middleware in front of every page.
pub async fn guard(State(access): State<Access>, request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    match access.admits(peer, request.headers()) {
        Decision::Admit => next.run(request).await,
        Decision::LoopbackOnly => (
            StatusCode::FORBIDDEN,
            "The incident pages answer loopback only; set [ui] token in the collector's \
             config to let others in.\n",
        )
            .into_response(),
        Decision::AskForToken => (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                "Basic realm=\"Vantage\", charset=\"UTF-8\"",
            )],
            "This page needs the [ui] token: as a bearer token, or as the password of \
             basic auth.\n",
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(authorization: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, authorization.parse().unwrap());
        h
    }

    #[test]
    fn without_a_token_only_loopback_reads() {
        let access = Access::new(None);
        let local: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let remote: SocketAddr = "192.0.2.7:4000".parse().unwrap();
        assert!(matches!(
            access.admits(Some(local), &HeaderMap::new()),
            Decision::Admit
        ));
        assert!(matches!(
            access.admits(Some(remote), &HeaderMap::new()),
            Decision::LoopbackOnly
        ));
        assert!(matches!(
            access.admits(None, &HeaderMap::new()),
            Decision::LoopbackOnly
        ));
    }

    #[test]
    fn with_a_token_everyone_presents_it_as_bearer_or_basic_password() {
        let access = Access::new(Some("s3cret-token"));
        let local: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        assert!(matches!(
            access.admits(Some(local), &HeaderMap::new()),
            Decision::AskForToken
        ));
        let bearer = headers("Bearer s3cret-token");
        assert!(matches!(
            access.admits(Some(local), &bearer),
            Decision::Admit
        ));
        let basic = base64::engine::general_purpose::STANDARD.encode("oncall:s3cret-token");
        let basic = headers(&format!("Basic {basic}"));
        assert!(matches!(
            access.admits(Some(local), &basic),
            Decision::Admit
        ));
        let wrong = headers("Bearer s3cret-tokeN");
        assert!(matches!(
            access.admits(Some(local), &wrong),
            Decision::AskForToken
        ));
    }
}
