//! The durable journal of accepted records and the quarantine.
//!
//! One writer thread owns the write connection and commits *groups* of requests:
//! it takes every batch waiting in its queue, writes them all in one transaction
//! (one fsync), then answers each request. Concurrent requests therefore share
//! the cost of a commit, and each request is answered only after its own records
//! are on disk.
//!
//! The idempotency check is the `UNIQUE` key of `events`, inside the same
//! transaction as the record, so a record is either stored and acknowledged or
//! neither, and a retried delivery is a duplicate only if the first one
//! committed. (A separate key store claimed per record would cost a round trip
//! per record and could outlive a failed commit, turning Hex's retry into a
//! "duplicate": a lost record. The journal's own key decides, on any backend.)
//!
//! Consumers (the rule evaluator) never slow ingestion: they follow the journal
//! with [`read_after`] at their own pace, woken by the `committed` watch, and
//! keep a cursor so that after a crash they resume exactly where they were.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::{mpsc, oneshot, watch};

use crate::db;

/// Upper bound on records in one group commit; keeps a commit's latency bounded.
const MAX_GROUP_RECORDS: usize = 20_000;

/// A record ready to be written.
#[derive(Debug)]
pub struct Entry {
    pub key: String,
    pub event_time: String,
    pub action: String,
    pub json: String,
}

/// A record kept aside with the reason it was not accepted.
#[derive(Debug)]
pub struct Quarantined {
    pub index: Option<usize>,
    pub line: Option<usize>,
    pub reason: String,
    pub raw: String,
}

/// What one request asks the journal to store.
#[derive(Debug, Default)]
pub struct Batch {
    pub entries: Vec<Entry>,
    pub quarantine: Vec<Quarantined>,
}

/// What became of one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Stored with this sequence number.
    Accepted(i64),
    /// Its idempotency key was already stored.
    Duplicate,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("storage error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("commit failed: {0}")]
    Commit(String),
    #[error("the journal is shut down")]
    Closed,
}

struct Job {
    batch: Batch,
    reply: oneshot::Sender<Result<Vec<Outcome>, String>>,
}

/// Handle for appending to the journal; cheap to clone. When every handle is
/// dropped the writer finishes what is queued and stops.
#[derive(Clone)]
pub struct Journal {
    tx: mpsc::Sender<Job>,
    committed: watch::Receiver<i64>,
    status: Arc<StorageStatus>,
}

/// How long after a failed commit `/readyz` keeps reporting the storage as
/// failing. Then it reports ready again, so a load balancer sends traffic that
/// shows whether the trouble (a full disk, say) has passed.
const FAILURE_SHOWN_FOR: Duration = Duration::from_secs(30);

/// What `/readyz` needs to know about the journal's storage: the last commit
/// failure, and whether the database file is still the one that was opened.
struct StorageStatus {
    path: PathBuf,
    /// (device, inode) of the database file when it was opened.
    identity: (u64, u64),
    last_failure: Mutex<Option<(Instant, String)>>,
}

impl StorageStatus {
    fn open(path: &Path) -> std::io::Result<StorageStatus> {
        let m = std::fs::metadata(path)?;
        Ok(StorageStatus {
            path: path.to_path_buf(),
            identity: (m.dev(), m.ino()),
            last_failure: Mutex::new(None),
        })
    }

    /// An error when the database file was deleted or replaced under the running
    /// daemon: SQLite would go on writing to the unlinked file, and everything
    /// acknowledged from then on would vanish at the next start.
    fn file_problem(&self) -> Option<String> {
        let now = std::fs::metadata(&self.path).map(|m| (m.dev(), m.ino()));
        match now {
            Ok(id) if id == self.identity => None,
            Ok(_) => Some(format!(
                "the database file {} was replaced while hexwatch was running; nothing more is acknowledged: restart hexwatch",
                self.path.display()
            )),
            Err(e) => Some(format!(
                "the database file {} is gone ({e}); nothing more is acknowledged: restart hexwatch",
                self.path.display()
            )),
        }
    }

