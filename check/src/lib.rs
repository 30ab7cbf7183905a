//! A check's definition: the `[[check]]` table both programs read. The
//! agent runs checks (from its own config or assigned centrally); the
//! collector stores and assigns them (`check apply`, probe requests), so
//! it validates them exactly as an agent would.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use vantage_service::config::units::{DAY, MS, SECOND, YEAR};
use vantage_service::config::{Problem, count_within, duration_within, parse_toml};

mod values;
pub use values::{BodyPattern, Method, NonEmpty, ResolverSpec, StatusCode, TargetUrl};

/// One target URL probed on a schedule.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckConfig {
    pub name: Spanned<NonEmpty>,
    pub url: TargetUrl,
    #[serde(with = "humantime_serde", default = "default_check_interval")]
    pub interval: Duration,
    #[serde(with = "humantime_serde", default = "default_timeout")]
    pub timeout: Duration,
    #[serde(default)]
    pub method: Method,
    /// Statuses that count as success; empty means any 2xx or 3xx.
    #[serde(default)]
    pub expected_status: Vec<StatusCode>,
    /// Resolvers for this check (one result per resolver per round);
    /// default: `[dns] resolvers`.
    #[serde(default)]
    pub resolvers: Option<Vec<ResolverSpec>>,
    /// Which address families to resolve and dial.
    #[serde(default)]
    pub ip_family: IpFamily,
    /// Dial the first answer, or each (one result per address).
    #[serde(default)]
    pub dial: Dial,
    /// Redirects followed at most; 0 (default) makes a 3xx the result.
    #[serde(default)]
    pub follow_redirects: u8,
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Body bytes read and hashed at most; the rest is not downloaded.
    #[serde(default = "default_body_hash_bytes")]
    pub body_hash_bytes: usize,
    /// A certificate expiring sooner than this fails the probe as
    /// `cert_expiry`; 0 turns the check off.
    #[serde(default = "default_cert_expiry_threshold", with = "humantime_serde")]
    pub cert_expiry_threshold: Duration,
    /// Probe a link-local or cloud metadata address (refused otherwise:
    /// an agent on a cloud host would fetch its own credentials).
    #[serde(default)]
    pub allow_link_local: bool,
    /// PEM file of extra CAs trusted for this check (private PKI).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Accept whatever certificate the site presents (self-signed, an
    /// unknown CA, another name, a CA certificate as its own): the
    /// handshake still runs and is timed, and every result records that
    /// it was not verified. Warned at load.
    #[serde(default)]
    pub tls_insecure_skip_verify: bool,
    /// The name sent as SNI and verified in the certificate, instead of
    /// the URL's host (a site reached by address, or another name).
    #[serde(default)]
    pub tls_server_name: Option<NonEmpty>,
    /// The `Host` header (HTTP/2 `:authority`) sent instead of the URL's
    /// host and port (a virtual host reached by address).
    #[serde(default)]
    pub host_header: Option<NonEmpty>,
    /// The probe fails as `body_match` when any of these matches the body
    /// read (at most `body_hash_bytes` of it).
    #[serde(default)]
    pub fail_if_body_matches: Vec<BodyPattern>,
    /// The probe fails as `body_match` when any of these does not match
    /// the body read.
    #[serde(default)]
    pub fail_if_body_not_matches: Vec<BodyPattern>,
    /// A file of request headers, `Name: value` a line (`#` comments),
    /// read at every probe (a rotated secret is used from the next one)
    /// and refused when group or others may read it: secrets such as
    /// `Authorization` stay out of the check file.
    #[serde(default)]
    pub headers_file: Option<PathBuf>,
    /// HTTP version offered: `auto` (ALPN h2 and http/1.1 on https, 1.1 on
    /// http), `1.1`, or `2` (h2 by ALPN, or prior knowledge on http).
    #[serde(default)]
    pub http_version: HttpVersion,
    /// The vantages this check runs from; default: all.
    #[serde(default)]
    pub vantages: Option<Vec<String>>,
    /// Trace the path to where the probe went after a round at most this
    /// often, per vantage (the agent's `[path]` settings bound it); off
    /// when absent.
    #[serde(default, with = "humantime_serde")]
    pub path_interval: Option<Duration>,
    /// Where the check comes from (not a key: set by whoever made it).
    #[serde(skip)]
    pub origin: CheckOrigin,
}

