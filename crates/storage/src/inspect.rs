//! What operators inspect and change, through the console and its JSON API: alerts with their
//! triage and delivery history, recent quarantine, rule activity. A separate
//! interface from [`Session`](super::Session): only `serve` with SQLite or
//! PostgreSQL has a console.

use serde::Serialize;

use super::incidents::IncidentQueries;
use super::silences::SilenceQueries;
use super::{DeliveryStatus, Result};

/// Filters of the alert list; every one optional.
#[derive(Debug, Clone, Default)]
pub struct AlertQuery {
    /// Exactly this severity.
    pub severity: Option<String>,
    /// At least this severity, as [`crate::incidents::rank`] orders them (0: any).
    pub min_rank: i64,
    /// A rule id or the start of one.
    pub rule: Option<String>,
    /// `open`, `acknowledged` or `resolved`.
    pub triage: Option<String>,
    /// With an event at or after this RFC 3339 time (event time).
    pub since: Option<String>,
    pub limit: i64,
    pub offset: i64,
}

/// One row of the alert list.
#[derive(Debug, Clone, Serialize)]
pub struct AlertSummary {
    pub alert_id: String,
    pub rule_id: String,
    pub severity: String,
    pub title: String,
    pub created_at: String,
    pub last_event_at: String,
    pub event_count: i64,
    pub triage: String,
}

/// Who acknowledged or resolved an alert, when, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Triage {
    pub status: String,
    pub by: Option<String>,
    /// Unix milliseconds.
    pub at: Option<i64>,
    pub note: Option<String>,
}

/// One destination's delivery of an alert.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryRow {
    pub id: i64,
    pub destination: String,
    pub status: DeliveryStatus,
    pub attempts: i64,
    pub last_error: Option<String>,
    /// Unix milliseconds.
    pub updated_at: i64,
}

/// An alert with everything the alert page shows.
#[derive(Debug, Clone, Serialize)]
pub struct AlertDetail {
    /// The alert JSON as delivered.
    pub alert: serde_json::Value,
    pub triage: Triage,
    pub deliveries: Vec<DeliveryRow>,
}

/// A quarantined record.
#[derive(Debug, Clone, Serialize)]
pub struct QuarantineRow {
    pub id: i64,
    /// Unix milliseconds.
    pub received_at: i64,
    pub index: Option<i64>,
    pub line: Option<i64>,
    pub reason: String,
    /// The record's first 2,000 characters; the whole record is fetched
    /// one at a time, in parts (`quarantine_part`).
    pub preview: String,
    /// The whole record's size in bytes.
    pub size: i64,
}

/// What one rule did since a time.
#[derive(Debug, Clone, Serialize)]
pub struct RuleActivity {
    pub rule_id: String,
    pub alerts: i64,
    /// Matches counted in those alerts' windows.
    pub matches: i64,
    pub last_fired: Option<String>,
}

/// Everything the console reads and changes: alerts and quarantine here,
/// incidents ([`IncidentQueries`]) and silences ([`SilenceQueries`]) beside.
pub trait ConsoleQueries: IncidentQueries + SilenceQueries + Send {
    /// Created alerts, worst first, then by latest event.
    fn list_alerts(&mut self, q: &AlertQuery) -> Result<Vec<AlertSummary>>;
    fn alert_detail(&mut self, alert_id: &str) -> Result<Option<AlertDetail>>;
    /// Sets an alert's triage; false when there is no such created alert.
    fn set_triage(
        &mut self,
        alert_id: &str,
        status: &str,
        by: &str,
        note: &str,
        at_ms: i64,
    ) -> Result<bool>;
    /// Puts one failed delivery back in the queue; false unless it had failed.
    fn retry_delivery(&mut self, id: i64) -> Result<bool>;
    /// The newest quarantined records, each with a preview.
    fn recent_quarantine(&mut self, limit: i64) -> Result<Vec<QuarantineRow>>;
    /// Up to `chars` characters of a quarantined record from character
    /// `from` (1-based); `None` when there is no such record.
    fn quarantine_part(&mut self, id: i64, from: i64, chars: i64) -> Result<Option<String>>;
    /// Ends a console session (by its signature) until it would expire.
    fn end_session(&mut self, session: &str, expires_at_ms: i64) -> Result<()>;
    /// Whether a console session was ended.
    fn session_ended(&mut self, session: &str) -> Result<bool>;
    /// Alerts and matches per rule for alerts created at or after `since` (RFC 3339).
    fn rule_activity(&mut self, since: &str) -> Result<Vec<RuleActivity>>;
    /// Deliveries waiting (every destination).
    fn queue_depth(&mut self) -> Result<i64>;
}
