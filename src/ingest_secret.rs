//! The ingest secret: read from the environment, or generated once and kept in
//! the storage directory so a first start needs no setup and is still
//! authenticated. Requests are checked in constant time.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Where the secret came from (for the startup log line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Env(String),
    /// Generated now, or on an earlier start, and kept in this file.
    File {
        path: PathBuf,
        created: bool,
    },
}

/// The shared secret Hex sends in the auth header. Only its digest is kept, so
/// comparisons take the same time whatever the lengths.
pub struct IngestSecret {
    digest: [u8; 32],
}

impl IngestSecret {
    pub fn new(secret: &[u8]) -> IngestSecret {
        IngestSecret {
            digest: Sha256::digest(secret).into(),
        }
    }

    /// Constant-time check of a presented header value.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let d: [u8; 32] = Sha256::digest(presented).into();
        d.ct_eq(&self.digest).into()
    }

    /// The secret from `env_var`, else from `<storage dir>/ingest.secret`, generating it
    /// (mode 0600) when the file does not exist yet.
    pub fn resolve(
        env_var: &str,
        env_value: Option<&str>,
        storage_dir: &Path,
    ) -> std::io::Result<(IngestSecret, SecretSource)> {
        if let Some(v) = env_value.filter(|v| !v.is_empty()) {
            return Ok((
                IngestSecret::new(v.as_bytes()),
                SecretSource::Env(env_var.to_string()),
            ));
        }
        let path = storage_dir.join("ingest.secret");
        match std::fs::read_to_string(&path) {
            Ok(s) if !s.trim().is_empty() => {
                return Ok((
                    IngestSecret::new(s.trim().as_bytes()),
                    SecretSource::File {
                        path,
                        created: false,
                    },
                ))
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(storage_dir)?;
        let secret = hex::encode(rand::random::<[u8; 32]>());
        // Written aside and renamed, so a reader never sees a half-written file.
        let tmp = storage_dir.join("ingest.secret.tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(secret.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        Ok((
            IngestSecret::new(secret.as_bytes()),
            SecretSource::File {
                path,
                created: true,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn compares_exactly() {
        let s = IngestSecret::new(b"hunter2");
        assert!(s.matches(b"hunter2"));
        assert!(!s.matches(b"hunter"));
        assert!(!s.matches(b"hunter22"));
        assert!(!s.matches(b""));
    }

    #[test]
    fn generated_once_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let (_, src) = IngestSecret::resolve("HEXWATCH_SECRET", None, dir.path()).unwrap();
        let SecretSource::File { path, created } = src else {
            panic!()
        };
        assert!(created);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        let (again, src) = IngestSecret::resolve("HEXWATCH_SECRET", None, dir.path()).unwrap();
        assert_eq!(
            src,
            SecretSource::File {
                path,
                created: false
            }
        );
        assert!(again.matches(text.trim().as_bytes()));
        let (env, src) = IngestSecret::resolve("HEXWATCH_SECRET", Some("abc"), dir.path()).unwrap();
        assert_eq!(src, SecretSource::Env("HEXWATCH_SECRET".into()));
        assert!(env.matches(b"abc"));
    }
}
