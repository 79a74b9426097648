//! A rule's metadata: the `meta` map at the top of each rule file, validated at
//! load with errors that name the file, the line and the field.

use std::collections::HashSet;

use rhai::{Dynamic, Map};

use hexwatch_model::document::{Node, RecordObject};
use hexwatch_model::Severity;

mod count;

use count::counts;
pub use count::{AtLeast, Count, Selector};

/// Validated rule metadata (docs/rules.md), with Panther's defaults.
#[derive(Debug, Clone)]
pub struct RuleMeta {
    pub id: String,
    pub severity: Severity,
    pub description: String,
    /// Only these actions reach `rule()`; `None` means every action.
    pub actions: Option<Vec<String>>,
    /// Field values checked in Rust before `rule()` is called (`require`, `exclude`).
    pub pre_match: PreMatch,
    /// Volumes counted in Rust before `rule()` is called (`count`), each for
    /// its own actions.
    pub count: Vec<Count>,
    pub dedup_minutes: i64,
    pub threshold: i64,
    pub tags: Vec<String>,
    /// e.g. `{"MITRE ATT&CK": ["TA0010:T1567"]}`
    pub reports: serde_json::Map<String, serde_json::Value>,
    pub runbook: String,
    pub reference: String,
    /// Static routing override; `None` routes by severity.
    pub destinations: Option<Vec<String>>,
    pub enabled: bool,
    /// The rule's parameters and their defaults (`param(name)`; config overrides).
    pub params: Map,
    /// What its alerts' incidents group by (`actor`, `ip`, or a record field
    /// path such as `event.targets.0.id`), instead of `incidents.group_by`.
    pub group_by: Option<String>,
}

const KEYS: &[&str] = &[
    "id",
    "severity",
    "description",
    "actions",
    "require",
    "exclude",
    "count",
    "dedup_minutes",
    "threshold",
    "tags",
    "reports",
    "runbook",
    "reference",
    "destinations",
    "enabled",
    "params",
    "group_by",
];

/// A metadata problem: the field and what is wrong; the loader adds file and line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaError {
    pub field: String,
    pub message: String,
}

fn fail(field: &str, message: impl Into<String>) -> MetaError {
    MetaError {
        field: field.to_string(),
        message: message.into(),
    }
}

/// `require` and `exclude`: fields a record must have, or must not have, for
/// `rule()` to be called, checked in Rust before the call. A Rhai call costs
/// about 2,000 instructions for each operation it makes; a record these turn
/// away costs a few lookups in its parsed tree.
#[derive(Debug, Clone, Default)]
pub struct PreMatch {
    /// Every one must hold: the field is there with one of the values.
    require: Vec<FieldIs>,
    /// None may hold: a record with the field at one of the values is skipped.
    exclude: Vec<FieldIs>,
}

/// The keys of a dotted field path such as "event.metadata.source"; `None`
/// when a key is empty.
fn field_path(path: &str) -> Option<Vec<String>> {
    let parts: Vec<String> = path.split('.').map(str::to_string).collect();
    (!parts.iter().any(String::is_empty)).then_some(parts)
}

/// A field (dotted path of object keys) and the values it is compared with.
#[derive(Debug, Clone)]
struct FieldIs {
    path: Vec<String>,
    values: Vec<Scalar>,
}

#[derive(Debug, Clone, PartialEq)]
enum Scalar {
    Str(String),
    Int(i64),
    Bool(bool),
}

impl PreMatch {
    /// Whether `rule()` is to see this record.
    pub fn admits(&self, ev: &RecordObject) -> bool {
        self.require.iter().all(|f| f.holds(ev)) && !self.exclude.iter().any(|f| f.holds(ev))
    }

    pub fn is_empty(&self) -> bool {
        self.require.is_empty() && self.exclude.is_empty()
    }
}

impl FieldIs {
    fn holds(&self, ev: &RecordObject) -> bool {
        let Some(node) = ev.obj().at(&self.path) else {
            return false;
        };
        self.values.iter().any(|v| match (v, node) {
            (Scalar::Str(want), Node::Str(s)) => want == s,
            (Scalar::Int(want), Node::Int(i)) => *want == i,
            (Scalar::Bool(want), Node::Bool(b)) => *want == b,
            _ => false,
        })
    }
}

