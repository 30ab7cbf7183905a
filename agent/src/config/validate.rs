//! The agent configuration's rules that serde cannot see one value at a
//! time: sensible ranges for every duration and count (so a config that
//! passes `--check-config` never panics or spins at run time), and
//! relations between keys.

use std::collections::HashSet;

use super::units::{DAY, MINUTE, MS, SECOND, YEAR};
use super::{AgentConfig, DIRECT_VANTAGE, Problem, count_within, duration_within};

impl AgentConfig {
    /// The first rule this configuration breaks.
    pub(super) fn validate(&self) -> Result<(), Problem> {
        count_within(
            "max_concurrent_probes",
            self.max_concurrent_probes,
            1,
            10_000,
        )?;
        self.validate_collector()?;
        let spool = &self.spool;
        count_within("spool.max_bytes", spool.max_bytes, 4096, 1 << 40)?;
        duration_within("spool.max_age", spool.max_age, MINUTE, YEAR)?;
        duration_within("spool.sync_interval", spool.sync_interval, 10 * MS, MINUTE)?;
        count_within(
            "spool.memory_capacity",
            spool.memory_capacity,
            1,
            10_000_000,
        )?;
        let dns = &self.dns;
        if dns.resolvers.is_empty() {
            return Err(Problem::new(
                "dns.resolvers",
                "expected at least one resolver",
            ));
        }
        duration_within("dns.timeout", dns.timeout, 10 * MS, MINUTE)?;
        duration_within(
            "dns.identity_interval",
            dns.identity_interval,
            SECOND,
            7 * DAY,
        )?;
        if let Err(invalid) = self.path.validate() {
            return Err(Problem::new(
                format!("path.{}", invalid.key),
                format!(
                    "{} is out of range: expected {}",
                    invalid.value, invalid.expected
                ),
            ));
        }
        let vantage_names = self.validate_vantages()?;
        self.validate_checks(&vantage_names)
    }

    fn validate_collector(&self) -> Result<(), Problem> {
        let collector = &self.collector;
        count_within("collector.batch_size", collector.batch_size, 1, 100_000)?;
        count_within("collector.window", collector.window, 1, 1024)?;
        if collector.token.is_some() == collector.token_file.is_some() {
            return Err(Problem::new(
                "collector",
                "expected exactly one of token or token_file (see `vantage-collector agent add`)",
            ));
        }
        if collector
            .token
            .as_deref()
            .is_some_and(|token| token.trim().is_empty())
        {
            return Err(Problem::new(
                "collector.token",
                "expected the token `vantage-collector agent add` printed, not an empty string",
            ));
        }
        let keyed = match (&collector.endpoint, collector.endpoints.is_empty()) {
            (Some(_), true) => vec![(
                "collector.endpoint".to_owned(),
                collector.endpoint.iter().next(),
            )],
            (None, false) => collector
                .endpoints
                .iter()
                .enumerate()
                .map(|(i, e)| (format!("collector.endpoints[{i}]"), Some(e)))
                .collect(),
            _ => {
                return Err(Problem::new(
                    "collector",
                    "expected exactly one of endpoint (one collector) or endpoints (a list of \
                     collectors on one database, tried in turn)",
                ));
            }
        };
        for (key, endpoint) in keyed {
            let Some(endpoint) = endpoint else { continue };
            if endpoint.plaintext_beyond_loopback() && !collector.insecure {
                return Err(Problem::new(
                    key,
                    format!(
                        "{} is plaintext to a non-loopback host: the token would be readable on \
                         the network. Use https://, or set insecure = true to accept that",
                        endpoint.as_str()
                    ),
                ));
            }
        }
        if collector.client_cert_file.is_some() != collector.client_key_file.is_some() {
            return Err(Problem::new(
                "collector",
                "client_cert_file and client_key_file go together",
            ));
        }
        Ok(())
    }

    /// The vantage names checks may refer to.
    fn validate_vantages(&self) -> Result<HashSet<&str>, Problem> {
        let mut names = HashSet::new();
        for (i, vantage) in self.vantages.iter().enumerate() {
            let name = vantage.name.get_ref().as_str();
            if !names.insert(name) {
                return Err(Problem::new(
                    format!("vantage[{i}].name"),
                    format!("duplicate vantage name {name:?}: expected unique names"),
                )
                .at(vantage.name.span()));
            }
            duration_within(
                format!("vantage[{i}].ip_echo_interval"),
                vantage.ip_echo_interval,
                SECOND,
                7 * DAY,
            )?;
        }
        if self.vantages.is_empty() {
            names.insert(DIRECT_VANTAGE);
        }
        Ok(names)
    }

    fn validate_checks(&self, vantage_names: &HashSet<&str>) -> Result<(), Problem> {
        let mut names = HashSet::new();
        for (i, check) in self.checks.iter().enumerate() {
            if !names.insert(check.name.get_ref().as_str()) {
                return Err(Problem::new(
                    format!("check[{i}].name"),
                    format!(
                        "duplicate check name {:?}: expected unique names",
                        check.name.get_ref().as_str()
                    ),
                )
                .at(check.name.span()));
            }
            check.validate(&format!("check[{i}]"), Some(vantage_names))?;
        }
        Ok(())
    }
}
