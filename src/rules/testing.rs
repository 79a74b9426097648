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

use crate::event::{self, ParseContext};
use crate::rules::engine;
use crate::rules::eval::{MatchKind, RuleRunner};
use crate::rules::ruleset::{CompiledRule, Loader, RuleSet};
use crate::rules::value::Node;
use crate::store::MemoryState;

/// One case of a `.tests.json` file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    pub name: String,
    pub expect: bool,
    pub log: Value,
    pub title: Option<String>,
    pub severity: Option<String>,
    pub dedup: Option<String>,
    pub alert_context: Option<Value>,
    /// hexwatch extension: records evaluated first, in order, to build up rule
    /// state (e.g. a baseline of known IPs); their results are not checked.
    #[serde(default)]
    pub before: Vec<Value>,
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
    for (file, error) in &broken {
        if wanted(&file.display().to_string()) {
            writeln!(out, "FAIL {}: rule does not load: {error}", file.display())?;
            report.failed += 1;
        }
    }
    let by_file: HashMap<PathBuf, Arc<CompiledRule>> = scan
        .rules
        .rules()
        .iter()
        .map(|r| (r.file.clone(), r.clone()))
        .collect();

    let mut test_files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".tests.json") && !n.starts_with('.'))
        })
        .collect();
    test_files.sort();

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
        let cases: Vec<TestCase> = match std::fs::read_to_string(&tests_path)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
        {
            Ok(c) => c,
            Err(e) => {
                if wanted(&label) || wanted(&rule.meta.id) {
                    writeln!(out, "FAIL {label}: cannot read the tests: {e}")?;
                    report.failed += 1;
                }
                continue;
            }
        };
        let set = RuleSet::single(rule.clone());
        for case in cases {
            if !(wanted(&rule.meta.id) || wanted(&case.name) || wanted(&label)) {
                continue;
            }
            state.clear();
            match check_case(&mut runner, &set, rule, &case) {
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
    }
    writeln!(out, "{} passed, {} failed", report.passed, report.failed)?;
    Ok(report)
}

/// Validates a test log like an ingested record and evaluates it.
fn evaluate_log(
    runner: &mut RuleRunner,
    set: &RuleSet,
    log: &Value,
    label: &str,
    out: &mut Vec<crate::rules::eval::Match>,
) -> Result<event::Record, String> {
    let record = event::validate(log.clone(), &ParseContext::new("hex"))
        .map_err(|(e, _)| format!("{label} is not a valid Hex.Audit record: {e}"))?;
    let node = Node::deserialize(&record.value).map_err(|e| e.to_string())?;
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
) -> Result<(), String> {
    let mut out = Vec::new();
    for (i, log) in case.before.iter().enumerate() {
        evaluate_log(runner, set, log, &format!("before[{i}]"), &mut out)?;
    }
    out.clear();
    let record = evaluate_log(runner, set, &case.log, "log", &mut out)?;
    if let Some(err) = out.iter().find(|m| m.kind == MatchKind::RuleError) {
        return Err(format!(
            "rule error: {}",
            err.error.as_deref().unwrap_or_default()
        ));
    }
    let matched = out.iter().find(|m| m.kind == MatchKind::Rule);
    match (case.expect, matched) {
        (false, None) => Ok(()),
        (false, Some(m)) => Err(format!("expected no match, got one titled {:?}", m.title)),
        (true, None) => Err(format!(
            "expected a match, got none{}",
            match &rule.meta.actions {
                Some(a) if !a.iter().any(|x| x == record.action()) =>
                    format!(" (action {} is not in meta.actions)", record.action()),
                _ => String::new(),
            }
        )),
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
                Err(diffs.join("; "))
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
        let mut out = Vec::new();
        let r = run(dir.path(), None, 10_000, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            r,
            TestReport {
                passed: 3,
                failed: 2
            },
            "{text}"
        );
        assert!(text.contains("PASS Share › shared\n"), "{text}");
        assert!(text.contains("FAIL Share › wrong title"), "{text}");
        assert!(
            text.contains("title: expected \"nope\", got \"shared by a@x\""),
            "{text}"
        );
        assert!(text.ends_with("3 passed, 2 failed\n"), "{text}");

        let mut out = Vec::new();
        let r = run(dir.path(), Some("again"), 10_000, &mut out).unwrap();
        assert_eq!(
            r,
            TestReport {
                passed: 1,
                failed: 0
            }
        );
    }
}
