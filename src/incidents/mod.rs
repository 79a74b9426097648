//! Incidents: every created alert joins one, keyed by what its alerts share
//! (the actor by default; a rule may name another key). An incident takes
//! alerts while they come within `incidents.window_minutes` (event time) of
//! its span, escalates one step when its alerts form a chain (several rules
//! across several ATT&CK tactics), and carries a title that says who, how
//! much, over what span and the worst of it.
//!
//! [`IncidentBatch::join`] is the whole decision, shared by `serve` and
//! `replay`: ids are digests of the group and the first alert, so every
//! evaluator of the same records makes the same incidents. The batch's
//! changes are written with its other effects, in one transaction.

pub mod message;
pub mod notifier;
pub mod silence;

use std::collections::HashMap;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::alerts::Alert;
use crate::config::incidents::{GroupBy, IncidentsConfig};
use hexwatch_model::incident::{Incident, IncidentWrite, Names, NoticeClock, Status};
use hexwatch_model::Severity;
use hexwatch_storage::{Session, StorageError};

/// Titles of the worst alerts an incident's title names.
const WORST_NAMED: usize = 3;

/// One created alert, as its incident sees it.
pub struct Joining<'a> {
    pub alert: &'a Alert,
    /// The rule's own `meta.group_by`, if it has one.
    pub rule_group_by: Option<&'a str>,
    /// The record that created the alert.
    pub record: &'a Value,
    /// Its event time (unix ms).
    pub event_ms: i64,
    /// Destinations that take incidents, of those the alert is routed to
    /// (none when a silence holds it back).
    pub notify: Vec<String>,
}

/// An incident being changed by the batch.
struct Working {
    write: IncidentWrite,
    status: Status,
}

/// The incidents one evaluated batch opens or changes.
#[derive(Default)]
pub struct IncidentBatch {
    /// By incident id.
    working: HashMap<String, Working>,
    /// Ids in the order the batch first touched them.
    order: Vec<String>,
    /// Each group's latest incident, as the batch knows it.
    latest: HashMap<String, String>,
}

impl IncidentBatch {
    /// Adds a created alert to its incident, opening one when the group has
    /// none within the window. `now_ms` (wall clock) only schedules notifications.
    pub fn join(
        &mut self,
        config: &IncidentsConfig,
        session: &mut dyn Session,
        j: &Joining,
        now_ms: i64,
    ) -> Result<String, StorageError> {
        let group_key = group_key(config, j);
        let current = self.current(session, &group_key)?;
        let window_ms = config.window.as_millis() as i64;
        let fits = |i: &Incident| {
            i.first_ms - window_ms <= j.event_ms && j.event_ms < i.last_ms + window_ms
        };
        let id = match current {
            Some(id) if fits(&self.working[&id].write.incident) => id,
            _ => self.open(&group_key, j),
        };
        let w = self.working.get_mut(&id).expect("just found or opened");
        if w.status == Status::Resolved {
            w.status = Status::Open;
            w.write.reopened = true;
        }
        add_alert(config, &mut w.write, j, now_ms);
        Ok(id)
    }

    /// The batch's changes, in the order it made them.
    pub fn into_writes(mut self) -> Vec<IncidentWrite> {
        self.order
            .iter()
            .filter_map(|id| self.working.remove(id))
            .map(|w| w.write)
            .filter(|w| !w.joined.is_empty())
            .collect()
    }

    /// The id of the group's latest incident, read from storage the first
    /// time the batch meets the group.
    fn current(
        &mut self,
        session: &mut dyn Session,
        group_key: &str,
    ) -> Result<Option<String>, StorageError> {
        if let Some(id) = self.latest.get(group_key) {
            return Ok(Some(id.clone()));
        }
        let Some(stored) = session.incident_of_group(group_key)? else {
            return Ok(None);
        };
        let id = stored.incident.id.clone();
        self.latest.insert(group_key.to_string(), id.clone());
        self.order.push(id.clone());
        self.working.insert(
            id.clone(),
            Working {
                write: IncidentWrite {
                    incident: stored.incident,
                    clock: stored.clock,
                    opened: false,
                    reopened: false,
                    joined: Vec::new(),
                },
                status: stored.status,
            },
        );
        Ok(Some(id))
    }

