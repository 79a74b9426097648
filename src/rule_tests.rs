//! `hexwatch test`: runs the cases in `rules/<name>.tests.json` against
//! `rules/<name>.rhai`. Each case's `log` goes through the same Hex.Audit
//! validation as ingested records (so `p_*` fields exist), rule state starts
//! empty for every case, and the optional `title`, `severity`, `dedup` and
//! `alert_context` assertions are checked against what the rule generates.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use crate::alerts::{Alert, AlertWindows, MemoryAlerts, Router, Sample};
use crate::event::{self, ParseContext};
use hexwatch_model::document::RecordObject;
use hexwatch_rules::engine;
use hexwatch_rules::eval::{MatchKind, RuleRunner};
use hexwatch_rules::ruleset::{CompiledRule, Loader, RuleSet};
use hexwatch_rules::state::MemoryState;

/// One case of a `.tests.json` file: either one `log` and whether it matches
/// (`expect`), or a sequence of `records` and the `alerts` they must raise.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    pub name: String,
    pub expect: Option<bool>,
    pub log: Option<Value>,
    /// A sequence case: records evaluated in order through the whole alert stage
    /// (threshold, dedup window, rule state).
    #[serde(default)]
    pub records: Vec<Value>,
    /// The alerts the sequence must raise, in order (exactly these).
    pub alerts: Option<Vec<ExpectedAlert>>,
    /// Rule parameters for this case, as `[rules.params]` would set them.
    pub params: Option<serde_json::Map<String, Value>>,
    pub title: Option<String>,
    pub severity: Option<String>,
    pub dedup: Option<String>,
    pub alert_context: Option<Value>,
    /// hexwatch extension: records evaluated first, in order, to build up rule
    /// state (e.g. a baseline of known IPs); their results are not checked.
    #[serde(default)]
    pub before: Vec<Value>,
}

/// An alert a sequence case expects; unset fields are not checked.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedAlert {
    pub title: Option<String>,
    pub severity: Option<String>,
    pub dedup: Option<String>,
    /// Matches in the alert's window by the end of the sequence.
    pub count: Option<i64>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TestReport {
    pub passed: usize,
    pub failed: usize,
}

/// Runs every test file in `dir` whose rule id, file or case name contains
/// `filter`; writes one line per case and the closing `N passed, N failed`.
pub fn run(
    dir: &Path,
    filter: Option<&str>,
    max_operations: u64,
    out: &mut dyn Write,
) -> std::io::Result<TestReport> {
    let state = Arc::new(MemoryState::default());
    let mut loader = Loader::new(
        engine::build(max_operations, state.clone()),
        dir,
        None,
        None,
    );
    let scan = loader.scan()?;
    let mut runner = RuleRunner::new(engine::build(max_operations, state.clone()), state.clone());
    let mut report = TestReport::default();
    let wanted = |s: &str| filter.is_none_or(|f| s.contains(f));

    let broken: HashMap<PathBuf, String> = scan
        .errors
        .iter()
        .map(|e| (e.file.clone(), e.to_string()))
        .collect();
    // A rule that does not load is reported whatever the filter: its tests
    // cannot run, and a filter must not hide that.
    for (file, error) in &broken {
        writeln!(out, "FAIL {}: rule does not load: {error}", file.display())?;
        report.failed += 1;
    }
    let by_file: HashMap<PathBuf, Arc<CompiledRule>> = scan
        .rules
        .rules()
        .iter()
        .map(|r| (r.file.clone(), r.clone()))
        .collect();

    let test_files = test_files(dir)?;

    for rule in scan.rules.rules() {
        if wanted(&rule.meta.id) || wanted(&rule.file.display().to_string()) {
            report.failed += untested(rule, &test_files, out)?;
        }
    }

    for tests_path in test_files {
        let name = tests_path.file_name().unwrap().to_string_lossy();
        let rule_path = dir.join(format!("{}.rhai", name.trim_end_matches(".tests.json")));
        let label = tests_path.display().to_string();
        let Some(rule) = by_file.get(&rule_path) else {
            if !broken.contains_key(&rule_path) && wanted(&label) {
                writeln!(
                    out,
                    "FAIL {label}: no rule file {} beside it",
                    rule_path.display()
                )?;
                report.failed += 1;
            }
            continue;
        };
        let cases = match read_cases(&tests_path) {
            Ok(c) => c,
            Err(e) => {
                if wanted(&label) || wanted(&rule.meta.id) {
                    writeln!(out, "FAIL {label}: cannot read the tests: {e}")?;
                    report.failed += 1;
                }
                continue;
            }
        };
        let cases: Vec<TestCase> = cases
            .into_iter()
            .filter(|c| wanted(&rule.meta.id) || wanted(&c.name) || wanted(&label))
            .collect();
        let done = run_cases(&mut runner, &state, rule, &cases, &label, out)?;
        report.passed += done.passed;
        report.failed += done.failed;
    }
    writeln!(out, "{} passed, {} failed", report.passed, report.failed)?;
    Ok(report)
}

