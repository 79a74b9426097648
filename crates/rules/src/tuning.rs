//! Tuning the shipped rules without editing them: per-rule overrides, rule
//! parameters and suppressions, all from the config file (and hot-reloaded with
//! the rules).
//!
//! ```toml
//! [rules.params]                                   # read by rules with param("...")
//! internal_domains = ["acme.example"]
//!
//! [rules.overrides."Hex.Data.CsvDownloadBurst"]    # enabled severity dedup_minutes
//! threshold = 50                                   # threshold destinations params
//!
//! [[suppressions]]
//! rule = "Hex.Behaviour.NewIpSensitiveAction"      # a rule id, or "*"
//! actor = "etl@acme.example"                       # any of: actor ip target fields
//! ip = "10.20.0.0/16"
//! expires = "2027-03-31"                           # event time; optional
//! reason = "ETL service account (SEC-123)"
//! ```
//!
//! A suppression applies when every condition it gives holds. Suppressed matches
//! raise no alert; they are counted (`hexwatch_rule_suppressed_total`) and their
//! records stay in the journal like every other.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use serde::Deserialize;

use crate::names;
use hexwatch_model::document::{Node, RecordObject};
use hexwatch_model::Severity;

/// One rule's overrides.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleOverride {
    pub enabled: Option<bool>,
    pub severity: Option<Severity>,
    pub dedup_minutes: Option<i64>,
    pub threshold: Option<i64>,
    pub destinations: Option<Vec<String>>,
    pub params: serde_json::Map<String, serde_json::Value>,
    /// Line of the `[rules.overrides."id"]` table in the config file.
    pub line: usize,
}

/// Matches that raise no alert.
#[derive(Debug, Clone, PartialEq)]
pub struct Suppression {
    /// A rule id, or `*` for every rule.
    pub rule: String,
    /// The actor's e-mail or id (case-insensitive).
    pub actor: Option<String>,
    /// The actor's address is in this range.
    pub ip: Option<ipnet::IpNet>,
    /// Some target's id or name (case-insensitive).
    pub target: Option<String>,
    /// Dotted paths into the record (`event.metadata.source`) and the text they hold.
    pub fields: Vec<(String, String)>,
    /// Event time (ms) from which it no longer applies.
    pub expires_ms: Option<i64>,
    pub reason: String,
    /// Line in the config file.
    pub line: usize,
}

/// Everything the config says about the rules beyond where they live.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tuning {
    pub overrides: BTreeMap<String, RuleOverride>,
    pub params: serde_json::Map<String, serde_json::Value>,
    pub suppressions: Vec<Suppression>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawOverride {
    enabled: Option<bool>,
    severity: Option<String>,
    dedup_minutes: Option<i64>,
    threshold: Option<i64>,
    destinations: Option<Vec<String>>,
    params: toml::Table,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSuppression {
    rule: String,
    actor: Option<String>,
    ip: Option<String>,
    target: Option<String>,
    #[serde(default)]
    fields: toml::Table,
    expires: Option<String>,
    reason: String,
}

/// The raw tuning sections, with spans so errors can name lines.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawTuning {
    pub overrides: BTreeMap<toml::Spanned<String>, RawOverride>,
    pub params: toml::Table,
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

fn to_json(v: toml::Value) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

impl Tuning {
    /// Validates the raw sections; `text` is the config file (for line numbers),
    /// `destinations` the configured destination names. Errors read "line N: ...".
    pub fn build(
        text: &str,
        raw: RawTuning,
        suppressions: Vec<toml::Spanned<RawSuppression>>,
        destinations: &[String],
    ) -> Result<Tuning, TuningError> {
        let mut overrides = BTreeMap::new();
        for (id, o) in raw.overrides {
            let line = line_of(text, id.span().start);
            let id = id.into_inner();
            let o = build_override(&id, o, line, destinations)?;
            overrides.insert(id, o);
        }
        let mut out = Vec::new();
        for (i, s) in suppressions.into_iter().enumerate() {
            let line = line_of(text, s.span().start);
            out.push(build_suppression(i, s.into_inner(), line)?);
        }
        Ok(Tuning {
            overrides,
            params: raw
                .params
                .into_iter()
                .map(|(k, v)| (k, to_json(v)))
                .collect(),
            suppressions: out,
        })
    }

    /// Reads only the tuning sections of a config file (hot reload).
    pub fn from_config_text(text: &str, destinations: &[String]) -> Result<Tuning, TuningError> {
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Only {
            rules: RawTuning,
            suppressions: Vec<toml::Spanned<RawSuppression>>,
        }
        let only: Only = toml::from_str(text).map_err(|e: toml::de::Error| TuningError::Toml {
            line: e.span().map_or(1, |s| line_of(text, s.start)),
            message: e.to_string().trim_end().into(),
        })?;
        Tuning::build(text, only.rules, only.suppressions, destinations)
    }

    /// The first suppression that applies to a match of `rule_id` on this record.
    pub fn suppressing(
        &self,
        rule_id: &str,
        ev: &RecordObject,
        event_ms: i64,
    ) -> Option<&Suppression> {
        self.suppressions
            .iter()
            .find(|s| s.applies(rule_id, ev, event_ms))
    }
}

/// Why the tuning sections of the config cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TuningError {
    /// The file is not TOML of the expected shape (the message names the line too).
    #[error("{message}")]
    Toml { line: usize, message: String },
    #[error("line {line}: {key}: {reason}")]
    Invalid {
        line: usize,
        key: String,
        reason: String,
    },
}

