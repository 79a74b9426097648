//! Slack incoming webhook: Block Kit (header ≤ 150 characters, section text ≤
//! 3,000, fields ≤ 2,000 and ≤ 10 per section, ≤ 50 blocks) and a `text` fallback.

use serde_json::{json, Value};

use crate::alerts::Alert;

use super::{actor_and_ip, context_fields, cut, is_url, marker, CHAT_CONTEXT_FIELDS};

/// Slack: Block Kit with a plain `text` fallback.
pub fn slack(a: &Alert) -> Value {
    let (actor, ip) = actor_and_ip(a);
    let headline = format!("{} {}: {}", marker(a.severity), a.severity, a.title);
    let field = |label: &str, value: &str| json!({"type": "mrkdwn", "text": cut(&format!("*{label}*\n{value}"), 2000)});
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": cut(&headline, 150), "emoji": true}}),
        json!({"type": "section", "text": {"type": "mrkdwn",
            "text": cut(&format!("*Rule* `{}`\n{}", a.id, a.description), 3000)}}),
        json!({"type": "section", "fields": [
            field("Actor", &actor), field("IP", &ip),
            field("Events", &a.event_count.to_string()), field("Severity", a.severity.as_str()),
            field("First event", &a.first_event_at), field("Last event", &a.last_event_at),
        ]}),
    ];
    let ctx: Vec<Value> = context_fields(a, CHAT_CONTEXT_FIELDS)
        .iter()
        .map(|(k, v)| field(k, &cut(v, 500)))
        .collect();
    for chunk in ctx.chunks(10) {
        blocks.push(json!({"type": "section", "fields": chunk}));
    }
    if !a.runbook.is_empty() {
        let runbook = if is_url(&a.runbook) {
            format!("*Runbook* <{}|open>", a.runbook)
        } else {
            format!("*Runbook*\n{}", a.runbook)
        };
        blocks.push(
            json!({"type": "section", "text": {"type": "mrkdwn", "text": cut(&runbook, 3000)}}),
        );
    }
    let mut footer = format!("alert `{}` · hexwatch", a.alert_id);
    if is_url(&a.reference) {
        footer = format!("<{}|Reference> · {footer}", a.reference);
    }
    blocks.push(
        json!({"type": "context", "elements": [{"type": "mrkdwn", "text": cut(&footer, 3000)}]}),
    );
    blocks.truncate(50);
    json!({
        "text": cut(&format!("[{}] {} ({}, {} event(s))", a.severity, a.title, a.id, a.event_count), 3000),
        "blocks": blocks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_stays_within_its_limits() {
        let v = slack(&super::super::big_alert());
        let blocks = v["blocks"].as_array().unwrap();
        assert!(blocks.len() <= 50);
        assert!(blocks[0]["text"]["text"].as_str().unwrap().chars().count() <= 150);
        for b in blocks {
            if let Some(t) = b["text"]["text"].as_str() {
                assert!(t.chars().count() <= 3000);
            }
            for f in b["fields"].as_array().into_iter().flatten() {
                assert!(f["text"].as_str().unwrap().chars().count() <= 2000);
            }
        }
        assert!(v["text"].as_str().unwrap().ends_with('…'));
    }
}
