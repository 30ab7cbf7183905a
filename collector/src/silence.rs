//! `vantage-collector silence …`: what a silence may match, checked before
//! it is stored, and how silences are listed.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::detect::dimensions::DIMENSIONS;
use crate::detect::track::GLOBAL;
use crate::store::{Silence, SilenceMatch};

/// The longest silence: a forgotten one must not hide pages for ever.
pub const MAX_SILENCE: Duration = Duration::from_secs(90 * 24 * 3600);

/// A silence that cannot be stored, naming the option at fault.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SilenceError {
    #[error("--target: expected a target URL (http:// or https://) or '*', got {0:?}")]
    Target(String),
    #[error("--dimension: expected one of {expected}, got {got:?}")]
    Dimension { expected: String, got: String },
    #[error("--value needs --dimension")]
    ValueWithoutDimension,
    #[error("--for: expected a duration between 1m and 90days, got {0}")]
    Duration(String),
    #[error("--comment: expected a non-empty reason (on-call reads it in v_notifications)")]
    Comment,
}

/// Checks a silence's options.
pub fn check(
    target: &str,
    dimension: Option<&str>,
    value: Option<&str>,
    duration: Duration,
    comment: &str,
) -> Result<SilenceMatch, SilenceError> {
    if target != "*" {
        let ok = url::Url::parse(target)
            .map(|u| matches!(u.scheme(), "http" | "https"))
            .unwrap_or(false);
        if !ok {
            return Err(SilenceError::Target(target.to_owned()));
        }
    }
    let names: Vec<&str> = DIMENSIONS
        .iter()
        .map(|d| d.name)
        .chain([GLOBAL.0])
        .collect();
    if let Some(d) = dimension
        && !names.contains(&d)
    {
        return Err(SilenceError::Dimension {
            expected: names.join(", "),
            got: d.to_owned(),
        });
    }
    if value.is_some() && dimension.is_none() {
        return Err(SilenceError::ValueWithoutDimension);
    }
    if duration < Duration::from_secs(60) || duration > MAX_SILENCE {
        return Err(SilenceError::Duration(
            humantime::format_duration(duration).to_string(),
        ));
    }
    if comment.trim().is_empty() {
        return Err(SilenceError::Comment);
    }
    Ok(SilenceMatch {
        target: target.to_owned(),
        dimension: dimension.map(str::to_owned),
        value: value.map(str::to_owned),
    })
}

/// One line per silence, under a header.
pub fn table(silences: &[Silence], now: DateTime<Utc>) -> String {
    let mut out = format!(
        "{:>5}  {:<8}  {:<20}  {:<32}  {:<28}  comment\n",
        "id", "state", "ends", "target", "dimension=value"
    );
    for s in silences {
        let state = if s.expired_at.is_some() {
            "expired"
        } else if s.ends_at <= now {
            "ended"
        } else if s.starts_at > now {
            "pending"
        } else {
            "active"
        };
        let what = match (&s.dimension, &s.value) {
            (Some(d), Some(v)) => format!("{d}={v}"),
            (Some(d), None) => format!("{d}=*"),
            _ => "*".into(),
        };
        out.push_str(&format!(
            "{:>5}  {:<8}  {:<20}  {:<32}  {:<28}  {} ({})\n",
            s.id,
            state,
            s.expired_at
                .unwrap_or(s.ends_at)
                .format("%Y-%m-%d %H:%M:%S"),
            s.target,
            what,
            s.comment,
            s.created_by
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn a_target_and_optional_dimension_value_are_accepted() {
        let m = check(
            "https://shop.test/",
            Some("region"),
            Some("eu"),
            HOUR,
            "deploy",
        )
        .unwrap();
        assert_eq!(m.dimension.as_deref(), Some("region"));
        assert!(check("*", None, None, HOUR, "maintenance").is_ok());
    }

    #[test]
    fn bad_options_are_named() {
        assert!(matches!(
            check("shop", None, None, HOUR, "x"),
            Err(SilenceError::Target(_))
        ));
        let e = check("*", Some("continent"), None, HOUR, "x").unwrap_err();
        assert!(e.to_string().contains("egress_prefix"), "{e}");
        assert_eq!(
            check("*", None, Some("eu"), HOUR, "x"),
            Err(SilenceError::ValueWithoutDimension)
        );
        assert!(matches!(
            check("*", None, None, Duration::from_secs(5), "x"),
            Err(SilenceError::Duration(_))
        ));
        assert_eq!(
            check("*", None, None, HOUR, " "),
            Err(SilenceError::Comment)
        );
    }
}