fn default_body_hash_bytes() -> usize {
    64 * 1024
}
fn default_cert_expiry_threshold() -> Duration {
    // A week: enough warning to renew, late enough not to page on every
    // certificate in its last renewal window.
    Duration::from_secs(7 * 24 * 3600)
}

/// The address families a check resolves and dials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpFamily {
    #[default]
    Any,
    V4,
    V6,
}

/// Which resolved addresses a check dials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dial {
    #[default]
    First,
    Each,
}

/// The HTTP version a check offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
pub enum HttpVersion {
    #[default]
    #[serde(rename = "auto")]
    Auto,
    #[serde(rename = "1.1")]
    Http1,
    #[serde(rename = "2")]
    Http2,
}

/// A check's interval when its `interval` key is absent.
pub fn default_check_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

/// Where a check comes from; its results say so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CheckOrigin {
    /// Assigned by the collector: the version it last changed in. `None`:
    /// a `[[check]]` of this agent's config.
    pub central_version: Option<u64>,
    /// Run once for a probe request. `None`: on schedule.
    pub request_id: Option<u64>,
}

impl CheckConfig {
    /// One check from the text of a `[[check]]` table (as the collector
    /// sends it), validated as a config's own check would be against the
    /// agent's vantage names. Errors name the key and say what was
    /// expected; `what` names the check's source in them.
    pub fn from_table_text(
        what: &str,
        table: &str,
        vantage_names: &std::collections::HashSet<&str>,
    ) -> Result<Self, String> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct One {
            check: [CheckConfig; 1],
        }
        // As a config's first [[check]]: errors are located and named as
        // the same keys in an agent.toml would be.
        let path = Path::new(what);
        let table: toml::Table = parse_toml(path, table).map_err(|e| e.to_string())?;
        let mut document = toml::Table::new();
        document.insert("check".into(), toml::Value::Array(vec![table.into()]));
        let text = toml::to_string(&document).map_err(|e| format!("{what}: {e}"))?;
        let One { check: [check] } = parse_toml(path, &text).map_err(|e| e.to_string())?;
        check
            .validate("check[0]", Some(vantage_names))
            .map_err(|p| p.into_error(path, &text).to_string())?;
        Ok(check)
    }
}

impl CheckConfig {
    /// What to warn about a check that is allowed to probe a link-local or
    /// metadata address.
    pub fn link_local_warning(&self) -> Option<String> {
        let what = self.url.link_local()?;
        Some(format!(
            "check {:?}: {} is {what} (allowed by allow_link_local = true)",
            self.name.get_ref().as_str(),
            self.url.url()
        ))
    }

    /// Everything to warn about this check when it is loaded or applied.
    pub fn warnings(&self) -> Vec<String> {
        [self.link_local_warning(), self.insecure_warning()]
            .into_iter()
            .flatten()
            .collect()
    }

    /// What to warn about a check that accepts any certificate.
    pub fn insecure_warning(&self) -> Option<String> {
        self.tls_insecure_skip_verify.then(|| {
            format!(
                "check {:?}: the certificate of {} is not verified (tls_insecure_skip_verify = \
                 true): an impostor would pass; every result records it",
                self.name.get_ref().as_str(),
                self.url.url()
            )
        })
    }

    /// The headers of `headers_file`, read now; none without one. Errors
    /// name the file (and line) and never show a value.
    pub fn file_headers(&self) -> Result<Vec<(http::HeaderName, http::HeaderValue)>, String> {
        let Some(path) = &self.headers_file else {
            return Ok(Vec::new());
        };
        let text = vantage_service::config::read_secret_file("headers_file", path)?;
        parse_headers(&text)
            .map_err(|(line, what)| format!("headers_file {}:{line}: {what}", path.display()))
    }

    /// Whether `status` counts as success for this check.
    pub fn expects(&self, status: u16) -> bool {
        if self.expected_status.is_empty() {
            (200..400).contains(&status)
        } else {
            self.expected_status.iter().any(|s| s.0 == status)
        }
    }
}