/// The test files of `dir`, in order.
fn test_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".tests.json") && !n.starts_with('.'))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Reports a rule without a test file beside it; 1 when it has none.
fn untested(
    rule: &CompiledRule,
    test_files: &[PathBuf],
    out: &mut dyn Write,
) -> std::io::Result<usize> {
    let tests = rule.file.with_extension("tests.json");
    if test_files.contains(&tests) {
        return Ok(0);
    }
    writeln!(
        out,
        "FAIL {}: no tests: write {} (a match and a non-match at least)",
        rule.meta.id,
        tests.display()
    )?;
    Ok(1)
}

/// The cases of one test file, or why they cannot be read.
fn read_cases(path: &Path) -> Result<Vec<TestCase>, Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(path)?;
    Ok(serde_json::from_str(&text)?)
}

/// Runs the cases of one rule, one line each.
fn run_cases(
    runner: &mut RuleRunner,
    state: &MemoryState,
    rule: &Arc<CompiledRule>,
    cases: &[TestCase],
    label: &str,
    out: &mut dyn Write,
) -> std::io::Result<TestReport> {
    let mut report = TestReport::default();
    let set = RuleSet::single(rule.clone());
    for case in cases {
        match run_case(runner, state, &set, rule, case) {
            Ok(()) => {
                writeln!(out, "PASS {} › {}", rule.meta.id, case.name)?;
                report.passed += 1;
            }
            Err(why) => {
                writeln!(
                    out,
                    "FAIL {} › {} ({label}): {why}",
                    rule.meta.id, case.name
                )?;
                report.failed += 1;
            }
        }
    }
    Ok(report)
}

/// One case, from a clean state, with its own parameters when it has them.
fn run_case(
    runner: &mut RuleRunner,
    state: &MemoryState,
    set: &RuleSet,
    rule: &Arc<CompiledRule>,
    case: &TestCase,
) -> Result<(), CaseFailure> {
    state.clear();
    runner.forget_learned();
    let tuned = match &case.params {
        None => None,
        Some(p) => Some(RuleSet::single(Arc::new(rule.with_params(p)?))),
    };
    check_case(runner, tuned.as_ref().unwrap_or(set), rule, case)
}

