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

use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

use super::sql::{self, SqlSession};
use super::tail::{Fresh, Tail};
use super::{
    now_ms, Appended, Attempt, Batch, Due, Effects, Outcome, Pruned, Result, Role, Session,
    StorageError, StoredRecord, WindowsAt, EVALUATOR,
};
use crate::silences::Silence;
use crate::{NoticeWrite, StoredIncident};
use hexwatch_model::alert::{Alert, Window, WindowKey};

mod backup;
mod binding;
mod checkpoint;
mod file;
mod serve_lock;

pub use backup::backup;
use binding::Lite;
use checkpoint::checkpoint_loop;
pub use checkpoint::{Checkpointer, CHECKPOINT_AFTER, CHECKPOINT_IDLE, WAL_RESTART_FRAMES};
pub use file::{ensure_private, open, write_gate, WriteGate, PAGE_SIZE};
use file::{migrate, relax_sync};
pub use serve_lock::ServeLock;

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
        let file = |what| {
            move |source| StorageError::File {
                what,
                path: path.to_path_buf(),
                source,
            }
        };
        ensure_private(path).map_err(file(
            "cannot create, with private permissions, the database",
        ))?;
        let mut conn = open(path)?;
        let gate = write_gate(path);
        {
            let _turn = gate.lock();
            migrate(&mut conn)?;
        }
        let m = std::fs::metadata(path).map_err(file("cannot read"))?;
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
            .map_err(|source| StorageError::File {
                what: "cannot start the checkpointer of",
                path: self.path.clone(),
                source,
            })?;
        Ok(Checkpointer {
            stop,
            thread: Some(thread),
            runs: self.checkpointer_runs.clone(),
        })
    }
}

/// One connection to the SQLite file.
pub struct SqliteSession {
    conn: Connection,
    gate: WriteGate,
    tail: Arc<Tail>,
    written: Arc<AtomicU64>,
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
    crate::incidents::write(&mut Lite(conn), &e.incidents, now)?;
    crate::silences::write_held_back(&mut Lite(conn), &e.silenced, now)?;
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

    fn windows_at(&mut self, key: &WindowKey, at_ms: i64) -> Result<WindowsAt> {
        sql::SqlSession::reads(self, |sql| sql::windows_at(sql, key, at_ms))
    }

    fn commit(&mut self, effects: &Effects) -> Result<()> {
        self.write(|tx| write_effects(tx, effects))
    }

    fn incident_of_group(&mut self, group_key: &str) -> Result<Option<StoredIncident>> {
        sql::SqlSession::reads(self, |sql| crate::incidents::of_group(sql, group_key))
    }

    fn due_incidents(&mut self, now: i64, limit: usize) -> Result<Vec<StoredIncident>> {
        sql::SqlSession::reads(self, |sql| crate::incidents::due(sql, now, limit))
    }

    fn incident_alerts(&mut self, id: &str, from: i64, limit: usize) -> Result<Vec<Alert>> {
        sql::SqlSession::reads(self, |sql| {
            crate::incidents::alerts_of(sql, id, from, limit)
        })
    }

    fn record_notice(&mut self, notice: &NoticeWrite) -> Result<bool> {
        let now = now_ms();
        self.writes(|tx| crate::incidents::record_notice(tx, notice, now))
    }

    fn live_silences(&mut self, now: i64) -> Result<Vec<Silence>> {
        sql::SqlSession::reads(self, |sql| crate::silences::live(sql, now))
    }

    fn claim_due(&mut self, destination: &str, limit: usize, claim_until: i64) -> Result<Vec<Due>> {
        let now = now_ms();
        self.write(|tx| {
            let claimed: Vec<(i64, String, i64, i64, Option<String>)> = tx
                .prepare_cached(
                    "UPDATE deliveries SET claimed_until = ?4
                     WHERE id IN (SELECT id FROM deliveries
                                  WHERE destination = ?1 AND status = 'pending'
                                    AND next_attempt_at <= ?2
                                    AND (claimed_until IS NULL OR claimed_until <= ?2)
                                  ORDER BY next_attempt_at, id LIMIT ?3)
                     RETURNING id, alert_id, attempts, coalesce(queued_at, created_at), message",
                )?
                .query_map(params![destination, now, limit as i64, claim_until], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })?
                .collect::<rusqlite::Result<_>>()?;
            let mut alert = tx.prepare_cached("SELECT alert FROM alerts WHERE alert_id = ?1")?;
            let mut samples = tx.prepare_cached(sql::SAMPLES)?;
            let mut out = Vec::with_capacity(claimed.len());
            for (id, alert_id, attempts, queued_at, message) in claimed {
                if let Some(body) = message {
                    out.push(Due {
                        id,
                        alert_id,
                        attempts,
                        queued_at,
                        alert_json: body,
                        incident_notice: true,
                    });
                    continue;
                }
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
                    incident_notice: false,
                });
            }
            out.sort_by_key(|d| d.id);
            Ok(out)
        })
    }

    fn next_due(&mut self, destination: &str) -> Result<Option<i64>> {
        sql::next_due(&mut Lite(&self.conn), destination)
    }

    fn pending(&mut self, destination: &str) -> Result<i64> {
        sql::pending(&mut Lite(&self.conn), destination)
    }

    fn record_attempts(&mut self, done: &[Attempt]) -> Result<()> {
        self.writes(|tx| sql::record_attempts(tx, done))
    }

    fn release_claims(&mut self) -> Result<usize> {
        self.writes(sql::release_claims)
    }

    fn requeue_failed(
        &mut self,
        destination: Option<&str>,
        since_ms: Option<i64>,
    ) -> Result<usize> {
        self.writes(|tx| sql::requeue_failed(tx, destination, since_ms))
    }

    fn prune(&mut self, retention: Duration) -> Result<Pruned> {
        let retention_ms = retention.as_millis() as i64;
        let cutoff = now_ms() - retention_ms;
        let mut events = 0;
        // Small chunks, each taking its turn at the write gate, so ingestion is
        // never held up for long.
        let tail = self.tail.clone();
        loop {
            let n = self.write_then(
                |tx| Ok(tx.execute(sql::PRUNE_EVENTS, [cutoff])?),
                // What is gone from the journal is not handed over either.
                |n| {
                    if *n > 0 {
                        tail.clear()
                    }
                },
            )?;
            events += n;
            if n < sql::PRUNE_CHUNK {
                break;
            }
        }
        let pruned = self.writes(|tx| sql::prune_closed(tx, cutoff, retention_ms))?;
        Ok(Pruned { events, ..pruned })
    }
}

impl sql::SqlSession for SqliteSession {
    fn reads<T>(&mut self, f: impl FnOnce(&mut dyn sql::Sql) -> Result<T>) -> Result<T> {
        f(&mut Lite(&self.conn))
    }

    fn writes<T>(&mut self, f: impl FnOnce(&mut dyn sql::Sql) -> Result<T>) -> Result<T> {
        self.write(|tx| f(&mut Lite(tx)))
    }
}