impl TuningError {
    /// The config file's line the error is about.
    pub fn line(&self) -> usize {
        match self {
            TuningError::Toml { line, .. } | TuningError::Invalid { line, .. } => *line,
        }
    }
}

/// Validates one `[rules.overrides."id"]` table.
fn build_override(
    id: &str,
    o: RawOverride,
    line: usize,
    destinations: &[String],
) -> Result<RuleOverride, TuningError> {
    let at = |reason: String| TuningError::Invalid {
        line,
        key: format!("rules.overrides.{id:?}"),
        reason,
    };
    let severity = match &o.severity {
        None => None,
        Some(s) => Some(Severity::parse(s).ok_or_else(|| {
            at(format!(
                "severity {s:?} is not INFO, LOW, MEDIUM, HIGH or CRITICAL"
            ))
        })?),
    };
    for (key, v) in [
        ("dedup_minutes", o.dedup_minutes),
        ("threshold", o.threshold),
    ] {
        if v.is_some_and(|n| n < 1) {
            return Err(at(format!("{key} must be at least 1")));
        }
    }
    if let Some(ds) = &o.destinations {
        if let Some(d) = ds.iter().find(|d| !destinations.contains(d)) {
            return Err(at(format!(
                "destination {d:?} is not configured; configured: {}",
                destinations.join(", ")
            )));
        }
    }
    Ok(RuleOverride {
        enabled: o.enabled,
        severity,
        dedup_minutes: o.dedup_minutes,
        threshold: o.threshold,
        destinations: o.destinations,
        params: o.params.into_iter().map(|(k, v)| (k, to_json(v))).collect(),
        line,
    })
}

/// Validates one `[[suppressions]]` entry.
fn build_suppression(i: usize, s: RawSuppression, line: usize) -> Result<Suppression, TuningError> {
    let at = |reason: String| TuningError::Invalid {
        line,
        key: format!("suppressions[{i}]"),
        reason,
    };
    if s.reason.trim().is_empty() {
        return Err(at(
            "reason must say why (it is shown in logs and audits)".into()
        ));
    }
    let ip = match &s.ip {
        None => None,
        Some(r) => Some(
            r.parse::<ipnet::IpNet>()
                .or_else(|_| r.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    at(format!(
                        "ip {r:?} is not an address or a range like \"10.0.0.0/8\""
                    ))
                })?,
        ),
    };
    let expires_ms = match &s.expires {
        None => None,
        Some(d) => Some(
            NaiveDate::parse_from_str(d, "%Y-%m-%d")
                .map_err(|_| at(format!("expires {d:?} is not a date like \"2027-03-31\"")))?
                .and_hms_opt(0, 0, 0)
                .expect("midnight")
                .and_utc()
                .timestamp_millis(),
        ),
    };
    let mut fields = Vec::new();
    for (path, v) in s.fields {
        let text = match v {
            toml::Value::String(t) => t,
            other => other.to_string(),
        };
        fields.push((path, text));
    }
    if s.actor.is_none() && ip.is_none() && s.target.is_none() && fields.is_empty() {
        return Err(at(
            "give at least one of actor, ip, target or fields (a suppression of everything is `enabled = false`)".into(),
        ));
    }
    Ok(Suppression {
        rule: s.rule,
        actor: s.actor,
        ip,
        target: s.target,
        fields,
        expires_ms,
        reason: s.reason,
        line,
    })
}

