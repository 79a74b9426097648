//! `[incidents]`: how alerts group into incidents, when incidents escalate,
//! and when their notifications go out.

use std::time::Duration;

use serde::Deserialize;

use super::SettingError;
use hexwatch_model::Severity;

/// What alerts of one incident share, unless their rule says (`meta.group_by`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    /// The account that acted (its e-mail, else its id).
    Actor,
    /// The source address.
    Ip,
    /// Nothing: every alert is an incident of its own.
    None,
}

#[derive(Debug, Clone)]
pub struct IncidentsConfig {
    pub group_by: GroupBy,
    /// An incident takes alerts while they come within this span of its
    /// latest one (event time).
    pub window: Duration,
    /// The first notification waits this long for more alerts...
    pub group_wait: Duration,
    /// ...unless an alert is at least this severe.
    pub notify_at_once: Severity,
    /// At most one update per incident per this span.
    pub group_interval: Duration,
    /// A reminder after this while the incident is open and unacknowledged.
    pub repeat_interval: Duration,
    /// An incident escalates one step when its alerts come from at least
    /// this many rules...
    pub escalate_rules: usize,
    /// ...across at least this many ATT&CK tactics.
    pub escalate_tactics: usize,
    /// It is never raised above this by escalation alone.
    pub escalate_max: Severity,
    /// An incident that is not a chain is at most this severe, whatever its
    /// alerts (25 public shares by one editor are one HIGH incident).
    pub unchained_max: Severity,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawIncidents {
    group_by: String,
    window_minutes: f64,
    group_wait_seconds: f64,
    notify_at_once: String,
    group_interval_minutes: f64,
    repeat_interval_hours: f64,
    escalate_min_rules: usize,
    escalate_min_tactics: usize,
    escalate_max_severity: String,
    unchained_max_severity: String,
}

impl Default for RawIncidents {
    fn default() -> Self {
        RawIncidents {
            group_by: "actor".into(),
            window_minutes: 180.0,
            group_wait_seconds: 30.0,
            notify_at_once: "CRITICAL".into(),
            group_interval_minutes: 5.0,
            repeat_interval_hours: 4.0,
            escalate_min_rules: 3,
            escalate_min_tactics: 2,
            escalate_max_severity: "CRITICAL".into(),
            unchained_max_severity: "HIGH".into(),
        }
    }
}

fn severity(key: &str, s: &str) -> Result<Severity, SettingError> {
    Severity::parse(s).ok_or_else(|| {
        SettingError::invalid(
            key,
            format!("{s:?} is not a severity; use INFO, LOW, MEDIUM, HIGH or CRITICAL"),
        )
    })
}

pub(super) fn build(raw: RawIncidents) -> Result<IncidentsConfig, SettingError> {
    let group_by = match raw.group_by.as_str() {
        "actor" => GroupBy::Actor,
        "ip" => GroupBy::Ip,
        "none" => GroupBy::None,
        other => {
            return Err(SettingError::invalid(
                "incidents.group_by",
                format!("{other:?}: use \"actor\", \"ip\" or \"none\""),
            ))
        }
    };
    // Fractions are allowed (a test's 0.05 minutes); zero, negative or
    // absurd spans are not.
    let span = |key: &str, value: f64, unit_secs: f64, zero_ok: bool| {
        let secs = value * unit_secs;
        let fits = secs.is_finite() && secs <= 366.0 * 86_400.0;
        if !fits || secs < 0.0 || (secs == 0.0 && !zero_ok) {
            return Err(SettingError::invalid(
                key,
                format!("{value}: must be more than 0 and at most a year"),
            ));
        }
        Ok(Duration::from_secs_f64(secs))
    };
    if raw.escalate_min_rules < 2 {
        return Err(SettingError::invalid(
            "incidents.escalate_min_rules",
            "must be at least 2 (one rule alone is not a chain)",
        ));
    }
    Ok(IncidentsConfig {
        group_by,
        window: span("incidents.window_minutes", raw.window_minutes, 60.0, false)?,
        group_wait: span(
            "incidents.group_wait_seconds",
            raw.group_wait_seconds,
            1.0,
            true,
        )?,
        notify_at_once: severity("incidents.notify_at_once", &raw.notify_at_once)?,
        group_interval: span(
            "incidents.group_interval_minutes",
            raw.group_interval_minutes,
            60.0,
            false,
        )?,
        repeat_interval: span(
            "incidents.repeat_interval_hours",
            raw.repeat_interval_hours,
            3600.0,
            false,
        )?,
        escalate_rules: raw.escalate_min_rules,
        escalate_tactics: raw.escalate_min_tactics,
        escalate_max: severity(
            "incidents.escalate_max_severity",
            &raw.escalate_max_severity,
        )?,
        unchained_max: severity(
            "incidents.unchained_max_severity",
            &raw.unchained_max_severity,
        )?,
    })
}
