//! Evaluating one record against the rule set: `rule()` of every candidate rule,
//! then, for a match, the optional functions that shape the alert (title, dedup,
//! severity, context, ...). A rule that raises or hits a sandbox limit yields a
//! `RULE_ERROR` match for that rule and that record only.

use std::fmt::Write;
use std::sync::Arc;

use rhai::{CallFnOptions, Dynamic, Engine, Scope};

use crate::engine::{actor_of, CallTag};
use crate::facts::Facts;
use crate::meta::{AtLeast, Count, Selector};
use crate::recent::Recent;
use crate::ruleset::{CompiledRule, RuleSet};
use crate::state::{StateStore, StoreError};
use crate::{baseline, names};
use hexwatch_model::document::{dynamic_to_json, Node, RecordObject};
use hexwatch_model::Severity;

/// Generated strings (title, dedup, ...) are cut at this many characters, as in Panther.
pub const MAX_GENERATED_CHARS: usize = 1000;
/// An alert context larger than this (as JSON) is replaced by a note saying so.
pub const MAX_ALERT_CONTEXT_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchKind {
    Rule,
    RuleError,
}

impl MatchKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MatchKind::Rule => "RULE",
            MatchKind::RuleError => "RULE_ERROR",
        }
    }
}

/// A rule match (or rule error) with everything the alert stage needs.
#[derive(Debug, Clone)]
pub struct Match {
    pub rule: Arc<CompiledRule>,
    pub kind: MatchKind,
    pub title: String,
    pub dedup: String,
    pub severity: Severity,
    pub alert_context: serde_json::Value,
    /// `None`: route by severity; `Some([])`: deliver nowhere.
    pub destinations: Option<Vec<String>>,
    pub description: String,
    pub runbook: String,
    pub reference: String,
    /// For `RULE_ERROR`: what went wrong.
    pub error: Option<String>,
}

/// Runs rules. Holds the engine and the state its helpers write to; one per
/// evaluating thread.
pub struct RuleRunner {
    engine: Engine,
    state: Arc<dyn StateStore>,
    scope: Scope<'static>,
    /// What learning wrote lately (names, baselines).
    recent: Recent,
}

/// What evaluating one record did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Evaluated {
    pub rules_run: usize,
    pub matches: usize,
    pub errors: usize,
}

impl RuleRunner {
    /// `state`: the store the engine's state helpers were built with.
    pub fn new(engine: Engine, state: Arc<dyn StateStore>) -> RuleRunner {
        RuleRunner {
            engine,
            state,
            scope: Scope::new(),
            recent: Recent::default(),
        }
    }

    /// Forgets what learning wrote: call when the state store threw writes away
    /// (a failed batch, a cleared test state).
    pub fn forget_learned(&mut self) {
        self.recent.clear();
    }

    /// Evaluates a stored record (JSON text, and its tree when validation
    /// built one) whose action is `action`; appends matches to `out`. Without
    /// a tree, the record is parsed only if some rule wants its action.
    pub fn evaluate_json(
        &mut self,
        rules: &RuleSet,
        action: &str,
        json: &str,
        tree: Option<&RecordObject>,
        event_time_ms: i64,
        out: &mut Vec<Match>,
    ) -> Evaluated {
        if let Some(ev) = tree {
            return self.evaluate(rules, action, ev, event_time_ms, out);
        }
        // Every record teaches names and baselines; one that no rule wants is
        // only read for that (see `facts`).
        if !rules.wants(action) {
            if let Some(facts) = Facts::from_json(json) {
                self.learn(&facts, event_time_ms);
            }
            return Evaluated::default();
        }
        match RecordObject::parse(json) {
            Ok(ev) => self.evaluate(rules, action, &ev, event_time_ms, out),
            Err(e) => {
                // Only records that passed validation reach here; say so loudly if not.
                tracing::error!(error = %e, "stored record is not a JSON object; skipped");
                Evaluated::default()
            }
        }
    }

