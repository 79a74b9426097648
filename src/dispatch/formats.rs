//! How one alert becomes the body of one request, for the services responders
//! page and chat from. Each follows its service's documented format and limits,
//! truncating (with an ellipsis) rather than failing:
//!
//! - Slack incoming webhook: Block Kit (header ≤ 150 characters, section text ≤
//!   3,000, fields ≤ 2,000 and ≤ 10 per section, ≤ 50 blocks) and a `text` fallback.
//! - Teams Workflows webhook: an Adaptive Card 1.4 in a `message`, kept under
//!   28 KB (the card size Teams accepts).
//! - PagerDuty Events API v2: `trigger` with `dedup_key` = alert id, so PagerDuty
//!   folds repeats; `payload.summary` ≤ 1,024 characters.
//! - Opsgenie / Jira Service Management alert API: `alias` = alert id, `message` ≤
//!   130 characters, priority P1–P5, `details` as strings, ≤ 20 tags.

use serde_json::{json, Map, Value};

use crate::alerts::Alert;
use crate::config::Severity;

/// Context fields shown in chat messages.
pub const CHAT_CONTEXT_FIELDS: usize = 8;
/// Teams' card size limit, with room for the envelope.
pub const TEAMS_MAX_BYTES: usize = 27 * 1024;

/// Cuts `s` to at most `max` characters, ending in an ellipsis when cut.
pub fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

fn marker(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "🟥",
        Severity::High => "🟧",
        Severity::Medium => "🟨",
        Severity::Low => "🟦",
        Severity::Info => "⬜",
    }
}

/// Text of a JSON value as shown to a person (strings without quotes).
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The actor and address: from the alert context, else from the first sample event.
fn actor_and_ip(a: &Alert) -> (String, String) {
    let ctx = |k: &str| a.alert_context.get(k).map(text).filter(|s| !s.is_empty());
    let first = a.events.first();
    let ev = |path: &[&str]| {
        let mut v = first?;
        for p in path {
            v = v.get(p)?;
        }
        Some(text(v)).filter(|s| !s.is_empty())
    };
    (
        ctx("actor")
            .or_else(|| ev(&["event", "actor", "metadata", "email"]))
            .unwrap_or_else(|| "—".into()),
        ctx("ip")
            .or_else(|| ev(&["event", "context", "location"]))
            .unwrap_or_else(|| "—".into()),
    )
}

fn is_url(s: &str) -> bool {
    s.starts_with("https://") || s.starts_with("http://")
}

/// Context entries other than actor and ip, as (key, text).
fn context_fields(a: &Alert, max: usize) -> Vec<(String, String)> {
    match &a.alert_context {
        Value::Object(m) => m
            .iter()
            .filter(|(k, _)| k.as_str() != "actor" && k.as_str() != "ip")
            .take(max)
            .map(|(k, v)| (k.clone(), text(v)))
            .collect(),
        _ => Vec::new(),
    }
}

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

/// Teams: an Adaptive Card in a Workflows `message`, under [`TEAMS_MAX_BYTES`].
pub fn teams(a: &Alert) -> Value {
    let (actor, ip) = actor_and_ip(a);
    let build = |value_max: usize, desc_max: usize, context: usize| {
        let mut facts = vec![
            json!({"title": "Rule", "value": a.id}),
            json!({"title": "Actor", "value": cut(&actor, value_max)}),
            json!({"title": "IP", "value": cut(&ip, value_max)}),
            json!({"title": "Events", "value": a.event_count.to_string()}),
            json!({"title": "First event", "value": a.first_event_at}),
            json!({"title": "Last event", "value": a.last_event_at}),
        ];
        for (k, v) in context_fields(a, context) {
            facts.push(json!({"title": k, "value": cut(&v, value_max)}));
        }
        let mut body = vec![
            json!({"type": "TextBlock", "text": cut(&format!("{} {}: {}", marker(a.severity), a.severity, a.title), 300),
                   "weight": "Bolder", "size": "Medium", "wrap": true,
                   "color": if a.severity >= Severity::High { "Attention" } else { "Default" }}),
            json!({"type": "TextBlock", "text": cut(&a.description, desc_max), "wrap": true}),
            json!({"type": "FactSet", "facts": facts}),
        ];
        if !a.runbook.is_empty() && !is_url(&a.runbook) {
            body.push(json!({"type": "TextBlock", "text": cut(&format!("Runbook: {}", a.runbook), desc_max), "wrap": true}));
        }
        let mut actions = Vec::new();
        for (title, url) in [("Runbook", &a.runbook), ("Reference", &a.reference)] {
            if is_url(url) {
                actions.push(json!({"type": "Action.OpenUrl", "title": title, "url": url}));
            }
        }
        json!({"type": "message", "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard", "version": "1.4", "body": body, "actions": actions,
            }
        }]})
    };
    // Shrink until it fits.
    for (value_max, desc_max, context) in [
        (1000, 4000, CHAT_CONTEXT_FIELDS),
        (300, 1500, 4),
        (100, 500, 0),
    ] {
        let card = build(value_max, desc_max, context);
        if card.to_string().len() <= TEAMS_MAX_BYTES {
            return card;
        }
    }
    build(50, 200, 0)
}

/// PagerDuty's severities.
fn pagerduty_severity(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "critical",
        Severity::High => "error",
        Severity::Medium => "warning",
        Severity::Low | Severity::Info => "info",
    }
}