impl CheckConfig {
    /// The rules of one check, its keys named under `prefix` (e.g.
    /// `check[2]`); `vantage_names`: the vantages it may name, when known
    /// (a check defined centrally is checked against each agent's later).
    pub fn validate(
        &self,
        prefix: &str,
        vantage_names: Option<&HashSet<&str>>,
    ) -> Result<(), Problem> {
        let check = self;
        let key = |field: &str| format!("{prefix}.{field}");
        duration_within(key("interval"), check.interval, 100 * MS, DAY)?;
        if check.timeout.is_zero() || check.timeout > check.interval {
            return Err(Problem::new(
                key("timeout"),
                format!(
                    "timeout {:?} must be non-zero and at most the interval {:?}, so a check \
                     never overlaps itself",
                    check.timeout, check.interval
                ),
            ));
        }
        if let Some(every) = check.path_interval {
            duration_within(key("path_interval"), every, 10 * SECOND, DAY)?;
        }
        duration_within(
            key("cert_expiry_threshold"),
            check.cert_expiry_threshold,
            Duration::ZERO,
            10 * YEAR,
        )?;
        if check.resolvers.as_ref().is_some_and(Vec::is_empty) {
            return Err(Problem::new(
                key("resolvers"),
                "expected at least one resolver (or no key, for [dns] resolvers)",
            ));
        }
        for name in check.vantages.iter().flatten() {
            if vantage_names.is_some_and(|known| !known.contains(name.as_str())) {
                return Err(Problem::new(
                    key("vantages"),
                    format!("unknown vantage {name:?}: expected one of the [[vantage]] names"),
                ));
            }
        }
        if let Some(what) = check.url.link_local()
            && !check.allow_link_local
        {
            return Err(Problem::new(
                key("url"),
                format!(
                    "{} is {what}: set allow_link_local = true on the check if it is meant",
                    check.url.url()
                ),
            ));
        }
        let https = check.url.url().scheme() == "https";
        if check.tls_insecure_skip_verify && !https {
            return Err(Problem::new(
                key("tls_insecure_skip_verify"),
                "applies to https:// URLs only",
            ));
        }
        if let Some(name) = &check.tls_server_name {
            if !https {
                return Err(Problem::new(
                    key("tls_server_name"),
                    "applies to https:// URLs only",
                ));
            }
            let valid = name.as_str().parse::<std::net::IpAddr>().is_ok()
                || matches!(url::Host::parse(name.as_str()), Ok(url::Host::Domain(_)));
            if !valid {
                return Err(Problem::new(
                    key("tls_server_name"),
                    format!(
                        "expected a DNS name or an IP address, got {:?}",
                        name.as_str()
                    ),
                ));
            }
        }
        if let Some(host) = &check.host_header
            && (http::HeaderValue::from_str(host.as_str()).is_err()
                || host.as_str().contains(char::is_whitespace)
                || http::uri::Authority::try_from(host.as_str()).is_err())
        {
            return Err(Problem::new(
                key("host_header"),
                format!("expected HOST or HOST:PORT, got {:?}", host.as_str()),
            ));
        }
        count_within(key("follow_redirects"), check.follow_redirects, 0, 20)?;
        count_within(key("body_hash_bytes"), check.body_hash_bytes, 0, 16 << 20)?;
        for (name, value) in &check.headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err()
                || http::HeaderValue::from_str(value).is_err()
            {
                return Err(Problem::new(
                    format!("{prefix}.headers.{name}"),
                    "expected a valid HTTP header name and value",
                ));
            }
        }
        Ok(())
    }
}