/// Reads `require` or `exclude`: a map from dotted field paths to a string,
/// integer or boolean, or a list of them (any one of which counts).
fn field_values(map: &Map, key: &str) -> Result<Vec<FieldIs>, MetaError> {
    let Some(v) = map.get(key) else {
        return Ok(Vec::new());
    };
    let fields = v.as_map_ref().map_err(|_| {
        fail(
            key,
            format!(
                "expected a map of fields to values such as #{{ \"event.metadata.source\": \"SCHEDULED\" }}, got {}",
                type_name(v)
            ),
        )
    })?;
    let scalar = |path: &str, v: &Dynamic| -> Result<Scalar, MetaError> {
        if let Ok(s) = v.clone().into_string() {
            Ok(Scalar::Str(s))
        } else if let Ok(i) = v.as_int() {
            Ok(Scalar::Int(i))
        } else if let Ok(b) = v.as_bool() {
            Ok(Scalar::Bool(b))
        } else {
            Err(fail(
                key,
                format!(
                    "{path}: expected a string, integer or boolean (or a list of them), got {}",
                    type_name(v)
                ),
            ))
        }
    };
    let mut out = Vec::with_capacity(fields.len());
    for (path, value) in fields.iter() {
        let Some(parts) = field_path(path) else {
            return Err(fail(
                key,
                format!("{path:?} is not a field path like \"event.metadata.source\""),
            ));
        };
        let values = match value.as_array_ref() {
            Ok(list) if list.is_empty() => {
                return Err(fail(key, format!("{path}: an empty list matches nothing")))
            }
            Ok(list) => list
                .iter()
                .map(|v| scalar(path, v))
                .collect::<Result<Vec<_>, _>>()?,
            Err(_) => vec![scalar(path, value)?],
        };
        out.push(FieldIs {
            path: parts,
            values,
        });
    }
    Ok(out)
}

/// How a value's type is named in messages.
pub(crate) fn type_name(v: &Dynamic) -> &'static str {
    if v.is_string() {
        "a string"
    } else if v.is_int() {
        "an integer"
    } else if v.is_bool() {
        "a boolean"
    } else if v.is_array() {
        "an array"
    } else if v.is_map() {
        "a map"
    } else if v.is_unit() {
        "()"
    } else if v.is_float() {
        "a decimal number"
    } else {
        "another type"
    }
}

fn string(map: &Map, key: &str) -> Result<Option<String>, MetaError> {
    match map.get(key) {
        None => Ok(None),
        Some(v) if v.is_string() => Ok(Some(v.clone().into_string().unwrap_or_default())),
        Some(v) => Err(fail(
            key,
            format!("expected a string, got {}", type_name(v)),
        )),
    }
}

