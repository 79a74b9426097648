//! `hexwatch replay`: runs recorded Hex audit streams through the same
//! validation, journal (a record repeated under the same key is a duplicate, as
//! in `serve`), evaluation core and alert windows as `serve` (windows on event
//! time, so the result is what the daemon alerted on), on storage in memory.
//! NDJSON is streamed; a JSON array is read whole. Alerts are written as JSON
//! lines once the whole input is read, each in its final state.

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::config::Config;
use crate::decode;
use crate::evaluation::Core;
use crate::event::ParseContext;
use hexwatch_storage::memory::Memory;
use hexwatch_storage::{Batch, Outcome, Role, Session, Storage};

/// Records journaled and evaluated at a time.
const BATCH: usize = 500;

/// What a replay did (printed to stderr).
#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub records: usize,
    /// Records repeated under a key already read (not evaluated again).
    pub duplicates: usize,
    pub quarantined: usize,
    pub matches: usize,
    pub rule_errors: usize,
    pub alerts: usize,
    /// The incidents the alerts formed, each with its alerts' ids in the
    /// order they joined.
    pub incidents: Vec<(hexwatch_storage::StoredIncident, Vec<String>)>,
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
pub(crate) fn for_each_item(
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
        if read_line(reader, &mut line)? == 0 {
            return Ok(());
        }
        number += 1;
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        // The first line may open one object pretty-printed over several
        // lines: then the input is read whole. Later lines are parsed when taken.
        let parsed = match index {
            0 => match decode::parse_strict(text) {
                Err(e) if e.is_eof() => {
                    return whole(reader, std::mem::take(&mut line), &mut each);
                }
                result => Some(result.map_err(|e| decode::unparsed(text, &e))),
            },
            _ => None,
        };
        each(decode::Item {
            index,
            line: Some(number),
            text,
            parsed,
        })?;
        index += 1;
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
    let mut loader = config.rules_loader(None, false);
    let scan = loader
        .scan()
        .with_context(|| format!("rules.dir: cannot read {}", config.rules.dir.display()))?;
    for e in &scan.errors {
        eprintln!("warning: rule not loaded: {e}");
    }
    let rules = scan.rules;
    let memory = Memory::default();
    let storage = Storage::Memory(memory.clone());
    let mut core = Core::new(config, storage.session(Role::Derived)?);
    let journal = storage.session(Role::Journal)?;

    // Two stages on two threads: reading, validating and journaling the
    // input, then the evaluation core, which follows the journal in order as
    // `serve`'s evaluator does. The reader is at most a few batches ahead.
    let (journaled, woken) = std::sync::mpsc::sync_channel::<()>(4);
    let source_label = config.ingest.source_label.as_str();
    let (evaluated, input) = std::thread::scope(|scope| {
        let reader = scope.spawn(|| read_inputs(files, source_label, &memory, journal, journaled));
        // Each wake-up evaluates one batch (the one journaled, or what is
        // left of an earlier one), then the rest once the reader is done.
        let evaluated = woken
            .iter()
            .try_for_each(|()| core.step(&rules, BATCH).map(drop))
            .and_then(|()| core.catch_up(&rules, BATCH));
        // A failed evaluation drops `woken`, which stops the reader.
        drop(woken);
        (evaluated, reader.join())
    });
    evaluated?;
    let input = input.map_err(|_| anyhow::anyhow!("the input reader panicked"))??;

    let created = memory.created_alerts();
    for a in &created {
        serde_json::to_writer(&mut *out, a)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    let summary = Summary {
        records: input.records,
        duplicates: input.duplicates,
        quarantined: input.quarantined,
        matches: core.counts.matches,
        rule_errors: core.counts.rule_errors,
        alerts: created.len(),
        incidents: memory.incidents(),
        elapsed: started.elapsed(),
    };
    Ok((created, summary))
}

/// What reading the inputs found.
#[derive(Default)]
struct Input {
    /// Valid records (quarantined ones are not counted here).
    records: usize,
    /// Records repeated under a key already read (journaled once).
    duplicates: usize,
    quarantined: usize,
}

/// Reads and validates every input in order and journals it a batch at a
/// time, waking the evaluation after each; records that do not fit go to
/// stderr with their position. Records evaluated are forgotten here too, so
/// their parsed trees are freed by the thread that built them.
fn read_inputs(
    files: &[PathBuf],
    source_label: &str,
    memory: &Memory,
    mut journal: Box<dyn Session>,
    journaled: std::sync::mpsc::SyncSender<()>,
) -> anyhow::Result<Input> {
    let ctx = ParseContext::new(source_label);
    let mut input = Input::default();
    let mut batch = Batch::default();
    let stopped = || anyhow::anyhow!("evaluation stopped");
    let mut append = |batch: Batch, input: &mut Input| -> anyhow::Result<()> {
        memory.forget_evaluated();
        let (outcomes, _) = journal.append(&[&batch])?;
        input.duplicates += outcomes
            .iter()
            .flatten()
            .filter(|o| **o == Outcome::Duplicate)
            .count();
        journaled.send(()).map_err(|_| stopped())
    };
    for file in files {
        let mut reader = open_input(file)?;
        let bar = progress_bar(file);
        for_each_item(reader.as_mut(), |item| {
            bar.inc(1);
            let (index, line) = (item.index, item.line);
            let problem = match crate::ingest::admit(item, &ctx) {
                Ok(entry) => {
                    input.records += 1;
                    batch.entries.push(entry);
                    if batch.entries.len() >= BATCH {
                        append(std::mem::take(&mut batch), &mut input)?;
                    }
                    return Ok(());
                }
                Err((problem, _)) => problem,
            };
            input.quarantined += 1;
            eprintln!("{}: {}: {problem}", file.display(), position(index, line));
            Ok(())
        })
        .with_context(|| file.display().to_string())?;
        bar.finish_and_clear();
    }
    if !batch.entries.is_empty() {
        append(batch, &mut input)?;
    }
    Ok(input)
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

/// `BufRead::read_until(b'\n')`, with the line's end found by the `memchr`
/// crate (vector instructions) instead of std's word-at-a-time search.
fn read_line(reader: &mut dyn BufRead, line: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut read = 0;
    loop {
        let buf = match reader.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok(read);
        }
        let (taken, done) = match memchr::memchr(b'\n', buf) {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        line.extend_from_slice(&buf[..taken]);
        reader.consume(taken);
        read += taken;
        if done {
            return Ok(read);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(input: &str) -> Vec<(usize, Option<usize>, bool)> {
        let mut out = Vec::new();
        for_each_item(&mut input.as_bytes(), |i| {
            out.push((i.index, i.line, i.value().is_ok()));
            Ok(())
        })
        .unwrap();
        out
    }

    /// Lines split at every buffer size as `read_until` splits them: one longer
    /// than the buffer, CRLF, blank ones, none at the end.
    #[test]
    fn read_line_splits_as_read_until_does() {
        let input = format!("{}\r\n\n{{\"a\":1}}\n\r\n  \nlast", "x".repeat(70));
        for capacity in [1, 2, 7, 64, 4096] {
            let (mut ours, mut std) = (
                BufReader::with_capacity(capacity, input.as_bytes()),
                BufReader::with_capacity(capacity, input.as_bytes()),
            );
            loop {
                let (mut a, mut b) = (b"kept".to_vec(), b"kept".to_vec());
                let n = read_line(&mut ours, &mut a).unwrap();
                assert_eq!(
                    n,
                    std.read_until(b'\n', &mut b).unwrap(),
                    "capacity {capacity}"
                );
                assert_eq!(a, b, "capacity {capacity}");
                if n == 0 {
                    break;
                }
            }
        }
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
