//! `hexwatch replay`: runs recorded Hex audit streams through the same
//! validation, rules and alert windows as `serve` (windows on event time, so the
//! result is what the daemon alerted on), with rule state in memory. Alerts are
//! written as JSON lines once the whole input is read, each in its final state.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Deserialize;

use crate::alerts::{AlertWindows, MemoryAlerts, Router};
use crate::config::Config;
use crate::decode;
use crate::event::{self, ParseContext};
use crate::rules::engine;
use crate::rules::eval::{Match, MatchKind, RuleRunner};
use crate::rules::ruleset::Loader;
use crate::rules::value::Node;
use crate::store::MemoryState;

/// What a replay did (printed to stderr).
#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub records: usize,
    pub quarantined: usize,
    pub matches: usize,
    pub rule_errors: usize,
    pub alerts: usize,
    pub elapsed: Duration,
}

impl Summary {
    pub fn records_per_second(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Reads a file (`-` is stdin; `.gz` is decompressed).
fn read_input(path: &Path) -> anyhow::Result<Vec<u8>> {
    let mut raw = Vec::new();
    if path == Path::new("-") {
        std::io::stdin().read_to_end(&mut raw)?;
    } else {
        raw = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    }
    if path.extension().is_some_and(|e| e == "gz") || raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .with_context(|| format!("{}: not valid gzip", path.display()))?;
        raw = out;
    }
    Ok(raw)
}

/// Replays `files`; alerts go to `out`, problems and the summary to stderr.
/// Returns the alerts created (in creation order) and the summary.
pub fn run(
    config: &Config,
    files: &[PathBuf],
    out: &mut dyn Write,
) -> anyhow::Result<(Vec<crate::alerts::Alert>, Summary)> {
    let started = Instant::now();
    let state = Arc::new(MemoryState::default());
    let mut loader = Loader::new(
        engine::build(config.rules.max_operations, state.clone()),
        &config.rules.dir,
        Some(config.destinations.iter().map(|d| d.name.clone()).collect()),
        None,
    );
    let scan = loader
        .scan()
        .with_context(|| format!("rules.dir: cannot read {}", config.rules.dir.display()))?;
    for e in &scan.errors {
        eprintln!("warning: rule not loaded: {e}");
    }
    let rules = scan.rules;
    let mut runner = RuleRunner::new(engine::build(config.rules.max_operations, state));
    let windows = AlertWindows::new(Router {
        destinations: config
            .destinations
            .iter()
            .map(|d| (d.name.clone(), d.min_severity))
            .collect(),
    });
    let mut alerts = MemoryAlerts::default();
    let mut summary = Summary::default();
    let ctx = ParseContext::new(&config.ingest.source_label);
    let mut matches: Vec<Match> = Vec::new();

    for file in files {
        let body = read_input(file)?;
        let (_, items) =
            decode::split(&body).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        let bar = progress_bar(items.len() as u64, file);
        for item in items {
            bar.inc(1);
            let value = match item.value {
                Ok(v) => v,
                Err(u) => {
                    summary.quarantined += 1;
                    eprintln!(
                        "{}: {}: {}",
                        file.display(),
                        position(item.index, item.line),
                        u.reason
                    );
                    continue;
                }
            };
            let record = match event::validate(value, &ctx) {
                Ok(r) => r,
                Err((e, _)) => {
                    summary.quarantined += 1;
                    eprintln!(
                        "{}: {}: {e}",
                        file.display(),
                        position(item.index, item.line)
                    );
                    continue;
                }
            };
            summary.records += 1;
            let action = record.action().to_string();
            if !rules.wants(&action) {
                continue;
            }
            let node = Node::deserialize(&record.value)?;
            let event_ms = record.event_time.timestamp_millis();
            matches.clear();
            runner.evaluate(&rules, &action, &node, event_ms, &mut matches);
            for m in &matches {
                match m.kind {
                    MatchKind::Rule => summary.matches += 1,
                    MatchKind::RuleError => summary.rule_errors += 1,
                }
                windows.apply(&mut alerts, m, event_ms, &record.value)?;
            }
        }
        bar.finish_and_clear();
    }

    let created: Vec<crate::alerts::Alert> = alerts.created().cloned().collect();
    for a in &created {
        serde_json::to_writer(&mut *out, a)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    summary.alerts = created.len();
    summary.elapsed = started.elapsed();
    Ok((created, summary))
}

fn position(index: usize, line: Option<usize>) -> String {
    match line {
        Some(l) => format!("line {l}"),
        None => format!("record {index}"),
    }
}

fn progress_bar(len: u64, file: &Path) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:40}] {pos}/{len} records ({per_sec}, {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message(file.display().to_string());
    bar
}
