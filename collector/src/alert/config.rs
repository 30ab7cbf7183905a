//! `[[sink]]` (and the older `[[webhook]]`) configuration: parsed strictly,
//! checked per kind, errors naming file, line and key.

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;
use toml::Spanned;
use url::Url;
use vantage_service::config::units::{DAY, MINUTE, SECOND};
use vantage_service::config::{ConfigError, Problem, count_within, duration_within};

/// PagerDuty's Events API v2 endpoint, the `pagerduty` sink's default URL.
pub const PAGERDUTY_EVENTS_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// How often an `alertmanager` sink re-sends an open incident's alert by
/// default: Prometheus' own resend delay, well inside Alertmanager's
/// `resolve_timeout` (5 minutes), after which an alert not re-sent would
/// resolve by itself.
pub const ALERTMANAGER_RESEND: Duration = Duration::from_secs(60);

/// The range of one attempt's timeout: a receiver slower than five
/// minutes is down, and one attempt holds a delivery's lease that long.
const MIN_TIMEOUT: Duration = Duration::from_millis(100);
const MAX_TIMEOUT: Duration = Duration::from_secs(300);

/// Where a sink sends, and in which format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// Vantage's own JSON, signed per the Standard Webhooks spec.
    Webhook,
    /// A Slack incoming webhook (`text` plus `blocks`).
    Slack,
    /// PagerDuty Events API v2.
    Pagerduty,
    /// Alertmanager's `/api/v2/alerts`.
    Alertmanager,
}

impl SinkKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Webhook => "webhook",
            Self::Slack => "slack",
            Self::Pagerduty => "pagerduty",
            Self::Alertmanager => "alertmanager",
        }
    }
}

/// One `[[sink]]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// Unique; names the sink in `v_notifications`, metrics and logs
    /// (default `<kind>-<n>`). Renaming a sink orphans its pending rows.
    #[serde(default)]
    pub name: Option<Spanned<String>>,
    pub kind: Spanned<SinkKind>,
    /// Required except for `pagerduty` (default: PagerDuty's endpoint).
    /// For `alertmanager`, Alertmanager's base URL (`/api/v2/alerts` is
    /// appended).
    #[serde(default)]
    pub url: Option<Spanned<Url>>,
    /// Per attempt.
    #[serde(with = "humantime_serde", default = "default_timeout")]
    pub timeout: Duration,
    /// Attempts in flight at once to this sink.
    #[serde(default = "default_concurrency")]
    pub concurrency: Spanned<usize>,
    /// Retries back off exponentially from 1 s up to this.
    #[serde(with = "humantime_serde", default = "default_max_backoff")]
    pub max_backoff: Duration,
    /// A delivery not done this long after its event is recorded as
    /// expired.
    #[serde(with = "humantime_serde", default = "default_expire_after")]
    pub expire_after: Duration,
    /// Send an open incident again after this long without news
    /// (`alertmanager`: 1m by default, so that its alert stays active).
    #[serde(with = "humantime_serde", default)]
    pub repeat_interval: Option<Duration>,
    /// `webhook`: signing secrets `whsec_<base64>`; the first signs, every
    /// one is listed in `webhook-signature` (rotation).
    #[serde(default)]
    pub secrets: Option<Spanned<Vec<String>>>,
    /// `pagerduty`: the integration's routing key.
    #[serde(default)]
    pub routing_key: Option<String>,
    /// `pagerduty`: critical, error, warning or info (default error).
    #[serde(default)]
    pub severity: Option<Spanned<String>>,
    /// `pagerduty`: the `source` field (default `vantage-collector`).
    #[serde(default)]
    pub source: Option<String>,
}

/// `[[webhook]]`, kept working: a `webhook` sink without a secret.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: Spanned<Url>,
    #[serde(with = "humantime_serde", default = "default_timeout")]
    pub timeout: Duration,
    /// Ignored since the outbox retries until `expire_after` (24 h).
    #[serde(default)]
    pub attempts: Option<usize>,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_concurrency() -> Spanned<usize> {
    Spanned::new(0..0, 4)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(300)
}
fn default_expire_after() -> Duration {
    Duration::from_secs(24 * 3600)
}

