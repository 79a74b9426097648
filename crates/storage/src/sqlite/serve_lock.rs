//! One `serve` per SQLite database: a running daemon holds an exclusive lock
//! on a file beside the database for as long as it runs, so commands that
//! must not touch a live database (`migrate-storage`) can tell, and a second
//! daemon on the same file refuses to start. The kernel drops the lock when
//! the process ends, however it ends.

use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::StorageError;

/// The lock a running `serve` holds (released when dropped).
#[derive(Debug)]
pub struct ServeLock {
    _file: File,
}

/// The lock file of a database: `hexwatch.db.lock` beside `hexwatch.db`.
fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
}

impl ServeLock {
    /// Takes the lock of the database at `db`; refused while another
    /// process holds it.
    pub fn take(db: &Path) -> Result<ServeLock, StorageError> {
        let path = lock_path(db);
        let file = open(&path).map_err(|source| StorageError::File {
            what: "cannot open the lock file",
            path: path.clone(),
            source,
        })?;
        match file.try_lock() {
            Ok(()) => Ok(ServeLock { _file: file }),
            Err(TryLockError::WouldBlock) => Err(StorageError::InUse(db.to_path_buf())),
            Err(TryLockError::Error(source)) => Err(StorageError::File {
                what: "cannot lock",
                path,
                source,
            }),
        }
    }

    /// Whether a running `serve` holds the database at `db`.
    pub fn is_held(db: &Path) -> bool {
        let path = lock_path(db);
        if !path.exists() {
            return false;
        }
        match open(&path).map(|f| f.try_lock()) {
            Ok(Err(TryLockError::WouldBlock)) => true,
            // Locked here just now: dropping the file releases it.
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_has_one_holder_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("h.db");
        assert!(!ServeLock::is_held(&db));
        let lock = ServeLock::take(&db).unwrap();
        assert!(ServeLock::is_held(&db));
        assert!(matches!(ServeLock::take(&db), Err(StorageError::InUse(_))));
        drop(lock);
        assert!(!ServeLock::is_held(&db));
        ServeLock::take(&db).unwrap();
    }
}
