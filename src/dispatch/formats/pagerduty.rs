//! PagerDuty Events API v2: `trigger` with `dedup_key` = alert id, so PagerDuty
//! folds repeats; `payload.summary` ≤ 1,024 characters.

use serde_json::{json, Value};

use crate::alerts::Alert;
use hexwatch_model::Severity;

use super::{actor_and_ip, cut, is_url};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_severity_and_cuts_the_summary() {
        let p = pagerduty(&super::super::big_alert(), "key");
        assert_eq!(p["payload"]["severity"], "error");
        assert!(p["payload"]["summary"].as_str().unwrap().chars().count() <= 1024);
    }
}
