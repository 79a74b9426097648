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

mod incident;
mod opsgenie;
mod pagerduty;
mod slack;
mod teams;

pub use incident::{opsgenie_incident, pagerduty_incident};
pub use opsgenie::opsgenie;
pub use pagerduty::pagerduty;
pub use slack::slack;
pub use teams::{teams, TEAMS_MAX_BYTES};

use serde_json::{json, Map, Value};

use crate::alerts::{Alert, SampleEvent};
use hexwatch_model::Severity;

/// Context fields shown in chat messages.
pub const CHAT_CONTEXT_FIELDS: usize = 8;

/// Cuts `s` to at most `max` characters, ending in an ellipsis when cut.
pub fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

pub(crate) fn marker(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "🟥",
        Severity::High => "🟧",
        Severity::Medium => "🟨",
        Severity::Low => "🟦",
        Severity::Info => "⬜",
    }
}

/// Text of a JSON value as shown to a person (strings without quotes).
pub(crate) fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The actor and address: from the alert context, else from the first sample event.
pub(crate) fn actor_and_ip(a: &Alert) -> (String, String) {
    let ctx = |k: &str| a.alert_context.get(k).map(text).filter(|s| !s.is_empty());
    let first = a.events.first().map(SampleEvent::value);
    let ev = |path: &[&str]| {
        let mut v = first.as_ref()?;
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

pub(crate) fn is_url(s: &str) -> bool {
    s.starts_with("https://") || s.starts_with("http://")
}

/// Context entries other than actor and ip, as (key, text).
pub(crate) fn context_fields(a: &Alert, max: usize) -> Vec<(String, String)> {
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
pub(crate) fn big_alert() -> Alert {
    let mut a = sample_alert(Severity::High);
    a.title = "t".repeat(5000);
    a.alert_context =
        json!({"actor": "ana@acme.example", "ip": "1.2.3.4", "huge": "x".repeat(50_000)});
    a.events = vec![SampleEvent::from_value(&json!({"event": {"action": "RUN_CELL"}})); 10];
    a
}
