//! `[database]` and where the database is: `DATABASE_URL` or
//! `database.url`, parsed without ever showing the password.

use serde::Deserialize;
use sqlx::postgres::PgConnectOptions;
use url::Url;

use super::CollectorConfig;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://...`; the `DATABASE_URL` environment variable wins.
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Daily partitions created ahead of today.
    #[serde(default = "default_partitions_ahead")]
    pub partitions_ahead_days: u64,
}

fn default_max_connections() -> u32 {
    10
}
fn default_partitions_ahead() -> u64 {
    3
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            max_connections: default_max_connections(),
            partitions_ahead_days: default_partitions_ahead(),
        }
    }
}

impl CollectorConfig {
    /// Where the database is, and which setting said so: `DATABASE_URL`
    /// if set, else `database.url`.
    pub fn database(&self) -> Result<(PgConnectOptions, &'static str), String> {
        self.database_with(std::env::var("DATABASE_URL").ok())
    }

    /// [`Self::database`] with `DATABASE_URL` given.
    pub(super) fn database_with(
        &self,
        database_url: Option<String>,
    ) -> Result<(PgConnectOptions, &'static str), String> {
        let file = self
            .file
            .as_ref()
            .map_or(String::new(), |f| format!("{}: ", f.display()));
        let (url, source) = match database_url.filter(|s| !s.is_empty()) {
            Some(url) => (url, "DATABASE_URL"),
            None => match &self.database.url {
                Some(url) => (url.clone(), "database.url"),
                None => {
                    return Err(format!(
                        "{file}database.url: not set, and neither is DATABASE_URL: expected \
                         url = \"postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE\" in the \
                         [database] table, or DATABASE_URL in the environment"
                    ));
                }
            },
        };
        database_options(&url)
            .map(|options| (options, source))
            .map_err(|e| match source {
                "database.url" => format!("{file}database.url: {e}"),
                _ => format!("{source}: {e}"),
            })
    }
}

/// Parses a PostgreSQL URL, with libpq's TLS rules ([`crate::pg_tls`]);
/// the error never shows the password.
pub fn database_options(url: &str) -> Result<PgConnectOptions, String> {
    let expected = "expected postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE";
    let parsed = Url::parse(url).map_err(|e| format!("not a URL ({e}): {expected}"))?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err(format!(
            "unsupported scheme {:?}: {expected}",
            parsed.scheme()
        ));
    }
    let hide_password = |message: String| match parsed.password().filter(|p| !p.is_empty()) {
        Some(password) => message.replace(password, "***"),
        None => message,
    };
    let options = url
        .parse::<PgConnectOptions>()
        .map_err(|e| format!("{}: {expected}", hide_password(e.to_string())))?;
    crate::pg_tls::libpq_rules(options, &parsed).map_err(hide_password)
}
