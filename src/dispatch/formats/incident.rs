//! Incident notifications for PagerDuty and Opsgenie / JSM, keyed by the
//! incident id so the responder's tool shows one incident that updates:
//! PagerDuty's `dedup_key` with `trigger`, `acknowledge` and `resolve`;
//! Opsgenie's `alias` with create, acknowledge and close.

use serde_json::{json, Value};

use super::{opsgenie, pagerduty};
use crate::incidents::message::IncidentMessage;
use hexwatch_model::incident::Notice;

/// PagerDuty Events API v2: the event for one incident notification.
pub fn pagerduty_incident(m: &IncidentMessage, message_id: &str, routing_key: &str) -> Value {
    let action = match m.event {
        Notice::Acknowledged => "acknowledge",
        Notice::Resolved => "resolve",
        Notice::Opened | Notice::Updated | Notice::Reminder => "trigger",
    };
    if action != "trigger" {
        return json!({
            "routing_key": routing_key,
            "event_action": action,
            "dedup_key": m.incident.id,
        });
    }
    let mut event = pagerduty(&m.as_alert(message_id), routing_key);
    event["dedup_key"] = Value::String(m.incident.id.clone());
    event
}

/// Opsgenie: where to POST one incident notification (relative to the
/// configured alerts endpoint) and its body.
pub fn opsgenie_incident(
    m: &IncidentMessage,
    message_id: &str,
    alerts_url: &str,
) -> (String, Value) {
    let base = alerts_url.trim_end_matches('/');
    let alias = &m.incident.id;
    let by = m.by.clone().unwrap_or_else(|| "hexwatch".into());
    let note = m.note.clone().unwrap_or_default();
    match m.event {
        Notice::Acknowledged => (
            format!("{base}/{alias}/acknowledge?identifierType=alias"),
            json!({"user": by, "source": "hexwatch", "note": note}),
        ),
        Notice::Resolved => (
            format!("{base}/{alias}/close?identifierType=alias"),
            json!({"user": by, "source": "hexwatch", "note": note}),
        ),
        Notice::Opened | Notice::Updated | Notice::Reminder => {
            let mut body = opsgenie(&m.as_alert(message_id));
            body["alias"] = Value::String(alias.clone());
            (base.to_string(), body)
        }
    }
}
