//! Opening the embedded SQLite database and creating its tables.
//!
//! Every stage that persists something opens its own connection to the same file
//! (WAL mode: one writer at a time, readers never blocked). The tables are plain
//! SQL so an operator can inspect them with `sqlite3`; the README documents them.

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

/// Schema version stored in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 3;

const SCHEMA: &str = r#"
-- Every accepted record, in arrival order. `key` is the idempotency key.
CREATE TABLE IF NOT EXISTS events (
    seq         INTEGER PRIMARY KEY,
    key         TEXT NOT NULL UNIQUE,
    received_at INTEGER NOT NULL,          -- unix milliseconds
    event_time  TEXT NOT NULL,             -- p_event_time
    action      TEXT NOT NULL,
    record      TEXT NOT NULL              -- the record as rules see it (JSON)
);
CREATE INDEX IF NOT EXISTS events_received_at ON events(received_at);

-- Records that did not parse or did not fit Hex.Audit, with the reason.
CREATE TABLE IF NOT EXISTS quarantine (
    id           INTEGER PRIMARY KEY,
    received_at  INTEGER NOT NULL,         -- unix milliseconds
    record_index INTEGER,                  -- position in the request body
    line         INTEGER,                  -- NDJSON line
    reason       TEXT NOT NULL,
    raw          TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS quarantine_received_at ON quarantine(received_at);

-- How far each consumer of the journal has got (the evaluator's cursor).
CREATE TABLE IF NOT EXISTS cursors (
    name TEXT PRIMARY KEY,
    seq  INTEGER NOT NULL
);

-- Event-time high-water marks (unix ms): `evaluated` is the latest event time
-- the evaluator has committed. Rule state and alert windows expire on event time,
-- so they are pruned against this mark, never against the wall clock.
CREATE TABLE IF NOT EXISTS watermarks (
    name TEXT PRIMARY KEY,
    ms   INTEGER NOT NULL
);

-- Rule state helpers (SPEC §5). expires_at is in event-time milliseconds.
CREATE TABLE IF NOT EXISTS state_counters (
    key        TEXT PRIMARY KEY,
    value      INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS state_sets (
    key        TEXT NOT NULL,
    member     TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (key, member)
);
CREATE TABLE IF NOT EXISTS state_kv (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,              -- JSON
    expires_at INTEGER NOT NULL
);

-- Alert windows: one row per (rule, dedup) window; `created` once the
-- threshold is reached. `alert` is the alert JSON as delivered (SPEC §6).
CREATE TABLE IF NOT EXISTS alerts (
    alert_id       TEXT PRIMARY KEY,
    rule_id        TEXT NOT NULL,
    type           TEXT NOT NULL,          -- RULE or RULE_ERROR
    dedup          TEXT NOT NULL,
    severity       TEXT NOT NULL,
    title          TEXT NOT NULL,
    created        INTEGER NOT NULL,       -- 1 once the threshold is reached
    threshold      INTEGER NOT NULL,
    window_start   INTEGER NOT NULL,       -- event time, unix ms
    window_end     INTEGER NOT NULL,
    last_event_ms  INTEGER NOT NULL,
    event_count    INTEGER NOT NULL,
    created_at     TEXT NOT NULL,
    first_event_at TEXT NOT NULL,
    last_event_at  TEXT NOT NULL,
    updated_at     INTEGER NOT NULL,       -- wall clock, unix ms
    alert          TEXT NOT NULL           -- JSON
);
CREATE INDEX IF NOT EXISTS alerts_window ON alerts(rule_id, type, dedup, window_start);

-- The delivery outbox: one row per (alert, destination), written in the same
-- transaction as the alert; the dispatcher works through it.
CREATE TABLE IF NOT EXISTS deliveries (
    id              INTEGER PRIMARY KEY,
    alert_id        TEXT NOT NULL REFERENCES alerts(alert_id),
    destination     TEXT NOT NULL,
    status          TEXT NOT NULL,         -- pending, delivered, failed
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,      -- unix ms
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    queued_at       INTEGER,               -- unix ms: created, or re-queued by `hexwatch redeliver`
    updated_at      INTEGER NOT NULL,
    delivered_at    INTEGER,
    UNIQUE (alert_id, destination)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(destination, status, next_attempt_at);
"#;

/// Opens (creating if needed) the database at `path` with the settings every
/// connection uses: WAL, full fsync on commit, a busy timeout for the rare moments
/// two writers meet.
pub fn open(path: &Path) -> rusqlite::Result<Connection> {
    // Making the files private is best effort here: a failure shows up as the open
    // error, or was reported by `ensure_private` when the daemon started.
    let _ = ensure_private(path);
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

/// For connections that write only what can be derived again from the journal
/// (evaluation results, delivery progress): commits skip the fsync
/// (`synchronous=NORMAL`, still crash-safe in WAL mode). A power cut can undo their
/// last commits, and each undo is harmless: the evaluator's cursor rolls back
/// with its results, so the records are evaluated again; a delivery marked sent
/// is sent again, and receivers drop the repeat by its `Idempotency-Key`. The
/// journal itself keeps full fsync.
pub fn relax_sync(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "synchronous", "NORMAL")
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

/// Opens the database and brings its schema up to date.
pub fn open_and_migrate(path: &Path) -> rusqlite::Result<Connection> {
    let conn = open(path)?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version < SCHEMA_VERSION {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let migrated = (|| {
            conn.execute_batch(SCHEMA)?;
            // Version 3: deliveries remember when they were (re-)queued.
            let has_queued_at: bool = conn.query_row(
                "SELECT count(*) FROM pragma_table_info('deliveries') WHERE name = 'queued_at'",
                [],
                |r| r.get(0),
            )?;
            if !has_queued_at {
                conn.execute_batch(
                    "ALTER TABLE deliveries ADD COLUMN queued_at INTEGER;
                     UPDATE deliveries SET queued_at = created_at;",
                )?;
            }
            conn.pragma_update(None, "user_version", SCHEMA_VERSION)
        })();
        match migrated {
            Ok(()) => conn.execute_batch("COMMIT")?,
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(e);
            }
        }
    }
    Ok(conn)
}

/// Serialises the writers of one database file within this process, first come
/// first served. SQLite lets one writer in at a time and makes the others poll;
/// under a constant stream of ingest commits the polling writers (evaluator,
/// dispatcher) would rarely get in. With a fair lock taken around every write
/// transaction, each writer gets its turn in order. (Other processes still meet
/// the busy timeout.)
pub type WriteGate = std::sync::Arc<parking_lot::FairMutex<()>>;

/// The write gate of the database at `path` (one per file per process).
pub fn write_gate(path: &Path) -> WriteGate {
    static GATES: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<std::path::PathBuf, WriteGate>>,
    > = std::sync::OnceLock::new();
    let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    GATES
        .get_or_init(Default::default)
        .lock()
        .unwrap()
        .entry(key)
        .or_default()
        .clone()
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
