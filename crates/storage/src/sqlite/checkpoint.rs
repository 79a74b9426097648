//! Copying the WAL into the database, on a thread of its own.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::file::{open, relax_sync, WriteGate};

/// What the sessions write between two checkpoints, in commits plus journaled
/// records: 2,000 Hex records are about 600 pages of 8 KiB (SQLite's own
/// automatic checkpoint comes every 1,000 pages).
pub const CHECKPOINT_AFTER: u64 = 2_000;
/// Past this many frames (64 MiB of 8 KiB pages) a checkpoint takes the
/// writers' turn once, so the WAL starts again from its beginning. Under load
/// it can grow further: SQLite starts it again only when no reader is in it.
pub const WAL_RESTART_FRAMES: i64 = 8192;
/// Passes beside the writers before the one at their turn: the last leaves
/// at most about [`CHECKPOINT_LEFT_FRAMES`] for the turn.
const MAX_CHECKPOINT_PASSES: usize = 4;
const CHECKPOINT_LEFT_FRAMES: i64 = 64;
/// A trickle of writes is checkpointed this long after the last checkpoint.
pub const CHECKPOINT_IDLE: Duration = Duration::from_secs(5);
const CHECKPOINT_POLL: Duration = Duration::from_millis(50);

/// The checkpointer thread ([`Sqlite::start_checkpointer`]).
pub struct Checkpointer {
    pub(super) stop: Arc<AtomicBool>,
    pub(super) thread: Option<std::thread::JoinHandle<()>>,
    pub(super) runs: Arc<AtomicBool>,
}

impl Checkpointer {
    /// Stops the thread (the last connection to close checkpoints what is left).
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
        self.runs.store(false, Ordering::Relaxed);
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Checkpoints whenever enough was written. Passive: it waits for no reader
/// and no writer, so the writers keep committing while the WAL is copied. A
/// checkpoint beside a writer that never pauses never catches up, though, and
/// the WAL only starts again from its beginning once one has (it grew by
/// gigabytes). So when the WAL has grown past [`WAL_RESTART_FRAMES`], or
/// writes are only trickling in, what was committed during the copy is copied
/// again at this process's turn to write, and the next commit starts the WAL
/// from its beginning. Checkpointing at that turn every time was the journal's
/// main wait at full speed (README, performance). A failure is logged and
/// tried again with a new connection.
pub(super) fn checkpoint_loop(
    mut conn: Connection,
    path: &Path,
    gate: &WriteGate,
    written: &AtomicU64,
    stop: &AtomicBool,
) {
    let (mut done, mut at) = (written.load(Ordering::Relaxed), Instant::now());
    let mut failing = false;
    while !stop.load(Ordering::Relaxed) {
        std::thread::park_timeout(CHECKPOINT_POLL);
        let now = written.load(Ordering::Relaxed);
        let busy = now - done >= CHECKPOINT_AFTER;
        if now == done || (!busy && at.elapsed() < CHECKPOINT_IDLE) {
            continue;
        }
        let result = checkpoint_passes(&conn, busy, gate);
        match result {
            Ok(()) => {
                (done, at, failing) = (now, Instant::now(), false);
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "checkpointing the WAL failed; will retry");
                }
                failing = true;
                at = Instant::now();
                if let Ok(fresh) = open(path).and_then(|c| relax_sync(&c).map(|_| c)) {
                    conn = fresh;
                }
            }
        }
    }
}

/// One checkpoint ([`checkpoint_loop`]): passes beside the writers, then, when
/// the WAL is to start again, one at their turn. The passes beside them go on
/// while each finds more than a few pages committed since the one before, so
/// the writers mostly wait for a few pages and their sync (after a single pass
/// beside them, the turn had megabytes left to copy).
fn checkpoint_passes(conn: &Connection, busy: bool, gate: &WriteGate) -> rusqlite::Result<()> {
    // The WAL's length in frames when the pass began.
    let pass = || conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1));
    let mut frames = pass()?;
    if busy && frames < WAL_RESTART_FRAMES {
        return Ok(());
    }
    for _ in 0..MAX_CHECKPOINT_PASSES {
        let before = frames;
        frames = pass()?;
        // A restarted WAL is shorter than it was.
        if frames < before || frames - before <= CHECKPOINT_LEFT_FRAMES {
            break;
        }
    }
    let _turn = gate.lock();
    pass().map(|_| ())
}
