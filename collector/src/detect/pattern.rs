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

vocabulary! {
    /// The two failure patterns (`incidents.pattern`).
    pub enum Pattern {
        /// A status the check counts (default 502).
        Status = "status",
        /// A connection-level failure.
        Connection = "connection",
    }
}
