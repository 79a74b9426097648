//! The TLS client the PostgreSQL connections use (and, from the crates above,
//! every outgoing HTTPS connection): the public web roots, plus a private CA.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// Why a TLS client could not be set up; `setting` names the config key.
#[derive(Debug, thiserror::Error)]
pub enum TlsClientError {
    #[error("{setting} {}: {source}", path.display())]
    Read {
        setting: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{setting} {}: {reason}", path.display())]
    Certificate {
        setting: String,
        path: PathBuf,
        reason: String,
    },
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A TLS client trusting the public roots, plus the PEM certificates in
/// `extra_ca` (a private CA); `setting` names the config key in errors.
pub fn client_config(
    extra_ca: Option<&Path>,
    setting: &str,
) -> Result<rustls::ClientConfig, TlsClientError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca {
        let bad = |reason: String| TlsClientError::Certificate {
            setting: setting.to_string(),
            path: path.to_path_buf(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|source| TlsClientError::Read {
            setting: setting.to_string(),
            path: path.to_path_buf(),
            source,
        })?;
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| bad(e.to_string()))?;
            roots.add(cert).map_err(|e| bad(e.to_string()))?;
            added += 1;
        }
        if added == 0 {
            return Err(bad("no PEM certificate in it".into()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