    /// Evaluates a parsed record.
    pub fn evaluate(
        &mut self,
        rules: &RuleSet,
        action: &str,
        ev: &RecordObject,
        event_time_ms: i64,
        out: &mut Vec<Match>,
    ) -> Evaluated {
        let event = ev.to_dynamic();
        let mut done = Evaluated::default();
        for rule in rules.candidates(action) {
            if !rule.meta.pre_match.admits(ev) {
                continue;
            }
            let counted = rule
                .meta
                .count
                .iter()
                .enumerate()
                .find(|(_, c)| c.counts(action));
            if let Some((i, count)) = counted {
                match self.count(rule, i, count, ev, event_time_ms) {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(e) => {
                        done.errors += 1;
                        rule.counters.errors.inc();
                        out.push(rule_error(rule, e));
                        continue;
                    }
                }
            }
            done.rules_run += 1;
            rule.counters.evaluations.inc();
            match self.call(rule, "rule", &event, event_time_ms) {
                Ok(v) => match v.as_bool() {
                    Ok(true) => {
                        done.matches += 1;
                        rule.counters.matches.inc();
                        let (m, errors) = self.shape(rule, &event, event_time_ms);
                        match rules.tuning.suppressing(&rule.meta.id, ev, event_time_ms) {
                            Some(s) => {
                                rule.counters.suppressed.inc();
                                tracing::debug!(rule = %rule.meta.id, title = %m.title,
                                    reason = %s.reason, "match suppressed by config");
                            }
                            None => out.push(m),
                        }
                        for e in errors {
                            done.errors += 1;
                            rule.counters.errors.inc();
                            out.push(rule_error(rule, e));
                        }
                    }
                    Ok(false) => {}
                    Err(type_name) => {
                        done.errors += 1;
                        rule.counters.errors.inc();
                        out.push(rule_error(
                            rule,
                            RuleFailure::WrongType {
                                function: "rule",
                                expected: "true or false",
                                got: type_name.to_string(),
                            },
                        ));
                    }
                },
                Err(e) => {
                    done.errors += 1;
                    rule.counters.errors.inc();
                    out.push(rule_error(rule, e));
                }
            }
        }
        // Then learn from the record, so rules compared it with what came before.
        self.learn(&Facts::from_event(ev), event_time_ms);
        done
    }

    /// Records what a record teaches (names, baselines) in the state store.
    fn learn(&mut self, facts: &Facts, event_time_ms: i64) {
        let state = self.state.as_ref();
        let learned = names::learn(facts, state, event_time_ms, &mut self.recent)
            .and_then(|()| baseline::learn(facts, state, event_time_ms, &mut self.recent));
        if let Err(e) = learned {
            tracing::warn!(error = %e, "cannot record what this record teaches (names, baseline)");
        }
        self.state.end_call(true);
    }

    /// Counts the record for `meta.count` (an entry counting its action) and
    /// says whether it goes on to `rule()`: once the count is at `at_least`,
    /// and for a `distinct` count only with a value not seen in the window.
    /// Records without the values counted never do.
    fn count(
        &mut self,
        rule: &CompiledRule,
        entry: usize,
        count: &Count,
        ev: &RecordObject,
        event_time_ms: i64,
    ) -> Result<bool, RuleFailure> {
        let at_least = match &count.at_least {
            AtLeast::Value(n) => *n as f64,
            AtLeast::Param(name) => match rule.params.get(name.as_str()) {
                Some(v) if v.is_int() => v.as_int().unwrap_or_default() as f64,
                Some(v) if v.is_float() => v.as_float().unwrap_or_default(),
                _ => return Err(RuleFailure::CountLimitNotANumber(name.clone())),
            },
        };
        let mut key = String::with_capacity(80);
        key.push_str("count:");
        key.push_str(&rule.meta.id);
        let _ = write!(key, ":{entry}:");
        if !push_value(&mut key, &count.by, ev) {
            return Ok(false);
        }
        let mut member = String::new();
        if let Some(d) = &count.distinct {
            if !push_value(&mut member, d, ev) {
                return Ok(false);
            }
        }
        let state = self.state.as_ref();
        let counted = (|| {
            if count.distinct.is_some()
                && !state.set_add(&key, &member, count.seconds, event_time_ms)?
            {
                return Ok(None);
            }
            state
                .counter_incr(&key, count.seconds, event_time_ms)
                .map(Some)
        })();
        state.end_call(counted.is_ok());
        match counted {
            Ok(Some(n)) => Ok(n as f64 >= at_least),
            Ok(None) => Ok(false),
            Err(e) => Err(RuleFailure::CountState(e)),
        }
    }

