//! Silences: matchers checked against each created alert and the record
//! that created it. A silenced alert is still recorded (and shown as
//! silenced); only its notifications are held back.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{actor_of, field_text, ip_of};
use crate::alerts::Alert;
use hexwatch_model::incident::Matcher;
use hexwatch_storage::silences::Silence;
use hexwatch_storage::{Session, StorageError};

/// How long the evaluator trusts its copy of the silences: a silence made
/// in the console holds alerts back within this.
const REFRESH: Duration = Duration::from_secs(2);

/// Longest a silence may last: a forgotten silence must end by itself.
pub const MAX_SILENCE_DAYS: i64 = 90;

/// Why a matcher cannot be used (the API answers 400 naming it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MatcherError {
    #[error("matchers[{index}].field: empty")]
    EmptyField { index: usize },
    #[error("matchers[{index}].op: {op:?} is not one of =, prefix, cidr")]
    UnknownOp { index: usize, op: String },
    #[error("matchers[{index}].value: {value:?} is not an address or CIDR range")]
    BadCidr { index: usize, value: String },
    #[error("matchers[{index}].value: empty")]
    EmptyValue { index: usize },
    #[error("matchers: at least one is needed (a silence of everything is not a silence)")]
    None,
}

/// Checks matchers as the API receives them.
pub fn check(matchers: &[Matcher]) -> Result<(), MatcherError> {
    if matchers.is_empty() {
        return Err(MatcherError::None);
    }
    for (index, m) in matchers.iter().enumerate() {
        if m.field.trim().is_empty() {
            return Err(MatcherError::EmptyField { index });
        }
        if m.value.is_empty() {
            return Err(MatcherError::EmptyValue { index });
        }
        match m.op.as_str() {
            "=" | "prefix" => {}
            "cidr" if net(&m.value).is_some() => {}
            "cidr" => {
                return Err(MatcherError::BadCidr {
                    index,
                    value: m.value.clone(),
                })
            }
            other => {
                return Err(MatcherError::UnknownOp {
                    index,
                    op: other.to_string(),
                })
            }
        }
    }
    Ok(())
}

fn net(value: &str) -> Option<ipnet::IpNet> {
    value
        .parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| value.parse::<IpAddr>().ok().map(ipnet::IpNet::from))
}

/// The value a matcher's field names, for this alert and record.
fn value_of(field: &str, alert: &Alert, record: &Value) -> Option<String> {
    match field {
        "rule" => Some(alert.id.clone()),
        "actor" => actor_of(record),
        "ip" => ip_of(record),
        "severity" => Some(alert.severity.to_string()),
        "project" => super::project_of(alert, record),
        path => field_text(record, path),
    }
}

fn matches(m: &Matcher, alert: &Alert, record: &Value) -> bool {
    if m.field == "project" {
        // A project is named by its title (the alert's context) or its id.
        let id = record
            .pointer("/event/targets")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|t| t.get("id").and_then(Value::as_str));
        let title = super::project_of(alert, record);
        return title
            .into_iter()
            .chain(id.map(str::to_string))
            .any(|v| compare(m, &v));
    }
    value_of(&m.field, alert, record).is_some_and(|v| compare(m, &v))
}

fn compare(m: &Matcher, v: &str) -> bool {
    match m.op.as_str() {
        "=" => v == m.value,
        "prefix" => v.starts_with(&m.value),
        "cidr" => match (net(&m.value), v.parse::<IpAddr>()) {
            (Some(n), Ok(ip)) => n.contains(&ip),
            _ => false,
        },
        _ => false,
    }
}

/// The evaluator's copy of the live silences.
#[derive(Default)]
pub struct Silences {
    live: Vec<Silence>,
    read_at: Option<Instant>,
}

impl Silences {
    /// Reads the silences again when the copy is older than [`REFRESH`].
    pub fn refresh(&mut self, session: &mut dyn Session, now_ms: i64) -> Result<(), StorageError> {
        if self.read_at.is_some_and(|t| t.elapsed() < REFRESH) {
            return Ok(());
        }
        self.live = session.live_silences(now_ms)?;
        self.read_at = Some(Instant::now());
        Ok(())
    }

    /// Forgets the copy (the next batch reads them again).
    pub fn forget(&mut self) {
        self.read_at = None;
    }

    /// The first silence active at `now_ms` whose matchers all match.
    pub fn holding(&self, alert: &Alert, record: &Value, now_ms: i64) -> Option<&Silence> {
        self.live
            .iter()
            .find(|s| s.active(now_ms) && s.matchers.iter().all(|m| matches(m, alert, record)))
    }
}
