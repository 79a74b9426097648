//! The durable journal of accepted records and the quarantine, on the
//! configured storage (SQLite or PostgreSQL).
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
//! with `Session::read_after` at their own pace, woken by the `committed` watch, and
//! keep a cursor so that after a crash they resume exactly where they were.
//! On SQLite the records this process just committed reach the evaluator from
//! memory ([`hexwatch_storage::tail`]) instead of being read back.

use std::sync::Arc;

use parking_lot::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use hexwatch_storage::{Role, Session, Storage, StorageError};

/// Upper bound on records in one group commit; keeps a commit's latency bounded.
const MAX_GROUP_RECORDS: usize = 20_000;

pub use hexwatch_storage::{Batch, Entry, Outcome, Quarantined, StoredRecord};

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("storage error: {0}")]
    Storage(#[from] StorageError),
    #[error("commit failed: {0}")]
    Commit(CommitFailure),
    #[error("the journal is shut down")]
    Closed,
}

/// Why a group commit failed; every request in the group is told.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitFailure {
    /// The storage reports that it cannot be used (say, a SQLite file deleted
    /// under the running daemon).
    #[error("{0}")]
    Unusable(String),
    #[error("{0}")]
    Storage(Arc<StorageError>),
}

struct Job {
    batch: Batch,
    reply: oneshot::Sender<Result<Vec<Outcome>, CommitFailure>>,
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
/// failure, and whether the storage itself reports a problem (a SQLite file
/// deleted under the daemon).
struct StorageStatus {
    storage: Storage,
    last_failure: Mutex<Option<(Instant, String)>>,
}

impl StorageStatus {
    fn problem(&self) -> Option<String> {
        if let Some(p) = self.storage.problem() {
            return Some(p);
        }
        let last = self.last_failure.lock();
        match &*last {
            Some((at, e)) if at.elapsed() < FAILURE_SHOWN_FOR => {
                Some(format!("storage: the last commit failed: {e}"))
            }
            _ => None,
        }
    }

    fn record(&self, failure: Option<&CommitFailure>) {
        let mut last = self.last_failure.lock();
        match failure {
            None => *last = None,
            Some(e) => *last = Some((Instant::now(), e.to_string())),
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
    /// Opens the journal's session and starts the writer thread.
    pub fn open(storage: &Storage) -> Result<(Journal, WriterThread), JournalError> {
        let mut session = storage.session(Role::Journal)?;
        let last = session.last_seq()?;
        let status = Arc::new(StorageStatus {
            storage: storage.clone(),
            last_failure: Mutex::new(None),
        });
        let (tx, rx) = mpsc::channel(1024);
        let (committed_tx, committed) = watch::channel(last);
        let writer_status = status.clone();
        let storage = storage.clone();
        let thread = std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || writer_loop(session, &storage, rx, committed_tx, &writer_status))
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
    mut session: Box<dyn Session>,
    storage: &Storage,
    mut rx: mpsc::Receiver<Job>,
    committed: watch::Sender<i64>,
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
        if session.is_broken() {
            match storage.session(Role::Journal) {
                Ok(s) => session = s,
                Err(e) => tracing::error!(error = %e, "cannot reconnect to the storage"),
            }
        }
        let written = match storage.problem() {
            Some(problem) => Err(CommitFailure::Unusable(problem)),
            None => {
                let batches: Vec<&Batch> = jobs.iter().map(|j| &j.batch).collect();
                session
                    .append(&batches)
                    .map_err(|e| CommitFailure::Storage(Arc::new(e)))
            }
        };
        status.record(written.as_ref().map(|_| ()).err());
        match written {
            Ok((outcomes, last_seq)) => {
                if let Some(seq) = last_seq {
                    committed.send_if_modified(|c| {
                        let raised = seq > *c;
                        *c = (*c).max(seq);
                        raised
                    });
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

#[cfg(test)]
mod tests {
    use super::*;
    use hexwatch_storage::EVALUATOR;
    use std::time::Duration;

    fn entry(key: &str) -> Entry {
        Entry {
            key: key.into(),
            event_time: "2024-01-01T00:00:00Z".into(),
            action: "RUN_PROJECT".into(),
            json: format!("{{\"k\":\"{key}\"}}").into(),
            tree: None,
        }
    }

    fn sqlite(path: &std::path::Path) -> Storage {
        Storage::Sqlite(hexwatch_storage::sqlite::Sqlite::open(path).unwrap())
    }

    #[tokio::test]
    async fn commits_detect_duplicates_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let (j, thread) = Journal::open(&sqlite(&path)).unwrap();
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

        let storage = sqlite(&path);
        let (j, thread) = Journal::open(&storage).unwrap();
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

        let mut s = storage.session(Role::Derived).unwrap();
        assert_eq!(s.cursor(EVALUATOR).unwrap(), 0);
        let recs = s.read_after(1, 10).unwrap();
        assert_eq!(recs.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(recs[0].action, "RUN_PROJECT");
    }

    #[tokio::test]
    async fn prune_keeps_unprocessed_records() {
        let dir = tempfile::tempdir().unwrap();
        let storage = sqlite(&dir.path().join("j.db"));
        let (j, thread) = Journal::open(&storage).unwrap();
        j.commit(Batch {
            entries: vec![entry("a"), entry("b"), entry("c")],
            quarantine: vec![],
        })
        .await
        .unwrap();
        drop(j);
        thread.join();
        let mut s = storage.session(Role::Derived).unwrap();
        s.commit(&hexwatch_storage::Effects {
            from_cursor: 0,
            to_cursor: 2,
            evaluated_ms: i64::MIN,
            ..Default::default()
        })
        .unwrap();
        // Everything is "old" with a zero retention; only what the consumer finished goes.
        assert_eq!(s.prune(Duration::ZERO).unwrap().events, 2);
        assert_eq!(s.read_after(0, 10).unwrap().len(), 1);
    }

    #[test]
    fn unparsable_event_time_falls_back_to_receipt_not_epoch() {
        let r = |t: &str| StoredRecord {
            seq: 1,
            action: "RUN_CELL".into(),
            event_time: t.into(),
            json: String::from("{}").into(),
            received_at: 1_709_647_200_000,
            tree: None,
        };
        assert_eq!(r("2024-03-05T14:00:00Z").event_ms(), 1_709_647_200_000);
        assert_eq!(r("not a time").event_ms(), 1_709_647_200_000);
        assert_eq!(r("2024-03-05T14:00:01Z").event_ms(), 1_709_647_201_000);
    }
}
