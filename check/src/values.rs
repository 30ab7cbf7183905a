//! The value types of a check: each parses itself from its TOML string
//! (or number) and says what was expected.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use serde::Deserialize;
use url::Url;

/// One nameserver, or the system's configuration.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Default, Deserialize)]
#[serde(try_from = "String")]
pub enum ResolverSpec {
    #[default]
    System,
    Udp(SocketAddr),
    Tcp(SocketAddr),
}

impl FromStr for ResolverSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let expected = "expected `system`, `IP:PORT`, `udp://IP:PORT` or `tcp://IP:PORT`";
        if s == "system" {
            return Ok(Self::System);
        }
        let (ctor, rest): (fn(SocketAddr) -> Self, &str) = if let Some(r) = s.strip_prefix("tcp://")
        {
            (Self::Tcp, r)
        } else if let Some(r) = s.strip_prefix("udp://") {
            (Self::Udp, r)
        } else {
            (Self::Udp, s)
        };
        rest.parse::<SocketAddr>()
            .map(ctor)
            .map_err(|_| format!("invalid resolver {s:?}: {expected}"))
    }
}

impl TryFrom<String> for ResolverSpec {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl fmt::Display for ResolverSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::System => f.write_str("system"),
            Self::Udp(a) => write!(f, "udp://{a}"),
            Self::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

/// A string that must not be empty or blank.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct NonEmpty(String);

impl TryFrom<String> for NonEmpty {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.trim().is_empty() {
            Err("expected a non-empty string".into())
        } else {
            Ok(Self(s))
        }
    }
}

impl NonEmpty {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NonEmpty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An `http://` or `https://` URL with a host.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct TargetUrl(Url);

impl TryFrom<String> for TargetUrl {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let url = Url::parse(&s).map_err(|e| format!("invalid URL {s:?}: {e}"))?;
        if !url.username().is_empty() || url.password().is_some() {
            let mut shown = url.clone();
            let _ = shown.set_username("***");
            let _ = shown.set_password(None);
            return Err(format!(
                "URL {:?} carries credentials (a user name or password before the host): the URL is stored and shown \
                 wherever its results are (pages, incident pages, SQL), so send them as a \
                 header instead (headers.Authorization = \"Basic …\")",
                shown.as_str()
            ));
        }
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("invalid URL {s:?}: expected scheme http or https"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("invalid URL {s:?}: expected a host"));
        }
        Ok(Self(url))
    }
}

impl TargetUrl {
    pub fn url(&self) -> &Url {
        &self.0
    }

    /// What makes the host a link-local or cloud metadata address, in
    /// whatever spelling it was written (`169.254.169.254`, `0xa9fea9fe`,
    /// `[::ffff:169.254.169.254]`, `fe80::1`, `metadata.google.internal`):
    /// the URL parser has already turned numeric spellings into addresses.
    pub fn link_local(&self) -> Option<&'static str> {
        match self.0.host()? {
            url::Host::Ipv4(v4) => link_local_ip(std::net::IpAddr::V4(v4)),
            url::Host::Ipv6(v6) => link_local_ip(std::net::IpAddr::V6(v6)),
            url::Host::Domain(name) => {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                METADATA_NAMES
                    .contains(&name.as_str())
                    .then_some("a cloud metadata service's name")
            }
        }
    }
}

/// Names cloud metadata services answer on.
const METADATA_NAMES: &[&str] = &[
    "metadata.google.internal",
    "metadata",
    "instance-data",
    "instance-data.ec2.internal",
    "metadata.azure.internal",
];

fn link_local_ip(ip: std::net::IpAddr) -> Option<&'static str> {
    match ip.to_canonical() {
        std::net::IpAddr::V4(v4) if v4.is_link_local() => {
            Some("a link-local address (169.254.0.0/16: cloud metadata services live there)")
        }
        std::net::IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80 => {
            Some("a link-local address (fe80::/10)")
        }
        // AWS's IPv6 metadata service.
        std::net::IpAddr::V6(v6)
            if v6 == std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) =>
        {
            Some("a cloud metadata service's address")
        }
        _ => None,
    }
}

/// HTTP method of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    #[default]
    Get,
    Head,
    Post,
    Options,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Head => "HEAD",
            Self::Post => "POST",
            Self::Options => "OPTIONS",
        }
    }
}

/// An HTTP status code, 100..=599.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "u16")]
pub struct StatusCode(pub u16);

impl TryFrom<u16> for StatusCode {
    type Error = String;
    fn try_from(v: u16) -> Result<Self, String> {
        if (100..=599).contains(&v) {
            Ok(Self(v))
        } else {
            Err(format!("invalid status {v}: expected 100..=599"))
        }
    }
}

/// A regular expression a response body is matched against
/// (`fail_if_body_matches`, `fail_if_body_not_matches`), over the bytes
/// read (at most `body_hash_bytes`); bytes that are not UTF-8 read as
/// U+FFFD.
#[derive(Clone, Deserialize)]
#[serde(try_from = "String")]
pub struct BodyPattern(regex_lite::Regex);

impl BodyPattern {
    /// Whether the pattern occurs in `body` (the bytes read, as text).
    pub fn is_match(&self, body: &str) -> bool {
        self.0.is_match(body)
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl TryFrom<String> for BodyPattern {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        // Bounded: a pattern compiles to at most 1 MiB of automaton, so a
        // check file cannot make the agent build a huge one.
        regex_lite::RegexBuilder::new(&s)
            .size_limit(1 << 20)
            .build()
            .map(Self)
            .map_err(|e| format!("invalid regular expression {s:?}: {e}"))
    }
}

impl PartialEq for BodyPattern {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl fmt::Debug for BodyPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}/", self.as_str())
    }
}