/// PagerDuty Events API v2 `trigger`.
pub fn pagerduty(a: &Alert, routing_key: &str) -> Value {
    let mut links = Vec::new();
    for (text, href) in [("Runbook", &a.runbook), ("Reference", &a.reference)] {
        if is_url(href) {
            links.push(json!({"href": href, "text": text}));
        }
    }
    let (actor, ip) = actor_and_ip(a);
    json!({
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": a.alert_id,
        "payload": {
            "summary": cut(&format!("[{}] {}", a.severity, a.title), 1024),
            "source": if ip == "—" { "hexwatch".to_string() } else { ip },
            "severity": pagerduty_severity(a.severity),
            "timestamp": a.first_event_at,
            "component": "hex",
            "group": a.id,
            "class": a.kind,
            "custom_details": {
                "rule": a.id, "actor": actor, "event_count": a.event_count,
                "first_event_at": a.first_event_at, "last_event_at": a.last_event_at,
                "description": a.description, "runbook": a.runbook, "alert_id": a.alert_id,
                "alert_context": a.alert_context,
            },
        },
        "links": links,
        "client": "hexwatch",
    })
}

/// Opsgenie's priorities.
fn priority(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "P1",
        Severity::High => "P2",
        Severity::Medium => "P3",
        Severity::Low => "P4",
        Severity::Info => "P5",
    }
}

/// Opsgenie / JSM Operations "create alert".
pub fn opsgenie(a: &Alert) -> Value {
    let (actor, ip) = actor_and_ip(a);
    let mut details = Map::new();
    let mut put = |k: &str, v: String| {
        details.insert(cut(k, 100), Value::String(cut(&v, 1000)));
    };
    put("rule", a.id.clone());
    put("severity", a.severity.to_string());
    put("actor", actor);
    put("ip", ip);
    put("event_count", a.event_count.to_string());
    put("first_event_at", a.first_event_at.clone());
    put("last_event_at", a.last_event_at.clone());
    put("alert_id", a.alert_id.clone());
    for (k, v) in context_fields(a, 20) {
        put(&format!("context.{k}"), v);
    }
    // Opsgenie caps the details at 8,000 characters in all.
    let mut total = 0;
    details.retain(|k, v| {
        total += k.len() + v.as_str().map_or(0, str::len);
        total <= 8000
    });
    let mut tags = vec!["hexwatch".to_string(), a.severity.to_string()];
    tags.extend(a.tags.iter().map(|t| cut(t, 50)));
    tags.truncate(20);
    let mut description = a.description.clone();
    if !a.runbook.is_empty() {
        description.push_str(&format!("\n\nRunbook: {}", a.runbook));
    }
    if !a.reference.is_empty() {
        description.push_str(&format!("\nReference: {}", a.reference));
    }
    description.push_str(&format!(
        "\n\nAlert context:\n{}",
        serde_json::to_string_pretty(&a.alert_context).unwrap_or_default()
    ));
    json!({
        "message": cut(&format!("[{}] {}", a.severity, a.title), 130),
        "alias": cut(&a.alert_id, 512),
        "description": cut(&description, 15000),
        "priority": priority(a.severity),
        "details": details,
        "tags": tags,
        "entity": cut(&a.id, 512),
        "source": "hexwatch",
    })
}

/// A clearly marked synthetic alert for `hexwatch notify-test` and template checks.
pub fn sample_alert(severity: Severity) -> Alert {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    Alert {
        alert_id: format!("hexwatch-test-{}", chrono::Utc::now().timestamp_millis()),
        id: "Hexwatch.NotifyTest".into(),
        kind: "RULE".into(),
        title: "hexwatch test alert: ignore (sent by hexwatch notify-test)".into(),
        severity,
        dedup: "notify-test".into(),
        created_at: now.clone(),
        first_event_at: now.clone(),
        last_event_at: now,
        event_count: 1,
        description: "A synthetic alert that checks this destination is wired up. No action needed.".into(),
        runbook: "Nothing to do: this is a test.".into(),
        reference: "https://learn.hex.tech/docs/administration/workspace_settings/audit-logs/audit-logs-reference".into(),
        tags: vec!["test".into()],
        reports: Map::new(),
        alert_context: json!({"actor": "notify-test@hexwatch.invalid", "ip": "192.0.2.1", "note": "synthetic"}),
        destinations: Vec::new(),
        events: Vec::new(),
        version: "test".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn big_alert() -> Alert {
        let mut a = sample_alert(Severity::High);
        a.title = "t".repeat(5000);
        a.alert_context =
            json!({"actor": "ana@acme.example", "ip": "1.2.3.4", "huge": "x".repeat(50_000)});
        a.events = vec![json!({"event": {"action": "RUN_CELL"}}); 10];
        a
    }

    #[test]
    fn slack_stays_within_its_limits() {
        let v = slack(&big_alert());
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

    #[test]
    fn teams_fits_and_paging_formats_map_severity() {
        assert!(teams(&big_alert()).to_string().len() <= TEAMS_MAX_BYTES);
        let p = pagerduty(&big_alert(), "key");
        assert_eq!(p["payload"]["severity"], "error");
        assert!(p["payload"]["summary"].as_str().unwrap().chars().count() <= 1024);
        let o = opsgenie(&big_alert());
        assert_eq!(o["priority"], "P2");
        assert_eq!(o["message"].as_str().unwrap().chars().count(), 130);
        assert!(o["details"]
            .as_object()
            .unwrap()
            .values()
            .all(|v| v.is_string()));
    }
}
