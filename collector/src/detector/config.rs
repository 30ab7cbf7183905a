//! `[detector]`: when and how 502 patterns are found, as configured; the
//! docs/detection.md explains each default. Checked by [`DetectorConfig::problem`]
//! (the collector's config loader names the key).

use std::time::Duration;

use serde::Deserialize;
use vantage_service::config::units::{DAY, HOUR, MINUTE, MS, YEAR};
use vantage_service::config::{Problem, count_within, duration_within};

use crate::detect::decision::Params;
use crate::detect::lifecycle::Hysteresis;
use crate::detect::settings::DetectorSettings;

/// `[detector]`: when and how 502 patterns are found. docs/detection.md explains
/// each default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorConfig {
    #[serde(with = "humantime_serde", default = "default_detect_interval")]
    pub interval: Duration,
    #[serde(with = "humantime_serde", default = "default_window")]
    pub window: Duration,
    /// Statuses counted as failures (default `[502]`).
    #[serde(default = "default_statuses")]
    pub statuses: Vec<u16>,
    /// Per-check overrides of `statuses`.
    #[serde(default, rename = "check")]
    pub checks: Vec<CheckStatuses>,
    /// Deprecated (detection v2 weighs small samples with the exact test
    /// over several windows instead): accepted, ignored with a warning.
    #[serde(default)]
    pub min_probes: Option<u64>,
    #[serde(default = "default_min_vantages")]
    pub min_vantages: usize,
    #[serde(default = "default_min_rate_difference")]
    pub min_rate_difference: Rate,
    #[serde(default = "default_min_rate_ratio")]
    pub min_rate_ratio: f64,
    #[serde(default = "default_alpha")]
    pub alpha: Rate,
    #[serde(default = "default_global_rate")]
    pub global_rate: Rate,
    #[serde(default = "default_global_baseline")]
    pub global_baseline: Rate,
    #[serde(default = "default_open_after")]
    pub open_after: u32,
    #[serde(default = "default_resolve_after")]
    pub resolve_after: u32,
    #[serde(with = "humantime_serde", default = "default_resolve_quiet")]
    pub resolve_quiet: Duration,
    #[serde(default = "default_update_after")]
    pub update_after: u32,
    /// A failure explained like an incident resolved less than this long
    /// ago reopens it. Default: twice `resolve_quiet`.
    #[serde(with = "humantime_serde", default)]
    pub reopen_within: Option<Duration>,
    /// The probe round of results that do not carry their check's
    /// interval (older agents).
    #[serde(with = "humantime_serde", default = "default_round")]
    pub default_round: Duration,
    #[serde(default = "default_prefix_v4")]
    pub egress_prefix_v4: u8,
    #[serde(default = "default_prefix_v6")]
    pub egress_prefix_v6: u8,
    #[serde(with = "humantime_serde", default = "default_rates_retention")]
    pub rates_retention: Duration,
    /// Ask for probes from inside and outside a candidate segment as soon
    /// as it is first held, and count a reproduced failure as a second
    /// observation (default true).
    #[serde(default = "default_confirmation_probes")]
    pub confirmation_probes: bool,
}

fn default_confirmation_probes() -> bool {
    DetectorSettings::default().confirmation_probes
}

/// `[[detector.check]]`: the statuses counted for one check name.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckStatuses {
    pub name: String,
    pub statuses: Vec<u16>,
}

fn default_detect_interval() -> Duration {
    DetectorSettings::default().interval
}
fn default_window() -> Duration {
    DetectorSettings::default().window
}
fn default_statuses() -> Vec<u16> {
    DetectorSettings::default().statuses
}
fn default_global_baseline() -> Rate {
    Rate(Params::default().global_baseline)
}
fn default_update_after() -> u32 {
    Hysteresis::default().update_after
}
fn default_round() -> Duration {
    DetectorSettings::default().default_round
}
fn default_min_vantages() -> usize {
    Params::default().min_vantages
}
fn default_min_rate_difference() -> Rate {
    Rate(Params::default().min_rate_difference)
}
fn default_min_rate_ratio() -> f64 {
    Params::default().min_rate_ratio
}
fn default_alpha() -> Rate {
    Rate(Params::default().alpha)
}
fn default_global_rate() -> Rate {
    Rate(Params::default().global_rate)
}
fn default_open_after() -> u32 {
    Hysteresis::default().open_after
}
fn default_resolve_after() -> u32 {
    Hysteresis::default().resolve_after
}
fn default_resolve_quiet() -> Duration {
    Hysteresis::default().resolve_quiet
}
fn default_prefix_v4() -> u8 {
    DetectorSettings::default().prefix_v4
}
fn default_prefix_v6() -> u8 {
    DetectorSettings::default().prefix_v6
}
fn default_rates_retention() -> Duration {
    DetectorSettings::default().rates_retention
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            interval: default_detect_interval(),
            window: default_window(),
            statuses: default_statuses(),
            checks: Vec::new(),
            min_probes: None,
            global_baseline: default_global_baseline(),
            update_after: default_update_after(),
            reopen_within: None,
            default_round: default_round(),
            min_vantages: default_min_vantages(),
            min_rate_difference: default_min_rate_difference(),
            min_rate_ratio: default_min_rate_ratio(),
            alpha: default_alpha(),
            global_rate: default_global_rate(),
            open_after: default_open_after(),
            resolve_after: default_resolve_after(),
            resolve_quiet: default_resolve_quiet(),
            egress_prefix_v4: default_prefix_v4(),
            egress_prefix_v6: default_prefix_v6(),
            rates_retention: default_rates_retention(),
            confirmation_probes: default_confirmation_probes(),
        }
    }
}

