//! Embedded SQLite: one file (`storage.path`), WAL mode, one writer at a time.
//!
//! Every stage opens its own connection to the file. Within the process a fair
//! write gate serialises writers, so the evaluator and the delivery workers get
//! their turn between the journal's group commits. The tables are plain SQL so an
//! operator can inspect them with `sqlite3`; the README documents them.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension};

use super::console::{
    AlertDetail, AlertQuery, AlertSummary, DeliveryRow, QuarantineRow, RuleActivity, Triage,
};
use super::tail::{Fresh, Tail};
use super::{
    now_ms, Appended, Attempt, AttemptResult, Batch, Due, Effects, Outcome, Pruned, Result, Role,
    Session, StorageError, StoredRecord, EVALUATOR,
};
use hexwatch_model::alert::{Alert, SampleEvent, Window, WindowKey};

mod embedded {
    refinery::embed_migrations!("src/migrations/sqlite");
}

/// Serialises the writers of one database file within this process, first come
/// first served. SQLite lets one writer in at a time and makes the others poll;
/// under a constant stream of ingest commits the polling writers (evaluator,
/// dispatcher) would rarely get in. With a fair lock taken around every write
/// transaction, each writer gets its turn in order. (Other processes still meet
/// the busy timeout.)
pub type WriteGate = Arc<parking_lot::FairMutex<()>>;

/// The write gate of the database at `path` (one per file per process).
pub fn write_gate(path: &Path) -> WriteGate {
    static GATES: std::sync::OnceLock<Mutex<std::collections::HashMap<PathBuf, WriteGate>>> =
        std::sync::OnceLock::new();
    let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    GATES
        .get_or_init(Default::default)
        .lock()
        .entry(key)
        .or_default()
        .clone()
}

/// The SQLite storage at one path.
#[derive(Clone)]
pub struct Sqlite {
    path: PathBuf,
    /// (device, inode) of the database file when it was opened.
    identity: (u64, u64),
    gate: WriteGate,
    /// Records this process just committed, for the evaluator.
    tail: Arc<Tail>,
    /// What this process's sessions wrote (a commit counts one, a journaled
    /// record one more), for the checkpointer.
    written: Arc<AtomicU64>,
    /// Set while a [`Checkpointer`] runs: sessions opened then leave copying
    /// the WAL into the database to it.
    checkpointer_runs: Arc<AtomicBool>,
}

