//! The server's certificate, from one of two sources:
//! - PEM files (`server.tls_cert`, `server.tls_key`), watched: when a renewal
//!   (certbot, an operator) replaces them, the new certificate serves every new
//!   handshake; open connections keep theirs. A pair that does not load — half
//!   written, or a new certificate next to the old key — is reported and the
//!   current one kept.
//! - ACME (`[server.acme]`): obtained and renewed by rustls-acme with the
//!   TLS-ALPN-01 challenge on the listening port itself, cached on disk, and
//!   swapped in the same way.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use futures_util::StreamExt;
use rustls_acme::acme::ACME_TLS_ALPN_NAME;
use rustls_acme::caches::DirCache;
use rustls_acme::AcmeConfig;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why a certificate could not be served; `setting` names the config key.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{setting}: cannot read {}: {source}", path.display())]
    Read {
        setting: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{setting}: {}: {reason}", path.display())]
    Pem {
        setting: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("server.tls_cert/tls_key: {} and {} do not make a pair: {reason}", cert.display(), key.display())]
    NotAPair {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("server.acme.cache_dir {}: {source}", path.display())]
    CacheDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Client(#[from] hexwatch_storage::tls::TlsClientError),
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Reads a certificate chain and its private key; the key must belong to the
/// first certificate.
pub fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let read = |setting, path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            setting,
            path: path.to_path_buf(),
            source,
        })
    };
    let pem = |setting, path: &Path, reason: String| TlsError::Pem {
        setting,
        path: path.to_path_buf(),
        reason,
    };
    let cert_pem = read("server.tls_cert", cert)?;
    let key_pem = read("server.tls_key", key)?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem("server.tls_cert", cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(pem(
            "server.tls_cert",
            cert,
            "holds no PEM certificate".into(),
        ));
    }
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => pem("server.tls_key", key, "holds no PEM private key".into()),
        e => pem("server.tls_key", key, e.to_string()),
    })?;
    CertifiedKey::from_der(certs, key_der, &provider()).map_err(|e| TlsError::NotAPair {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        reason: e.to_string(),
    })
}

/// The certificate every handshake gets; swapped whole when it is renewed.
#[derive(Debug)]
pub struct CurrentCert(ArcSwap<CertifiedKey>);

impl CurrentCert {
    pub fn new(key: CertifiedKey) -> Arc<CurrentCert> {
        Arc::new(CurrentCert(ArcSwap::from_pointee(key)))
    }

    pub fn replace(&self, key: CertifiedKey) {
        self.0.store(Arc::new(key));
    }
}

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// A TLS acceptor (HTTP/2 and HTTP/1.1 by ALPN) that serves `current`.
pub fn acceptor(current: Arc<CurrentCert>) -> Result<TlsAcceptor, TlsError> {
    server_config(current, false)
}

fn server_config(
    resolver: Arc<dyn ResolvesServerCert>,
    acme: bool,
) -> Result<TlsAcceptor, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if acme {
        config.alpn_protocols.push(ACME_TLS_ALPN_NAME.to_vec());
    }
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Whether a connection was a TLS-ALPN-01 validation: its handshake was the
/// whole point, no HTTP follows.
pub fn is_acme_challenge(alpn: Option<&[u8]>) -> bool {
    alpn == Some(ACME_TLS_ALPN_NAME)
}

/// Starts obtaining and renewing certificates for `[server.acme]` (until
/// `stop`), and returns the acceptor that serves them. Until the first
/// certificate is there (or loaded from the cache), handshakes fail; the
/// validation handshakes of the CA are answered all along.
pub fn acme(
    settings: &crate::config::Acme,
    stop: CancellationToken,
) -> Result<TlsAcceptor, TlsError> {
    private_dir(&settings.cache_dir).map_err(|source| TlsError::CacheDir {
        path: settings.cache_dir.clone(),
        source,
    })?;
    let client = hexwatch_storage::tls::client_config(
        settings.directory_ca_file.as_deref(),
        "server.acme.directory_ca_file",
    )?;
    let mut state = AcmeConfig::new_with_client_config(&settings.domains, Arc::new(client))
        .contact_push(format!("mailto:{}", settings.contact))
        .directory(&settings.directory_url)
        .cache(DirCache::new(settings.cache_dir.clone()))
        .state();
    let acceptor = server_config(state.resolver(), true)?;
    let domains = settings.domains.join(", ");
    let directory = settings.directory_url.clone();
    tracing::info!(%domains, %directory, "ACME: certificates come from the directory (TLS-ALPN-01 on the listening port)");
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                _ = stop.cancelled() => return,
                e = state.next() => e,
            };
            match event {
                Some(Ok(ok)) => tracing::info!(%domains, event = ?ok, "ACME"),
                Some(Err(e)) => {
                    tracing::warn!(%domains, error = %e, "ACME: no certificate this time; retrying")
                }
                None => return,
            }
        }
    });
    Ok(acceptor)
}

/// An acceptor for fixed PEM files (tests, `hexwatch check`).
pub fn acceptor_from_files(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    acceptor(CurrentCert::new(load(cert, key)?))
}

/// Creates `dir` 0700, or narrows it to 0700: it holds the ACME account key
/// and the certificates' private keys.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// When the files were last changed (either of them).
fn changed_at(cert: &Path, key: &Path) -> Option<(SystemTime, SystemTime)> {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some((modified(cert)?, modified(key)?))
}

/// Watches the certificate files every `interval` until `stop`, and swaps in
/// a renewed pair. Looking at the files' times (following symlinks, as
/// certbot's `live/` links are) works on every filesystem and container mount.
pub async fn watch(
    current: Arc<CurrentCert>,
    cert: PathBuf,
    key: PathBuf,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut seen = changed_at(&cert, &key);
    let mut reported = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let now = changed_at(&cert, &key);
        if now == seen {
            continue;
        }
        match load(&cert, &key) {
            Ok(k) => {
                current.replace(k);
                seen = now;
                reported = None;
                tracing::info!(cert = %cert.display(), "TLS certificate renewed on disk: now serving the new one");
            }
            Err(e) => {
                // Likely a renewal half written: try again next time, say it once.
                let said = e.to_string();
                if reported.as_ref() != Some(&said) {
                    tracing::warn!(error = %e, "TLS certificate files changed but do not load; still serving the previous certificate");
                    reported = Some(said);
                }
            }
        }
    }
}
