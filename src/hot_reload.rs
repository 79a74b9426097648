//! Hot reload: watch the rules directory (the directory, not single files, so an
//! editor's write-then-rename and a symlink swap are seen), debounce bursts of
//! events, rescan — recompiling only what changed — and swap the new rule set in
//! atomically. In-flight evaluations keep the set they started with.
//!
//! A periodic rescan backs the watcher up on filesystems that drop events.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};

use crate::health::Health;
use crate::metrics::Metrics;
use crate::stage_thread::Worker;
use hexwatch_rules::ruleset::{Loader, RuleSet, ScanReport};
use tokio_util::sync::CancellationToken;

/// Quiet time after the last file event before rescanning.
const DEBOUNCE: Duration = Duration::from_millis(150);
/// A stream of events never delays a rescan longer than this.
const MAX_DELAY: Duration = Duration::from_millis(500);
/// Rescan this often even without events.
const POLL: Duration = Duration::from_secs(5);

/// The current rule set, swapped atomically on reload.
pub type SharedRules = Arc<ArcSwap<RuleSet>>;

/// Publishes a scan: swaps the rules in, reports problems.
pub fn publish(report: ScanReport, rules: &SharedRules, health: &Health, metrics: &Metrics) {
    for e in &report.errors {
        tracing::error!(problem = %e, "rule file not loaded; its previous version (if any) keeps running");
    }
    for w in &report.warnings {
        tracing::warn!(problem = %w, "rule tuning or metadata points at nothing");
    }
    let outcome = if report.errors.is_empty() {
        "ok"
    } else {
        "error"
    };
    metrics
        .rule_reloads
        .get_or_create(&vec![("outcome", outcome.to_string())])
        .inc();
    metrics.rules_loaded.set(report.rules.len() as i64);
    health.set_rule_errors(
        report
            .errors
            .iter()
            .map(|e| crate::health::RuleLoadError {
                file: e.file_name(),
                error: e.without_directory(),
            })
            .collect(),
    );
    // `/readyz` answers without auth: name the file, keep paths and errors in the log.
    health.set_problems(
        report
            .errors
            .iter()
            .map(|e| {
                format!(
                    "{} {} does not load (the log has the error)",
                    if e.field.is_none() && e.message.starts_with("tuning") {
                        "config file"
                    } else {
                        "rule file"
                    },
                    e.file_name()
                )
            })
            .collect(),
    );
    metrics.rules_broken.set(report.errors.len() as i64);
    tracing::info!(
        rules = report.rules.len(),
        changed = report.changed,
        problems = report.errors.len(),
        "rules loaded"
    );
    rules.store(Arc::new(report.rules));
}

/// The watcher thread; stops when dropped or on `stop`.
pub struct RuleWatcher(Worker);

impl RuleWatcher {
    /// Starts watching `loader`'s directory (the loader has done its first scan).
    pub fn start(
        mut loader: Loader,
        rules: SharedRules,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
        shutdown: &CancellationToken,
    ) -> notify::Result<RuleWatcher> {
        let (tx, rx) = mpsc::channel::<()>();
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                if res.is_ok() {
                    let _ = tx.send(());
                }
            })?;
        watcher.watch(loader.dir(), RecursiveMode::NonRecursive)?;
        // The config file's tuning sections reload too (its directory is watched,
        // so an editor's rename is seen; the periodic rescan backs this up).
        if let Some(dir) = loader.config_path().and_then(|p| p.parent()) {
            let dir = if dir.as_os_str().is_empty() {
                std::path::Path::new(".")
            } else {
                dir
            };
            if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
                tracing::warn!(error = %e, "cannot watch the config file's directory; its tuning reloads every 5 s");
            }
        }
        Ok(RuleWatcher(Worker::spawn(
            "rule-watcher",
            shutdown,
            move |stop| {
                // The watcher lives as long as this thread.
                let _watcher = watcher;
                let mut last_scan = Instant::now();
                while !stop.stopped() {
                    match rx.recv_timeout(Duration::from_millis(200)) {
                        Ok(()) => {
                            // Debounce: wait for quiet, but not forever.
                            let first = Instant::now();
                            while first.elapsed() < MAX_DELAY {
                                if rx.recv_timeout(DEBOUNCE).is_err() {
                                    break;
                                }
                            }
                        }
                        Err(mpsc::RecvTimeoutError::Timeout) if last_scan.elapsed() >= POLL => {}
                        Err(mpsc::RecvTimeoutError::Timeout) => continue,
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                    if stop.stopped() {
                        break;
                    }
                    last_scan = Instant::now();
                    match loader.scan() {
                        Ok(report) if report.changed > 0 => {
                            publish(report, &rules, &health, &metrics)
                        }
                        Ok(_) => {}
                        Err(e) => tracing::error!(
                            dir = %loader.dir().display(),
                            error = %e,
                            "cannot read the rules directory; the loaded rules keep running"
                        ),
                    }
                }
            },
        )))
    }

    pub fn stop(self) {
        self.0.stop();
    }
}