    /// Opens the group's next incident with `j`'s alert as its first.
    fn open(&mut self, group_key: &str, j: &Joining) -> String {
        let id = incident_id(group_key, &j.alert.alert_id);
        let incident = Incident {
            id: id.clone(),
            group_key: group_key.to_string(),
            title: String::new(),
            severity: j.alert.severity,
            alert_severity: j.alert.severity,
            escalated: None,
            first_ms: j.event_ms,
            last_ms: j.event_ms,
            alert_count: 0,
            rules: Vec::new(),
            tactics: Vec::new(),
            names: Names::default(),
            worst: Vec::new(),
            destinations: Vec::new(),
        };
        self.latest.insert(group_key.to_string(), id.clone());
        self.order.push(id.clone());
        self.working.insert(
            id.clone(),
            Working {
                write: IncidentWrite {
                    incident,
                    clock: NoticeClock::default(),
                    opened: true,
                    reopened: false,
                    joined: Vec::new(),
                },
                status: Status::Open,
            },
        );
        id
    }
}

/// A stable incident id: the same group and first alert always give the same id.
fn incident_id(group_key: &str, first_alert: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"incident\0");
    h.update(group_key.as_bytes());
    h.update(b"\0");
    h.update(first_alert.as_bytes());
    let digest = h.finalize();
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("inc-{hex}")
}

/// The value at a dotted path of the record (`event.targets.0.id`), as text.
pub fn field_text(record: &Value, path: &str) -> Option<String> {
    let mut v = record;
    for part in path.split('.') {
        v = match v {
            Value::Array(items) => items.get(part.parse::<usize>().ok()?)?,
            _ => v.get(part)?,
        };
    }
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The acting account: its e-mail, else its id.
pub fn actor_of(record: &Value) -> Option<String> {
    field_text(record, "event.actor.metadata.email")
        .or_else(|| field_text(record, "event.actor.id"))
}

/// The source address.
pub fn ip_of(record: &Value) -> Option<String> {
    field_text(record, "event.context.location")
}

/// What the alert's incident groups by: `actor:…`, `ip:…`, `<path>:…`; an
/// alert without that value groups with its rule's others (`rule:…`).
fn group_key(config: &IncidentsConfig, j: &Joining) -> String {
    let by = match j.rule_group_by {
        Some("actor") => Some("actor"),
        Some("ip") => Some("ip"),
        Some("none") => None,
        Some(path) => {
            return match field_text(j.record, path) {
                Some(v) => format!("{path}:{v}"),
                None => format!("rule:{}", j.alert.id),
            }
        }
        None => match config.group_by {
            GroupBy::Actor => Some("actor"),
            GroupBy::Ip => Some("ip"),
            GroupBy::None => None,
        },
    };
    let value = match by {
        Some("actor") => actor_of(j.record),
        Some(_) => ip_of(j.record),
        None => return format!("alert:{}", j.alert.alert_id),
    };
    match (by, value) {
        (Some(kind), Some(v)) => format!("{kind}:{v}"),
        _ => format!("rule:{}", j.alert.id),
    }
}

/// ATT&CK tactics (`TA0001`) an alert's rule reports.
fn tactics_of(alert: &Alert) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(Value::Array(items)) = alert.reports.get("MITRE ATT&CK") {
        for item in items {
            if let Some(tactic) = item.as_str().and_then(|s| s.split(':').next()) {
                Names::add(&mut out, tactic);
            }
        }
    }
    out
}

/// A project an alert's context or record names.
fn project_of(alert: &Alert, record: &Value) -> Option<String> {
    for key in ["project", "project_title", "projectTitle"] {
        if let Some(Value::String(s)) = alert.alert_context.get(key) {
            return Some(s.clone());
        }
    }
    let targets = record.pointer("/event/targets")?.as_array()?;
    targets
        .iter()
        .find(|t| t.get("type").and_then(Value::as_str) == Some("project"))
        .and_then(|t| t.get("id")?.as_str().map(str::to_string))
}

/// Adds `j`'s alert to the incident: span, rules, tactics, names, severity
/// (and escalation), title and when its next notification is due.
fn add_alert(config: &IncidentsConfig, w: &mut IncidentWrite, j: &Joining, now_ms: i64) {
    let i = &mut w.incident;
    let a = j.alert;
    w.joined.push((i.alert_count, a.alert_id.clone()));
    i.alert_count += 1;
    i.first_ms = i.first_ms.min(j.event_ms);
    i.last_ms = i.last_ms.max(j.event_ms);
    if !i.rules.contains(&a.id) {
        i.rules.push(a.id.clone());
    }
    for t in tactics_of(a) {
        if !i.tactics.contains(&t) {
            i.tactics.push(t);
        }
    }
    Names::add(&mut i.names.actors, &actor_of(j.record).unwrap_or_default());
    Names::add(&mut i.names.ips, &ip_of(j.record).unwrap_or_default());
    Names::add(
        &mut i.names.projects,
        &project_of(a, j.record).unwrap_or_default(),
    );
    for d in &j.notify {
        if !i.destinations.contains(d) {
            i.destinations.push(d.clone());
        }
    }
    if a.severity > i.alert_severity || i.worst.is_empty() {
        i.worst.clear();
    }
    i.alert_severity = i.alert_severity.max(a.severity);
    if a.severity == i.alert_severity && i.worst.len() < WORST_NAMED && !i.worst.contains(&a.title)
    {
        i.worst.push(a.title.clone());
    }
    let before = i.severity;
    escalate(config, i);
    i.title = title(i);
    if !j.notify.is_empty() {
        let urgent = a.severity >= config.notify_at_once
            || (i.severity >= config.notify_at_once && before < config.notify_at_once);
        schedule(config, &mut w.clock, urgent, now_ms);
    }
}

