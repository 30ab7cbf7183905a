//! What a detection pass is configured with (the `[detector]` section,
//! parsed by [`super::config`]): pure data the plan reads.

use std::collections::HashMap;
use std::time::Duration;

use super::decision::Params;
use super::lifecycle::Hysteresis;

/// Everything the detector is configured with.
#[derive(Debug, Clone)]
pub struct DetectorSettings {
    pub interval: Duration,
    pub window: Duration,
    pub params: Params,
    pub hysteresis: Hysteresis,
    /// Statuses counted as failures unless a check says otherwise.
    pub statuses: Vec<u16>,
    /// Per check name: the statuses counted for it.
    pub check_statuses: HashMap<String, Vec<u16>>,
    pub prefix_v4: u8,
    pub prefix_v6: u8,
    /// How long `segment_rates` keeps each pass.
    pub rates_retention: Duration,
    /// The probe round assumed for results that do not say their check's
    /// interval (from agents older than the `interval_ms` field).
    pub default_round: Duration,
    /// Ask for confirmation probes when a candidate is first held.
    pub confirmation_probes: bool,
}

impl Default for DetectorSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(15),
            window: Duration::from_secs(300),
            params: Params::default(),
            hysteresis: Hysteresis::default(),
            statuses: vec![502],
            check_statuses: HashMap::new(),
            prefix_v4: 24,
            prefix_v6: 48,
            rates_retention: Duration::from_secs(3600),
            default_round: Duration::from_secs(30),
            confirmation_probes: true,
        }
    }
}

impl DetectorSettings {
    pub fn statuses_for(&self, check: &str) -> &[u16] {
        self.check_statuses
            .get(check)
            .map_or(self.statuses.as_slice(), Vec::as_slice)
    }
}