    fn call(
        &mut self,
        rule: &CompiledRule,
        name: &str,
        event: &Dynamic,
        event_time_ms: i64,
    ) -> Result<Dynamic, RuleFailure> {
        self.scope.clear();
        let result = self
            .engine
            .call_fn_with_options::<Dynamic>(
                CallFnOptions::new()
                    .eval_ast(false)
                    .rewind_scope(false)
                    .with_tag(CallTag::dynamic(event_time_ms, rule.params.clone())),
                &mut self.scope,
                &rule.ast,
                name,
                (event.clone(),),
            )
            .map_err(|e| {
                let p = e.position();
                let text = e.to_string();
                // Rhai puts the position in most messages; add it where it does not.
                let message = match (p.line(), p.position()) {
                    (Some(l), Some(c)) if !text.contains("line ") => {
                        format!("{text} (line {l}, position {c})")
                    }
                    _ => text,
                };
                RuleFailure::Raised {
                    function: name.to_string(),
                    message,
                }
            });
        self.state.end_call(result.is_ok());
        result
    }

    /// Builds the match from the rule's optional functions; errors in them fall
    /// back to the defaults and are returned to be reported as rule errors.
    fn shape(
        &mut self,
        rule: &Arc<CompiledRule>,
        event: &Dynamic,
        t: i64,
    ) -> (Match, Vec<RuleFailure>) {
        let meta = &rule.meta;
        let mut errors = Vec::new();
        let mut text = |this: &mut Self, has: bool, name: &str| -> Option<String> {
            if !has {
                return None;
            }
            match this.call(rule, name, event, t) {
                Ok(v) if v.is_unit() => None,
                Ok(v) => Some(truncate(v.to_string())),
                Err(e) => {
                    errors.push(e);
                    None
                }
            }
        };
        let title = text(self, rule.fns.title, "title").unwrap_or_else(|| meta.id.clone());
        let dedup = text(self, rule.fns.dedup, "dedup").unwrap_or_else(|| title.clone());
        let severity_text = text(self, rule.fns.severity, "severity");
        let description = text(self, rule.fns.description, "description")
            .unwrap_or_else(|| meta.description.clone());
        let reference =
            text(self, rule.fns.reference, "reference").unwrap_or_else(|| meta.reference.clone());
        let runbook =
            text(self, rule.fns.runbook, "runbook").unwrap_or_else(|| meta.runbook.clone());

        let severity = match severity_text.as_deref() {
            None | Some("DEFAULT") | Some("") => meta.severity,
            Some(s) => Severity::parse(s).unwrap_or_else(|| {
                errors.push(RuleFailure::UnknownSeverity(s.to_string()));
                meta.severity
            }),
        };

        let alert_context = self.alert_context(rule, event, t, &mut errors);
        let destinations = self.destinations(rule, event, t, &mut errors);

        (
            Match {
                rule: rule.clone(),
                kind: MatchKind::Rule,
                title,
                dedup,
                severity,
                alert_context,
                destinations,
                description,
                runbook,
                reference,
                error: None,
            },
            errors,
        )
    }