fn strings(map: &Map, key: &str) -> Result<Option<Vec<String>>, MetaError> {
    match map.get(key) {
        None => Ok(None),
        Some(v) if v.is_array() => {
            let arr = v.as_array_ref().expect("checked");
            arr.iter()
                .enumerate()
                .map(|(i, item)| {
                    item.clone().into_string().map_err(|_| {
                        fail(
                            key,
                            format!("item {i}: expected a string, got {}", type_name(item)),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some)
        }
        Some(v) => Err(fail(
            key,
            format!("expected an array of strings, got {}", type_name(v)),
        )),
    }
}

fn int(map: &Map, key: &str, default: i64, min: i64) -> Result<i64, MetaError> {
    match map.get(key) {
        None => Ok(default),
        Some(v) => {
            let n = v
                .as_int()
                .map_err(|_| fail(key, format!("expected an integer, got {}", type_name(v))))?;
            if n < min {
                Err(fail(key, format!("must be at least {min}, got {n}")))
            } else {
                Ok(n)
            }
        }
    }
}

/// Validates a `meta` map. `destinations` are the configured destination names
/// (`None` when there is no config to check against, as in `hexwatch test`).
pub fn parse(map: &Map, destinations: Option<&[String]>) -> Result<RuleMeta, MetaError> {
    for key in map.keys() {
        if !KEYS.contains(&key.as_str()) {
            return Err(fail(
                key,
                format!("unknown key; the keys are {}", KEYS.join(", ")),
            ));
        }
    }
    let (id, severity) = id_and_severity(map)?;
    let actions = strings(map, "actions")?;
    if let Some(a) = &actions {
        if a.is_empty() {
            return Err(fail(
                "actions",
                "an empty list would never match; remove the key to receive every action",
            ));
        }
    }
    let pre_match = PreMatch {
        require: field_values(map, "require")?,
        exclude: field_values(map, "exclude")?,
    };
    let dedup_minutes = int(map, "dedup_minutes", 60, 1)?;
    let threshold = int(map, "threshold", 1, 1)?;
    let tags = strings(map, "tags")?.unwrap_or_default();
    let reports = reports(map)?;
    let dests = rule_destinations(map, destinations)?;
    let enabled = match map.get("enabled") {
        None => true,
        Some(v) => v.as_bool().map_err(|_| {
            fail(
                "enabled",
                format!("expected true or false, got {}", type_name(v)),
            )
        })?,
    };
    let params = params(map)?;
    let count = counts(map, actions.as_deref(), &params)?;
    Ok(RuleMeta {
        id,
        severity,
        description: string(map, "description")?.unwrap_or_default(),
        actions,
        pre_match,
        count,
        dedup_minutes,
        threshold,
        tags,
        reports,
        runbook: string(map, "runbook")?.unwrap_or_default(),
        reference: string(map, "reference")?.unwrap_or_default(),
        destinations: dests,
        enabled,
        params,
        group_by: string(map, "group_by")?.filter(|g| !g.is_empty()),
    })
}

/// `id` and `severity`, both required.
fn id_and_severity(map: &Map) -> Result<(String, Severity), MetaError> {
    let id = string(map, "id")?.ok_or_else(|| {
        fail(
            "id",
            "required: a unique rule id such as \"Hex.Project.SharedPublicly\"",
        )
    })?;
    if id.trim().is_empty() {
        return Err(fail("id", "must not be empty"));
    }
    let severity_text = string(map, "severity")?
        .ok_or_else(|| fail("severity", "required: INFO, LOW, MEDIUM, HIGH or CRITICAL"))?;
    let severity = Severity::parse(&severity_text).ok_or_else(|| {
        fail(
            "severity",
            format!("{severity_text:?} is not a severity; use INFO, LOW, MEDIUM, HIGH or CRITICAL"),
        )
    })?;
    Ok((id, severity))
}

/// `reports`: framework name to a list of strings (e.g. ATT&CK ids).
fn reports(map: &Map) -> Result<serde_json::Map<String, serde_json::Value>, MetaError> {
    Ok(match map.get("reports") {
        None => serde_json::Map::new(),
        Some(v) if v.is_map() => {
            let m = v.as_map_ref().expect("checked");
            let mut out = serde_json::Map::new();
            for (k, items) in m.iter() {
                let list = items.as_array_ref().map_err(|_| {
                    fail(
                        "reports",
                        format!(
                            "{k}: expected an array of strings, got {}",
                            type_name(items)
                        ),
                    )
                })?;
                let mut vals = Vec::with_capacity(list.len());
                for item in list.iter() {
                    let s = item.clone().into_string().map_err(|_| {
                        fail(
                            "reports",
                            format!("{k}: expected strings, got {}", type_name(item)),
                        )
                    })?;
                    vals.push(serde_json::Value::String(s));
                }
                out.insert(k.to_string(), serde_json::Value::Array(vals));
            }
            out
        }
        Some(v) => {
            return Err(fail(
                "reports",
                format!(
                    "expected a map such as #{{ \"MITRE ATT&CK\": [\"TA0010:T1567\"] }}, got {}",
                    type_name(v)
                ),
            ))
        }
    })
}

/// `destinations`: names of configured destinations (checked when the
/// configured ones are known).
fn rule_destinations(
    map: &Map,
    destinations: Option<&[String]>,
) -> Result<Option<Vec<String>>, MetaError> {
    let dests = strings(map, "destinations")?;
    if let (Some(d), Some(destinations)) = (&dests, destinations) {
        let known: HashSet<&str> = destinations.iter().map(String::as_str).collect();
        for name in d {
            if !known.contains(name.as_str()) {
                let list = if destinations.is_empty() {
                    "none are configured".to_string()
                } else {
                    format!("configured: {}", destinations.join(", "))
                };
                return Err(fail(
                    "destinations",
                    format!("{name:?} is not a configured destination ({list})"),
                ));
            }
        }
    }
    Ok(dests)
}

/// `params`: the rule's parameters with their defaults.
fn params(map: &Map) -> Result<Map, MetaError> {
    Ok(match map.get("params") {
        None => Map::new(),
        Some(v) if v.is_map() => v.as_map_ref().expect("checked").clone(),
        Some(v) => {
            return Err(fail(
                "params",
                format!(
                    "expected a map of defaults such as #{{ internal_domains: [] }}, got {}",
                    type_name(v)
                ),
            ))
        }
    })
}

/// The 1-based line where `field` is written inside the `meta` map of `source`,
/// else the line of `let meta`, else 1.
pub fn field_line(source: &str, field: &str) -> usize {
    let start = source.find("let meta").unwrap_or(0);
    let line_of = |offset: usize| source[..offset].matches('\n').count() + 1;
    let rest = &source[start..];
    let mut search = 0;
    while let Some(pos) = rest[search..].find(field) {
        let at = search + pos;
        let before_ok = at == 0
            || !rest.as_bytes()[at - 1].is_ascii_alphanumeric() && rest.as_bytes()[at - 1] != b'_';
        let after = rest[at + field.len()..].trim_start_matches([' ', '\t', '"']);
        if before_ok && after.starts_with(':') {
            return line_of(start + at);
        }
        search = at + field.len();
    }
    line_of(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(src: &str) -> Result<RuleMeta, MetaError> {
        let engine = rhai::Engine::new();
        let map: Map = engine.eval(src).unwrap();
        parse(&map, Some(&["secops-webhook".to_string()]))
    }

    #[test]
    fn defaults_and_values() {
        let m = meta(r#"#{ id: "A", severity: "HIGH", actions: ["X"], reports: #{ "MITRE ATT&CK": ["TA0010:T1567"] } }"#).unwrap();
        assert_eq!(m.dedup_minutes, 60);
        assert_eq!(m.threshold, 1);
        assert!(m.enabled);
        assert_eq!(m.actions.as_deref(), Some(&["X".to_string()][..]));
        assert_eq!(m.reports["MITRE ATT&CK"][0], "TA0010:T1567");
    }

    #[test]
    fn exact_error_messages() {
        let e = meta(r#"#{ severity: "HIGH" }"#).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.message.as_str()),
            (
                "id",
                "required: a unique rule id such as \"Hex.Project.SharedPublicly\""
            )
        );
        let e = meta(r#"#{ id: "A", severity: "SEVERE" }"#).unwrap_err();
        assert_eq!(
            e.message,
            "\"SEVERE\" is not a severity; use INFO, LOW, MEDIUM, HIGH or CRITICAL"
        );
        let e = meta(r#"#{ id: "A", severity: "LOW", threshold: 0 }"#).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.message.as_str()),
            ("threshold", "must be at least 1, got 0")
        );
        let e = meta(r#"#{ id: "A", severity: "LOW", treshold: 3 }"#).unwrap_err();
        assert_eq!(e.field, "treshold");
        assert!(e
            .message
            .starts_with("unknown key; the keys are id, severity"));
        let e = meta(r#"#{ id: 5, severity: "LOW" }"#).unwrap_err();
        assert_eq!(e.message, "expected a string, got an integer");
        let e = meta(r#"#{ id: "A", severity: "LOW", dedup_minutes: "60" }"#).unwrap_err();
        assert_eq!(e.message, "expected an integer, got a string");
        let e = meta(r#"#{ id: "A", severity: "LOW", destinations: ["pager"] }"#).unwrap_err();
        assert_eq!(
            e.message,
            "\"pager\" is not a configured destination (configured: secops-webhook)"
        );
        let e = meta(r#"#{ id: "A", severity: "LOW", tags: ["a", 1] }"#).unwrap_err();
        assert_eq!(e.message, "item 1: expected a string, got an integer");
    }

    #[test]
    fn finds_field_lines() {
        let src = "// header\nlet meta = #{\n    id: \"A\",\n    severity: \"X\",\n};\nfn rule(e) { e.severity }\n";
        assert_eq!(field_line(src, "severity"), 4);
        assert_eq!(field_line(src, "id"), 3);
        assert_eq!(field_line(src, "threshold"), 2);
    }

    #[test]
    fn require_and_exclude_are_checked_at_load() {
        let m = meta(
            r#"#{ id: "A", severity: "LOW", exclude: #{ "event.metadata.source": "SCHEDULED" },
                 require: #{ "event.version": [1, 2], "event.metadata.created": true } }"#,
        )
        .unwrap();
        assert!(!m.pre_match.is_empty());
        assert!(meta(r#"#{ id: "A", severity: "LOW" }"#)
            .unwrap()
            .pre_match
            .is_empty());
        for (src, says) in [
            (
                r#"exclude: ["SCHEDULED"]"#,
                "expected a map of fields to values",
            ),
            (
                r#"exclude: #{ "event..source": "X" }"#,
                "is not a field path",
            ),
            (
                r#"require: #{ "event.action": [] }"#,
                "an empty list matches nothing",
            ),
            (
                r#"require: #{ "event.version": 1.5 }"#,
                "event.version: expected a string, integer or boolean",
            ),
            (
                r#"require: #{ "event.action": ["A", #{}] }"#,
                "event.action: expected a string",
            ),
        ] {
            let e = meta(&format!(r#"#{{ id: "A", severity: "LOW", {src} }}"#)).unwrap_err();
            assert!(e.message.contains(says), "{src}: {}", e.message);
            assert!(e.field == "require" || e.field == "exclude", "{src}");
        }
    }

    #[test]
    fn count_is_checked_at_load() {
        let m = meta(
            r#"#{ id: "A", severity: "LOW", actions: ["RUN_CELL", "VIEW_PROJECT"], params: #{ n: 300 },
                 count: #{ actions: ["RUN_CELL"], by: "actor", seconds: 600, at_least: "n" } }"#,
        )
        .unwrap();
        assert_eq!(m.count.len(), 1);
        assert_eq!(m.count[0].by, Selector::Actor);
        assert_eq!(m.count[0].at_least, AtLeast::Param("n".into()));
        assert!(m.count[0].counts("RUN_CELL") && !m.count[0].counts("VIEW_PROJECT"));
        let m = meta(
            r#"#{ id: "A", severity: "LOW", count: [
                 #{ actions: ["A"], by: "event.context.location", seconds: 60, at_least: 5 },
                 #{ actions: ["B"], by: "actor", distinct: "target:project", seconds: 60, at_least: 2 } ] }"#,
        )
        .unwrap();
        assert_eq!(
            m.count[0].by,
            Selector::Field(vec!["event".into(), "context".into(), "location".into()])
        );
        assert_eq!(
            m.count[1].distinct,
            Some(Selector::Target("project".into()))
        );
        assert!(meta(r#"#{ id: "A", severity: "LOW" }"#)
            .unwrap()
            .count
            .is_empty());
        for (src, says) in [
            (r#"count: 5"#, "expected a map such as"),
            (r#"count: []"#, "an empty list counts nothing"),
            (
                r#"count: #{ by: "actor", seconds: 60 }"#,
                "at_least: required",
            ),
            (r#"count: #{ seconds: 60, at_least: 2 }"#, "by: required"),
            (
                r#"count: #{ by: "actor", at_least: 2 }"#,
                "seconds: required",
            ),
            (
                r#"count: #{ by: "actor", seconds: 0, at_least: 2 }"#,
                "seconds: must be at least 1, got 0",
            ),
            (
                r#"count: #{ by: "actor", seconds: 60, at_least: 0 }"#,
                "at_least: must be at least 1",
            ),
            (
                r#"count: #{ by: "actor", seconds: 60, at_least: "nope" }"#,
                "\"nope\" is not in meta.params",
            ),
            (
                r#"params: #{ n: [] }, count: #{ by: "actor", seconds: 60, at_least: "n" }"#,
                "params.n is an array, not a number",
            ),
            (
                r#"count: #{ by: "event..ip", seconds: 60, at_least: 2 }"#,
                "is not \"actor\", \"target:KIND\" or a field path",
            ),
            (
                r#"count: #{ by: "actor", distinct: "target:", seconds: 60, at_least: 2 }"#,
                "distinct: \"target:\" is not",
            ),
            (
                r#"count: #{ by: "actor", seconds: 60, at_least: 2, window: 5 }"#,
                "window: unknown key",
            ),
            (
                r#"actions: ["A"], count: #{ actions: ["B"], by: "actor", seconds: 60, at_least: 2 }"#,
                "\"B\" is not in meta.actions",
            ),
            (
                r#"count: [#{ by: "actor", seconds: 60, at_least: 2 }, #{ actions: ["A"], by: "actor", seconds: 60, at_least: 2 }]"#,
                "[1] counts actions an earlier entry counts",
            ),
        ] {
            let e = meta(&format!(r#"#{{ id: "A", severity: "LOW", {src} }}"#)).unwrap_err();
            assert!(e.message.contains(says), "{src}: {}", e.message);
            assert_eq!(e.field, "count", "{src}");
        }
    }
}
