//! An incident notification as destinations get it: webhook receivers the
//! versioned JSON (`hexwatch.incident/1`), chat and e-mail an alert-shaped
//! summary of it, PagerDuty and Opsgenie events keyed by the incident id.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::alerts::{rfc3339, Alert};
use hexwatch_model::incident::{Incident, Notice};
use hexwatch_model::Severity;
use hexwatch_storage::StoredIncident;

/// Payload version webhook receivers can dispatch on.
pub const VERSION: &str = "hexwatch.incident/1";
/// Alerts listed in one notification at most (the rest are counted).
pub const MAX_LISTED: usize = 50;

/// The incident as a notification shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IncidentView {
    pub id: String,
    pub title: String,
    pub severity: Severity,
    pub status: String,
    pub group_key: String,
    pub alert_count: i64,
    pub rules: Vec<String>,
    pub tactics: Vec<String>,
    pub first_at: String,
    pub last_at: String,
    pub assignee: Option<String>,
    pub escalated: Option<String>,
    pub actors: Vec<String>,
    pub ips: Vec<String>,
    pub projects: Vec<String>,
}

impl IncidentView {
    pub fn of(stored: &StoredIncident) -> IncidentView {
        let i: &Incident = &stored.incident;
        IncidentView {
            id: i.id.clone(),
            title: i.title.clone(),
            severity: i.severity,
            status: stored.status.as_str().to_string(),
            group_key: i.group_key.clone(),
            alert_count: i.alert_count,
            rules: i.rules.clone(),
            tactics: i.tactics.clone(),
            first_at: rfc3339(i.first_ms),
            last_at: rfc3339(i.last_ms),
            assignee: stored.assignee.clone(),
            escalated: i.escalated.clone(),
            actors: i.names.actors.clone(),
            ips: i.names.ips.clone(),
            projects: i.names.projects.clone(),
        }
    }
}

/// One notification's body, as stored in the outbox and sent to webhooks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IncidentMessage {
    pub version: String,
    pub event: Notice,
    pub incident: IncidentView,
    /// The alerts new since the last notification (all of them when it opens
    /// and in reminders), up to [`MAX_LISTED`], without their sample records.
    pub alerts: Vec<Alert>,
    /// Alerts left out of `alerts` to keep the message bounded.
    pub alerts_omitted: i64,
    /// The incident's page in the console, when `ui.external_url` is set.
    pub url: Option<String>,
    /// Who acknowledged or resolved it, and their note.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl IncidentMessage {
    pub fn new(
        event: Notice,
        stored: &StoredIncident,
        alerts: Vec<Alert>,
        new_alerts: i64,
        external_url: Option<&str>,
    ) -> IncidentMessage {
        // Only a full list leaves alerts out (the others not listed were silenced).
        let omitted = match alerts.len() {
            MAX_LISTED => (new_alerts - MAX_LISTED as i64).max(0),
            _ => 0,
        };
        IncidentMessage {
            version: VERSION.into(),
            event,
            incident: IncidentView::of(stored),
            alerts,
            alerts_omitted: omitted,
            url: external_url.map(|u| page_url(u, &stored.incident.id)),
            by: None,
            note: None,
        }
    }

    /// The notification's id: its outbox rows' key and Idempotency-Key.
    pub fn message_id(incident_id: &str, number: i64, event: Notice) -> String {
        format!("{incident_id}.{number}.{}", event.as_str())
    }

    /// What a person reads first: "[HIGH] opened: ana@…: 7 alerts …".
    pub fn headline(&self) -> String {
        format!(
            "[{}] incident {}: {}",
            self.incident.severity,
            self.event.as_str(),
            self.incident.title
        )
    }

    /// The notification as an alert, for destinations that format alerts
    /// (chat, e-mail, body templates): the incident's title and severity,
    /// its facts as context, the incident id as alert id.
    pub fn as_alert(&self, message_id: &str) -> Alert {
        let v = &self.incident;
        let listed: Vec<String> = self
            .alerts
            .iter()
            .map(|a| format!("[{}] {}", a.severity, a.title))
            .collect();
        let mut context = json!({
            "incident": v.id, "event": self.event.as_str(), "status": v.status,
            "alerts": v.alert_count, "rules": v.rules.join(", "),
        });
        let obj = context.as_object_mut().expect("an object");
        for (key, list) in [
            ("actor", &v.actors),
            ("ip", &v.ips),
            ("projects", &v.projects),
        ] {
            if !list.is_empty() {
                obj.insert(key.into(), Value::String(list.join(", ")));
            }
        }
        for (key, value) in [
            (
                "tactics",
                Some(v.tactics.join(", ")).filter(|t| !t.is_empty()),
            ),
            ("escalated", v.escalated.clone()),
            ("assignee", v.assignee.clone()),
            ("by", self.by.clone()),
            ("note", self.note.clone()),
            ("url", self.url.clone()),
        ] {
            if let Some(value) = value {
                obj.insert(key.into(), Value::String(value));
            }
        }
        let mut description = listed.join("\n");
        if self.alerts_omitted > 0 {
            description.push_str(&format!("\n… and {} more", self.alerts_omitted));
        }
        Alert {
            alert_id: message_id.to_string(),
            id: "Hexwatch.Incident".into(),
            kind: "INCIDENT".into(),
            title: format!("{} ({})", v.title, self.event.as_str()),
            severity: v.severity,
            dedup: v.id.clone(),
            created_at: rfc3339(hexwatch_storage::now_ms()),
            first_event_at: v.first_at.clone(),
            last_event_at: v.last_at.clone(),
            event_count: v.alert_count,
            description,
            runbook: self.url.clone().unwrap_or_default(),
            reference: String::new(),
            tags: v.tactics.clone(),
            reports: serde_json::Map::new(),
            alert_context: context,
            destinations: Vec::new(),
            events: Vec::new(),
            version: VERSION.into(),
        }
    }
}

/// An incident's page in the console.
pub fn page_url(external_url: &str, id: &str) -> String {
    format!("{}/ui/incidents/{id}", external_url.trim_end_matches('/'))
}
