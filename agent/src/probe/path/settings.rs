//! How path probes are bounded: the agent's `[path]` settings (what
//! carries the probes, hops, probes per hop, timeouts, concurrency), their
//! defaults and their ranges.

use std::time::Duration;

use serde::Deserialize;

/// What carries the hop probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PathProtocol {
    /// UDP datagrams to high ports, as `tracepath` and `traceroute` send
    /// by default; the only kind that can measure the path MTU.
    #[default]
    Udp,
    /// TCP SYNs to the target port, as `traceroute -T`: what a firewall
    /// that lets only the service through lets through.
    Tcp,
}

impl PathProtocol {
    pub fn text(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
        }
    }
}

/// How far and how long a path probe goes (`[path]` in the agent's
/// config).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathSettings {
    #[serde(default)]
    pub protocol: PathProtocol,
    /// Hops tried at most (1 to 64).
    #[serde(default = "default_max_hops")]
    pub max_hops: u8,
    /// Probes per hop (1 to 10), each with its own RTT.
    #[serde(default = "default_probes_per_hop")]
    pub probes_per_hop: u8,
    /// How long a probe waits for its answer.
    #[serde(default = "default_hop_timeout", with = "humantime_serde")]
    pub hop_timeout: Duration,
    /// How long a whole trace may take; what it found by then is kept.
    #[serde(default = "default_max_duration", with = "humantime_serde")]
    pub max_duration: Duration,
    /// Hops probed at the same time (1 to 16).
    #[serde(default = "default_hops_in_flight")]
    pub hops_in_flight: u8,
    /// Traces this agent runs at the same time, all vantages together.
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent: u8,
}

fn default_max_hops() -> u8 {
    30
}
fn default_probes_per_hop() -> u8 {
    3
}
fn default_hop_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_max_duration() -> Duration {
    Duration::from_secs(30)
}
fn default_hops_in_flight() -> u8 {
    // Routers limit the ICMP errors they send to one source (Linux: a
    // burst of 6, then one a second): four hops of three probes at once
    // stay within it when the destination answers several of them.
    4
}
fn default_max_concurrent() -> u8 {
    4
}

impl Default for PathSettings {
    fn default() -> Self {
        Self {
            protocol: PathProtocol::default(),
            max_hops: default_max_hops(),
            probes_per_hop: default_probes_per_hop(),
            hop_timeout: default_hop_timeout(),
            max_duration: default_max_duration(),
            hops_in_flight: default_hops_in_flight(),
            max_concurrent: default_max_concurrent(),
        }
    }
}

/// A setting of [`PathSettings`] out of range: the key and what it takes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("path.{key} is {value}; expected {expected}")]
pub struct InvalidPathSetting {
    pub key: &'static str,
    pub value: String,
    pub expected: &'static str,
}

impl PathSettings {
    /// Every setting within its range, or the first that is not.
    pub fn validate(&self) -> Result<(), InvalidPathSetting> {
        let range = |key, value: u8, lo: u8, hi: u8, expected| {
            if (lo..=hi).contains(&value) {
                Ok(())
            } else {
                Err(InvalidPathSetting {
                    key,
                    value: value.to_string(),
                    expected,
                })
            }
        };
        range("max_hops", self.max_hops, 1, 64, "1 to 64 hops")?;
        range("probes_per_hop", self.probes_per_hop, 1, 10, "1 to 10")?;
        range("hops_in_flight", self.hops_in_flight, 1, 16, "1 to 16")?;
        range("max_concurrent", self.max_concurrent, 1, 64, "1 to 64")?;
        let duration = |key, value: Duration, lo: Duration, hi: Duration, expected| {
            if (lo..=hi).contains(&value) {
                Ok(())
            } else {
                Err(InvalidPathSetting {
                    key,
                    value: humantime::format_duration(value).to_string(),
                    expected,
                })
            }
        };
        duration(
            "hop_timeout",
            self.hop_timeout,
            Duration::from_millis(10),
            Duration::from_secs(60),
            "10ms to 60s",
        )?;
        duration(
            "max_duration",
            self.max_duration,
            self.hop_timeout,
            Duration::from_secs(600),
            "at least hop_timeout, at most 10m",
        )
    }
}