impl Suppression {
    fn applies(&self, rule_id: &str, ev: &RecordObject, event_ms: i64) -> bool {
        if self.rule != "*" && self.rule != rule_id {
            return false;
        }
        if self.expires_ms.is_some_and(|e| event_ms >= e) {
            return false;
        }
        if let Some(actor) = &self.actor {
            let hit = [
                ev.str_at(&["event", "actor", "metadata", "email"]),
                ev.str_at(&["event", "actor", "id"]),
            ]
            .into_iter()
            .flatten()
            .any(|a| a.eq_ignore_ascii_case(actor));
            if !hit {
                return false;
            }
        }
        if let Some(net) = &self.ip {
            let addr = ev
                .str_at(&["event", "context", "location"])
                .and_then(|a| a.trim().parse::<std::net::IpAddr>().ok());
            if !addr.is_some_and(|a| net.contains(&a)) {
                return false;
            }
        }
        if let Some(want) = &self.target {
            let hit = names::targets(ev).any(|t| {
                t.str_at(&["id"])
                    .is_some_and(|id| id.eq_ignore_ascii_case(want))
                    || names::own_name(ev, t).is_some_and(|n| n.eq_ignore_ascii_case(want))
            });
            if !hit {
                return false;
            }
        }
        self.fields.iter().all(|(path, want)| {
            let parts: Vec<&str> = path.split('.').collect();
            match ev.at(&parts) {
                Some(Node::Str(s)) => s == want,
                Some(Node::Null) | None => false,
                Some(Node::Bool(b)) => want.parse::<bool>() == Ok(b),
                Some(Node::Int(i)) => want.parse::<i64>() == Ok(i),
                Some(Node::Float(f)) => want.parse::<f64>() == Ok(f),
                Some(other) => serde_json::from_str::<serde_json::Value>(want)
                    .is_ok_and(|w| w == other.to_json()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"
[rules.params]
internal_domains = ["acme.example"]

[rules.overrides."Hex.Data.CsvDownloadBurst"]
threshold = 50
severity = "LOW"

[[suppressions]]
rule = "Hex.Behaviour.NewIpSensitiveAction"
actor = "ETL@acme.example"
ip = "10.20.0.0/16"
fields = { "event.metadata.source" = "API" }
expires = "2027-03-31"
reason = "ETL service account"
"#;

    fn ev(json: &str) -> RecordObject {
        RecordObject::parse(json).expect("a JSON object")
    }

    #[test]
    fn parses_and_matches() {
        let t = Tuning::from_config_text(TEXT, &[]).unwrap();
        assert_eq!(t.params["internal_domains"][0], "acme.example");
        let o = &t.overrides["Hex.Data.CsvDownloadBurst"];
        assert_eq!(
            (o.threshold, o.severity, o.line),
            (Some(50), Some(Severity::Low), 5)
        );
        assert_eq!(t.suppressions[0].line, 9);
        let rec = ev(
            r#"{"event":{"actor":{"metadata":{"email":"etl@acme.example"}},"context":{"location":"10.20.3.4"},"metadata":{"source":"API"}}}"#,
        );
        let id = "Hex.Behaviour.NewIpSensitiveAction";
        assert!(t.suppressing(id, &rec, 0).is_some());
        assert!(t.suppressing("Other", &rec, 0).is_none());
        let expired = NaiveDate::from_ymd_opt(2027, 3, 31)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap()
            .and_utc()
            .timestamp_millis();
        assert!(t.suppressing(id, &rec, expired).is_none());
        let elsewhere = ev(
            r#"{"event":{"actor":{"metadata":{"email":"etl@acme.example"}},"context":{"location":"192.0.2.1"},"metadata":{"source":"API"}}}"#,
        );
        assert!(t.suppressing(id, &elsewhere, 0).is_none());
    }

    #[test]
    fn errors_name_the_line() {
        let bad = "\n\n[[suppressions]]\nrule = \"X\"\nip = \"10.0.0.0/33\"\nreason = \"r\"\n";
        let e = Tuning::from_config_text(bad, &[]).unwrap_err();
        assert_eq!(e.line(), 3);
        let e = e.to_string();
        assert!(e.starts_with("line 3: suppressions[0]: ip"), "{e}");
        let bad = "[rules.overrides.\"X\"]\ndestinations = [\"pager\"]\n";
        let e = Tuning::from_config_text(bad, &["mail".into()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 1") && e.contains("\"pager\" is not configured"),
            "{e}"
        );
        let e = Tuning::from_config_text("[[suppressions]]\nrule = \"X\"\nreason = \"r\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least one of"), "{e}");
    }
}
