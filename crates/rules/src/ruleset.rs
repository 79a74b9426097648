//! Loading the rules directory: compile each `*.rhai` file, validate its
//! metadata, and build the [`RuleSet`] the evaluator uses — with an index by
//! action so an event only meets the rules that can match it.
//!
//! The [`Loader`] remembers every file's source and last good version. A rescan
//! recompiles only files whose text changed; a file that no longer compiles keeps
//! its last good version running and is reported; a deleted file's rule goes.

mod loader;

pub use loader::{Loader, ScanReport};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use rhai::{Engine, Map, Scope, AST};

use crate::meta::{self, RuleMeta};
use crate::tuning::Tuning;

/// Which optional functions a rule defines.
#[derive(Debug, Default, Clone, Copy)]
pub struct RuleFns {
    pub title: bool,
    pub dedup: bool,
    pub severity: bool,
    pub alert_context: bool,
    pub description: bool,
    pub reference: bool,
    pub runbook: bool,
    pub destinations: bool,
}

/// Per-rule counters; registered in `/metrics` when the daemon runs.
#[derive(Debug, Default, Clone)]
pub struct RuleCounters {
    pub evaluations: Counter,
    pub matches: Counter,
    pub errors: Counter,
    pub suppressed: Counter,
}

/// Where a loaded rule gets its counters: the daemon's metrics registry
/// (commands that only load rules count nothing).
pub trait CounterRegistry: Send + Sync {
    fn rule_counters(&self, id: &str) -> RuleCounters;
}

/// One compiled, validated rule.
pub struct CompiledRule {
    pub meta: RuleMeta,
    pub ast: AST,
    pub file: PathBuf,
    pub fns: RuleFns,
    pub counters: RuleCounters,
    /// A short hash of the rule's source: the alert's `version`.
    pub version: String,
    /// Its parameters: `meta.params` defaults under the config's values.
    pub params: Arc<Map>,
}

/// A parameter value a rule cannot take.
#[derive(Debug, thiserror::Error)]
pub enum ParamError {
    #[error("params.{0}: the rule declares no such parameter")]
    Undeclared(String),
    #[error("{from}: {reason}")]
    Unreadable { from: String, reason: String },
    #[error("config {from} is {given}, but the rule's default is {default}")]
    WrongKind {
        from: String,
        given: &'static str,
        default: &'static str,
    },
}

impl CompiledRule {
    /// The same rule with some parameters set (a test case's `params`); each must
    /// be one the rule declares.
    pub fn with_params(
        &self,
        values: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<CompiledRule, ParamError> {
        let mut params = (*self.params).clone();
        for (k, v) in values {
            if !params.contains_key(k.as_str()) {
                return Err(ParamError::Undeclared(k.clone()));
            }
            let value = rhai::serde::to_dynamic(v).map_err(|e| ParamError::Unreadable {
                from: format!("params.{k}"),
                reason: e.to_string(),
            })?;
            params.insert(k.as_str().into(), value);
        }
        Ok(CompiledRule {
            meta: self.meta.clone(),
            ast: self.ast.clone(),
            file: self.file.clone(),
            fns: self.fns,
            counters: self.counters.clone(),
            version: self.version.clone(),
            params: Arc::new(params),
        })
    }
}

impl fmt::Debug for CompiledRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompiledRule")
            .field("id", &self.meta.id)
            .field("file", &self.file)
            .finish()
    }
}

/// A rule file that could not be loaded: file, line, field and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    pub file: PathBuf,
    pub line: usize,
    pub field: Option<String>,
    pub message: String,
}

impl LoadError {
    /// The file's name without its directory: what the console shows, as
    /// where the rules live on the server is not the reader's business.
    pub fn file_name(&self) -> String {
        self.file
            .file_name()
            .unwrap_or(self.file.as_os_str())
            .to_string_lossy()
            .into_owned()
    }