/// Why a test case failed, as `hexwatch test` prints it.
#[derive(Debug, thiserror::Error)]
enum CaseFailure {
    #[error(
        "a case has either `log` and `expect` (and optionally `before`), or `records` and `alerts`"
    )]
    Malformed,
    #[error(transparent)]
    Params(#[from] hexwatch_rules::ruleset::ParamError),
    #[error("{label} is not a valid Hex.Audit record: {reason}")]
    InvalidRecord { label: String, reason: String },
    #[error("{at}rule error: {message}")]
    RuleError { at: String, message: String },
    #[error("the alert stage failed: {0}")]
    Alerts(#[from] hexwatch_storage::StorageError),
    /// What the case expected and what happened, one difference after another.
    #[error("{}", .0.join("; "))]
    Differs(Vec<String>),
}

/// Validates a test log like an ingested record and evaluates it.
fn evaluate_log(
    runner: &mut RuleRunner,
    set: &RuleSet,
    log: &Value,
    label: &str,
    out: &mut Vec<hexwatch_rules::eval::Match>,
) -> Result<event::Record, CaseFailure> {
    let invalid = |reason: String| CaseFailure::InvalidRecord {
        label: label.to_string(),
        reason,
    };
    let record = event::validate(log.clone(), &ParseContext::new("hex"))
        .map_err(|(e, _)| invalid(e.to_string()))?;
    let node =
        RecordObject::from_deserializer(&record.value).map_err(|e| invalid(e.to_string()))?;
    runner.evaluate(
        set,
        record.action(),
        &node,
        record.event_time.timestamp_millis(),
        out,
    );
    Ok(record)
}

fn check_case(
    runner: &mut RuleRunner,
    set: &RuleSet,
    rule: &CompiledRule,
    case: &TestCase,
) -> Result<(), CaseFailure> {
    match (&case.log, case.expect, &case.alerts) {
        (Some(log), Some(expect), None) if case.records.is_empty() => {
            check_one(runner, set, rule, case, log, expect)
        }
        (None, None, Some(alerts)) if !case.records.is_empty() && case.before.is_empty() => {
            check_sequence(runner, set, &case.records, alerts)
        }
        _ => Err(CaseFailure::Malformed),
    }
}

/// Runs `records` through the rule and the alert stage; compares the alerts.
fn check_sequence(
    runner: &mut RuleRunner,
    set: &RuleSet,
    records: &[Value],
    expected: &[ExpectedAlert],
) -> Result<(), CaseFailure> {
    let windows = AlertWindows::new(Router::default());
    let mut store = MemoryAlerts::default();
    let mut out = Vec::new();
    for (i, log) in records.iter().enumerate() {
        out.clear();
        let record = evaluate_log(runner, set, log, &format!("records[{i}]"), &mut out)?;
        if let Some(m) = out.iter().find(|m| m.kind == MatchKind::RuleError) {
            return Err(CaseFailure::RuleError {
                at: format!("records[{i}]: "),
                message: m.error.clone().unwrap_or_default(),
            });
        }
        let ms = record.event_time.timestamp_millis();
        windows.apply_all(
            &mut store,
            &out,
            ms,
            &Sample::Value(&record.value),
            0,
            &mut Vec::new(),
        )?;
    }
    let got: Vec<&Alert> = store.created().collect();
    let mut diffs = Vec::new();
    if got.len() != expected.len() {
        diffs.push(format!(
            "expected {} alert(s), got {}: {:?}",
            expected.len(),
            got.len(),
            got.iter().map(|a| &a.title).collect::<Vec<_>>()
        ));
    }
    for (i, (want, a)) in expected.iter().zip(&got).enumerate() {
        if want.title.as_ref().is_some_and(|t| *t != a.title) {
            diffs.push(format!(
                "alerts[{i}].title: expected {:?}, got {:?}",
                want.title.as_deref().unwrap_or_default(),
                a.title
            ));
        }
        if want
            .severity
            .as_ref()
            .is_some_and(|s| s != a.severity.as_str())
        {
            diffs.push(format!(
                "alerts[{i}].severity: expected {}, got {}",
                want.severity.as_deref().unwrap_or_default(),
                a.severity
            ));
        }
        if want.dedup.as_ref().is_some_and(|d| *d != a.dedup) {
            diffs.push(format!(
                "alerts[{i}].dedup: expected {:?}, got {:?}",
                want.dedup.as_deref().unwrap_or_default(),
                a.dedup
            ));
        }
        if want.count.is_some_and(|c| c != a.event_count) {
            diffs.push(format!(
                "alerts[{i}].count: expected {}, got {}",
                want.count.unwrap_or_default(),
                a.event_count
            ));
        }
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(CaseFailure::Differs(diffs))
    }
}

fn check_one(
    runner: &mut RuleRunner,
    set: &RuleSet,
    rule: &CompiledRule,
    case: &TestCase,
    log: &Value,
    expect: bool,
) -> Result<(), CaseFailure> {
    let mut out = Vec::new();
    for (i, log) in case.before.iter().enumerate() {
        evaluate_log(runner, set, log, &format!("before[{i}]"), &mut out)?;
    }
    out.clear();
    let record = evaluate_log(runner, set, log, "log", &mut out)?;
    if let Some(err) = out.iter().find(|m| m.kind == MatchKind::RuleError) {
        return Err(CaseFailure::RuleError {
            at: String::new(),
            message: err.error.clone().unwrap_or_default(),
        });
    }
    let matched = out.iter().find(|m| m.kind == MatchKind::Rule);
    match (expect, matched) {
        (false, None) => Ok(()),
        (false, Some(m)) => Err(CaseFailure::Differs(vec![format!(
            "expected no match, got one titled {:?}",
            m.title
        )])),
        (true, None) => Err(CaseFailure::Differs(vec![format!(
            "expected a match, got none{}",
            match &rule.meta.actions {
                Some(a) if !a.iter().any(|x| x == record.action()) =>
                    format!(" (action {} is not in meta.actions)", record.action()),
                _ => String::new(),
            }
        )])),
        (true, Some(m)) => {
            let mut diffs = Vec::new();
            if let Some(t) = &case.title {
                if *t != m.title {
                    diffs.push(format!("title: expected {t:?}, got {:?}", m.title));
                }
            }
            if let Some(s) = &case.severity {
                if s != m.severity.as_str() {
                    diffs.push(format!("severity: expected {s}, got {}", m.severity));
                }
            }
            if let Some(d) = &case.dedup {
                if *d != m.dedup {
                    diffs.push(format!("dedup: expected {d:?}, got {:?}", m.dedup));
                }
            }
            if let Some(c) = &case.alert_context {
                if *c != m.alert_context {
                    diffs.push(format!(
                        "alert_context: expected {c}, got {}",
                        m.alert_context
                    ));
                }
            }
            if diffs.is_empty() {
                Ok(())
            } else {
                Err(CaseFailure::Differs(diffs))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_fails_and_filters() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("share.rhai"),
            r#"let meta = #{ id: "Share", severity: "HIGH", actions: ["SHARE_PROJECT_WITH_PUBLIC"] };
fn rule(e) { counter_incr("n", 60) == 1 }
fn title(e) { `shared by ${e.event.actor.metadata.email}` }
"#,
        )
        .unwrap();
        let log = serde_json::json!({
            "event": {"actor": {"metadata": {"email": "a@x"}}, "action": "SHARE_PROJECT_WITH_PUBLIC",
                      "occurred_at": "2024-01-01T00:00:00Z"}
        });
        let mut other = log.clone();
        other["event"]["action"] = "RUN_PROJECT".into();
        let cases = serde_json::json!([
            {"name": "shared", "expect": true, "log": log, "title": "shared by a@x", "severity": "HIGH"},
            // State is fresh per case: the counter starts at 1 again.
            {"name": "shared again", "expect": true, "log": log},
            {"name": "other action", "expect": false, "log": other},
            {"name": "wrong title", "expect": true, "log": log, "title": "nope"},
            {"name": "wrong expectation", "expect": false, "log": log}
        ]);
        std::fs::write(dir.path().join("share.tests.json"), cases.to_string()).unwrap();
        // A sequence case: threshold and dedup window through the alert stage.
        std::fs::write(
            dir.path().join("burst.rhai"),
            r#"let meta = #{ id: "Burst", severity: "LOW", threshold: 3, dedup_minutes: 10 };
fn rule(e) { true }
fn title(e) { `burst by ${actor(e)}` }
"#,
        )
        .unwrap();
        let at = |m: u32| {
            let mut l = log.clone();
            l["event"]["occurred_at"] = format!("2024-01-01T00:{m:02}:00Z").into();
            l
        };
        let seq = serde_json::json!([
            {"name": "three in ten minutes", "records": [at(0), at(1), at(2), at(3), at(20)],
             "alerts": [{"title": "burst by a@x", "count": 4}]},
            {"name": "wrong count", "records": [at(0), at(1), at(2)], "alerts": [{"count": 2}]}
        ]);
        std::fs::write(dir.path().join("burst.tests.json"), seq.to_string()).unwrap();
        // A rule without tests is reported.
        std::fs::write(
            dir.path().join("lonely.rhai"),
            "let meta = #{ id: \"Lonely\", severity: \"LOW\" };\nfn rule(e) { false }\n",
        )
        .unwrap();
        let mut out = Vec::new();
        let r = run(dir.path(), None, 10_000, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            r,
            TestReport {
                passed: 4,
                failed: 4
            },
            "{text}"
        );
        assert!(text.contains("PASS Burst › three in ten minutes"), "{text}");
        assert!(
            text.contains("alerts[0].count: expected 2, got 3"),
            "{text}"
        );
        assert!(text.contains("FAIL Lonely: no tests"), "{text}");
        assert!(text.contains("PASS Share › shared\n"), "{text}");
        assert!(text.contains("FAIL Share › wrong title"), "{text}");
        assert!(
            text.contains("title: expected \"nope\", got \"shared by a@x\""),
            "{text}"
        );
        assert!(text.ends_with("4 passed, 4 failed\n"), "{text}");

        // Under a filter, a rule that does not compile is still reported.
        std::fs::write(dir.path().join("broken.rhai"), "let meta = #{ id: \"B\" ;").unwrap();

        let mut out = Vec::new();
        let r = run(dir.path(), Some("again"), 10_000, &mut out).unwrap();
        assert_eq!(
            r,
            TestReport {
                passed: 1,
                failed: 1
            }
        );
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("broken.rhai: rule does not load"));
    }
}
