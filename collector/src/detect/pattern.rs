//! The failure patterns a pass tells apart (one vocabulary: `status`,
//! `connection`), and which probe outcomes are connection-level failures.

/// Outcomes that are connection-level failures: the site never answered
/// with a status. They form their own pattern, never mixed into the rate
/// of the configured statuses.
pub static CONNECTION_OUTCOMES: std::sync::LazyLock<Vec<&'static str>> =
    std::sync::LazyLock::new(|| {
        use vantage_proto::v1::Outcome;
        [
            Outcome::Dns,
            Outcome::Connect,
            Outcome::Tls,
            Outcome::Timeout,
            Outcome::Protocol,
            Outcome::Proxy,
            Outcome::Stalled,
        ]
        .map(Outcome::text)
        .to_vec()
    });

/// The two failure patterns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Pattern {
    /// A status the check counts (default 502).
    Status,
    /// A connection-level failure.
    Connection,
}

impl Pattern {
    pub const ALL: [Pattern; 2] = [Pattern::Status, Pattern::Connection];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Connection => "connection",
        }
    }

    /// The pattern stored as `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == name)
    }
}
