//! What the storage needs to know to open: `[storage]` as the config file's
//! loader built it (the loader lives with the rest of the config, above this crate).

use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// The SQLite database (also where the generated ingest secret is kept).
    pub path: PathBuf,
    pub retention: Duration,
    /// PostgreSQL instead of SQLite: several replicas share it.
    pub url: Option<PostgresUrl>,
}

/// `storage.url` with the password from `storage.password_env`; never printed
/// with the password.
#[derive(Clone)]
pub struct PostgresUrl {
    /// The URL as written (it holds no password).
    pub url: String,
    pub password: Option<String>,
    /// A CA certificate (PEM) for the server's TLS certificate, besides the
    /// public roots (`sslmode=require` in the URL).
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresUrl")
            .field("url", &self.url)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

impl StorageConfig {
    /// The directory that holds the database and the generated ingest secret.
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }
}