/// `Name: value` lines, `#` comments and blank lines skipped; an error is
/// its line and what was expected.
fn parse_headers(
    text: &str,
) -> Result<Vec<(http::HeaderName, http::HeaderValue)>, (usize, String)> {
    let mut headers = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err((n + 1, "expected `Name: value`".into()));
        };
        let name = http::HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| (n + 1, format!("invalid header name {:?}", name.trim())))?;
        let value = http::HeaderValue::from_str(value.trim())
            .map_err(|_| (n + 1, format!("invalid value for header {name}")))?;
        headers.push((name, value));
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(extra: &str) -> Result<CheckConfig, String> {
        CheckConfig::from_table_text(
            "checks.toml",
            &format!("name = \"a\"\n{extra}"),
            &std::collections::HashSet::new(),
        )
    }

    #[test]
    fn a_url_with_credentials_is_refused_without_showing_them() {
        let e = check("url = \"https://user:hunter2@shop.example.com/\"").unwrap_err();
        assert!(e.contains("carries credentials"), "{e}");
        assert!(e.contains("headers.Authorization"), "{e}");
        assert!(!e.contains("hunter2") && !e.contains("user:"), "{e}");
        assert!(check("url = \"https://user@shop.example.com/\"").is_err());
    }

    #[test]
    fn link_local_and_metadata_addresses_are_refused_in_every_spelling_unless_allowed() {
        for url in [
            "http://169.254.169.254/latest/meta-data/",
            "http://0xa9fea9fe/",
            "http://2852039166/",
            "http://0251.0376.0251.0376/",
            "http://[::ffff:169.254.169.254]/",
            "http://[fe80::1]/",
            "http://[fd00:ec2::254]/",
            "http://metadata.google.internal/",
            "http://METADATA.google.internal./",
        ] {
            let e = check(&format!("url = \"{url}\"")).unwrap_err();
            assert!(e.contains("check[0].url"), "{url}: {e}");
            assert!(e.contains("allow_link_local = true"), "{url}: {e}");
            let allowed = check(&format!("url = \"{url}\"\nallow_link_local = true")).unwrap();
            assert!(allowed.link_local_warning().is_some(), "{url}");
        }
        let fine = check("url = \"http://169.255.0.1/\"").unwrap();
        assert!(fine.link_local_warning().is_none());
    }

    #[test]
    fn tls_options_apply_to_https_only_and_names_are_checked() {
        let e = check("url = \"http://shop.example.com/\"\ntls_insecure_skip_verify = true")
            .unwrap_err();
        assert!(
            e.contains("check[0].tls_insecure_skip_verify") && e.contains("https://"),
            "{e}"
        );
        let e = check("url = \"http://shop.example.com/\"\ntls_server_name = \"a.example\"")
            .unwrap_err();
        assert!(e.contains("check[0].tls_server_name"), "{e}");
        let e = check("url = \"https://10.0.0.1/\"\ntls_server_name = \"not a name\"").unwrap_err();
        assert!(e.contains("expected a DNS name or an IP address"), "{e}");
        let ok = check(
            "url = \"https://10.0.0.1/\"\ntls_server_name = \"shop.example.com\"\n\
             tls_insecure_skip_verify = true\nhost_header = \"shop.example.com:8443\"",
        )
        .unwrap();
        assert!(ok.insecure_warning().unwrap().contains("not verified"));
        let e = check("url = \"https://10.0.0.1/\"\nhost_header = \"a b\"").unwrap_err();
        assert!(
            e.contains("check[0].host_header") && e.contains("HOST:PORT"),
            "{e}"
        );
    }

    #[test]
    fn a_body_pattern_that_does_not_compile_is_refused_at_its_key() {
        let e = check("url = \"https://a.example/\"\nfail_if_body_matches = [\"(unclosed\"]")
            .unwrap_err();
        assert!(
            e.contains("fail_if_body_matches") && e.contains("invalid regular expression"),
            "{e}"
        );
        let ok =
            check("url = \"https://a.example/\"\nfail_if_body_not_matches = [\"(?i)healthy\"]")
                .unwrap();
        assert!(ok.fail_if_body_not_matches[0].is_match("all HEALTHY"));
    }

    #[test]
    fn a_headers_file_is_read_when_private_and_its_errors_name_the_line() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("headers");
        std::fs::write(
            &path,
            "# the API's token\nAuthorization: Bearer s3cret\n\nX-Team: edge\n",
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let c = check(&format!(
            "url = \"https://a.example/\"\nheaders_file = \"{}\"",
            path.display()
        ))
        .unwrap();
        let e = c.file_headers().unwrap_err();
        assert!(e.contains("headers_file") && e.contains("chmod 600"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let headers = c.file_headers().unwrap();
        assert_eq!(headers.len(), 2);
        assert_eq!(headers[0].0, "authorization");
        assert_eq!(headers[0].1, "Bearer s3cret");
        std::fs::write(&path, "Authorization Bearer s3cret\n").unwrap();
        let e = c.file_headers().unwrap_err();
        assert!(
            e.contains(":1: expected `Name: value`") && !e.contains("s3cret"),
            "{e}"
        );
    }
}
