//! An incident: the alerts about one actor (or address, or whatever a rule
//! groups by) that follow each other within the incident window, as
//! responders work them. Deciding which incident an alert joins is the
//! application's incident stage; this is the data both sides share.

use serde::{Deserialize, Serialize};

use crate::Severity;

/// Names kept per kind for an incident's title and page.
pub const MAX_NAMES: usize = 8;

/// An incident as stored (its `incident` JSON column holds all of it; the
/// columns beside it repeat what lists filter and sort on).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Incident {
    pub id: String,
    /// What its alerts share, e.g. `actor:ana@acme.example` or `ip:203.0.113.9`.
    pub group_key: String,
    pub title: String,
    pub severity: Severity,
    /// The highest severity among its alerts, before any escalation.
    pub alert_severity: Severity,
    /// Why it was raised one step above its alerts, when it was.
    pub escalated: Option<String>,
    /// Event time of its first and latest alert (unix ms).
    pub first_ms: i64,
    pub last_ms: i64,
    pub alert_count: i64,
    /// Rule ids, in the order they first joined.
    pub rules: Vec<String>,
    /// ATT&CK tactics (`TA0010`) its rules report.
    pub tactics: Vec<String>,
    /// Who and what its records name, as learned from them.
    pub names: Names,
    /// The titles of its worst alerts (highest severity first).
    pub worst: Vec<String>,
    /// Destinations its notifications go to (those of its alerts that take incidents).
    pub destinations: Vec<String>,
}

/// People, addresses and projects an incident's records name, each list
/// bounded by [`MAX_NAMES`], in the order first seen.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Names {
    pub actors: Vec<String>,
    pub ips: Vec<String>,
    pub projects: Vec<String>,
}

impl Names {
    /// Adds `value` to `list` unless it is there, empty or the list is full.
    pub fn add(list: &mut Vec<String>, value: &str) {
        if !value.is_empty() && list.len() < MAX_NAMES && !list.iter().any(|v| v == value) {
            list.push(value.to_string());
        }
    }
}

/// Where an incident stands with its responders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Open,
    Acknowledged,
    Resolved,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::Acknowledged => "acknowledged",
            Status::Resolved => "resolved",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        [Status::Open, Status::Acknowledged, Status::Resolved]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

/// When an incident's notifications are due: the stored clock the evaluator
/// moves when alerts join, and the notifier when it sends (wall clock, unix ms).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoticeClock {
    /// Notifications made so far.
    pub notices: i64,
    /// Members those notifications covered (alerts from this index on are new).
    pub notified: i64,
    /// When the next notification is due, if one is.
    pub notify_at: Option<i64>,
    pub last_notice_at: Option<i64>,
    /// When a reminder is due while the incident stays open.
    pub remind_at: Option<i64>,
}

/// An incident changed by one evaluated batch: its new state, its clock and
/// the alerts that joined (index, alert id).
#[derive(Debug, Clone)]
pub struct IncidentWrite {
    pub incident: Incident,
    pub clock: NoticeClock,
    /// Whether the batch opened it.
    pub opened: bool,
    /// Set when an alert joined a resolved incident: it is open again.
    pub reopened: bool,
    pub joined: Vec<(i64, String)>,
}

/// One notification of an incident, as webhook receivers get it
/// (`version: hexwatch.incident/1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Notice {
    Opened,
    Updated,
    Reminder,
    Acknowledged,
    Resolved,
}

impl Notice {
    pub fn as_str(self) -> &'static str {
        match self {
            Notice::Opened => "opened",
            Notice::Updated => "updated",
            Notice::Reminder => "reminder",
            Notice::Acknowledged => "acknowledged",
            Notice::Resolved => "resolved",
        }
    }
}

/// One condition of a silence: `field` (`rule`, `actor`, `ip`, `project`
/// or a record field path) compared by `op` (`=`, `prefix`, `cidr`) with `value`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Matcher {
    pub field: String,
    pub op: String,
    pub value: String,
}
