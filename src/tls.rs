//! The server's certificate: read from PEM files (`server.tls_cert`,
//! `server.tls_key`), then watched. When a renewal (certbot, an operator)
//! replaces the files, the new certificate serves every new handshake; open
//! connections keep theirs. A pair that does not load — half written, or a new
//! certificate next to the old key — is reported and the current one kept.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a certificate chain and its private key; the key must belong to the
/// first certificate.
pub fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let cert_pem = std::fs::read(cert)
        .map_err(|e| format!("server.tls_cert: cannot read {}: {e}", cert.display()))?;
    let key_pem = std::fs::read(key)
        .map_err(|e| format!("server.tls_key: cannot read {}: {e}", key.display()))?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("server.tls_cert: {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "server.tls_cert: {} holds no PEM certificate",
            cert.display()
        ));
    }
    let key_der = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| format!("server.tls_key: {}: {e}", key.display()))?
        .ok_or_else(|| format!("server.tls_key: {} holds no PEM private key", key.display()))?;
    CertifiedKey::from_der(certs, key_der, &provider()).map_err(|e| {
        format!(
            "server.tls_cert/tls_key: {} and {} do not make a pair: {e}",
            cert.display(),
            key.display()
        )
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
pub fn acceptor(current: Arc<CurrentCert>) -> Result<TlsAcceptor, String> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(current);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// An acceptor for fixed PEM files (tests, `hexwatch check`).
pub fn acceptor_from_files(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
    acceptor(CurrentCert::new(load(cert, key)?))
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
                if reported.as_ref() != Some(&e) {
                    tracing::warn!(error = %e, "TLS certificate files changed but do not load; still serving the previous certificate");
                    reported = Some(e);
                }
            }
        }
    }
}
