//! Loading the rules directory: compiled once per changed file, a broken edit
//! keeping the rule's previous version, with the config's tuning applied.

use super::*;

struct FileState {
    source: String,
    /// The version in use (the last one that loaded).
    current: Option<Arc<CompiledRule>>,
    /// Why the file's current text is not the version in use.
    error: Option<LoadError>,
}

/// What a scan found.
pub struct ScanReport {
    pub rules: RuleSet,
    /// Files whose text changed, appeared or went.
    pub changed: usize,
    /// Every file currently in error (kept on its last good version, if any).
    pub errors: Vec<LoadError>,
    /// Tuning that points at nothing: overrides of unknown rule ids, parameters
    /// no rule declares.
    pub warnings: Vec<String>,
}

/// How long a changed config file must read the same before its tuning is
/// taken: longer than one rewrite of a small file takes, short enough not to
/// delay a reload noticeably.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(50);

/// Loads and reloads a rules directory.
pub struct Loader {
    engine: Engine,
    dir: PathBuf,
    destinations: Option<Vec<String>>,
    metrics: Option<Arc<dyn CounterRegistry>>,
    files: BTreeMap<PathBuf, FileState>,
    tuning: Arc<Tuning>,
    /// The config file whose tuning sections are re-read on each scan, its text
    /// as last read, and why that text's tuning is not in use.
    config: Option<(PathBuf, String, Option<LoadError>)>,
}

impl Loader {
    /// `engine` compiles and runs the top level of rule files; `destinations`
    /// are the configured names rules may route to (`None`: not checked);
    /// `metrics`, when given, receives each rule's counters.
    pub fn new(
        engine: Engine,
        dir: &Path,
        destinations: Option<Vec<String>>,
        metrics: Option<Arc<dyn CounterRegistry>>,
    ) -> Loader {
        Loader {
            engine,
            dir: dir.to_path_buf(),
            destinations,
            metrics,
            files: BTreeMap::new(),
            tuning: Arc::default(),
            config: None,
        }
    }

    /// Applies `tuning` (read from the config file at `config`) and, on each later
    /// scan, re-reads that file's tuning sections: a change recompiles every rule
    /// with the new tuning; a broken edit keeps the previous tuning and is reported.
    pub fn with_tuning(mut self, tuning: Tuning, config: Option<&Path>) -> Loader {
        self.tuning = Arc::new(tuning);
        self.config = config.map(|p| {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            (p.to_path_buf(), text, None)
        });
        self
    }

    /// The config file whose tuning is followed, if any.
    pub fn config_path(&self) -> Option<&Path> {
        self.config.as_ref().map(|(p, _, _)| p.as_path())
    }

    /// Re-reads the config's tuning: `None` when the file did not change,
    /// `Some(true)` when the tuning did (rules must recompile), `Some(false)` when
    /// the file changed but its tuning did not, or does not parse.
    fn reload_tuning(&mut self) -> Option<bool> {
        let (path, text, _) = self.config.as_mut()?;
        let now = std::fs::read_to_string(&*path).ok()?; // mid-rename: next scan
        if now == *text {
            return None;
        }
        // A file rewritten in place reads short part way through, and an empty
        // or cut-off config is often valid TOML with no tuning at all: take
        // only text that reads the same twice. A file still changing is taken
        // at the scan its last write triggers.
        std::thread::sleep(SETTLE);
        if std::fs::read_to_string(&*path).ok()? != now {
            return None;
        }
        Some(self.apply_config_text(now))
    }

