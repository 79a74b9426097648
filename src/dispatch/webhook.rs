//! Webhook destination: POST of the alert JSON with `Idempotency-Key: <alertId>`,
//! the configured headers, and (with a signing secret) `X-Hexwatch-Signature:
//! sha256=<hex HMAC-SHA256 of the body>`. Any 2xx is a delivery.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::WebhookConfig;

pub struct Webhook {
    client: reqwest::Client,
    config: WebhookConfig,
}

/// `sha256=<hex>` of the body under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

impl Webhook {
    /// `ca_pem`: extra CA certificates to trust (PEM bundle).
    pub fn new(
        config: WebhookConfig,
        timeout: Duration,
        ca_pem: Option<&[u8]>,
    ) -> Result<Webhook, String> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(timeout)
            .user_agent(concat!("hexwatch/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = ca_pem {
            for cert in reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| format!("tls_ca_file: {e}"))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder
            .build()
            .map_err(|e| format!("webhook client: {e}"))?;
        Ok(Webhook { client, config })
    }

    pub async fn send(&self, alert_id: &str, body: &str) -> Result<(), String> {
        let mut req = self
            .client
            .post(&self.config.url)
            .header("Content-Type", "application/json")
            .header("Idempotency-Key", alert_id);
        for (k, v) in &self.config.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        if let Some(secret) = &self.config.signing_secret {
            req = req.header("X-Hexwatch-Signature", signature(secret, body.as_bytes()));
        }
        let scrub = |text: String| crate::config::scrub(&text, &self.config.secrets);
        let resp = req
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| scrub(describe(e)))?;
        let status = resp.status();
        if status.is_success() {
            Ok(())
        } else {
            let text = resp.text().await.unwrap_or_default();
            let text: String = text.chars().take(200).collect();
            Err(scrub(format!("HTTP {status}: {text}")))
        }
    }
}

/// A reqwest error with its causes (the top level alone says little), without
/// the URL: it may carry a secret.
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut s = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    if e.is_timeout() {
        s.push_str(" (timed out)");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