impl Sqlite {
    /// Opens (creating) the database, makes it private and migrates its schema.
    pub fn open(path: &Path) -> Result<Sqlite> {
        ensure_private(path).map_err(|e| {
            StorageError::Other(format!(
                "cannot create the database {} with private permissions: {e}",
                path.display()
            ))
        })?;
        let mut conn = open(path)?;
        let gate = write_gate(path);
        {
            let _turn = gate.lock();
            migrate(&mut conn)?;
        }
        let m = std::fs::metadata(path)
            .map_err(|e| StorageError::Other(format!("{}: {e}", path.display())))?;
        Ok(Sqlite {
            path: path.to_path_buf(),
            identity: (m.dev(), m.ino()),
            gate,
            tail: Arc::default(),
            written: Arc::default(),
            checkpointer_runs: Arc::default(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn session(&self, role: Role) -> Result<SqliteSession> {
        let conn = open(&self.path)?;
        // Checkpointing the WAL into the database is never the journal's:
        // an ingest commit does not pay for one. The other stages' connections
        // do it when no checkpointer runs (commands, tests).
        if role == Role::Journal || self.checkpointer_runs.load(Ordering::Relaxed) {
            conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        }
        if role == Role::Derived {
            relax_sync(&conn)?;
        }
        Ok(SqliteSession {
            conn,
            gate: self.gate.clone(),
            tail: self.tail.clone(),
            written: self.written.clone(),
        })
    }

    /// Starts copying the WAL into the database on a thread of its own, for
    /// the sessions opened from now on. Under load the checkpoint is a sixth of
    /// the evaluator's work (every page is written twice in WAL mode: to the
    /// WAL, then into the database); on its own thread it runs beside it, on
    /// the core the evaluator does not use. It runs when the sessions have
    /// written about [`CHECKPOINT_AFTER`] since the last one, or anything at all
    /// within [`CHECKPOINT_IDLE`].
    pub fn start_checkpointer(&self) -> Result<Checkpointer> {
        let conn = open(&self.path)?;
        relax_sync(&conn)?;
        self.checkpointer_runs.store(true, Ordering::Relaxed);
        let stop = Arc::new(AtomicBool::new(false));
        let (written, stopping, path) = (self.written.clone(), stop.clone(), self.path.clone());
        let gate = self.gate.clone();
        let thread = std::thread::Builder::new()
            .name("checkpointer".into())
            .spawn(move || checkpoint_loop(conn, &path, &gate, &written, &stopping))
            .map_err(|e| StorageError::Other(format!("cannot start the checkpointer: {e}")))?;
        Ok(Checkpointer {
            stop,
            thread: Some(thread),
            runs: self.checkpointer_runs.clone(),
        })
    }

    /// An error when the database file was deleted or replaced under the running
    /// daemon: SQLite would go on writing to the unlinked file, and everything
    /// acknowledged from then on would vanish at the next start.
    pub fn file_problem(&self) -> Option<String> {
        match std::fs::metadata(&self.path).map(|m| (m.dev(), m.ino())) {
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
}

/// The page size of a new database. Hex records are stored at about 2 KB
/// with their `p_*` fields: with SQLite's default 4 KiB pages one such row
/// filled a page alone and left 44% of it empty, and every record cost a 4 KiB
/// page in the WAL and again in the checkpoint. 8 KiB pages hold three or
/// four: the database is about 30% smaller and the daemon spends less CPU per
/// record; 16 KiB saved a little more space but made the small updates of
/// delivery progress dearer (README, performance).
pub const PAGE_SIZE: i64 = 8192;

/// Opens the database at `path` with the settings every connection uses: WAL,
/// full fsync on commit, a busy timeout for the rare moments two writers meet.
pub fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    // Only a new database takes it: one in WAL mode keeps the size it has.
    conn.pragma_update(None, "page_size", PAGE_SIZE)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // A WAL that grew while the evaluator was far behind (it starts again only
    // when no reader is in it) is cut back to this when it does.
    conn.pragma_update(None, "journal_size_limit", WAL_RESTART_FRAMES * PAGE_SIZE)?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

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
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    runs: Arc<AtomicBool>,
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
fn checkpoint_loop(
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

/// For connections that write only what can be derived again from the journal
/// (evaluation results, delivery progress): commits skip the fsync
/// (`synchronous=NORMAL`, still crash-safe in WAL mode). A power cut can undo their
/// last commits, and each undo is harmless: the evaluator's cursor rolls back
/// with its results, so the records are evaluated again; a delivery marked sent
/// is sent again, and receivers drop the repeat by its `Idempotency-Key`. The
/// journal itself keeps full fsync.
fn relax_sync(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "synchronous", "NORMAL")
}

/// Brings the schema up to date with the embedded migrations (`migrations/sqlite`).
/// A database from before them (schema kept in `user_version`) may lack the
/// column `deliveries.queued_at`, which the first migration's `CREATE TABLE IF
/// NOT EXISTS` cannot add: it is added first.
fn migrate(conn: &mut Connection) -> Result<()> {
    let legacy: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE name = 'deliveries'
           AND NOT EXISTS (SELECT 1 FROM pragma_table_info('deliveries') WHERE name = 'queued_at')",
        [],
        |r| r.get(0),
    )?;
    if legacy > 0 {
        conn.execute_batch(
            "ALTER TABLE deliveries ADD COLUMN queued_at INTEGER;
             UPDATE deliveries SET queued_at = created_at;",
        )?;
    }
    embedded::migrations::runner().run(conn)?;
    Ok(())
}

/// Makes the storage private before SQLite touches it: every audit record (e-mails,
/// IP addresses) lives there. Creates the directory 0700 when it is missing and the
/// database file 0600; SQLite gives its `-wal` and `-shm` files the mode of the
/// database file. Files from an older, looser install are narrowed to 0600. Returns
/// a warning when the directory itself is readable by others (it may be shared on
/// purpose, so it is not changed).
pub fn ensure_private(path: &Path) -> std::io::Result<Option<String>> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
    }
    // Create only: opening and closing a file SQLite already has open in this
    // process would drop SQLite's POSIX locks on it (a close releases all of the
    // process's locks on the file), and another connection could then
    // checkpoint and delete the WAL under a live writer.
    if !path.exists() {
        match std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let file = Path::new(&file);
        match std::fs::metadata(file) {
            Ok(m) if m.permissions().mode() & 0o077 != 0 => {
                std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))?
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let dir = dir.unwrap_or(Path::new("."));
    let mode = std::fs::metadata(dir)?.permissions().mode();
    Ok((mode & 0o077 != 0).then(|| {
        format!(
            "the storage directory {} is accessible to other users (mode {:o}); the database inside is 0600, but consider chmod 700",
            dir.display(),
            mode & 0o777
        )
    }))
}

/// One connection to the SQLite file.
pub struct SqliteSession {
    conn: Connection,
    gate: WriteGate,
    tail: Arc<Tail>,
    written: Arc<AtomicU64>,
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

impl SqliteSession {
    /// Runs `f` in one immediate transaction, at this process's turn to write.
    fn write<T>(&mut self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        self.write_then(f, |_| {})
    }

    /// [`write`](Self::write), then `committed` once the transaction is
    /// durable, still at this process's turn (so what it publishes is in
    /// commit order).
    fn write_then<T>(
        &mut self,
        f: impl FnOnce(&Connection) -> Result<T>,
        committed: impl FnOnce(&mut T),
    ) -> Result<T> {
        if !self.conn.is_autocommit() {
            // A read transaction of the evaluator's batch ends here.
            self.conn.execute_batch("COMMIT")?;
        }
        let _turn = self.gate.lock();
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        match f(&self.conn) {
            Ok(mut v) => {
                self.conn.execute_batch("COMMIT")?;
                self.written.fetch_add(1, Ordering::Relaxed);
                committed(&mut v);
                Ok(v)
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// The connection itself (maintenance and tests).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}

fn save_window(conn: &Connection, w: &Window) -> Result<()> {
    let a = &w.alert;
    conn.prepare_cached(
        "INSERT INTO alerts (alert_id, rule_id, type, dedup, severity, title, created,
                             threshold, window_start, window_end, last_event_ms, event_count,
                             created_at, first_event_at, last_event_at, updated_at, alert)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)
         ON CONFLICT(alert_id) DO UPDATE SET
           created = excluded.created, event_count = excluded.event_count,
           last_event_ms = excluded.last_event_ms, created_at = excluded.created_at,
           last_event_at = excluded.last_event_at, updated_at = excluded.updated_at,
           alert = excluded.alert",
    )?
    .execute(params![
        a.alert_id,
        w.key.rule_id,
        w.key.kind,
        w.key.dedup,
        a.severity.as_str(),
        a.title,
        w.created,
        w.threshold,
        w.start_ms,
        w.end_ms,
        w.last_ms,
        a.event_count,
        a.created_at,
        a.first_event_at,
        a.last_event_at,
        now_ms(),
        super::alert_row_json(a)?,
    ])?;
    let mut sample = conn.prepare_cached(
        "INSERT OR IGNORE INTO alert_samples (alert_id, idx, record) VALUES (?1, ?2, ?3)",
    )?;
    for (i, e) in a.events.iter().enumerate() {
        let idx = (w.samples_stored + i) as i64;
        sample.execute(params![a.alert_id, idx, e.json()])?;
    }
    Ok(())
}

/// An alert's stored samples, in order.
const SAMPLES: &str = "SELECT record FROM alert_samples WHERE alert_id = ?1 ORDER BY idx";

/// An alert from its row's JSON and its stored samples.
fn read_alert(conn: &Connection, alert_id: &str, json: &str) -> Result<Alert> {
    let samples = conn
        .prepare_cached(SAMPLES)?
        .query_map([alert_id], |r| {
            Ok(SampleEvent::from_json(&r.get::<_, String>(0)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    super::alert_from_row(json, samples)
}

fn write_effects(conn: &Connection, e: &Effects) -> Result<()> {
    let moved = conn
        .prepare_cached("UPDATE cursors SET seq = ?2 WHERE name = ?1 AND seq = ?3")?
        .execute(params![EVALUATOR, e.to_cursor, e.from_cursor])?;
    if moved == 0 {
        let exists: Option<i64> = conn
            .query_row(
                "SELECT seq FROM cursors WHERE name = ?1",
                [EVALUATOR],
                |r| r.get(0),
            )
            .optional()?;
        match exists {
            Some(_) => return Err(StorageError::LeaseLost),
            None => {
                conn.execute(
                    "INSERT INTO cursors (name, seq) VALUES (?1, ?2)",
                    params![EVALUATOR, e.to_cursor],
                )?;
            }
        }
    }
    let mut counters = conn.prepare_cached(
        "INSERT OR REPLACE INTO state_counters (key, value, expires_at) VALUES (?1, ?2, ?3)",
    )?;
    for (k, (v, exp)) in &e.state.counters {
        counters.execute(params![k, v, exp])?;
    }
    let mut sets = conn.prepare_cached(
        "INSERT OR REPLACE INTO state_sets (key, member, expires_at) VALUES (?1, ?2, ?3)",
    )?;
    for ((k, m), exp) in &e.state.sets {
        sets.execute(params![k, m, exp])?;
    }
    let mut kv = conn.prepare_cached(
        "INSERT OR REPLACE INTO state_kv (key, value, expires_at) VALUES (?1, ?2, ?3)",
    )?;
    for (k, (v, exp)) in &e.state.kv {
        kv.execute(params![k, v, exp])?;
    }
    for w in &e.windows {
        save_window(conn, w)?;
    }
    let now = now_ms();
    let mut enqueue = conn.prepare_cached(
        "INSERT OR IGNORE INTO deliveries
           (alert_id, destination, status, attempts, next_attempt_at, created_at, queued_at, updated_at)
         VALUES (?1, ?2, 'pending', 0, ?3, ?3, ?3, ?3)",
    )?;
    for (alert_id, destinations) in &e.deliveries {
        for d in destinations {
            enqueue.execute(params![alert_id, d, now])?;
        }
    }
    if e.evaluated_ms != i64::MIN {
        conn.prepare_cached(
            "INSERT INTO watermarks (name, ms) VALUES ('evaluated', ?1)
             ON CONFLICT(name) DO UPDATE SET ms = max(ms, excluded.ms)",
        )?
        .execute([e.evaluated_ms])?;
    }
    Ok(())
}

/// The highest sequence number in the journal (0 when it is empty).
fn max_seq(conn: &Connection) -> Result<i64> {
    Ok(conn
        .prepare_cached("SELECT coalesce(max(seq), 0) FROM events")?
        .query_row([], |r| r.get(0))?)
}

/// Writes a group of batches in the open transaction: their outcomes, and
/// the records accepted, each with the one before it in the journal (the
/// tail's chain; the maximum is read inside the transaction, so records
/// another process wrote are accounted for).
fn insert_batches(tx: &Connection, batches: &[&Batch]) -> Result<(Appended, Vec<Fresh>)> {
    let now = now_ms();
    let mut all = Vec::with_capacity(batches.len());
    let mut last_seq = None;
    let mut prev = max_seq(tx)?;
    let mut fresh = Vec::with_capacity(batches.iter().map(|b| b.entries.len()).sum());
    let mut insert = tx.prepare_cached(
        "INSERT OR IGNORE INTO events (key, received_at, event_time, action, record)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    let mut quarantine = tx.prepare_cached(
        "INSERT INTO quarantine (received_at, record_index, line, reason, raw)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for batch in batches {
        let mut outcomes = Vec::with_capacity(batch.entries.len());
        for e in &batch.entries {
            let changed =
                insert.execute(params![e.key, now, e.event_time, e.action, e.json.as_str()])?;
            if changed == 0 {
                outcomes.push(Outcome::Duplicate);
                continue;
            }
            let seq = tx.last_insert_rowid();
            last_seq = Some(seq);
            outcomes.push(Outcome::Accepted(seq));
            fresh.push(Fresh {
                prev,
                record: StoredRecord {
                    seq,
                    action: e.action.clone(),
                    event_time: e.event_time.clone(),
                    json: e.json.clone(),
                    received_at: now,
                    tree: e.tree.clone(),
                },
            });
            prev = seq;
        }
        for q in &batch.quarantine {
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
    Ok(((all, last_seq), fresh))
}

impl Session for SqliteSession {
    fn append(&mut self, batches: &[&Batch]) -> Result<Appended> {
        let (tail, written) = (self.tail.clone(), self.written.clone());
        let (appended, _) = self.write_then(
            |tx| insert_batches(tx, batches),
            |(_, fresh)| {
                written.fetch_add(fresh.len() as u64, Ordering::Relaxed);
                tail.push(std::mem::take(fresh))
            },
        )?;
        Ok(appended)
    }

    fn last_seq(&mut self) -> Result<i64> {
        max_seq(&self.conn)
    }

    fn read_after(&mut self, after: i64, limit: usize) -> Result<Vec<StoredRecord>> {
        if let Some(fresh) = self.tail.take_after(after, limit) {
            return Ok(fresh);
        }
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, action, event_time, record, received_at FROM events
             WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![after, limit as i64], |r| {
            Ok(StoredRecord {
                seq: r.get(0)?,
                action: r.get(1)?,
                event_time: r.get(2)?,
                json: Arc::new(r.get(3)?),
                received_at: r.get(4)?,
                tree: None,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn try_lease(&mut self) -> Result<bool> {
        Ok(true)
    }

    fn cursor(&mut self, name: &str) -> Result<i64> {
        Ok(self
            .conn
            .query_row("SELECT seq FROM cursors WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?
            .unwrap_or(0))
    }

    /// One read transaction for the batch about to be evaluated: its many point
    /// reads then share one snapshot instead of each taking and dropping SQLite's
    /// file locks. Only the evaluator writes state and windows, so the snapshot is
    /// current.
    fn begin_read(&mut self) -> Result<()> {
        if self.conn.is_autocommit() {
            self.conn.execute_batch("BEGIN DEFERRED")?;
        }
        Ok(())
    }

    fn end_read(&mut self) {
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("COMMIT");
        }
    }

    fn counter(&mut self, key: &str) -> Result<Option<(i64, i64)>> {
        Ok(self
            .conn
            .prepare_cached("SELECT value, expires_at FROM state_counters WHERE key = ?1")?
            .query_row([key], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }

    fn set_member(&mut self, key: &str, member: &str) -> Result<Option<i64>> {
        Ok(self
            .conn
            .prepare_cached("SELECT expires_at FROM state_sets WHERE key = ?1 AND member = ?2")?
            .query_row(params![key, member], |r| r.get(0))
            .optional()?)
    }

    fn value(&mut self, key: &str) -> Result<Option<(String, i64)>> {
        Ok(self
            .conn
            .prepare_cached("SELECT value, expires_at FROM state_kv WHERE key = ?1")?
            .query_row([key], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }

    fn latest_window(&mut self, key: &WindowKey) -> Result<Option<Window>> {
        let row = self
            .conn
            .prepare_cached(
                "SELECT window_start, window_end, threshold, created, last_event_ms, alert
                 FROM alerts WHERE rule_id = ?1 AND type = ?2 AND dedup = ?3
                 ORDER BY window_start DESC LIMIT 1",
            )?
            .query_row(params![key.rule_id, key.kind, key.dedup], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, bool>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, String>(5)?,
                ))
            })
            .optional()?;
        let Some((start_ms, end_ms, threshold, created, last_ms, json)) = row else {
            return Ok(None);
        };
        Ok(Some(
            Window {
                key: key.clone(),
                start_ms,
                end_ms,
                threshold,
                created,
                last_ms,
                alert: serde_json::from_str(&json)?,
                samples_stored: 0,
            }
            .stored(),
        ))
    }

    fn commit(&mut self, effects: &Effects) -> Result<()> {
        self.write(|tx| write_effects(tx, effects))
    }

    fn claim_due(&mut self, destination: &str, limit: usize, claim_until: i64) -> Result<Vec<Due>> {
        let now = now_ms();
        self.write(|tx| {
            let claimed: Vec<(i64, String, i64, i64)> = tx
                .prepare_cached(
                    "UPDATE deliveries SET claimed_until = ?4
                     WHERE id IN (SELECT id FROM deliveries
                                  WHERE destination = ?1 AND status = 'pending'
                                    AND next_attempt_at <= ?2
                                    AND (claimed_until IS NULL OR claimed_until <= ?2)
                                  ORDER BY next_attempt_at, id LIMIT ?3)
                     RETURNING id, alert_id, attempts, coalesce(queued_at, created_at)",
                )?
                .query_map(params![destination, now, limit as i64, claim_until], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })?
                .collect::<rusqlite::Result<_>>()?;
            let mut alert = tx.prepare_cached("SELECT alert FROM alerts WHERE alert_id = ?1")?;
            let mut samples = tx.prepare_cached(SAMPLES)?;
            let mut out = Vec::with_capacity(claimed.len());
            for (id, alert_id, attempts, queued_at) in claimed {
                let row: String = alert.query_row([&alert_id], |r| r.get(0))?;
                let samples = samples
                    .query_map([&alert_id], |r| r.get::<_, String>(0))?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                let samples: Vec<&str> = samples.iter().map(String::as_str).collect();
                let alert_json = super::delivery_json(&row, &samples)?;
                out.push(Due {
                    id,
                    alert_id,
                    attempts,
                    queued_at,
                    alert_json,
                });
            }
            out.sort_by_key(|d| d.id);
            Ok(out)
        })
    }

    fn next_due(&mut self, destination: &str) -> Result<Option<i64>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT next_attempt_at FROM deliveries
                 WHERE destination = ?1 AND status = 'pending'
                   AND (claimed_until IS NULL OR claimed_until <= ?2)
                 ORDER BY next_attempt_at LIMIT 1",
            )?
            .query_row(params![destination, now_ms()], |r| r.get(0))
            .optional()?)
    }

    fn pending(&mut self, destination: &str) -> Result<i64> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT count(*) FROM deliveries WHERE destination = ?1 AND status = 'pending'",
            )?
            .query_row([destination], |r| r.get(0))?)
    }

    fn record_attempts(&mut self, done: &[Attempt]) -> Result<()> {
        let now = now_ms();
        self.write(|tx| {
            let mut delivered = tx.prepare_cached(
                "UPDATE deliveries SET status = 'delivered', attempts = ?2, last_error = NULL,
                        claimed_until = NULL, updated_at = ?3, delivered_at = ?3 WHERE id = ?1",
            )?;
            let mut failed = tx.prepare_cached(
                "UPDATE deliveries SET status = ?2, attempts = ?3, last_error = ?4,
                        next_attempt_at = ?5, claimed_until = NULL, updated_at = ?6 WHERE id = ?1",
            )?;
            let mut unsent =
                tx.prepare_cached("UPDATE deliveries SET claimed_until = NULL WHERE id = ?1")?;
            for a in done {
                match &a.result {
                    AttemptResult::Delivered => {
                        delivered.execute(params![a.id, a.attempts, now])?;
                    }
                    AttemptResult::Failed { error, retry_at } => {
                        let (status, next) = super::after_failure(*retry_at, now);
                        failed.execute(params![a.id, status, a.attempts, error, next, now])?;
                    }
                    AttemptResult::Unsent => {
                        unsent.execute([a.id])?;
                    }
                }
            }
            Ok(())
        })
    }

    fn release_claims(&mut self) -> Result<usize> {
        self.write(|tx| {
            Ok(tx.execute(
                "UPDATE deliveries SET claimed_until = NULL WHERE claimed_until IS NOT NULL",
                [],
            )?)
        })
    }

    fn requeue_failed(
        &mut self,
        destination: Option<&str>,
        since_ms: Option<i64>,
    ) -> Result<usize> {
        let now = now_ms();
        self.write(|tx| {
            Ok(tx.execute(
                "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = ?1,
                        queued_at = ?1, updated_at = ?1, claimed_until = NULL
                 WHERE status = 'failed'
                   AND (?2 IS NULL OR destination = ?2)
                   AND (?3 IS NULL OR created_at >= ?3)",
                params![now, destination, since_ms],
            )?)
        })
    }

    fn prune(&mut self, retention: Duration) -> Result<Pruned> {
        let now = now_ms();
        let cutoff = now - retention.as_millis() as i64;
        let mut pruned = Pruned::default();
        // Small chunks, each taking its turn at the write gate, so ingestion is
        // never held up for long.
        let tail = self.tail.clone();
        loop {
            let n = self.write_then(
                |tx| {
                    Ok(tx.execute(
                        "DELETE FROM events WHERE seq IN (
                             SELECT seq FROM events
                             WHERE received_at <= ?1
                               AND seq <= coalesce((SELECT min(seq) FROM cursors), 9223372036854775807)
                             ORDER BY seq LIMIT 5000)",
                        [cutoff],
                    )?)
                },
                // What is gone from the journal is not handed over either.
                |n| {
                    if *n > 0 {
                        tail.clear()
                    }
                },
            )?;
            pruned.events += n;
            if n < 5000 {
                break;
            }
        }
        self.write(|tx| {
            pruned.quarantine =
                tx.execute("DELETE FROM quarantine WHERE received_at <= ?1", [cutoff])?;
            // Rule state and alert windows live on event time: pruned against the
            // latest evaluated event time, never the wall clock.
            let evaluated: Option<i64> = tx
                .query_row(
                    "SELECT ms FROM watermarks WHERE name = 'evaluated'",
                    [],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(evaluated) = evaluated {
                let closed_before = evaluated.saturating_sub(retention.as_millis() as i64);
                tx.execute(
                    "DELETE FROM deliveries WHERE status != 'pending' AND alert_id IN
                       (SELECT alert_id FROM alerts WHERE updated_at <= ?1 AND window_end < ?2)",
                    params![cutoff, closed_before],
                )?;
                tx.execute(
                    "DELETE FROM alert_samples WHERE alert_id IN
                       (SELECT alert_id FROM alerts WHERE updated_at <= ?1 AND window_end < ?2
                          AND alert_id NOT IN (SELECT alert_id FROM deliveries))",
                    params![cutoff, closed_before],
                )?;
                pruned.alerts = tx.execute(
                    "DELETE FROM alerts WHERE updated_at <= ?1 AND window_end < ?2
                       AND alert_id NOT IN (SELECT alert_id FROM deliveries)",
                    params![cutoff, closed_before],
                )?;
                for table in ["state_counters", "state_sets", "state_kv"] {
                    pruned.state += tx.execute(
                        &format!("DELETE FROM {table} WHERE expires_at < ?1"),
                        [closed_before],
                    )?;
                }
            }
            Ok(())
        })?;
        Ok(pruned)
    }
}

impl super::console::ConsoleQueries for SqliteSession {
    fn list_alerts(&mut self, q: &AlertQuery) -> Result<Vec<AlertSummary>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT alert_id, rule_id, severity, title, created_at, last_event_at, event_count, triage
             FROM alerts
             WHERE created = 1
               AND (?1 IS NULL OR severity = ?1)
               AND (?2 IS NULL OR rule_id = ?2)
               AND (?3 IS NULL OR triage = ?3)
               AND (?4 IS NULL OR created_at >= ?4)
             ORDER BY created_at DESC, alert_id
             LIMIT ?5 OFFSET ?6",
        )?;
        let rows = stmt.query_map(
            params![q.severity, q.rule, q.triage, q.since, q.limit, q.offset],
            |r| {
                Ok(AlertSummary {
                    alert_id: r.get(0)?,
                    rule_id: r.get(1)?,
                    severity: r.get(2)?,
                    title: r.get(3)?,
                    created_at: r.get(4)?,
                    last_event_at: r.get(5)?,
                    event_count: r.get(6)?,
                    triage: r.get(7)?,
                })
            },
        )?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn alert_detail(&mut self, alert_id: &str) -> Result<Option<AlertDetail>> {
        let found = self
            .conn
            .query_row(
                "SELECT alert, triage, triage_by, triage_at, triage_note FROM alerts
                 WHERE alert_id = ?1 AND created = 1",
                [alert_id],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        Triage {
                            status: r.get(1)?,
                            by: r.get(2)?,
                            at: r.get(3)?,
                            note: r.get(4)?,
                        },
                    ))
                },
            )
            .optional()?;
        let Some((alert, triage)) = found else {
            return Ok(None);
        };
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, destination, status, attempts, last_error, updated_at
             FROM deliveries WHERE alert_id = ?1 ORDER BY destination, id",
        )?;
        let deliveries = stmt
            .query_map([alert_id], |r| {
                Ok(DeliveryRow {
                    id: r.get(0)?,
                    destination: r.get(1)?,
                    status: r.get(2)?,
                    attempts: r.get(3)?,
                    last_error: r.get(4)?,
                    updated_at: r.get(5)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(Some(AlertDetail {
            alert: serde_json::to_value(read_alert(&self.conn, alert_id, &alert)?)?,
            triage,
            deliveries,
        }))
    }

    fn set_triage(
        &mut self,
        alert_id: &str,
        status: &str,
        by: &str,
        note: &str,
        at_ms: i64,
    ) -> Result<bool> {
        self.write(|c| {
            Ok(c.execute(
                "UPDATE alerts SET triage = ?2, triage_by = ?3, triage_note = ?4, triage_at = ?5
                 WHERE alert_id = ?1 AND created = 1",
                params![alert_id, status, by, note, at_ms],
            )? == 1)
        })
    }

    fn retry_delivery(&mut self, id: i64) -> Result<bool> {
        let now = now_ms();
        self.write(|c| {
            Ok(c.execute(
                "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = ?2,
                        queued_at = ?2, updated_at = ?2, claimed_until = NULL
                 WHERE id = ?1 AND status = 'failed'",
                params![id, now],
            )? == 1)
        })
    }

    fn recent_quarantine(&mut self, limit: i64) -> Result<Vec<QuarantineRow>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, received_at, record_index, line, reason, raw FROM quarantine
             ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit], |r| {
            Ok(QuarantineRow {
                id: r.get(0)?,
                received_at: r.get(1)?,
                index: r.get(2)?,
                line: r.get(3)?,
                reason: r.get(4)?,
                raw: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn rule_activity(&mut self, since: &str) -> Result<Vec<RuleActivity>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT rule_id, count(*), sum(event_count), max(created_at) FROM alerts
             WHERE created = 1 AND created_at >= ?1 GROUP BY rule_id",
        )?;
        let rows = stmt.query_map([since], |r| {
            Ok(RuleActivity {
                rule_id: r.get(0)?,
                alerts: r.get(1)?,
                matches: r.get(2)?,
                last_fired: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn queue_depth(&mut self) -> Result<i64> {
        Ok(self.conn.query_row(
            "SELECT count(*) FROM deliveries WHERE status = 'pending'",
            [],
            |r| r.get(0),
        )?)
    }
}