    /// `alert_context(event)`: a map, bounded in size; `{}` without one.
    fn alert_context(
        &mut self,
        rule: &Arc<CompiledRule>,
        event: &Dynamic,
        t: i64,
        errors: &mut Vec<RuleFailure>,
    ) -> serde_json::Value {
        let empty = serde_json::Value::Object(Default::default());
        if !rule.fns.alert_context {
            return empty;
        }
        match self.call(rule, "alert_context", event, t) {
            Ok(v) if v.is_map() || v.is_unit() => {
                let json = dynamic_to_json(&v);
                let size = json.to_string().len();
                if size > MAX_ALERT_CONTEXT_BYTES {
                    errors.push(RuleFailure::ContextTooLarge(size));
                    serde_json::json!({"error": "alert_context too large"})
                } else if json.is_null() {
                    empty
                } else {
                    json
                }
            }
            Ok(v) => {
                errors.push(RuleFailure::WrongType {
                    function: "alert_context",
                    expected: "a map",
                    got: v.type_name().to_string(),
                });
                empty
            }
            Err(e) => {
                errors.push(e);
                empty
            }
        }
    }

    /// `destinations(event)` when the rule defines it, else `meta.destinations`.
    fn destinations(
        &mut self,
        rule: &Arc<CompiledRule>,
        event: &Dynamic,
        t: i64,
        errors: &mut Vec<RuleFailure>,
    ) -> Option<Vec<String>> {
        let configured = rule.meta.destinations.clone();
        if !rule.fns.destinations {
            return configured;
        }
        match self.call(rule, "destinations", event, t) {
            Ok(v) if v.is_unit() => configured,
            Ok(v) => match v.into_array() {
                Ok(list) => Some(list.into_iter().map(|d| d.to_string()).collect()),
                Err(t) => {
                    errors.push(RuleFailure::WrongType {
                        function: "destinations",
                        expected: "an array of names",
                        got: t.to_string(),
                    });
                    configured
                }
            },
            Err(e) => {
                errors.push(e);
                configured
            }
        }
    }
}

/// Why a rule gave no verdict, or an incomplete match, for a record: each
/// becomes a `RULE_ERROR` match, so a broken detection shows.
#[derive(Debug, thiserror::Error)]
pub enum RuleFailure {
    /// A rule function raised, or hit a sandbox limit.
    #[error("{function}(): {message}")]
    Raised { function: String, message: String },
    #[error("{function}() must return {expected}, got {got}")]
    WrongType {
        function: &'static str,
        expected: &'static str,
        got: String,
    },
    #[error("severity(): {0:?} is not INFO, LOW, MEDIUM, HIGH, CRITICAL or DEFAULT")]
    UnknownSeverity(String),
    #[error("alert_context(): {0} bytes is over the {MAX_ALERT_CONTEXT_BYTES}-byte limit")]
    ContextTooLarge(usize),
    #[error("count: at_least: params.{0} is not a number")]
    CountLimitNotANumber(String),
    #[error("count: {0}")]
    CountState(StoreError),
}

/// Severity of `RULE_ERROR` alerts: a broken detection is a blind spot.
pub const RULE_ERROR_SEVERITY: Severity = Severity::High;

/// A `RULE_ERROR` match, deduplicated per rule and message. Its description
/// names the rule file and, where Rhai reports one, the line and position.
fn rule_error(rule: &Arc<CompiledRule>, failure: RuleFailure) -> Match {
    let message = truncate(failure.to_string());
    tracing::warn!(rule = %rule.meta.id, file = %rule.file.display(), error = %message, "rule error");
    let file = rule.file.display();
    Match {
        rule: rule.clone(),
        kind: MatchKind::RuleError,
        title: truncate(format!("Rule {} failed: {message}", rule.meta.id)),
        dedup: message.clone(),
        severity: RULE_ERROR_SEVERITY,
        alert_context: serde_json::json!({ "error": message, "file": file.to_string() }),
        destinations: rule.meta.destinations.clone(),
        description: truncate(format!(
            "Rule {} in {file} failed, so it detects nothing for records like this one until fixed: {message}",
            rule.meta.id
        )),
        runbook: format!(
            "Fix {file} (the error names the function and, from Rhai, the line and position); `hexwatch test` reproduces it with a test case. Until then the rule misses what it should catch."
        ),
        reference: rule.meta.reference.clone(),
        error: Some(message),
    }
}

