//! `hexwatch replay`: runs recorded Hex audit streams through the same
//! validation, rules and alert windows as `serve` (windows on event time, so the
//! result is what the daemon alerted on), with rule state in memory. NDJSON is
//! streamed; a JSON array is read whole. Alerts are written as JSON lines once the
//! whole input is read, each in its final state.

use std::io::{BufRead, BufReader, IsTerminal, Write};
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
use crate::state::MemoryState;

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

/// Opens an input for reading (`-` is stdin; gzip is decompressed, by name or magic).
fn open_input(path: &Path) -> anyhow::Result<Box<dyn BufRead>> {
    let mut reader: Box<dyn BufRead> = if path == Path::new("-") {
        Box::new(BufReader::new(std::io::stdin()))
    } else {
        let f =
            std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        Box::new(BufReader::with_capacity(1 << 16, f))
    };
    let gzip = path.extension().is_some_and(|e| e == "gz")
        || reader.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    if gzip {
        reader = Box::new(BufReader::with_capacity(
            1 << 16,
            flate2::bufread::MultiGzDecoder::new(reader),
        ));
    }
    Ok(reader)
}

/// Calls `each` for every record of an input: a JSON array is read whole; NDJSON
/// is streamed line by line, so inputs of any size replay in bounded memory.
fn for_each_item(
    reader: &mut dyn BufRead,
    mut each: impl FnMut(decode::Item) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if reader.fill_buf()?.starts_with(b"\xEF\xBB\xBF") {
        reader.consume(3);
    }
    let first = loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(());
        }
        match buf.iter().position(|b| !b.is_ascii_whitespace()) {
            Some(i) => break buf[i],
            None => {
                let n = buf.len();
                reader.consume(n);
            }
        }
    };
    let whole = |reader: &mut dyn BufRead,
                 mut body: Vec<u8>,
                 each: &mut dyn FnMut(decode::Item) -> anyhow::Result<()>| {
        reader.read_to_end(&mut body)?;
        let (_, items) = decode::split(&body, usize::MAX).map_err(|e| anyhow::anyhow!("{e}"))?;
        items.into_items().try_for_each(each)
    };
    if first == b'[' {
        return whole(reader, Vec::new(), &mut each);
    }
    let mut line = Vec::new();
    let mut number = 0;
    let mut index = 0;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        number += 1;
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match decode::parse_strict(text) {
            // One object pretty-printed over several lines: read it whole.
            Err(e) if index == 0 && e.is_eof() => {
                return whole(reader, std::mem::take(&mut line), &mut each);
            }
            result => {
                each(decode::Item {
                    index,
                    line: Some(number),
                    value: result.map_err(|e| decode::unparsed(text, &e)),
                })?;
                index += 1;
            }
        }
    }
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
    let mut loader = Loader::for_config(config, None, false);
    let scan = loader
        .scan()
        .with_context(|| format!("rules.dir: cannot read {}", config.rules.dir.display()))?;
    for e in &scan.errors {
        eprintln!("warning: rule not loaded: {e}");
    }
    let rules = scan.rules;
    let mut runner = RuleRunner::new(
        engine::build(config.rules.max_operations, state.clone()),
        state,
    );
    let windows = AlertWindows::new(Router::from_config(config));
    let mut alerts = MemoryAlerts::default();
    let mut summary = Summary::default();
    let ctx = ParseContext::new(&config.ingest.source_label);
    let mut matches: Vec<Match> = Vec::new();

    for file in files {
        let mut reader = open_input(file)?;
        let bar = progress_bar(file);
        for_each_item(reader.as_mut(), |item| {
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
                    return Ok(());
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
                    return Ok(());
                }
            };
            summary.records += 1;
            // Every record is evaluated: even one no rule wants teaches names and baselines.
            let action = record.action().to_string();
            let node = Node::deserialize(&record.value)?;
            let event_ms = record.event_time.timestamp_millis();
            matches.clear();
            runner.evaluate(&rules, &action, &node, event_ms, &mut matches);
            for m in &matches {
                match m.kind {
                    MatchKind::Rule => summary.matches += 1,
                    MatchKind::RuleError => summary.rule_errors += 1,
                }
            }
            let now = crate::storage::now_ms();
            windows.apply_all(
                &mut alerts,
                &matches,
                event_ms,
                &record.value,
                now,
                &mut Vec::new(),
            )?;
            Ok(())
        })
        .with_context(|| file.display().to_string())?;
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

/// A records counter with a rate, on stderr when it is a terminal.
fn progress_bar(file: &Path) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg}: {pos} records ({per_sec})")
            .expect("valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(100));
    bar.set_message(file.display().to_string());
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(input: &str) -> Vec<(usize, Option<usize>, bool)> {
        let mut out = Vec::new();
        for_each_item(&mut input.as_bytes(), |i| {
            out.push((i.index, i.line, i.value.is_ok()));
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn inputs_of_every_shape() {
        assert_eq!(
            items("{\"a\":1}\n\nnot json\r\n{\"a\":2}"),
            vec![(0, Some(1), true), (1, Some(3), false), (2, Some(4), true)]
        );
        assert_eq!(
            items("  [{\"a\":1}, {\"a\":2}]"),
            vec![(0, None, true), (1, None, true)]
        );
        assert_eq!(items("{\n  \"a\": 1\n}\n"), vec![(0, Some(1), true)]);
        assert_eq!(items("\n \n"), vec![]);
    }
}
