//! HTTP destinations (webhook, slack, teams, pagerduty, opsgenie): one POST per
//! alert, whose body the destination's format decides ([`formats`], templates),
//! and one classification of the answer, the same for every type:
//!
//! - 2xx: delivered;
//! - connection errors, timeouts, 408, 425, 429 and 5xx: transient (retried with
//!   backoff; 429 and 503 honour `Retry-After`, in seconds or as an HTTP date);
//! - any other 4xx: rejected for good — retrying the same request cannot help;
//! - 3xx: rejected for good, naming the `Location`. Redirects are never
//!   followed: following one would send the alert, with the destination's
//!   secret headers, to an address nobody configured.
//!
//! Of an answer's body only the first [`ERROR_BODY_BYTES`] are read.
//!
//! Webhooks carry `Idempotency-Key: <alertId>` and, with a signing secret,
//! `X-Hexwatch-Signature: sha256=<hex HMAC-SHA256 of the body>`.

use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::alerts::Alert;
use crate::config::{HttpFormat, WebhookConfig};
use crate::dispatch::{formats, template, DestinationError, Outcome};
use crate::incidents::message::IncidentMessage;

/// Bytes of an error answer kept in `last_error`.
pub const ERROR_BODY_BYTES: usize = 500;

pub struct Http {
    client: reqwest::Client,
    config: WebhookConfig,
}

/// `sha256=<hex>` of the body under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The first `max` bytes of `s`, cut at a character boundary.
fn head(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `Retry-After`: delay-seconds, or an HTTP date.
pub fn retry_after(value: &str) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let ms = at.timestamp_millis() - chrono::Utc::now().timestamp_millis();
    Some(Duration::from_millis(ms.max(0) as u64))
}

/// What an HTTP answer means for the delivery.
pub fn classify(status: u16, retry_after_header: Option<&str>, body: &str) -> Outcome {
    let error = || format!("HTTP {status}: {}", head(body, ERROR_BODY_BYTES));
    match status {
        300..=399 => Outcome::Rejected {
            error: format!(
                "HTTP {status}: redirected to {}; hexwatch does not follow redirects: set the destination's url to the address that answers",
                head(body, ERROR_BODY_BYTES)
            ),
        },
        200..=299 => Outcome::Delivered {
            detail: format!("HTTP {status}"),
        },
        408 | 425 | 429 | 500..=599 => Outcome::Transient {
            error: error(),
            retry_after: match status {
                429 | 503 => retry_after_header.and_then(retry_after),
                _ => None,
            },
        },
        _ => Outcome::Rejected { error: error() },
    }
}

