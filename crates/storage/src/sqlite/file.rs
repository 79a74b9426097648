//! The SQLite file: how every connection opens it, its schema, its
//! permissions, and the gate its writers in this process take turns at.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rusqlite::Connection;

use super::checkpoint::WAL_RESTART_FRAMES;
use crate::Result;

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

/// For connections that write only what can be derived again from the journal
/// (evaluation results, delivery progress): commits skip the fsync
/// (`synchronous=NORMAL`, still crash-safe in WAL mode). A power cut can undo their
/// last commits, and each undo is harmless: the evaluator's cursor rolls back
/// with its results, so the records are evaluated again; a delivery marked sent
/// is sent again, and receivers drop the repeat by its `Idempotency-Key`. The
/// journal itself keeps full fsync.
pub(super) fn relax_sync(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "synchronous", "NORMAL")
}

/// Brings the schema up to date with the embedded migrations (`migrations/sqlite`).
/// A database from before them (schema kept in `user_version`) may lack the
/// column `deliveries.queued_at`, which the first migration's `CREATE TABLE IF
/// NOT EXISTS` cannot add: it is added first.
pub(super) fn migrate(conn: &mut Connection) -> Result<()> {
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
    let report = embedded::migrations::runner().run(conn)?;
    crate::migrate::log_applied(&report);
    Ok(())
}

/// Makes the storage private before SQLite touches it: every audit record (e-mails,
/// IP addresses) lives there. Creates the directory 0700 when it is missing and the
/// database file 0600; SQLite gives its `-wal` and `-shm` files the mode of the
/// database file. Files from an older, looser install are narrowed to 0600, and a
/// directory others can read back to 0700; returns a warning saying so (or that
/// it cannot, when another user owns the directory).
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
    let meta = std::fs::metadata(dir)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 == 0 {
        return Ok(None);
    }
    // Loosened since (a chmod, a restore from a backup, a deploy tool): the
    // database, `ingest.secret` and `acme/` live here, so it is narrowed
    // back when it is ours; someone else's is only reported.
    use std::os::unix::fs::MetadataExt;
    if meta.uid() == std::fs::metadata(path)?.uid() {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        return Ok(Some(format!(
            "the storage directory {} was accessible to other users (mode {mode:o}); narrowed to 700",
            dir.display()
        )));
    }
    Ok(Some(format!(
        "the storage directory {} is accessible to other users (mode {mode:o}) and not owned by hexwatch's user; the database inside is 0600, but consider chmod 700",
        dir.display()
    )))
}

impl super::Sqlite {
    /// An error when the database file was deleted or replaced under the running
    /// daemon: SQLite would go on writing to the unlinked file, and everything
    /// acknowledged from then on would vanish at the next start.
    /// `/readyz` answers without auth: the problem names the file, not
    /// where it is (the log at startup says where).
    pub fn file_problem(&self) -> Option<String> {
        use std::os::unix::fs::MetadataExt;
        let name = self.path.file_name().unwrap_or_default().to_string_lossy();
        match std::fs::metadata(&self.path).map(|m| (m.dev(), m.ino())) {
            Ok(id) if id == self.identity => None,
            Ok(_) => Some(format!(
                "the database file {name} was replaced while hexwatch was running; nothing more is acknowledged: restart hexwatch"
            )),
            Err(e) => Some(format!(
                "the database file {name} is gone ({}); nothing more is acknowledged: restart hexwatch",
                e.kind()
            )),
        }
    }
}