/// A sink checked and ready to use.
#[derive(Debug, Clone)]
pub struct Sink {
    pub name: String,
    pub kind: SinkKind,
    pub url: Url,
    pub timeout: Duration,
    pub concurrency: usize,
    pub max_backoff: Duration,
    pub expire_after: Duration,
    pub repeat_interval: Option<Duration>,
    /// Decoded signing keys, the signing one first.
    pub secrets: Vec<Vec<u8>>,
    pub routing_key: Option<String>,
    pub severity: String,
    pub source: String,
}

impl Sink {
    /// A `webhook` sink at `url`, unsigned, with the defaults.
    pub fn webhook(name: &str, url: Url) -> Self {
        Self {
            name: name.to_owned(),
            kind: SinkKind::Webhook,
            url,
            timeout: default_timeout(),
            concurrency: *default_concurrency().get_ref(),
            max_backoff: default_max_backoff(),
            expire_after: default_expire_after(),
            repeat_interval: None,
            secrets: Vec::new(),
            routing_key: None,
            severity: "error".into(),
            source: "vantage-collector".into(),
        }
    }
}

/// Decodes a `whsec_<base64>` secret.
pub fn decode_secret(secret: &str) -> Option<Vec<u8>> {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_")?)
        .ok()?;
    (!key.is_empty()).then_some(key)
}

/// Checks `[[sink]]` and `[[webhook]]` entries of the file at `path`
/// (text `text`) and turns them into sinks, named: a sink without a name
/// gets `<kind>-<n>`, the first such name no other sink has.
pub fn sinks(
    path: &Path,
    text: &str,
    configs: &[SinkConfig],
    webhooks: &[WebhookConfig],
) -> Result<Vec<Sink>, ConfigError> {
    let mut out: Vec<(Sink, Option<&Spanned<String>>)> = Vec::new();
    for (i, w) in webhooks.iter().enumerate() {
        if let Some(attempts) = w.attempts {
            count_within(format!("webhook[{i}].attempts"), attempts, 1, 100)
                .map_err(|p| p.into_error(path, text))?;
            tracing::warn!(
                file = %path.display(),
                "webhook[{i}].attempts is ignored: deliveries are retried until they expire \
                 (24 h); use a [[sink]] with expire_after to change that."
            );
        }
        check_url(
            path,
            text,
            w.url.get_ref(),
            Some(w.url.span()),
            &format!("webhook[{i}].url"),
        )?;
        duration_within(
            format!("webhook[{i}].timeout"),
            w.timeout,
            MIN_TIMEOUT,
            MAX_TIMEOUT,
        )
        .map_err(|p| p.into_error(path, text))?;
        let mut sink = Sink::webhook("", w.url.get_ref().clone());
        sink.timeout = w.timeout;
        out.push((sink, None));
    }
    for (i, c) in configs.iter().enumerate() {
        let err = |span: std::ops::Range<usize>, expected: &str| {
            ConfigError::at(
                path,
                text,
                Some(span),
                format!("sink[{i}].name"),
                expected.into(),
            )
        };
        if let Some(n) = &c.name {
            let name = n.get_ref();
            if name.trim().is_empty() || name.len() > 64 {
                return Err(err(n.span(), "expected a name of 1 to 64 characters"));
            }
            if out
                .iter()
                .any(|(_, other)| other.is_some_and(|o| o.get_ref() == name))
            {
                return Err(err(
                    n.span(),
                    "expected a name no other sink has (it keys the sink's deliveries)",
                ));
            }
        }
        out.push((check_sink(path, text, i, c)?, c.name.as_ref()));
    }
    let taken: Vec<String> = out
        .iter()
        .filter_map(|(_, n)| n.map(|n| n.get_ref().clone()))
        .collect();
    let mut sinks = Vec::with_capacity(out.len());
    let mut assigned: Vec<String> = Vec::new();
    for (mut sink, name) in out {
        sink.name = match name {
            Some(n) => n.get_ref().clone(),
            None => (1..)
                .map(|n| format!("{}-{n}", sink.kind.as_str()))
                .find(|candidate| !taken.contains(candidate) && !assigned.contains(candidate))
                .unwrap_or_default(),
        };
        assigned.push(sink.name.clone());
        sinks.push(sink);
    }
    Ok(sinks)
}