impl Http {
    /// `ca_pem`: extra CA certificates to trust (PEM bundle).
    pub fn new(
        config: WebhookConfig,
        timeout: Duration,
        ca_pem: Option<&[u8]>,
    ) -> Result<Http, DestinationError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("hexwatch/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = ca_pem {
            for cert in reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| DestinationError::setting("tls_ca_file", e))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder
            .build()
            .map_err(|e| DestinationError::setting("url", e))?;
        Ok(Http { client, config })
    }

    /// The request body and its content type for one alert.
    fn body(&self, alert_json: &str) -> Result<(String, String), DestinationError> {
        let alert = || serde_json::from_str::<Alert>(alert_json);
        let json = |v: serde_json::Value| Ok((v.to_string(), "application/json".to_string()));
        match &self.config.format {
            HttpFormat::Hexwatch => Ok((alert_json.to_string(), "application/json".into())),
            HttpFormat::Template { body, content_type } => {
                let text = template::render(body, &alert()?, template::is_json(content_type))
                    .map_err(|e| DestinationError::setting("body_template", e))?;
                Ok((text, content_type.clone()))
            }
            HttpFormat::Slack => json(formats::slack(&alert()?)),
            HttpFormat::Teams => json(formats::teams(&alert()?)),
            HttpFormat::PagerDuty { routing_key } => {
                json(formats::pagerduty(&alert()?, routing_key))
            }
            HttpFormat::Opsgenie => json(formats::opsgenie(&alert()?)),
        }
    }

    /// Sends one alert (its stored JSON).
    pub async fn send(&self, alert_id: &str, alert_json: &str) -> Outcome {
        match self.body(alert_json) {
            Ok((body, content_type)) => {
                self.post(&self.config.url, alert_id, body, content_type)
                    .await
            }
            // The same alert would fail the same way on every attempt.
            Err(error) => self.rejected(error),
        }
    }

    /// Sends one incident notification (`message_id`: its Idempotency-Key).
    pub async fn send_incident(&self, message_id: &str, message: &IncidentMessage) -> Outcome {
        let json = |v: serde_json::Value| (v.to_string(), "application/json".to_string());
        let url = self.config.url.clone();
        let (url, body) = match &self.config.format {
            HttpFormat::Hexwatch => match serde_json::to_string(message) {
                Ok(body) => (url, (body, "application/json".into())),
                Err(e) => return self.rejected(e.into()),
            },
            HttpFormat::PagerDuty { routing_key } => (
                url,
                json(formats::pagerduty_incident(
                    message,
                    message_id,
                    routing_key,
                )),
            ),
            HttpFormat::Opsgenie => {
                let (url, body) = formats::opsgenie_incident(message, message_id, &url);
                (url, json(body))
            }
            HttpFormat::Template { .. } | HttpFormat::Slack | HttpFormat::Teams => {
                let alert = message.as_alert(message_id);
                match serde_json::to_string(&alert)
                    .map_err(DestinationError::from)
                    .and_then(|a| self.body(&a))
                {
                    Ok(b) => (url, b),
                    Err(e) => return self.rejected(e),
                }
            }
        };
        self.post(&url, message_id, body.0, body.1).await
    }

    fn rejected(&self, error: DestinationError) -> Outcome {
        Outcome::Rejected {
            error: crate::config::scrub(&error.to_string(), &self.config.secrets),
        }
    }

    /// One POST and what its answer means.
    async fn post(
        &self,
        url: &str,
        idempotency_key: &str,
        body: String,
        content_type: String,
    ) -> Outcome {
        let scrub = |text: String| crate::config::scrub(&text, &self.config.secrets);
        let mut req = self
            .client
            .post(url)
            .header("Content-Type", content_type)
            .header("Idempotency-Key", idempotency_key);
        for (k, v) in &self.config.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        if let Some(secret) = &self.config.signing_secret {
            req = req.header("X-Hexwatch-Signature", signature(secret, body.as_bytes()));
        }
        let resp = match req.body(body).send().await {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Transient {
                    error: scrub(describe(e)),
                    retry_after: None,
                }
            }
        };
        let status = resp.status().as_u16();
        let retry = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = match status {
            200..=299 => String::new(),
            300..=399 => resp
                .headers()
                .get("location")
                .map(|l| String::from_utf8_lossy(l.as_bytes()).into_owned())
                .unwrap_or_else(|| "(no Location)".into()),
            _ => body_head(resp).await,
        };
        match classify(status, retry.as_deref(), &text) {
            Outcome::Transient { error, retry_after } => Outcome::Transient {
                error: scrub(error),
                retry_after,
            },
            Outcome::Rejected { error } => Outcome::Rejected {
                error: scrub(error),
            },
            delivered => delivered,
        }
    }
}

/// The first [`ERROR_BODY_BYTES`] (or a little more) of an answer's body, as
/// text; the rest is never read.
async fn body_head(mut resp: reqwest::Response) -> String {
    let mut head = Vec::new();
    while head.len() < ERROR_BODY_BYTES {
        match resp.chunk().await {
            Ok(Some(chunk)) => head.extend_from_slice(&chunk),
            _ => break,
        }
    }
    head.truncate(ERROR_BODY_BYTES + 4);
    String::from_utf8_lossy(&head).into_owned()
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

    #[test]
    fn answers_are_classified() {
        assert!(matches!(classify(202, None, ""), Outcome::Delivered { .. }));
        for s in [408, 425, 500, 502] {
            assert!(
                matches!(
                    classify(s, Some("5"), ""),
                    Outcome::Transient {
                        retry_after: None,
                        ..
                    }
                ),
                "{s}"
            );
        }
        let Outcome::Transient { retry_after, .. } = classify(429, Some("7"), "") else {
            panic!()
        };
        assert_eq!(retry_after, Some(Duration::from_secs(7)));
        let date = (chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc2822();
        let Outcome::Transient { retry_after, .. } = classify(503, Some(&date), "") else {
            panic!()
        };
        assert!(retry_after.unwrap() > Duration::from_secs(25));
        let long = "é".repeat(400);
        let Outcome::Rejected { error } = classify(400, None, &long) else {
            panic!()
        };
        assert!(error.starts_with("HTTP 400: é") && error.len() <= "HTTP 400: ".len() + 500);
        assert!(matches!(
            classify(404, None, "no_text"),
            Outcome::Rejected { .. }
        ));
        let Outcome::Rejected { error } = classify(307, None, "https://elsewhere/") else {
            panic!()
        };
        assert!(
            error.contains("redirected to https://elsewhere/"),
            "{error}"
        );
    }
}