/// Appends the value `sel` picks from the record to `out`; false when the
/// record has none (or not a string or integer).
fn push_value(out: &mut String, sel: &Selector, ev: &RecordObject) -> bool {
    let node = match sel {
        Selector::Actor => {
            out.push_str(actor_of(ev));
            return true;
        }
        Selector::Target(kind) => names::target(ev, kind).and_then(|t| t.at(&["id"])),
        Selector::Field(path) => ev.obj().at(path),
    };
    match node {
        Some(Node::Str(s)) => out.push_str(s),
        Some(Node::Int(i)) => {
            let _ = write!(out, "{i}");
        }
        _ => return false,
    }
    true
}

/// Cuts a string at `MAX_GENERATED_CHARS` characters.
pub fn truncate(mut s: String) -> String {
    if let Some((i, _)) = s.char_indices().nth(MAX_GENERATED_CHARS) {
        s.truncate(i);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine;
    use crate::ruleset::compile;
    use crate::state::MemoryState;
    use std::path::Path;

    fn setup(rules: &[&str]) -> (RuleRunner, RuleSet) {
        let state = Arc::new(MemoryState::default());
        let e = engine::build(10_000, state.clone());
        let compiled = rules
            .iter()
            .enumerate()
            .map(|(i, src)| {
                Arc::new(
                    compile(
                        &e,
                        Path::new(&format!("r{i}.rhai")),
                        src,
                        None,
                        &Default::default(),
                    )
                    .unwrap(),
                )
            })
            .collect();
        (
            RuleRunner::new(engine::build(10_000, state.clone()), state),
            RuleSet::new(compiled),
        )
    }

    const REC: &str = r#"{"event":{"action":"SHARE_PROJECT_WITH_PUBLIC","actor":{"metadata":{"email":"ana@acme.example"}},"targets":[{"metadata":{"representation":"{\"name\":\"Q3\"}"}}]}}"#;

    #[test]
    fn match_with_generated_fields() {
        let (mut r, set) = setup(&[r#"
            let meta = #{ id: "Share", severity: "HIGH", actions: ["SHARE_PROJECT_WITH_PUBLIC"] };
            fn rule(e) { e.event.action == "SHARE_PROJECT_WITH_PUBLIC" }
            fn title(e) { `Project ${json_decode(e.event.targets[0].metadata.representation).name} shared by ${e.event.actor.metadata.email}` }
            fn severity(e) { if e.event.actor.metadata.email.ends_with("@acme.example") { "DEFAULT" } else { "CRITICAL" } }
            fn alert_context(e) { #{ actor: e.event.actor, n: 1 } }
            fn destinations(e) { [] }
        "#]);
        let mut out = Vec::new();
        let done = r.evaluate_json(&set, "SHARE_PROJECT_WITH_PUBLIC", REC, None, 0, &mut out);
        assert_eq!((done.rules_run, done.matches, done.errors), (1, 1, 0));
        let m = &out[0];
        assert_eq!(m.title, "Project Q3 shared by ana@acme.example");
        assert_eq!(m.dedup, m.title);
        assert_eq!(m.severity, Severity::High);
        assert_eq!(
            m.alert_context["actor"]["metadata"]["email"],
            "ana@acme.example"
        );
        assert_eq!(m.destinations, Some(vec![]));
        // Other actions never reach the rule.
        let done = r.evaluate_json(&set, "RUN_PROJECT", REC, None, 0, &mut out);
        assert_eq!(done.rules_run, 0);
    }

    #[test]
    fn require_and_exclude_keep_records_from_rule() {
        // `rule()` throws, so every call shows as an error: a record turned
        // away by `require` or `exclude` is never given to it.
        let (mut r, set) = setup(&[
            r#"let meta = #{ id: "Excl", severity: "LOW",
                exclude: #{ "event.metadata.source": ["SCHEDULED", "API"], "event.version": 2 } };
               fn rule(e) { throw "called" }"#,
            r#"let meta = #{ id: "Req", severity: "LOW",
                require: #{ "event.actor.metadata.email": "ana@acme.example", "event.metadata.created": true } };
               fn rule(e) { throw "called" }"#,
        ]);
        let run = |r: &mut RuleRunner, json: &str| {
            let mut out = Vec::new();
            r.evaluate_json(&set, "RUN_PROJECT", json, None, 0, &mut out);
            let mut called: Vec<String> = out.into_iter().map(|m| m.rule.meta.id.clone()).collect();
            called.sort();
            called
        };
        let rec = |source: &str, email: &str, created: &str, version: &str| {
            format!(
                r#"{{"event":{{"action":"RUN_PROJECT","version":{version},"actor":{{"metadata":{{"email":"{email}"}}}},"metadata":{{"source":"{source}","created":{created}}}}}}}"#
            )
        };
        let both: &[&str] = &["Excl", "Req"];
        for (source, email, created, version, called) in [
            ("WEB", "ana@acme.example", "true", "1", both),
            // Excluded by either value of the list, or by the other field.
            ("SCHEDULED", "ana@acme.example", "true", "1", &["Req"]),
            ("API", "ana@acme.example", "true", "1", &["Req"]),
            ("WEB", "ana@acme.example", "true", "2", &["Req"]),
            // Every required field must be there with one of its values, and
            // the type counts: the text "true" is not the boolean true.
            ("WEB", "bo@acme.example", "true", "1", &["Excl"]),
            ("WEB", "ana@acme.example", "\"true\"", "1", &["Excl"]),
        ] {
            let json = rec(source, email, created, version);
            assert_eq!(run(&mut r, &json), called, "{json}");
        }
        // A required field that is missing fails too.
        assert_eq!(
            run(
                &mut r,
                r#"{"event":{"action":"RUN_PROJECT","actor":{"metadata":{"email":"ana@acme.example"}}}}"#
            ),
            ["Excl"]
        );
    }

    #[test]
    fn count_keeps_records_from_rule_until_the_limit() {
        // `rule()` throws, so every call shows as an error: records are
        // counted in Rust and reach it only from the limit on.
        let (mut r, set) = setup(&[r#"let meta = #{ id: "Cnt", severity: "LOW",
                params: #{ cells: 3, projects: 2 },
                count: [
                    #{ actions: ["RUN_CELL"], by: "actor", seconds: 600, at_least: "cells" },
                    #{ actions: ["VIEW_PROJECT"], by: "actor", distinct: "target:project", seconds: 600, at_least: "projects" },
                    #{ actions: ["EXPORT_AS_PDF"], by: "event.context.location", seconds: 60, at_least: 2 },
                ] };
               fn rule(e) { throw "called" }"#]);
        let mut run = |action: &str, email: &str, project: &str, ip: &str, t: i64| {
            let json = format!(
                r#"{{"event":{{"action":"{action}","actor":{{"metadata":{{"email":"{email}"}}}},"context":{{"location":"{ip}"}},"targets":[{{"type":"project_version","id":"v"}},{{"type":"project","id":"{project}"}}]}}}}"#
            );
            let mut out = Vec::new();
            r.evaluate_json(&set, action, &json, None, t, &mut out);
            out.len()
        };
        // (action, actor, project, address, event time in s, reaches rule())
        let cases: &[(&str, &str, &str, &str, i64, usize)] = &[
            // Per actor: ana's third cell run reaches rule(), bo's first does not.
            ("RUN_CELL", "ana@x", "p1", "1.1.1.1", 0, 0),
            ("RUN_CELL", "ana@x", "p1", "1.1.1.1", 1, 0),
            ("RUN_CELL", "bo@x", "p1", "1.1.1.1", 2, 0),
            ("RUN_CELL", "ana@x", "p1", "1.1.1.1", 3, 1),
            ("RUN_CELL", "ana@x", "p1", "1.1.1.1", 4, 1),
            // The window starts again 600 s after its first record.
            ("RUN_CELL", "ana@x", "p1", "1.1.1.1", 601, 0),
            // Distinct: the same project again does not count, a second one
            // does; actions counted apart do not add up.
            ("VIEW_PROJECT", "ana@x", "p1", "1.1.1.1", 0, 0),
            ("VIEW_PROJECT", "ana@x", "p1", "1.1.1.1", 1, 0),
            ("VIEW_PROJECT", "ana@x", "p2", "1.1.1.1", 2, 1),
            ("VIEW_PROJECT", "ana@x", "p2", "1.1.1.1", 3, 0),
            // By a field's value; actions no entry counts reach rule() at once.
            ("EXPORT_AS_PDF", "ana@x", "p1", "2.2.2.2", 0, 0),
            ("EXPORT_AS_PDF", "bo@x", "p1", "2.2.2.2", 0, 1),
            ("RUN_PROJECT", "ana@x", "p1", "1.1.1.1", 0, 1),
        ];
        for (i, &(action, email, project, ip, t, called)) in cases.iter().enumerate() {
            assert_eq!(
                run(action, email, project, ip, t * 1000),
                called,
                "case {i}"
            );
        }
        // A parameter set for the rule (as by the config) moves the limit.
        let mut values = serde_json::Map::new();
        values.insert("cells".into(), serde_json::json!(1));
        let tuned = set.rules()[0].with_params(&values).unwrap();
        let set = RuleSet::new(vec![Arc::new(tuned)]);
        let mut out = Vec::new();
        r.evaluate_json(
            &set,
            "RUN_CELL",
            r#"{"event":{"action":"RUN_CELL","actor":{"id":"c"}}}"#,
            None,
            0,
            &mut out,
        );
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn errors_and_limits_are_per_rule() {
        let (mut r, set) = setup(&[
            "let meta = #{ id: \"Loop\", severity: \"LOW\" }; fn rule(e) { loop {} }",
            "let meta = #{ id: \"Recurse\", severity: \"LOW\" }; fn f(x) { f(x) } fn rule(e) { f(1) }",
            "let meta = #{ id: \"Grow\", severity: \"LOW\" }; fn rule(e) { let s = \"ab\"; loop { s += s; } }",
            "let meta = #{ id: \"Throw\", severity: \"LOW\" }; fn rule(e) { throw \"boom\" }",
            "let meta = #{ id: \"NotBool\", severity: \"LOW\" }; fn rule(e) { 1 }",
            "let meta = #{ id: \"Mutate\", severity: \"LOW\" }; fn rule(e) { e.event.action = \"X\"; true }",
            "let meta = #{ id: \"Fine\", severity: \"LOW\" }; fn rule(e) { e.event.action == \"SHARE_PROJECT_WITH_PUBLIC\" }",
        ]);
        let mut out = Vec::new();
        let done = r.evaluate_json(&set, "SHARE_PROJECT_WITH_PUBLIC", REC, None, 0, &mut out);
        assert_eq!((done.rules_run, done.matches, done.errors), (7, 1, 6));
        let by = |id: &str| out.iter().find(|m| m.rule.meta.id == id).unwrap();
        assert_eq!(by("Fine").kind, MatchKind::Rule);
        assert!(by("Loop")
            .error
            .as_ref()
            .unwrap()
            .contains("Too many operations"));
        assert_eq!(by("Throw").kind, MatchKind::RuleError);
        assert!(by("Throw").dedup.contains("boom"));
        assert_eq!(by("Throw").severity, Severity::High);
        assert!(
            by("Throw").description.contains("r3.rhai")
                && by("Throw").description.contains("line 1"),
            "{}",
            by("Throw").description
        );
        assert!(by("Throw").title.starts_with("Rule Throw failed: rule(): "));
        assert_eq!(
            by("NotBool").error.as_deref(),
            Some("rule() must return true or false, got i64")
        );
        assert_eq!(by("Mutate").kind, MatchKind::RuleError);
    }

    #[test]
    fn long_titles_are_cut() {
        let (mut r, set) = setup(&[
            "let meta = #{ id: \"Long\", severity: \"LOW\" }; fn rule(e) { true } fn title(e) { let s = \"\"; for i in 0..3000 { s += \"é\"; } s }",
        ]);
        let mut out = Vec::new();
        r.evaluate_json(&set, "X", REC, None, 0, &mut out);
        assert_eq!(out[0].title.chars().count(), MAX_GENERATED_CHARS);
    }
}
