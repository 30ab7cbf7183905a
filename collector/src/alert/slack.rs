//! The `slack` sink: a Slack incoming-webhook message, `text` (the
//! notification and fallback line) plus `blocks` with the explanation, the
//! counts, the correlated evidence and a link to the incident.

use serde_json::{Value, json};

use super::notice::{Notice, correlated, summary, title, truncate};

/// Slack refuses a section text longer than this.
const SECTION_LIMIT: usize = 3000;
/// ... and a header longer than this.
const HEADER_LIMIT: usize = 150;

/// The message body.
pub fn body(notice: &Notice) -> Value {
    let i = &notice.incident;
    let mut text = format!("{}: {}", title(notice), summary(i));
    if let Some(link) = &notice.link {
        text.push_str(&format!(" <{link}|incident {}>", i.id));
    }
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": truncate(&title(notice), HEADER_LIMIT)}}),
        json!({"type": "section", "text": {"type": "mrkdwn", "text": truncate(&i.explanation, SECTION_LIMIT)}}),
        json!({"type": "section", "fields": [
            {"type": "mrkdwn", "text": format!("*Failing*\n{} of {} probes from {} {}", i.segment_failures, i.segment_probes, i.dimension, i.value)},
            {"type": "mrkdwn", "text": format!("*Elsewhere*\n{} of {} probes", i.rest_failures, i.rest_probes)},
            {"type": "mrkdwn", "text": format!("*Fault side*\n{}", i.fault_side)},
            {"type": "mrkdwn", "text": format!("*Vantages failing*\n{}", i.failing_vantages)},
        ]}),
    ];
    if let Some(p) = &notice.previous {
        blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text":
            truncate(&format!("Previously explained by {} {}: {}", p.dimension, p.value, p.explanation), SECTION_LIMIT)}]}));
    }
    if let Some(paths) = &i.path_summary {
        blocks.push(
            json!({"type": "context", "elements": [{"type": "mrkdwn", "text":
            truncate(&format!("Paths: {paths}"), SECTION_LIMIT)}]}),
        );
    }
    let evidence = correlated(i);
    if !evidence.is_empty() {
        blocks.push(
            json!({"type": "context", "elements": [{"type": "mrkdwn", "text":
            truncate(&format!("Correlated: {}", evidence.join("; ")), SECTION_LIMIT)}]}),
        );
    }
    if let Some(link) = &notice.link {
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("<{link}|Incident {} in Vantage>", i.id)}}));
    }
    json!({ "text": text, "blocks": blocks })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::notice::tests::sample_notice;
    use crate::store::EventKind;

    #[test]
    fn golden_opened_message() {
        let body = body(&sample_notice(EventKind::Opened));
        assert_eq!(
            body,
            json!({
                "text": "Opened: 502 for http://shop.test/ from egress_prefix 127.0.2.0/24 (incident 7): 41 of 43 probes of http://shop.test/ from egress_prefix 127.0.2.0/24 (narrowed to 127.0.2.0/28) got 502; 0 of 380 from everywhere else <https://vantage.example/incidents/7|incident 7>",
                "blocks": [
                    {"type": "header", "text": {"type": "plain_text", "text": "Opened: 502 for http://shop.test/ from egress_prefix 127.0.2.0/24 (incident 7)"}},
                    {"type": "section", "text": {"type": "mrkdwn", "text": "41 of 43 probes ..."}},
                    {"type": "section", "fields": [
                        {"type": "mrkdwn", "text": "*Failing*\n41 of 43 probes from egress_prefix 127.0.2.0/24"},
                        {"type": "mrkdwn", "text": "*Elsewhere*\n0 of 380 probes"},
                        {"type": "mrkdwn", "text": "*Fault side*\nsite"},
                        {"type": "mrkdwn", "text": "*Vantages failing*\n2"}
                    ]},
                    {"type": "context", "elements": [{"type": "mrkdwn", "text": "Correlated: region eu (41 of its 41 failures shared)"}]},
                    {"type": "section", "text": {"type": "mrkdwn", "text": "<https://vantage.example/incidents/7|Incident 7 in Vantage>"}}
                ]
            })
        );
    }

    #[test]
    fn long_text_is_cut_to_slacks_limits() {
        let mut n = sample_notice(EventKind::Opened);
        n.incident.explanation = "x".repeat(5000);
        let body = body(&n);
        let text = body["blocks"][1]["text"]["text"].as_str().unwrap();
        assert_eq!(text.chars().count(), SECTION_LIMIT);
        assert!(text.ends_with('…'));
    }
}
