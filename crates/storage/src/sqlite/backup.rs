//! `hexwatch backup`: an online, consistent copy of the SQLite database.

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::StorageError;

/// Copies the database at `db` into `to`, which must not exist, while a
/// daemon may be writing: SQLite's `VACUUM INTO` reads the whole database in
/// one read transaction (one consistent moment; writers go on meanwhile, in
/// WAL mode) and writes a compact copy. The copy is created 0600 and synced;
/// its size in bytes comes back.
pub fn backup(db: &Path, to: &Path) -> Result<u64, StorageError> {
    let file = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| StorageError::File { what, path, source }
    };
    std::fs::metadata(db).map_err(file("no database at", db))?;
    // Created empty and private first: VACUUM INTO fills an empty file and
    // keeps its mode, and an existing backup is never overwritten.
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .map_err(file("cannot create the backup", to))?;
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    conn.busy_timeout(Duration::from_secs(30))?;
    let target = to.to_str().ok_or_else(|| StorageError::File {
        what: "the backup's path is not UTF-8",
        path: to.to_path_buf(),
        source: std::io::ErrorKind::InvalidInput.into(),
    })?;
    let copied = conn.execute("VACUUM INTO ?1", [target]);
    if let Err(e) = copied {
        let _ = std::fs::remove_file(to);
        return Err(e.into());
    }
    let out = std::fs::File::open(to).map_err(file("cannot open the backup", to))?;
    out.sync_all().map_err(file("cannot sync the backup", to))?;
    Ok(out.metadata().map_err(file("cannot read", to))?.len())
}