    fn problem(&self) -> Option<String> {
        if let Some(p) = self.file_problem() {
            return Some(p);
        }
        let last = self.last_failure.lock().unwrap();
        match &*last {
            Some((at, e)) if at.elapsed() < FAILURE_SHOWN_FOR => {
                Some(format!("storage: the last commit failed: {e}"))
            }
            _ => None,
        }
    }

    fn record(&self, result: Result<(), &str>) {
        let mut last = self.last_failure.lock().unwrap();
        match result {
            Ok(()) => *last = None,
            Err(e) => *last = Some((Instant::now(), e.to_string())),
        }
    }
}

/// Joins the writer thread on shutdown.
pub struct WriterThread(JoinHandle<()>);

impl WriterThread {
    pub fn join(self) {
        let _ = self.0.join();
    }
}

impl Journal {
    /// Opens the database (creating the schema) and starts the writer thread.
    pub fn open(path: &Path) -> Result<(Journal, WriterThread), JournalError> {
        let conn = db::open_and_migrate(path)?;
        let gate = db::write_gate(path);
        // Checkpointing the WAL into the database is left to the other stages'
        // connections (they commit after the journal does), so an ingest commit
        // never pays for a checkpoint.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let last: i64 =
            conn.query_row("SELECT coalesce(max(seq), 0) FROM events", [], |r| r.get(0))?;
        let status =
            Arc::new(StorageStatus::open(path).map_err(|e| JournalError::Commit(e.to_string()))?);
        let (tx, rx) = mpsc::channel(1024);
        let (committed_tx, committed) = watch::channel(last);
        let writer_status = status.clone();
        let thread = std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || writer_loop(conn, rx, committed_tx, gate, &writer_status))
            .expect("spawning a thread");
        Ok((
            Journal {
                tx,
                committed,
                status,
            },
            WriterThread(thread),
        ))
    }

    /// Stores a batch durably; returns one outcome per entry, in order.
    pub async fn commit(&self, batch: Batch) -> Result<Vec<Outcome>, JournalError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Job { batch, reply })
            .await
            .map_err(|_| JournalError::Closed)?;
        match answer.await {
            Ok(Ok(outcomes)) => Ok(outcomes),
            Ok(Err(message)) => Err(JournalError::Commit(message)),
            Err(_) => Err(JournalError::Closed),
        }
    }

    /// Why the storage cannot take writes right now, if it cannot (`/readyz`).
    pub fn storage_problem(&self) -> Option<String> {
        self.status.problem()
    }

    /// The highest committed sequence number, updated after every commit.
    pub fn committed(&self) -> watch::Receiver<i64> {
        self.committed.clone()
    }
}