    fn apply_config_text(&mut self, now: String) -> bool {
        let Some((path, text, error)) = &mut self.config else {
            return false;
        };
        *text = now;
        let names = self.destinations.clone().unwrap_or_default();
        match Tuning::from_config_text(text, &names) {
            Ok(t) => {
                *error = None;
                if t == *self.tuning {
                    return false;
                }
                self.tuning = Arc::new(t);
                true
            }
            Err(message) => {
                *error = Some(LoadError {
                    file: path.clone(),
                    line: message.line(),
                    field: None,
                    message: format!("tuning not reloaded, the previous tuning stays: {message}"),
                });
                false
            }
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads the directory and brings the rule set up to date.
    pub fn scan(&mut self) -> std::io::Result<ScanReport> {
        let seen = self.read_rule_files()?;
        let tuning_changed = self.reload_tuning();
        if tuning_changed == Some(true) {
            // Recompile everything with the new overrides and parameters.
            for f in self.files.values_mut() {
                f.source.clear();
            }
        }
        let before = self.files.len();
        self.files.retain(|p, _| seen.contains_key(p));
        let removed = before - self.files.len() + usize::from(tuning_changed.is_some());
        let (changed, recompiled) = self.recompile(seen);
        let mut rules = self.unique_ids(&recompiled);
        rules.sort_by(|a, b| a.file.cmp(&b.file));
        let mut errors: Vec<LoadError> = self
            .files
            .values()
            .filter_map(|f| f.error.clone())
            .collect();
        if let Some((_, _, Some(e))) = &self.config {
            errors.push(e.clone());
        }
        let mut warnings = tuning_warnings(&self.tuning, &rules);
        let rules = RuleSet::new(rules).with_tuning(self.tuning.clone());
        warnings.extend(crate::actions::unknown_actions(
            rules.rules().iter().map(|r| (r.file.as_path(), &r.meta)),
        ));
        Ok(ScanReport {
            rules,
            changed: removed + changed,
            errors,
            warnings,
        })
    }

    /// Every rule file of the directory with its text.
    fn read_rule_files(&self) -> std::io::Result<BTreeMap<PathBuf, String>> {
        let mut seen: BTreeMap<PathBuf, String> = BTreeMap::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let path = entry.path();
            if !is_rule_file(&path) {
                continue;
            }
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    seen.insert(path, text);
                }
                // Gone between listing and reading (an editor's rename): the next event rescans.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot read rule file");
                }
            }
        }
        Ok(seen)
    }

    /// Compiles the files whose text changed; returns how many changed and
    /// which compiled.
    fn recompile(&mut self, seen: BTreeMap<PathBuf, String>) -> (usize, Vec<PathBuf>) {
        let mut changed = 0;
        let mut recompiled: Vec<PathBuf> = Vec::new();
        for (path, text) in seen {
            let unchanged = self.files.get(&path).is_some_and(|f| f.source == text);
            if unchanged {
                continue;
            }
            changed += 1;
            let result = compile(
                &self.engine,
                &path,
                &text,
                self.destinations.as_deref(),
                &self.tuning,
            )
            .map(|mut rule| {
                rule.counters = self.counters_for(&rule.meta.id);
                rule
            });
            let state = self.files.entry(path.clone()).or_insert(FileState {
                source: String::new(),
                current: None,
                error: None,
            });
            state.source = text;
            match result {
                Ok(rule) => {
                    state.current = Some(Arc::new(rule));
                    state.error = None;
                    recompiled.push(path);
                }
                Err(e) => state.error = Some(e),
            }
        }
        (changed, recompiled)
    }

    /// The current rules, ids unique: files that did not change keep theirs;
    /// a changed file that takes an id already in use is in error (and keeps
    /// its old version).
    fn unique_ids(&mut self, recompiled: &[PathBuf]) -> Vec<Arc<CompiledRule>> {
        let mut owner: HashMap<String, PathBuf> = HashMap::new();
        let order: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !recompiled.contains(p))
            .chain(recompiled.iter())
            .cloned()
            .collect();
        let mut rules = Vec::new();
        for path in order {
            let state = self.files.get_mut(&path).expect("listed");
            let Some(rule) = state.current.clone() else {
                continue;
            };
            match owner.get(&rule.meta.id) {
                Some(other) => {
                    state.error = Some(LoadError {
                        file: path.clone(),
                        line: meta::field_line(&state.source, "id"),
                        field: Some("id".into()),
                        message: format!(
                            "{:?} is already the id of {}; rule ids must be unique",
                            rule.meta.id,
                            other.display()
                        ),
                    });
                    state.current = None;
                }
                None => {
                    owner.insert(rule.meta.id.clone(), path.clone());
                    rules.push(rule);
                }
            }
        }
        rules
    }

    fn counters_for(&self, id: &str) -> RuleCounters {
        match &self.metrics {
            Some(m) => m.rule_counters(id),
            None => RuleCounters::default(),
        }
    }
}

/// Overrides and suppressions of rule ids that are not loaded, and parameters no
/// rule declares: most likely typos, which would leave a rule untuned.
fn tuning_warnings(tuning: &Tuning, rules: &[Arc<CompiledRule>]) -> Vec<String> {
    let known = |id: &str| rules.iter().any(|r| r.meta.id == id);
    let mut out = Vec::new();
    for (id, o) in &tuning.overrides {
        if !known(id) {
            out.push(format!(
                "config line {}: rules.overrides.{id:?}: no loaded rule has this id",
                o.line
            ));
        } else if let Some(r) = rules.iter().find(|r| r.meta.id == *id) {
            for p in o.params.keys() {
                if !r.meta.params.contains_key(p.as_str()) {
                    out.push(format!(
                        "config line {}: rules.overrides.{id:?}.params.{p}: the rule has no such parameter",
                        o.line
                    ));
                }
            }
        }
    }
    for p in tuning.params.keys() {
        if !rules.iter().any(|r| r.meta.params.contains_key(p.as_str())) {
            out.push(format!(
                "config rules.params.{p}: no loaded rule reads this parameter"
            ));
        }
    }
    for s in &tuning.suppressions {
        if s.rule != "*" && !known(&s.rule) {
            out.push(format!(
                "config line {}: suppression of {:?}: no loaded rule has this id",
                s.line, s.rule
            ));
        }
    }
    out
}

/// `name.rhai`, not hidden (editors' swap and backup files are skipped).
fn is_rule_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    !name.starts_with('.') && name.ends_with(".rhai") && path.is_file()
}
