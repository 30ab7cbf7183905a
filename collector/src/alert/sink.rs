//! Sending one notice to one sink: rendering it in the sink's format,
//! signing it, one HTTP attempt with the sink's timeout, and what came
//! back. Only a 2xx counts as delivered.

use std::time::Duration;

use serde_json::Value;
use url::Url;

use super::config::{Sink, SinkKind};
use super::notice::{Notice, truncate, webhook_body};
use super::{alertmanager, pagerduty, signing, slack};

/// Most bytes of a refusal's body kept as its error.
const ERROR_BODY_LIMIT: usize = 300;

/// A request ready to send.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub url: Url,
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

/// The request for `notice` to `sink`.
pub fn render(sink: &Sink, notice: &Notice) -> Rendered {
    let (url, json): (Url, Value) = match sink.kind {
        SinkKind::Webhook => (sink.url.clone(), webhook_body(notice)),
        SinkKind::Slack => (sink.url.clone(), slack::body(notice)),
        SinkKind::Pagerduty => (sink.url.clone(), pagerduty::body(notice, sink)),
        SinkKind::Alertmanager => (
            alertmanager::endpoint(&sink.url),
            alertmanager::body(notice, sink),
        ),
    };
    // Serializing a `Value` cannot fail.
    let body = serde_json::to_vec(&json).unwrap_or_default();
    let mut headers = Vec::new();
    if sink.kind == SinkKind::Webhook {
        let signed = signing::sign(
            &sink.secrets,
            &format!("evt_{}", notice.event_id),
            notice.sent_at.timestamp(),
            &body,
        );
        headers.push(("webhook-id", signed.id));
        headers.push(("webhook-timestamp", signed.timestamp));
        if !signed.signature.is_empty() {
            headers.push(("webhook-signature", signed.signature));
        }
    }
    Rendered { url, body, headers }
}

/// An attempt that did not get a 2xx.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct AttemptError {
    /// The HTTP status, when the sink answered.
    pub status: Option<u16>,
    pub message: String,
    /// The sink's `Retry-After`, when it gave one.
    pub retry_after: Option<Duration>,
}

/// A 2xx answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// One attempt.
pub async fn send(
    client: &reqwest::Client,
    sink: &Sink,
    notice: &Notice,
) -> Result<Answer, AttemptError> {
    let request = render(sink, notice);
    let mut builder = client
        .post(request.url)
        .timeout(sink.timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(request.body);
    for (name, value) in request.headers {
        builder = builder.header(name, value);
    }
    let response = builder.send().await.map_err(|e| AttemptError {
        status: None,
        message: error_chain(&e),
        retry_after: None,
    })?;
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = match tokio::time::timeout(sink.timeout, response.text()).await {
        Ok(Ok(text)) => text,
        _ => String::new(),
    };
    let excerpt = truncate(body.trim(), ERROR_BODY_LIMIT);
    if status.is_success() {
        Ok(Answer {
            status: status.as_u16(),
            body: excerpt,
        })
    } else {
        Err(AttemptError {
            status: Some(status.as_u16()),
            message: format!("HTTP {status}: {excerpt}"),
            retry_after,
        })
    }
}

/// The error and its causes on one line (reqwest hides the useful part,
/// e.g. "connection refused", in the source chain).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}