fn writer_loop(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Job>,
    committed: watch::Sender<i64>,
    gate: db::WriteGate,
    status: &StorageStatus,
) {
    let mut jobs: Vec<Job> = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        let mut records = first.batch.entries.len();
        jobs.push(first);
        // Take everything already waiting: they share this commit.
        while records < MAX_GROUP_RECORDS {
            match rx.try_recv() {
                Ok(job) => {
                    records += job.batch.entries.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let written = match status.file_problem() {
            Some(problem) => Err(problem),
            None => {
                let _turn = gate.lock();
                write_group(&mut conn, &jobs)
            }
        };
        status.record(written.as_ref().map(|_| ()).map_err(String::as_str));
        match written {
            Ok((outcomes, last_seq)) => {
                if let Some(seq) = last_seq {
                    committed.send_replace(seq);
                }
                for (job, out) in jobs.drain(..).zip(outcomes) {
                    let _ = job.reply.send(Ok(out));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "journal commit failed; the requests get 503 and Hex will retry");
                for job in jobs.drain(..) {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }
    tracing::debug!("journal writer stopped");
}

type GroupResult = (Vec<Vec<Outcome>>, Option<i64>);

fn write_group(conn: &mut Connection, jobs: &[Job]) -> Result<GroupResult, String> {
    write_group_inner(conn, jobs).map_err(|e| e.to_string())
}

fn write_group_inner(conn: &mut Connection, jobs: &[Job]) -> anyhow::Result<GroupResult> {
    let now = db::now_ms();
    let tx = conn.transaction()?;
    let mut all = Vec::with_capacity(jobs.len());
    let mut last_seq = None;
    {
        let mut insert = tx.prepare_cached(
            "INSERT OR IGNORE INTO events (key, received_at, event_time, action, record)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        let mut quarantine = tx.prepare_cached(
            "INSERT INTO quarantine (received_at, record_index, line, reason, raw)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for job in jobs {
            let mut outcomes = Vec::with_capacity(job.batch.entries.len());
            for e in &job.batch.entries {
                let changed =
                    insert.execute(params![e.key, now, e.event_time, e.action, e.json])?;
                if changed == 1 {
                    let seq = tx.last_insert_rowid();
                    last_seq = Some(seq);
                    outcomes.push(Outcome::Accepted(seq));
                } else {
                    outcomes.push(Outcome::Duplicate);
                }
            }
            for q in &job.batch.quarantine {
                quarantine.execute(params![
                    now,
                    q.index.map(|i| i as i64),
                    q.line.map(|l| l as i64),
                    q.reason,
                    q.raw
                ])?;
            }
            all.push(outcomes);
        }
    }
    tx.commit()?;
    Ok((all, last_seq))
}

/// A stored record as read back by a consumer.
#[derive(Debug)]
pub struct StoredRecord {
    pub seq: i64,
    pub action: String,
    pub event_time: String,
    pub json: String,
    /// When the record was received (unix ms).
    pub received_at: i64,
}

impl StoredRecord {
    /// The record's event time (ms). Stored times were validated at ingest; one
    /// that does not parse (a database edited by hand) falls back to when the
    /// record was received, never to 1970, which would expire every rule-state
    /// entry and alert window it touches.
    pub fn event_ms(&self) -> i64 {
        match chrono::DateTime::parse_from_rfc3339(&self.event_time) {
            Ok(t) => t.timestamp_millis(),
            Err(e) => {
                tracing::error!(seq = self.seq, event_time = %self.event_time, error = %e,
                    "stored event time does not parse; using the time it was received");
                self.received_at
            }
        }
    }
}

// Consumers follow the journal with these, on their own connection.

/// The last sequence number consumer `name` finished, 0 if it never ran.
pub fn cursor(conn: &Connection, name: &str) -> rusqlite::Result<i64> {
    Ok(conn
        .query_row("SELECT seq FROM cursors WHERE name = ?1", [name], |r| {
            r.get(0)
        })
        .optional()?
        .unwrap_or(0))
}

/// Records consumer `name`'s progress.
pub fn set_cursor(conn: &Connection, name: &str, seq: i64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO cursors (name, seq) VALUES (?1, ?2)
         ON CONFLICT(name) DO UPDATE SET seq = excluded.seq",
    )?
    .execute(params![name, seq])?;
    Ok(())
}

/// The event-time mark `evaluated`: the latest event time (unix ms) the
/// evaluator has committed, if it has committed any.
pub const EVALUATED: &str = "evaluated";

/// Raises watermark `name` to `ms` (a mark never goes back).
pub fn raise_watermark(conn: &Connection, name: &str, ms: i64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO watermarks (name, ms) VALUES (?1, ?2)
         ON CONFLICT(name) DO UPDATE SET ms = max(ms, excluded.ms)",
    )?
    .execute(params![name, ms])?;
    Ok(())
}

/// Watermark `name`, if set.
pub fn watermark(conn: &Connection, name: &str) -> rusqlite::Result<Option<i64>> {
    conn.query_row("SELECT ms FROM watermarks WHERE name = ?1", [name], |r| {
        r.get(0)
    })
    .optional()
}

/// Up to `limit` records with `seq > after`, in order.
pub fn read_after(
    conn: &Connection,
    after: i64,
    limit: usize,
) -> rusqlite::Result<Vec<StoredRecord>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, action, event_time, record, received_at FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![after, limit as i64], |r| {
        Ok(StoredRecord {
            seq: r.get(0)?,
            action: r.get(1)?,
            event_time: r.get(2)?,
            json: r.get(3)?,
            received_at: r.get(4)?,
        })
    })?;
    rows.collect()
}

/// Deletes records and quarantine rows older than `retention`, never a record a
/// consumer has not processed yet. Runs in small chunks, each taking its turn at
/// the write gate, so ingestion is never held up for long. Returns (events,
/// quarantine rows) deleted.
pub fn prune(
    conn: &Connection,
    retention: Duration,
    gate: &db::WriteGate,
) -> rusqlite::Result<(usize, usize)> {
    let cutoff = db::now_ms() - retention.as_millis() as i64;
    let mut events = 0;
    loop {
        let _turn = gate.lock();
        let n = conn.execute(
            "DELETE FROM events WHERE seq IN (
                 SELECT seq FROM events
                 WHERE received_at <= ?1
                   AND seq <= coalesce((SELECT min(seq) FROM cursors), 9223372036854775807)
                 ORDER BY seq LIMIT 5000)",
            [cutoff],
        )?;
        events += n;
        if n < 5000 {
            break;
        }
    }
    let _turn = gate.lock();
    let quarantine = conn.execute("DELETE FROM quarantine WHERE received_at <= ?1", [cutoff])?;
    Ok((events, quarantine))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str) -> Entry {
        Entry {
            key: key.into(),
            event_time: "2024-01-01T00:00:00Z".into(),
            action: "RUN_PROJECT".into(),
            json: format!("{{\"k\":\"{key}\"}}"),
        }
    }

    #[tokio::test]
    async fn commits_detect_duplicates_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let (j, thread) = Journal::open(&path).unwrap();
        let out = j
            .commit(Batch {
                entries: vec![entry("a"), entry("b"), entry("a")],
                quarantine: vec![Quarantined {
                    index: Some(3),
                    line: None,
                    reason: "bad".into(),
                    raw: "x".into(),
                }],
            })
            .await
            .unwrap();
        assert_eq!(
            out,
            vec![
                Outcome::Accepted(1),
                Outcome::Accepted(2),
                Outcome::Duplicate
            ]
        );
        assert_eq!(*j.committed().borrow(), 2);
        drop(j);
        thread.join();

        let (j, thread) = Journal::open(&path).unwrap();
        assert_eq!(*j.committed().borrow(), 2);
        let out = j
            .commit(Batch {
                entries: vec![entry("b"), entry("c")],
                quarantine: vec![],
            })
            .await
            .unwrap();
        assert_eq!(out, vec![Outcome::Duplicate, Outcome::Accepted(3)]);
        drop(j);
        thread.join();

        let conn = db::open_and_migrate(&path).unwrap();
        assert_eq!(cursor(&conn, "evaluator").unwrap(), 0);
        let recs = read_after(&conn, 1, 10).unwrap();
        assert_eq!(recs.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(recs[0].action, "RUN_PROJECT");
        set_cursor(&conn, "evaluator", 2).unwrap();
        assert_eq!(cursor(&conn, "evaluator").unwrap(), 2);
        let q: i64 = conn
            .query_row("SELECT count(*) FROM quarantine", [], |r| r.get(0))
            .unwrap();
        assert_eq!(q, 1);
    }

    #[tokio::test]
    async fn prune_keeps_unprocessed_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let (j, thread) = Journal::open(&path).unwrap();
        j.commit(Batch {
            entries: vec![entry("a"), entry("b"), entry("c")],
            quarantine: vec![],
        })
        .await
        .unwrap();
        drop(j);
        thread.join();
        let conn = db::open_and_migrate(&path).unwrap();
        set_cursor(&conn, "evaluator", 2).unwrap();
        // Everything is "old" with a zero retention; only what the consumer finished goes.
        let (events, _) = prune(&conn, Duration::ZERO, &db::write_gate(&path)).unwrap();
        assert_eq!(events, 2);
        assert_eq!(read_after(&conn, 0, 10).unwrap().len(), 1);
    }

    #[test]
    fn unparsable_event_time_falls_back_to_receipt_not_epoch() {
        let r = |t: &str| StoredRecord {
            seq: 1,
            action: "RUN_CELL".into(),
            event_time: t.into(),
            json: "{}".into(),
            received_at: 1_709_647_200_000,
        };
        assert_eq!(r("2024-03-05T14:00:00Z").event_ms(), 1_709_647_200_000);
        assert_eq!(r("not a time").event_ms(), 1_709_647_200_000);
        assert_eq!(r("2024-03-05T14:00:01Z").event_ms(), 1_709_647_201_000);
    }
}
