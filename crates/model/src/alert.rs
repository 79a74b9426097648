//! An alert as it is stored, delivered and printed, and the window that
//! gathers a rule's matches into it. Deciding what a match does to a window is
//! the application's alert stage; this is only the data both sides share.

use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::Severity;

/// Sample events kept per alert.
pub const MAX_SAMPLES: usize = 10;

/// The alert as delivered, printed by `replay` and stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    pub alert_id: String,
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub severity: Severity,
    pub dedup: String,
    pub created_at: String,
    pub first_event_at: String,
    pub last_event_at: String,
    pub event_count: i64,
    pub description: String,
    pub runbook: String,
    pub reference: String,
    pub tags: Vec<String>,
    pub reports: serde_json::Map<String, serde_json::Value>,
    pub alert_context: serde_json::Value,
    pub destinations: Vec<String>,
    pub events: Vec<SampleEvent>,
    pub version: String,
}

/// A record kept in an alert's `events`: its JSON text, checked once when the
/// window takes it and written into the alert as it is. A busy window is
/// stored again with every batch that updates it; its samples are neither
/// parsed nor checked again for that (checking them on every write was a
/// fifth of the evaluator's commits under load).
#[derive(Debug, Clone)]
pub struct SampleEvent(Arc<RawValue>);

impl SampleEvent {
    /// A sample from JSON text (a stored record: it is JSON; were it not, the
    /// text would be kept as a JSON string rather than lost).
    pub fn from_json(text: &str) -> SampleEvent {
        let raw = RawValue::from_string(text.to_owned())
            .or_else(|_| serde_json::value::to_raw_value(text))
            .expect("a string serialises");
        SampleEvent(Arc::from(raw))
    }

    pub fn from_value(v: &serde_json::Value) -> SampleEvent {
        let raw = serde_json::value::to_raw_value(v).expect("a JSON value serialises");
        SampleEvent(Arc::from(raw))
    }

    /// The record's JSON text, as stored.
    pub fn json(&self) -> &str {
        self.0.get()
    }

    /// The record parsed, for messages that show its fields.
    pub fn value(&self) -> serde_json::Value {
        serde_json::from_str(self.0.get()).unwrap_or_default()
    }
}

impl PartialEq for SampleEvent {
    fn eq(&self, other: &SampleEvent) -> bool {
        self.0.get() == other.0.get()
    }
}

impl Serialize for SampleEvent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for SampleEvent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(SampleEvent(Arc::from(Box::<RawValue>::deserialize(d)?)))
    }
}

/// One (rule, dedup) window: its count and, once the threshold is reached, its alert.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Window {
    pub key: WindowKey,
    pub start_ms: i64,
    pub end_ms: i64,
    pub threshold: i64,
    pub created: bool,
    pub last_ms: i64,
    /// The alert as it stands (created or not yet).
    pub alert: Alert,
    /// Samples the storage holds already and this window no longer carries:
    /// `alert.events` holds only the samples taken since (up to
    /// `MAX_SAMPLES` in all). Samples never change once taken, so each is
    /// stored once, apart from the window's row, and a window read back or
    /// kept between batches does not carry them: a burst's open windows no
    /// longer hold (and rewrite) ten records each.
    #[serde(skip)]
    pub samples_stored: usize,
}

impl Window {
    /// The window as read back from storage: its samples stay there. Every
    /// match takes a sample until there are `MAX_SAMPLES`, so a window
    /// holds `min(event_count, MAX_SAMPLES)` of them.
    pub fn stored(mut self) -> Window {
        self.alert.events = Vec::new();
        self.samples_stored = usize::try_from(self.alert.event_count)
            .unwrap_or(0)
            .min(MAX_SAMPLES);
        self
    }

    /// Whether a match at `event_ms` belongs to this window: windows hold
    /// only matches within their own span, whatever order they arrive in.
    pub fn holds(&self, event_ms: i64) -> bool {
        self.start_ms <= event_ms && event_ms < self.end_ms
    }
}

/// Which window a match belongs to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub struct WindowKey {
    pub rule_id: String,
    pub kind: String,
    pub dedup: String,
}

/// Unix milliseconds as RFC 3339 (UTC, milliseconds), as alerts show times.
pub fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}
