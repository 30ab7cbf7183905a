//! The value types of the agent's configuration: each parses itself from
//! its TOML string (or number) and says what was expected.

use serde::Deserialize;
use url::Url;

/// The collector's gRPC endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Endpoint(pub(super) Url);

impl TryFrom<String> for Endpoint {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let url = Url::parse(&s).map_err(|e| format!("invalid endpoint {s:?}: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(format!(
                "invalid endpoint {s:?}: expected http://HOST:PORT or https://HOST:PORT"
            ));
        }
        Ok(Self(url))
    }
}

impl Endpoint {
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}
