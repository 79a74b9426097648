//! The ingest secret: read from the environment, or generated once and kept in
//! the storage directory so a first start needs no setup and is still
//! authenticated. Requests are checked in constant time. During a rotation a
//! previous secret is accepted too (`<env var>_PREVIOUS`, or the secret file's
//! second line; the file is read again when it changes or on SIGHUP).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

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
}

/// Which accepted secret a request presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presented {
    Current,
    /// The previous one: a sender that still has to be moved to the current.
    Previous,
}

/// The secrets ingest accepts: the current one and, during a rotation, the
/// previous one, so that changing the secret in Hex opens no 401 window.
pub struct IngestSecrets {
    current: IngestSecret,
    previous: Option<IngestSecret>,
}

impl IngestSecrets {
    pub fn new(current: &[u8], previous: Option<&[u8]>) -> IngestSecrets {
        IngestSecrets {
            current: IngestSecret::new(current),
            previous: previous.map(IngestSecret::new),
        }
    }

    /// Which secret a presented header value is, if either (both are always
    /// compared, in constant time).
    pub fn check(&self, presented: &[u8]) -> Option<Presented> {
        let current = self.current.matches(presented);
        let previous = self.previous.as_ref().is_some_and(|p| p.matches(presented));
        match (current, previous) {
            (true, _) => Some(Presented::Current),
            (false, true) => Some(Presented::Previous),
            (false, false) => None,
        }
    }

    pub fn has_previous(&self) -> bool {
        self.previous.is_some()
    }

    /// The secrets in a secret file: the current one on its first line, the
    /// previous one, during a rotation, on its second; `None` when empty.
    pub fn read_file(path: &Path) -> std::io::Result<Option<IngestSecrets>> {
        let text = std::fs::read_to_string(path)?;
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        Ok(lines
            .next()
            .map(|current| IngestSecrets::new(current.as_bytes(), lines.next().map(str::as_bytes))))
    }

    /// The secrets from `env_var` (and `<env_var>_PREVIOUS`), else from
    /// `<storage dir>/ingest.secret`, generating it (mode 0600) when the file
    /// does not exist yet.
    pub fn resolve(
        env_var: &str,
        env_value: Option<&str>,
        previous_value: Option<&str>,
        storage_dir: &Path,
    ) -> std::io::Result<(IngestSecrets, SecretSource)> {
        if let Some(v) = env_value.filter(|v| !v.is_empty()) {
            let previous = previous_value.filter(|v| !v.is_empty()).map(str::as_bytes);
            return Ok((
                IngestSecrets::new(v.as_bytes(), previous),
                SecretSource::Env(env_var.to_string()),
            ));
        }
        let path = storage_dir.join("ingest.secret");
        match IngestSecrets::read_file(&path) {
            Ok(Some(secrets)) => {
                let source = SecretSource::File {
                    path,
                    created: false,
                };
                return Ok((secrets, source));
            }
            Ok(None) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let secret = generate(storage_dir, &path)?;
        Ok((
            IngestSecrets::new(secret.as_bytes(), None),
            SecretSource::File {
                path,
                created: true,
            },
        ))
    }
}

/// Writes a new random secret to `path` (0600, in a 0700 directory).
fn generate(storage_dir: &Path, path: &Path) -> std::io::Result<String> {
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
    std::fs::rename(&tmp, path)?;
    Ok(secret)
}

/// Reads the secret file again when it changes (checked every 2 s) or on
/// SIGHUP, so a rotation needs no restart. Secrets from the environment
/// cannot change under a running process: SIGHUP says so.
pub async fn reload(
    secrets: Arc<ArcSwap<IngestSecrets>>,
    source: SecretSource,
    stages: CancellationToken,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangup) = signal(SignalKind::hangup()) else {
        return;
    };
    let file = match source {
        SecretSource::File { path, .. } => Some(path),
        SecretSource::Env(_) => None,
    };
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut seen = file.as_deref().and_then(modified);
    loop {
        let signalled = tokio::select! {
            _ = stages.cancelled() => return,
            _ = hangup.recv() => true,
            _ = tokio::time::sleep(Duration::from_secs(2)) => false,
        };
        let Some(path) = &file else {
            if signalled {
                tracing::info!(
                    "SIGHUP: the ingest secret comes from the environment; restart to change it"
                );
            }
            continue;
        };
        let now = modified(path);
        if !signalled && now == seen {
            continue;
        }
        seen = now;
        match IngestSecrets::read_file(path) {
            Ok(Some(read)) => {
                tracing::info!(
                    file = %path.display(),
                    previous = read.has_previous(),
                    "ingest secret reloaded"
                );
                secrets.store(Arc::new(read));
            }
            Ok(None) => {
                tracing::warn!(file = %path.display(), "the ingest secret file is empty; the secrets in use stay")
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot read the ingest secret file; the secrets in use stay")
            }
        }
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
        let (_, src) = IngestSecrets::resolve("HEXWATCH_SECRET", None, None, dir.path()).unwrap();
        let SecretSource::File { path, created } = src else {
            panic!()
        };
        assert!(created);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        let (again, src) =
            IngestSecrets::resolve("HEXWATCH_SECRET", None, None, dir.path()).unwrap();
        assert_eq!(
            src,
            SecretSource::File {
                path,
                created: false
            }
        );
        assert_eq!(
            again.check(text.trim().as_bytes()),
            Some(Presented::Current)
        );
        let (env, src) =
            IngestSecrets::resolve("HEXWATCH_SECRET", Some("abc"), Some("old"), dir.path())
                .unwrap();
        assert_eq!(src, SecretSource::Env("HEXWATCH_SECRET".into()));
        assert_eq!(env.check(b"abc"), Some(Presented::Current));
        assert_eq!(env.check(b"old"), Some(Presented::Previous));
        assert_eq!(env.check(b"ab"), None);
    }
}