/// The incident's severity: its worst alert's, at most
/// `unchained_max_severity` (one account doing many things of one kind is
/// not yet an attack), and one step above its alerts when they form a chain
/// (several rules across several tactics), at most `escalate_max_severity`.
fn escalate(config: &IncidentsConfig, i: &mut Incident) {
    i.escalated = None;
    let chain =
        i.rules.len() >= config.escalate_rules && i.tactics.len() >= config.escalate_tactics;
    if !chain {
        i.severity = i.alert_severity.min(config.unchained_max);
        return;
    }
    let raised = match i.alert_severity {
        Severity::Info => Severity::Low,
        Severity::Low => Severity::Medium,
        Severity::Medium => Severity::High,
        Severity::High | Severity::Critical => Severity::Critical,
    };
    i.severity = raised.min(config.escalate_max).max(i.alert_severity);
    if i.severity > i.alert_severity {
        i.escalated = Some(format!(
            "a chain: {} rules across {} ATT&CK tactics ({})",
            i.rules.len(),
            i.tactics.len(),
            i.tactics.join(", ")
        ));
    }
}

/// When the incident's next notification is due after an alert joined: the
/// first waits `group_wait` (not an urgent one); updates come at most once
/// per `group_interval`.
fn schedule(config: &IncidentsConfig, clock: &mut NoticeClock, urgent: bool, now_ms: i64) {
    let wait = config.group_wait.as_millis() as i64;
    let interval = config.group_interval.as_millis() as i64;
    if clock.notices == 0 {
        let at = if urgent { now_ms } else { now_ms + wait };
        clock.notify_at = Some(clock.notify_at.map_or(at, |t| t.min(at)));
    } else if clock.notify_at.is_none() {
        let earliest = clock.last_notice_at.map_or(now_ms, |t| t + interval);
        clock.notify_at = Some(earliest.max(now_ms));
    }
}

/// A span of event time as people say it: "40 s", "52 min", "3 h 10 min", "2 d 4 h".
pub fn span_text(ms: i64) -> String {
    let mins = ms / 60_000;
    match mins {
        0 => format!("{} s", ms / 1000),
        1..=59 => format!("{mins} min"),
        60..=1439 => format!("{} h {} min", mins / 60, mins % 60),
        _ => format!("{} d {} h", mins / 1440, (mins % 1440) / 60),
    }
}

/// Who (or what) the incident is about, as its title names it.
pub fn subject(i: &Incident) -> &str {
    i.group_key
        .split_once(':')
        .map(|(_, v)| v)
        .unwrap_or(&i.group_key)
}

/// "ana@acme.example: 7 alerts from 4 rules over 52 min from 203.0.113.9 — worst: …".
fn title(i: &Incident) -> String {
    let mut t = format!("{}: ", subject(i));
    if i.alert_count == 1 {
        t.push_str("1 alert");
    } else {
        t.push_str(&format!(
            "{} alerts from {} rule{} over {}",
            i.alert_count,
            i.rules.len(),
            if i.rules.len() == 1 { "" } else { "s" },
            span_text(i.last_ms - i.first_ms)
        ));
    }
    let ips: Vec<&str> = i.names.ips.iter().take(2).map(String::as_str).collect();
    if !ips.is_empty() && !i.group_key.starts_with("ip:") {
        t.push_str(&format!(" from {}", ips.join(", ")));
    }
    if let Some(why) = &i.escalated {
        t.push_str(&format!(
            " (escalated: {})",
            why.split(':').next().unwrap_or(why)
        ));
    }
    if !i.worst.is_empty() {
        t.push_str(&format!(" — {}: {}", i.alert_severity, i.worst.join("; ")));
    }
    if t.chars().count() > 300 {
        t = t.chars().take(299).collect::<String>() + "…";
    }
    t
}

#[cfg(test)]
mod tests;