    /// The error naming the file alone, without its directory.
    pub fn without_directory(&self) -> String {
        let mut s = format!("{}:{}: ", self.file_name(), self.line);
        if let Some(field) = &self.field {
            s.push_str(&format!("meta.{field}: "));
        }
        s.push_str(&self.message);
        s
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: ", self.file.display(), self.line)?;
        if let Some(field) = &self.field {
            write!(f, "meta.{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for LoadError {}

/// The enabled rules, indexed by action.
#[derive(Default)]
pub struct RuleSet {
    rules: Vec<Arc<CompiledRule>>,
    by_action: HashMap<String, Vec<Arc<CompiledRule>>>,
    every_action: Vec<Arc<CompiledRule>>,
    /// The tuning the rules were built with (its suppressions apply to matches).
    pub tuning: Arc<Tuning>,
}

impl RuleSet {
    pub fn new(rules: Vec<Arc<CompiledRule>>) -> RuleSet {
        let mut by_action: HashMap<String, Vec<Arc<CompiledRule>>> = HashMap::new();
        let mut every_action = Vec::new();
        for r in rules.iter().filter(|r| r.meta.enabled) {
            match &r.meta.actions {
                Some(actions) => {
                    for a in actions {
                        let list = by_action.entry(a.clone()).or_default();
                        if !list.iter().any(|x| Arc::ptr_eq(x, r)) {
                            list.push(r.clone());
                        }
                    }
                }
                None => every_action.push(r.clone()),
            }
        }
        RuleSet {
            rules,
            by_action,
            every_action,
            tuning: Arc::default(),
        }
    }

    /// The same set, with the tuning whose suppressions apply.
    pub fn with_tuning(mut self, tuning: Arc<Tuning>) -> RuleSet {
        self.tuning = tuning;
        self
    }

    /// A set of one rule, evaluated whatever its `enabled` flag (for rule tests).
    pub fn single(rule: Arc<CompiledRule>) -> RuleSet {
        let (by_action, every_action) = match &rule.meta.actions {
            Some(actions) => (
                actions
                    .iter()
                    .map(|a| (a.clone(), vec![rule.clone()]))
                    .collect(),
                Vec::new(),
            ),
            None => (HashMap::new(), vec![rule.clone()]),
        };
        RuleSet {
            rules: vec![rule],
            by_action,
            every_action,
            tuning: Arc::default(),
        }
    }

    /// The rules an event with this action must be evaluated against.
    pub fn candidates<'a>(&'a self, action: &str) -> impl Iterator<Item = &'a Arc<CompiledRule>> {
        self.by_action
            .get(action)
            .into_iter()
            .flatten()
            .chain(self.every_action.iter())
    }

    /// Whether any enabled rule wants this action (so the record must be parsed).
    pub fn wants(&self, action: &str) -> bool {
        !self.every_action.is_empty() || self.by_action.contains_key(action)
    }

    /// Every loaded rule, enabled or not, in file order.
    pub fn rules(&self) -> &[Arc<CompiledRule>] {
        &self.rules
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn get(&self, id: &str) -> Option<&Arc<CompiledRule>> {
        self.rules.iter().find(|r| r.meta.id == id)
    }
}

/// The `meta` map the top level defined, or (line, why not).
fn meta_map(scope: &Scope, source: &str) -> Result<Map, (usize, String)> {
    match scope.get("meta") {
        Some(v) if v.is_map() => Ok(v.clone().cast::<Map>()),
        Some(_) => Err((
            meta::field_line(source, "meta"),
            "`meta` must be a map: let meta = #{ id: \"...\", severity: \"...\" };".into(),
        )),
        None => Err((
            1,
            "no metadata: start the file with let meta = #{ id: \"...\", severity: \"...\" };"
                .into(),
        )),
    }
}

impl RuleFns {
    /// Which optional functions a rule defines; `None` without `rule`.
    fn defined(ast: &AST) -> Option<RuleFns> {
        let mut fns = RuleFns::default();
        let mut has_rule = false;
        for f in ast.iter_functions() {
            if f.params.len() != 1 {
                continue;
            }
            match f.name {
                "rule" => has_rule = true,
                "title" => fns.title = true,
                "dedup" => fns.dedup = true,
                "severity" => fns.severity = true,
                "alert_context" => fns.alert_context = true,
                "description" => fns.description = true,
                "reference" => fns.reference = true,
                "runbook" => fns.runbook = true,
                "destinations" => fns.destinations = true,
                _ => {}
            }
        }
        has_rule.then_some(fns)
    }
}

/// Compiles one rule file's source.
pub fn compile(
    engine: &Engine,
    file: &Path,
    source: &str,
    destinations: Option<&[String]>,
    tuning: &Tuning,
) -> Result<CompiledRule, LoadError> {
    let at = |line: usize, field: Option<&str>, message: String| LoadError {
        file: file.to_path_buf(),
        line,
        field: field.map(str::to_string),
        message,
    };
    let mut ast = engine.compile(source).map_err(|e| {
        let line = e.1.line().unwrap_or(1);
        at(line, None, format!("does not compile: {}", e.0))
    })?;
    ast.set_source(file.display().to_string());

    // Run the top level once: it defines `meta`.
    let mut scope = Scope::new();
    engine.run_ast_with_scope(&mut scope, &ast).map_err(|e| {
        let line = e.position().line().unwrap_or(1);
        at(line, None, format!("top level failed: {e}"))
    })?;
    let map = meta_map(&scope, source).map_err(|(line, message)| at(line, None, message))?;
    let mut meta = meta::parse(&map, destinations).map_err(|e| {
        at(
            meta::field_line(source, &e.field),
            Some(&e.field),
            e.message,
        )
    })?;
    let params = tune(&mut meta, tuning).map_err(|e| {
        at(
            meta::field_line(source, "params"),
            Some("params"),
            e.to_string(),
        )
    })?;

    let Some(fns) = RuleFns::defined(&ast) else {
        return Err(at(
            1,
            None,
            "no rule function: define fn rule(event) { ... } returning true on a match".into(),
        ));
    };
    // The top level has run; calls only need the functions.
    ast.clear_statements();
    Ok(CompiledRule {
        meta,
        ast,
        file: file.to_path_buf(),
        fns,
        counters: RuleCounters::default(),
        version: {
            use sha2::Digest;
            hex::encode(&sha2::Sha256::digest(source.as_bytes())[..6])
        },
        params: Arc::new(params),
    })
}

/// Applies the config's overrides to a rule's metadata and returns its
/// parameters: each `meta.params` default, replaced by the rule's override
/// (`[rules.overrides."id".params]`), else by `[rules.params]`. A value must be of
/// the default's kind (a list stays a list), so a config typo cannot break a rule.
fn tune(meta: &mut RuleMeta, tuning: &Tuning) -> Result<Map, ParamError> {
    let o = tuning.overrides.get(&meta.id);
    if let Some(o) = o {
        meta.enabled = o.enabled.unwrap_or(meta.enabled);
        meta.severity = o.severity.unwrap_or(meta.severity);
        meta.dedup_minutes = o.dedup_minutes.unwrap_or(meta.dedup_minutes);
        meta.threshold = o.threshold.unwrap_or(meta.threshold);
        if o.destinations.is_some() {
            meta.destinations = o.destinations.clone();
        }
    }
    let mut params = meta.params.clone();
    for (name, default) in params.iter_mut() {
        let (value, from) = match o.and_then(|o| o.params.get(name.as_str())) {
            Some(v) => (v, format!("rules.overrides.{:?}.params.{name}", meta.id)),
            None => match tuning.params.get(name.as_str()) {
                Some(v) => (v, format!("rules.params.{name}")),
                None => continue,
            },
        };
        let v: rhai::Dynamic =
            rhai::serde::to_dynamic(value).map_err(|e| ParamError::Unreadable {
                from: from.clone(),
                reason: e.to_string(),
            })?;
        // Integers and decimals are both numbers here: `5` may replace `2.5`.
        let kind = |d: &rhai::Dynamic| {
            if d.is_int() || d.is_float() {
                "a number"
            } else {
                meta::type_name(d)
            }
        };
        if !default.is_unit() && kind(&v) != kind(default) {
            return Err(ParamError::WrongKind {
                from,
                given: kind(&v),
                default: kind(default),
            });
        }
        *default = v;
    }
    Ok(params)
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::MemoryState;

    fn loader(dir: &Path) -> Loader {
        let engine = crate::engine::build(10_000, Arc::new(MemoryState::default()));
        Loader::new(engine, dir, Some(vec!["hook".into()]), None)
    }

    const GOOD: &str = "let meta = #{ id: \"A\", severity: \"LOW\", actions: [\"RUN_PROJECT\"] };\nfn rule(e) { true }\n";

    #[test]
    fn loads_indexes_and_reports() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.rhai"), GOOD).unwrap();
        std::fs::write(
            dir.path().join("b.rhai"),
            "let meta = #{ id: \"B\", severity: \"HIGH\" };\nfn rule(e) { false }\nfn title(e) { \"t\" }\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("a.tests.json"), "[]").unwrap();
        std::fs::write(dir.path().join(".#a.rhai"), "junk").unwrap();
        let mut l = loader(dir.path());
        let r = l.scan().unwrap();
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(r.rules.len(), 2);
        assert_eq!(r.rules.candidates("RUN_PROJECT").count(), 2);
        assert_eq!(r.rules.candidates("VIEW_PROJECT").count(), 1);
        assert!(r.rules.get("B").unwrap().fns.title);

        // Unchanged: nothing recompiled.
        assert_eq!(l.scan().unwrap().changed, 0);
    }

    #[test]
    fn broken_edit_keeps_the_old_version() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.rhai");
        std::fs::write(&file, GOOD).unwrap();
        let mut l = loader(dir.path());
        l.scan().unwrap();
        std::fs::write(
            &file,
            "let meta = #{ id: \"A\", severity: \"LOW\" };\nfn rule(e) { e.event.action == }\n",
        )
        .unwrap();
        let r = l.scan().unwrap();
        assert_eq!(r.rules.len(), 1, "old version still loaded");
        assert_eq!(r.errors.len(), 1);
        let e = r.errors[0].to_string();
        assert!(e.contains("a.rhai:2: does not compile"), "{e}");
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("x.rhai"),
            "let meta = #{\n  id: \"X\",\n  severity: \"LOW\",\n  threshold: 0,\n};\nfn rule(e) { true }\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("y.rhai"),
            "let meta = #{ id: \"Y\", severity: \"LOW\" };\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("z.rhai"), GOOD).unwrap();
        std::fs::write(dir.path().join("zz.rhai"), GOOD).unwrap();
        std::fs::write(
            dir.path().join("d.rhai"),
            "let meta = #{ id: \"D\", severity: \"LOW\", destinations: [\"pager\"] };\nfn rule(e) { true }\n",
        )
        .unwrap();
        let mut l = loader(dir.path());
        let r = l.scan().unwrap();
        let errors: Vec<String> = r.errors.iter().map(|e| e.to_string()).collect();
        let has = |needle: &str| errors.iter().any(|e| e.contains(needle));
        assert!(
            has("x.rhai:4: meta.threshold: must be at least 1, got 0"),
            "{errors:?}"
        );
        assert!(has("y.rhai:1: no rule function"), "{errors:?}");
        assert!(
            has("zz.rhai:1: meta.id: \"A\" is already the id of"),
            "{errors:?}"
        );
        assert!(has("d.rhai:1: meta.destinations: \"pager\" is not a configured destination (configured: hook)"), "{errors:?}");
        assert_eq!(r.rules.len(), 1);
    }
}
