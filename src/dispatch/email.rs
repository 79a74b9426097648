//! E-mail destination (lettre, tokio, rustls): subject `[SEVERITY] title`, a
//! plain-text and an HTML part (every field escaped) with the alert's fields and
//! sample events. The whole SMTP exchange is bounded by the destination timeout
//! (lettre's own timeout covers only the connection).

use std::fmt::Write as _;
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::alerts::Alert;
use crate::config::{EmailConfig, SmtpTls};
use crate::dispatch::{template, DestinationError, Outcome};

pub struct Email {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
    timeout: Duration,
    subject_template: Option<String>,
    body_template: Option<String>,
}

impl Email {
    /// `ca_pem`: extra CA certificates to trust (PEM), e.g. an internal relay's CA.
    pub fn new(
        config: &EmailConfig,
        timeout: Duration,
        ca_pem: Option<&[u8]>,
    ) -> Result<Email, DestinationError> {
        let params = || {
            let mut b = TlsParameters::builder(config.host.clone());
            if let Some(pem) = ca_pem {
                let cert = lettre::transport::smtp::client::Certificate::from_pem(pem)
                    .map_err(|e| DestinationError::setting("tls_ca_file", e))?;
                b = b.add_root_certificate(cert);
            }
            b.build().map_err(|e| {
                DestinationError::setting(
                    "smtp_url",
                    format!("TLS parameters for {}: {e}", config.host),
                )
            })
        };
        let tls = match config.tls {
            SmtpTls::None => Tls::None,
            SmtpTls::StartTls => Tls::Required(params()?),
            SmtpTls::Implicit => Tls::Wrapper(params()?),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host)
            .port(config.port)
            .tls(tls)
            .timeout(Some(timeout));
        if let Some((user, password)) = &config.credentials {
            builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
        }
        let from: Mailbox = config
            .from
            .parse()
            .map_err(|e| DestinationError::setting("from", format!("{:?}: {e}", config.from)))?;
        let to = config
            .to
            .iter()
            .map(|t| {
                t.parse::<Mailbox>()
                    .map_err(|e| DestinationError::setting("to", format!("{t:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Email {
            transport: builder.build(),
            from,
            to,
            timeout,
            subject_template: config.subject_template.clone(),
            body_template: config.body_template.clone(),
        })
    }

    /// The message for an alert: the configured templates, else the built-in
    /// subject `[SEVERITY] title` and plain-text and HTML parts.
    fn message(&self, alert: &Alert) -> Result<Message, DestinationError> {
        let subject = match &self.subject_template {
            Some(t) => template::render(t, alert, false)
                .map_err(|e| DestinationError::setting("subject_template", e))?,
            None => format!("[{}] {}", alert.severity, alert.title),
        };
        let mut message = Message::builder()
            .from(self.from.clone())
            .subject(subject.replace(['\r', '\n'], " "))
            .message_id(Some(message_id(alert)));
        // An incident's notifications thread under its first.
        if alert.kind == "INCIDENT" && alert.alert_context["event"] != "opened" {
            let first = format!("<{}@hexwatch>", alert.dedup);
            message = message.in_reply_to(first.clone()).references(first);
        }
        for to in &self.to {
            message = message.to(to.clone());
        }
        let built = match &self.body_template {
            Some(t) => {
                let body = template::render(t, alert, false)
                    .map_err(|e| DestinationError::setting("body_template", e))?;
                message.header(ContentType::TEXT_PLAIN).body(body)
            }
            None => message.multipart(MultiPart::alternative_plain_html(
                plain_text(alert),
                html(alert),
            )),
        };
        built.map_err(|e| DestinationError::setting("from", format!("building the message: {e}")))
    }

    pub async fn send(&self, alert: &Alert) -> Outcome {
        let message = match self.message(alert) {
            Ok(m) => m,
            Err(e) => {
                return Outcome::Rejected {
                    error: e.to_string(),
                }
            }
        };
        match tokio::time::timeout(self.timeout, self.transport.send(message)).await {
            Ok(Ok(r)) => Outcome::Delivered {
                detail: format!("SMTP {}", r.code()),
            },
            // 5xx: the server refuses this message for good (bad recipient, policy).
            Ok(Err(e)) if e.is_permanent() => Outcome::Rejected {
                error: format!("SMTP: {e}"),
            },
            Ok(Err(e)) => Outcome::Transient {
                error: format!("SMTP: {e}"),
                retry_after: None,
            },
            Err(_) => Outcome::Transient {
                error: format!("SMTP exchange timed out after {}s", self.timeout.as_secs()),
                retry_after: None,
            },
        }
    }
}

/// The alert's fields as (label, value) rows, shared by both parts.
/// A stable Message-ID: the same on every resend of one alert or
/// notification (mail systems drop the repeat); an incident's first
/// notification is the incident itself, which the others reply to.
fn message_id(a: &Alert) -> String {
    let id = if a.kind == "INCIDENT" && a.alert_context["event"] == "opened" {
        &a.dedup
    } else {
        &a.alert_id
    };
    let safe: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-._".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("<{safe}@hexwatch>")
}

fn fields(a: &Alert) -> Vec<(&'static str, String)> {
    let mut rows = vec![
        ("Rule", a.id.clone()),
        ("Severity", a.severity.to_string()),
        ("Type", a.kind.clone()),
        ("Events", a.event_count.to_string()),
        ("First event", a.first_event_at.clone()),
        ("Last event", a.last_event_at.clone()),
        ("Created", a.created_at.clone()),
        ("Alert id", a.alert_id.clone()),
        ("Dedup", a.dedup.clone()),
    ];
    for (label, value) in [
        ("Description", &a.description),
        ("Runbook", &a.runbook),
        ("Reference", &a.reference),
    ] {
        if !value.is_empty() {
            rows.push((label, value.clone()));
        }
    }
    if !a.tags.is_empty() {
        rows.push(("Tags", a.tags.join(", ")));
    }
    if !a.reports.is_empty() {
        rows.push((
            "Reports",
            serde_json::Value::Object(a.reports.clone()).to_string(),
        ));
    }
    rows
}

fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

pub fn plain_text(a: &Alert) -> String {
    let mut s = format!("{}\n\n", a.title);
    for (label, value) in fields(a) {
        let _ = writeln!(s, "{label}: {value}");
    }
    let _ = writeln!(s, "\nAlert context:\n{}", pretty(&a.alert_context));
    let _ = writeln!(
        s,
        "\nSample events ({} of {}):",
        a.events.len(),
        a.event_count
    );
    for e in &a.events {
        let _ = writeln!(s, "{}", pretty(&e.value()));
    }
    s
}

pub fn html(a: &Alert) -> String {
    let mut s = String::from("<!DOCTYPE html><html><body style=\"font-family:sans-serif\">");
    let _ = write!(s, "<h2>{}</h2><table>", escape(&a.title));
    for (label, value) in fields(a) {
        let _ = write!(
            s,
            "<tr><th align=\"left\">{}</th><td>{}</td></tr>",
            escape(label),
            escape(&value)
        );
    }
    let _ = write!(
        s,
        "</table><h3>Alert context</h3><pre>{}</pre><h3>Sample events ({} of {})</h3>",
        escape(&pretty(&a.alert_context)),
        a.events.len(),
        a.event_count
    );
    for e in &a.events {
        let _ = write!(s, "<pre>{}</pre>", escape(&pretty(&e.value())));
    }
    s.push_str("</body></html>");
    s
}

/// HTML-escapes text for element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            escape("<b a=\"1\">&'"),
            "&lt;b a=&quot;1&quot;&gt;&amp;&#39;"
        );
    }
}
