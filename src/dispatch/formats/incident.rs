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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incidents::message::IncidentView;

    fn message(event: Notice) -> IncidentMessage {
        let incident: IncidentView = serde_json::from_value(serde_json::json!({
            "id": "inc-1", "title": "ana: 1 alert", "severity": "HIGH", "status": "open",
            "group_key": "actor:ana", "alert_count": 1, "rules": ["R"], "tactics": [],
            "first_at": "", "last_at": "", "assignee": null, "escalated": null,
            "actors": ["ana"], "ips": [], "projects": []
        }))
        .unwrap();
        IncidentMessage {
            version: "hexwatch.incident/1".into(),
            event,
            incident,
            alerts: Vec::new(),
            alerts_omitted: 0,
            url: None,
            by: Some("ana".into()),
            note: Some("on it".into()),
        }
    }

    #[test]
    fn opsgenie_opens_acknowledges_and_closes_one_alias() {
        let base = "https://api.opsgenie.com/v2/alerts";
        let (url, body) = opsgenie_incident(&message(Notice::Opened), "inc-1.1.opened", base);
        assert_eq!(
            (url.as_str(), body["alias"].as_str()),
            (base, Some("inc-1"))
        );
        let (url, body) = opsgenie_incident(&message(Notice::Acknowledged), "m", base);
        assert_eq!(
            url,
            format!("{base}/inc-1/acknowledge?identifierType=alias")
        );
        assert_eq!(body["user"], "ana");
        let (url, _) = opsgenie_incident(&message(Notice::Resolved), "m", base);
        assert_eq!(url, format!("{base}/inc-1/close?identifierType=alias"));
    }

    #[test]
    fn pagerduty_keys_every_event_by_the_incident() {
        for (event, action) in [
            (Notice::Opened, "trigger"),
            (Notice::Updated, "trigger"),
            (Notice::Reminder, "trigger"),
            (Notice::Acknowledged, "acknowledge"),
            (Notice::Resolved, "resolve"),
        ] {
            let e = pagerduty_incident(&message(event), "m", "key");
            assert_eq!(
                (e["event_action"].as_str(), e["dedup_key"].as_str()),
                (Some(action), Some("inc-1"))
            );
        }
    }
}
