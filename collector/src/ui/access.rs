//! Who may read the incident pages: loopback only unless a token is
//! configured; with `[ui] token`, every reader presents it, as a bearer
//! token (`Authorization: Bearer …`) or as the password of HTTP basic auth
//! (any user name), so a browser can prompt for it.
//!
//! "Loopback" is the reader's address: the peer's (an IPv4-mapped
//! `::ffff:127.0.0.1` counts as `127.0.0.1`), or, when the peer is one of
//! `[ui] trusted_proxies`, the client address the proxies forwarded
//! (`Forwarded` or `X-Forwarded-For`, the rightmost address that is not a
//! trusted proxy). A request that carries forwarding headers from a peer
//! that is not a trusted proxy came through a proxy nobody vouched for: a
//! reverse proxy on the same host would make every reader look local, so
//! without a token it is refused.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

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
    /// Peers whose forwarding headers are believed.
    trusted_proxies: Vec<IpNet>,
}

impl Access {
    pub fn new(token: Option<&str>, trusted_proxies: &[IpNet]) -> Self {
        Self {
            token_sha256: token.map(digest),
            trusted_proxies: trusted_proxies.to_vec(),
        }
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    /// The reader's address (see the module doc); `None` when the request
    /// came through a proxy that is not trusted.
    fn reader(&self, peer: IpAddr, headers: &HeaderMap) -> Option<IpAddr> {
        let forwarded = forwarded_for(headers);
        if !self.trusts(peer) {
            return forwarded.is_empty().then_some(peer.to_canonical());
        }
        // Right to left: the nearest hop that is not a trusted proxy.
        let mut reader = peer;
        for hop in forwarded.iter().rev() {
            let Some(hop) = hop else {
                // An obfuscated or unknown hop: no address to vouch for.
                return None;
            };
            reader = *hop;
            if !self.trusts(*hop) {
                break;
            }
        }
        Some(reader.to_canonical())
    }

    fn admits(&self, peer: Option<SocketAddr>, headers: &HeaderMap) -> Decision {
        match &self.token_sha256 {
            None => match peer.map(|p| self.reader(p.ip(), headers)) {
                Some(Some(reader)) if reader.is_loopback() => Decision::Admit,
                Some(None) => Decision::UntrustedProxy,
                _ => Decision::LoopbackOnly,
            },
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
    /// Forwarding headers from a peer not in `[ui] trusted_proxies`.
    UntrustedProxy,
    AskForToken,
}

/// The addresses of `Forwarded` (its `for=` parameters) and
/// `X-Forwarded-For`, nearest proxy last; `None` for a hop given without
/// an address (`for=unknown`, an obfuscated name, garbage). Both headers
/// present: `Forwarded` wins, as RFC 7239 asks.
fn forwarded_for(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let forwarded: Vec<&str> = headers
        .get_all(header::FORWARDED)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if !forwarded.is_empty() {
        return forwarded
            .iter()
            .flat_map(|v| v.split(','))
            .filter_map(|element| {
                element.split(';').find_map(|pair| {
                    let (key, value) = pair.trim().split_once('=')?;
                    key.trim()
                        .eq_ignore_ascii_case("for")
                        .then(|| node_address(value.trim().trim_matches('"')))
                })
            })
            .collect();
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.to_str().unwrap_or(""))
        .flat_map(|v| v.split(','))
        .map(|hop| node_address(hop.trim()))
        .collect()
}

/// An address as forwarding headers write it: `192.0.2.1`,
/// `192.0.2.1:4711`, `[2001:db8::1]`, `[2001:db8::1]:4711`, `2001:db8::1`.
fn node_address(node: &str) -> Option<IpAddr> {
    if let Ok(ip) = node.parse() {
        return Some(ip);
    }
    if let Ok(socket) = node.parse::<SocketAddr>() {
        return Some(socket.ip());
    }
    node.strip_prefix('[')
        .and_then(|rest| rest.split_once(']'))
        .and_then(|(ip, _)| ip.parse().ok())
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
        Decision::UntrustedProxy => (
            StatusCode::FORBIDDEN,
            "This request came through a proxy (it carries Forwarded or X-Forwarded-For) \
             that is not in [ui] trusted_proxies, so who is reading cannot be told; set \
             [ui] token, or list the proxy in [ui] trusted_proxies.\n",
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

    fn forwarded(name: &str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
        h
    }

    #[test]
    fn an_ipv4_mapped_loopback_reader_is_loopback() {
        let access = Access::new(None, &[]);
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:4000".parse().unwrap();
        let v6: SocketAddr = "[::1]:4000".parse().unwrap();
        for peer in [mapped, v6] {
            assert!(matches!(
                access.admits(Some(peer), &HeaderMap::new()),
                Decision::Admit
            ));
        }
        let mapped_remote: SocketAddr = "[::ffff:192.0.2.7]:4000".parse().unwrap();
        assert!(matches!(
            access.admits(Some(mapped_remote), &HeaderMap::new()),
            Decision::LoopbackOnly
        ));
    }

    #[test]
    fn a_request_through_a_proxy_nobody_trusted_is_refused_without_a_token() {
        let access = Access::new(None, &[]);
        let local: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        for (name, value) in [
            ("x-forwarded-for", "192.0.2.7"),
            ("x-forwarded-for", "127.0.0.1"),
            ("forwarded", "for=192.0.2.7;proto=https"),
        ] {
            assert!(matches!(
                access.admits(Some(local), &forwarded(name, value)),
                Decision::UntrustedProxy
            ));
        }
    }

    #[test]
    fn behind_trusted_proxies_the_forwarded_client_decides() {
        let proxies: Vec<IpNet> = vec![
            "127.0.0.1/32".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ];
        let access = Access::new(None, &proxies);
        let proxy: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let admitted = |name: &str, value: &str| {
            matches!(
                access.admits(Some(proxy), &forwarded(name, value)),
                Decision::Admit
            )
        };
        // A browser on the proxy's host; one behind two trusted hops.
        assert!(admitted("x-forwarded-for", "127.0.0.1"));
        assert!(admitted("x-forwarded-for", "::1, 10.1.2.3"));
        assert!(admitted("forwarded", "for=\"[::1]:5555\", for=10.1.2.3"));
        // A remote reader, however it pads the header on the left.
        assert!(!admitted("x-forwarded-for", "192.0.2.7"));
        assert!(!admitted("x-forwarded-for", "127.0.0.1, 192.0.2.7"));
        assert!(!admitted("forwarded", "for=127.0.0.1, for=192.0.2.7"));
        assert!(!admitted("forwarded", "for=unknown"));
        // The trusted proxy itself, with no header: its own address.
        assert!(matches!(
            access.admits(Some(proxy), &HeaderMap::new()),
            Decision::Admit
        ));
    }

    #[test]
    fn without_a_token_only_loopback_reads() {
        let access = Access::new(None, &[]);
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
        let access = Access::new(Some("s3cret-token"), &[]);
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