impl DetectorConfig {
    /// The detector's settings.
    pub fn settings(&self) -> DetectorSettings {
        DetectorSettings {
            interval: self.interval,
            window: self.window,
            params: Params {
                min_vantages: self.min_vantages,
                min_rate_difference: self.min_rate_difference.0,
                min_rate_ratio: self.min_rate_ratio,
                alpha: self.alpha.0,
                global_rate: self.global_rate.0,
                global_baseline: self.global_baseline.0,
                ..Params::default()
            },
            hysteresis: Hysteresis {
                open_after: self.open_after,
                resolve_after: self.resolve_after,
                resolve_quiet: self.resolve_quiet,
                update_after: self.update_after,
                reopen_within: self
                    .reopen_within
                    .unwrap_or(self.resolve_quiet.saturating_mul(2)),
            },
            statuses: self.statuses.clone(),
            confirmation_probes: self.confirmation_probes,
            check_statuses: self
                .checks
                .iter()
                .map(|c| (c.name.clone(), c.statuses.clone()))
                .collect(),
            prefix_v4: self.egress_prefix_v4,
            prefix_v6: self.egress_prefix_v6,
            rates_retention: self.rates_retention,
            default_round: self.default_round,
        }
    }

    /// The first setting that makes no sense. Durations stay within
    /// ranges that the clock arithmetic of a pass cannot overflow.
    pub fn validate(&self) -> Result<(), Problem> {
        let bad_statuses = |s: &[u16]| s.is_empty() || s.iter().any(|s| !(100..=599).contains(s));
        const STATUSES: &str = "expected a non-empty list of HTTP statuses (100-599)";
        duration_within("detector.interval", self.interval, 100 * MS, HOUR)?;
        duration_within("detector.window", self.window, self.interval, 30 * DAY)?;
        duration_within(
            "detector.resolve_quiet",
            self.resolve_quiet,
            Duration::ZERO,
            30 * DAY,
        )?;
        if let Some(reopen) = self.reopen_within {
            duration_within("detector.reopen_within", reopen, Duration::ZERO, 30 * DAY)?;
        }
        duration_within("detector.default_round", self.default_round, 100 * MS, DAY)?;
        duration_within(
            "detector.rates_retention",
            self.rates_retention,
            MINUTE,
            10 * YEAR,
        )?;
        if bad_statuses(&self.statuses) {
            return Err(Problem::new("detector.statuses", STATUSES));
        }
        for (i, c) in self.checks.iter().enumerate() {
            if bad_statuses(&c.statuses) {
                return Err(Problem::new(
                    format!("detector.check[{i}].statuses"),
                    STATUSES,
                ));
            }
        }
        count_within("detector.min_vantages", self.min_vantages, 1, 1000)?;
        if self.min_rate_difference.0 <= 0.0 {
            return Err(Problem::new(
                "detector.min_rate_difference",
                "expected a fraction above 0 (a uniform rate must never flag)",
            ));
        }
        if !(self.min_rate_ratio >= 1.0 && self.min_rate_ratio.is_finite()) {
            return Err(Problem::new(
                "detector.min_rate_ratio",
                "expected a ratio >= 1.0",
            ));
        }
        if self.alpha.0 <= 0.0 || self.alpha.0 >= 1.0 {
            return Err(Problem::new(
                "detector.alpha",
                "expected a significance level between 0 and 1, exclusive",
            ));
        }
        count_within("detector.open_after", self.open_after, 1, 1000)?;
        count_within("detector.resolve_after", self.resolve_after, 1, 1000)?;
        count_within("detector.update_after", self.update_after, 1, 1000)?;
        if self.global_baseline.0 <= 0.0 || self.global_baseline.0 >= self.global_rate.0 {
            return Err(Problem::new(
                "detector.global_baseline",
                "expected a background rate above 0 and below global_rate",
            ));
        }
        // A shorter prefix puts unrelated networks in one egress segment.
        count_within("detector.egress_prefix_v4", self.egress_prefix_v4, 8, 32)?;
        count_within("detector.egress_prefix_v6", self.egress_prefix_v6, 16, 128)?;
        Ok(())
    }
}

/// A fraction in `[0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(try_from = "f64")]
pub struct Rate(pub f64);

impl TryFrom<f64> for Rate {
    type Error = String;
    fn try_from(v: f64) -> Result<Self, String> {
        if (0.0..=1.0).contains(&v) {
            Ok(Self(v))
        } else {
            Err(format!(
                "invalid rate {v}: expected a fraction between 0.0 and 1.0"
            ))
        }
    }
}
