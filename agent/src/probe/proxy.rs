//! A vantage's forward proxy: its URL as a `[[vantage]] proxy` names it
//! (`http://`, `https://` or `socks5://[user:password@]host:port`), the
//! credentials decoded and never printed.

use std::fmt;

use serde::Deserialize;
use url::Url;

/// Which kind of forward proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyKind {
    Http,
    Https,
    Socks5,
}

/// A forward proxy, with its credentials decoded.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct ProxyUrl {
    pub kind: ProxyKind,
    pub host: String,
    pub port: u16,
    pub credentials: Option<(String, String)>,
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print credentials.
        f.write_str(&self.redacted())
    }
}

impl TryFrom<String> for ProxyUrl {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let expected = "expected http://, https:// or socks5://[USER:PASSWORD@]HOST:PORT";
        let url = Url::parse(&s).map_err(|e| format!("invalid proxy URL: {e}: {expected}"))?;
        let (kind, default_port) = match url.scheme() {
            "http" => (ProxyKind::Http, 80),
            "https" => (ProxyKind::Https, 443),
            "socks5" => (ProxyKind::Socks5, 1080),
            other => return Err(format!("invalid proxy scheme {other:?}: {expected}")),
        };
        let host = match url.host() {
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            Some(host) => host.to_string(),
            None => return Err(format!("invalid proxy URL: no host: {expected}")),
        };
        if !matches!(url.path(), "" | "/") || url.query().is_some() {
            return Err(format!(
                "invalid proxy URL: unexpected path or query: {expected}"
            ));
        }
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| "invalid proxy URL: credentials are not UTF-8".to_owned())
        };
        let credentials = if url.username().is_empty() {
            None
        } else {
            Some((
                decode(url.username())?,
                decode(url.password().unwrap_or(""))?,
            ))
        };
        Ok(Self {
            kind,
            host,
            port: url.port().unwrap_or(default_port),
            credentials,
        })
    }
}

impl ProxyUrl {
    /// The proxy's URL without credentials, safe to log and store.
    pub fn redacted(&self) -> String {
        let scheme = match self.kind {
            ProxyKind::Http => "http",
            ProxyKind::Https => "https",
            ProxyKind::Socks5 => "socks5",
        };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("{scheme}://{host}:{}", self.port)
    }

    /// The URL with credentials, for clients that take one (IP echo).
    pub fn with_credentials(&self) -> String {
        match &self.credentials {
            None => self.redacted(),
            Some((user, pass)) => {
                let enc = |s: &str| {
                    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC)
                        .to_string()
                };
                let redacted = self.redacted();
                let (scheme, rest) = redacted.split_once("://").unwrap_or(("http", &redacted));
                format!("{scheme}://{}:{}@{rest}", enc(user), enc(pass))
            }
        }
    }
}