/// Checks one `[[sink]]` (number `i`); the sink, not yet named.
fn check_sink(path: &Path, text: &str, i: usize, c: &SinkConfig) -> Result<Sink, ConfigError> {
    let key = |field: &str| format!("sink[{i}].{field}");
    let err = |span: std::ops::Range<usize>, field: &str, expected: &str| {
        ConfigError::at(path, text, Some(span), key(field), expected.to_owned())
    };
    let kind = *c.kind.get_ref();
    let kind_span = c.kind.span();
    let url = match (&c.url, kind) {
        (Some(u), _) => {
            check_url(path, text, u.get_ref(), Some(u.span()), &key("url"))?;
            u.get_ref().clone()
        }
        (None, SinkKind::Pagerduty) => Url::parse(PAGERDUTY_EVENTS_URL)
            .map_err(|e| err(kind_span.clone(), "url", &e.to_string()))?,
        (None, _) => {
            return Err(err(
                kind_span,
                "url",
                &format!("expected a url for a {} sink", kind.as_str()),
            ));
        }
    };
    if *c.concurrency.get_ref() == 0 || *c.concurrency.get_ref() > 256 {
        return Err(err(
            c.concurrency.span(),
            "concurrency",
            "expected between 1 and 256 attempts in flight",
        ));
    }
    let located = |p: Problem| p.into_error(path, text);
    duration_within(key("timeout"), c.timeout, MIN_TIMEOUT, MAX_TIMEOUT).map_err(located)?;
    duration_within(key("max_backoff"), c.max_backoff, SECOND, DAY).map_err(located)?;
    duration_within(key("expire_after"), c.expire_after, MINUTE, 30 * DAY).map_err(located)?;
    if let Some(repeat) = c.repeat_interval {
        duration_within(key("repeat_interval"), repeat, 10 * SECOND, 7 * DAY).map_err(located)?;
    }
    let mut secrets = Vec::new();
    if let Some(list) = &c.secrets {
        if kind != SinkKind::Webhook {
            return Err(err(
                list.span(),
                "secrets",
                "secrets sign webhook sinks only",
            ));
        }
        if list.get_ref().len() > 2 || list.get_ref().is_empty() {
            return Err(err(
                list.span(),
                "secrets",
                "expected one secret, or two while rotating",
            ));
        }
        for s in list.get_ref() {
            secrets.push(decode_secret(s).ok_or_else(|| {
                err(
                    list.span(),
                    "secrets",
                    "expected secrets written whsec_<base64 of the key>",
                )
            })?);
        }
    }
    let routing_key = c.routing_key.clone().filter(|k| !k.trim().is_empty());
    if kind == SinkKind::Pagerduty && routing_key.is_none() {
        return Err(err(
            kind_span,
            "routing_key",
            "expected the PagerDuty integration's routing_key",
        ));
    }
    if kind != SinkKind::Pagerduty && (c.routing_key.is_some() || c.severity.is_some()) {
        return Err(err(
            kind_span,
            "routing_key",
            "routing_key and severity are for pagerduty sinks",
        ));
    }
    let severity = match &c.severity {
        Some(s) if !["critical", "error", "warning", "info"].contains(&s.get_ref().as_str()) => {
            return Err(err(
                s.span(),
                "severity",
                "expected critical, error, warning or info",
            ));
        }
        Some(s) => s.get_ref().clone(),
        None => "error".into(),
    };
    let repeat_interval = match kind {
        SinkKind::Alertmanager => Some(c.repeat_interval.unwrap_or(ALERTMANAGER_RESEND)),
        _ => c.repeat_interval,
    };
    Ok(Sink {
        name: String::new(),
        kind,
        url,
        timeout: c.timeout,
        concurrency: *c.concurrency.get_ref(),
        max_backoff: c.max_backoff,
        expire_after: c.expire_after,
        repeat_interval,
        secrets,
        routing_key,
        severity,
        source: c
            .source
            .clone()
            .unwrap_or_else(|| "vantage-collector".into()),
    })
}

/// Sinks are reached over HTTP(S) only.
fn check_url(
    path: &Path,
    text: &str,
    url: &Url,
    span: Option<std::ops::Range<usize>>,
    key: &str,
) -> Result<(), ConfigError> {
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(ConfigError::at(
            path,
            text,
            span,
            key.to_owned(),
            format!("expected an http:// or https:// URL, got {url}"),
        ));
    }
    Ok(())
}
