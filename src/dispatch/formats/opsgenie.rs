//! Opsgenie / Jira Service Management alert API: `alias` = alert id, `message` ≤
//! 130 characters, priority P1–P5, `details` as strings, ≤ 20 tags.

use serde_json::{json, Map, Value};

use crate::alerts::Alert;
use hexwatch_model::Severity;

use super::{actor_and_ip, context_fields, cut};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_priority_and_keeps_details_strings() {
        let o = opsgenie(&super::super::big_alert());
        assert_eq!(o["priority"], "P2");
        assert_eq!(o["message"].as_str().unwrap().chars().count(), 130);
        assert!(o["details"]
            .as_object()
            .unwrap()
            .values()
            .all(|v| v.is_string()));
    }
}
