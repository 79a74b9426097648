//! Destinations: where alerts go (`[[destinations]]`), as configured and as
//! checked. Every secret a destination holds comes from the environment and is
//! kept in its `secrets`, so what it sends back can be scrubbed of it.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use hexwatch_model::Severity;

use super::env::{expand_env_into, shown_url, Env, EnvError};
use super::raw::RawDestination;
use super::SettingError;

#[derive(Debug, Clone)]
pub struct Destination {
    pub name: String,
    pub min_severity: Severity,
    pub timeout: Duration,
    pub concurrency: usize,
    /// Extra CA certificates (PEM) trusted for this destination, e.g. an internal CA.
    pub tls_ca_file: Option<PathBuf>,
    /// Deliveries started per minute at most (alerts over it wait in the outbox).
    pub max_per_minute: Option<u32>,
    /// What it is sent: one message per incident, or every alert on its own.
    pub notify: NotifyMode,
    pub kind: DestinationKind,
}

/// `notify` of a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyMode {
    /// One notification when an incident opens, then updates, reminders,
    /// acknowledgement and resolution (the default).
    Incident,
    /// Every alert on its own, as created (e.g. forwarding to a SIEM).
    Alert,
}

impl Destination {
    /// The configured `type`.
    pub fn type_name(&self) -> &'static str {
        match &self.kind {
            DestinationKind::Email(_) => "email",
            DestinationKind::Webhook(w) => match w.format {
                HttpFormat::Hexwatch | HttpFormat::Template { .. } => "webhook",
                HttpFormat::Slack => "slack",
                HttpFormat::Teams => "teams",
                HttpFormat::PagerDuty { .. } => "pagerduty",
                HttpFormat::Opsgenie => "opsgenie",
            },
        }
    }
}

pub const DESTINATION_TYPES: &str = "slack, teams, pagerduty, opsgenie, webhook or email";

#[derive(Debug, Clone)]
pub enum DestinationKind {
    /// Every HTTP destination (webhook, slack, teams, pagerduty, opsgenie): one
    /// POST per alert; the format decides the body.
    Webhook(WebhookConfig),
    Email(EmailConfig),
}

/// How an alert becomes the body of an HTTP destination's request.
#[derive(Clone, PartialEq)]
pub enum HttpFormat {
    /// The alert JSON, as delivered.
    Hexwatch,
    /// A minijinja template with the alert as `alert`.
    Template { body: String, content_type: String },
    /// Slack incoming webhook: Block Kit.
    Slack,
    /// Teams Workflows webhook: an Adaptive Card.
    Teams,
    /// PagerDuty Events API v2.
    PagerDuty { routing_key: String },
    /// Opsgenie / Jira Service Management alert API (key in the headers).
    Opsgenie,
}

impl fmt::Debug for HttpFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The routing key is a secret.
        f.write_str(match self {
            HttpFormat::Hexwatch => "Hexwatch",
            HttpFormat::Template { .. } => "Template",
            HttpFormat::Slack => "Slack",
            HttpFormat::Teams => "Teams",
            HttpFormat::PagerDuty { .. } => "PagerDuty",
            HttpFormat::Opsgenie => "Opsgenie",
        })
    }
}

#[derive(Clone)]
pub struct WebhookConfig {
    /// With `${VAR}` expanded: never log or store it (Slack, Teams and many
    /// webhook URLs are secrets); use `url_shown` and `scrub`.
    pub url: String,
    /// The URL as it may be logged or stored (see [`shown_url`]).
    pub url_shown: String,
    /// The values of every variable expanded into the URL or the headers.
    pub secrets: Vec<String>,
    /// Header values with `${VAR}` already expanded.
    pub headers: Vec<(String, String)>,
    pub signing_secret: Option<Vec<u8>>,
    pub connect_timeout: Duration,
    pub format: HttpFormat,
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header values and the signing secret come from the environment: never print them.
        f.debug_struct("WebhookConfig")
            .field("url", &self.url_shown)
            .field(
                "headers",
                &self.headers.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("signed", &self.signing_secret.is_some())
            .field("format", &self.format)
            .finish()
    }
}

/// How an SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// `smtp://`: plain, for a local relay; credentials are refused.
    None,
    /// `smtp://...?tls=required`: STARTTLS, and no sending without it.
    StartTls,
    /// `smtps://`: TLS from the first byte.
    Implicit,
}

#[derive(Clone)]
pub struct EmailConfig {
    pub smtp_url: String,
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub credentials: Option<(String, String)>,
    pub from: String,
    pub to: Vec<String>,
    /// minijinja templates for the subject and the plain-text body.
    pub subject_template: Option<String>,
    pub body_template: Option<String>,
}

impl fmt::Debug for EmailConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmailConfig")
            .field("smtp_url", &self.smtp_url)
            .field("auth", &self.credentials.is_some())
            .field("from", &self.from)
            .field("to", &self.to)
            .finish()
    }
}

/// Where a destination key is, for messages: `destinations[N].key`.
struct At(usize);

impl At {
    fn key(&self, key: &str) -> String {
        format!("destinations[{}].{key}", self.0)
    }

    fn invalid(&self, key: &str, reason: impl Into<String>) -> SettingError {
        SettingError::invalid(self.key(key), reason)
    }

    /// The value of a required `*_env` variable.
    fn env(&self, env: &dyn Env, key: &str, var: &str) -> Result<String, SettingError> {
        env.var(var)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| SettingError::MissingEnv {
                key: self.key(key),
                var: var.to_string(),
            })
    }

    fn needs<T>(&self, kind: &str, key: &str, v: Option<T>) -> Result<T, SettingError> {
        v.ok_or_else(|| self.invalid(key, format!("a {kind} destination needs {key}")))
    }

    /// `${VAR}` expanded in the value of `key`.
    fn expand(
        &self,
        key: &str,
        template: &str,
        env: &dyn Env,
        secrets: &mut Vec<String>,
    ) -> Result<String, SettingError> {
        expand_env_into(template, env, secrets).map_err(|e| match e {
            EnvError::Unset(var) => SettingError::MissingEnv {
                key: self.key(key),
                var,
            },
            EnvError::Unterminated(_) => self.invalid(key, e.to_string()),
        })
    }
}

/// Refuses keys that belong to another destination type (a typo'd type must
/// not silently drop, say, the routing key).
fn check_destination_keys(at: &At, d: &RawDestination) -> Result<(), SettingError> {
    let set: [(&str, bool); 15] = [
        ("url", d.url.is_some()),
        ("headers", !d.headers.is_empty()),
        ("signing_secret_env", d.signing_secret_env.is_some()),
        (
            "connect_timeout_seconds",
            d.connect_timeout_seconds.is_some(),
        ),
        ("body_template", d.body_template.is_some()),
        ("content_type", d.content_type.is_some()),
        ("url_env", d.url_env.is_some()),
        ("routing_key_env", d.routing_key_env.is_some()),
        ("api_key_env", d.api_key_env.is_some()),
        ("smtp_url", d.smtp_url.is_some()),
        ("smtp_user_env", d.smtp_user_env.is_some()),
        ("smtp_password_env", d.smtp_password_env.is_some()),
        ("from", d.from.is_some()),
        ("to", !d.to.is_empty()),
        ("subject_template", d.subject_template.is_some()),
    ];
    const HTTP: &[&str] = &["headers", "connect_timeout_seconds"];
    let allowed: Vec<&str> = match d.kind.as_str() {
        "webhook" => [
            HTTP,
            &["url", "signing_secret_env", "body_template", "content_type"],
        ]
        .concat(),
        "slack" | "teams" => [HTTP, &["url_env"]].concat(),
        "pagerduty" => [HTTP, &["url", "routing_key_env"]].concat(),
        "opsgenie" => [HTTP, &["url", "api_key_env"]].concat(),
        "email" => vec![
            "smtp_url",
            "smtp_user_env",
            "smtp_password_env",
            "from",
            "to",
            "subject_template",
            "body_template",
        ],
        "" => return Err(at.invalid("type", format!("set type = one of {DESTINATION_TYPES}"))),
        other => {
            return Err(at.invalid(
                "type",
                format!("{other:?} is not a destination type; use {DESTINATION_TYPES}"),
            ))
        }
    };
    match set.iter().find(|(k, on)| *on && !allowed.contains(k)) {
        Some((key, _)) => Err(at.invalid(key, format!("not a key of a {} destination", d.kind))),
        None => Ok(()),
    }
}

pub(super) fn build_destination(
    n: usize,
    d: RawDestination,
    env: &dyn Env,
) -> Result<Destination, SettingError> {
    let at = At(n);
    if d.name.is_empty() {
        return Err(at.invalid("name", "every destination needs a name"));
    }
    let min_severity = match &d.min_severity {
        None => Severity::Info,
        Some(s) => Severity::parse(s).ok_or_else(|| {
            at.invalid(
                "min_severity",
                format!("{s:?} is not a severity; use INFO, LOW, MEDIUM, HIGH or CRITICAL"),
            )
        })?,
    };
    check_destination_keys(&at, &d)?;
    // Slack webhooks take about one message a second; PagerDuty's Events API
    // 120 events a minute per routing key.
    let max_per_minute = match (d.max_per_minute, d.kind.as_str()) {
        (Some(0), _) => return Err(at.invalid("max_per_minute", "must be at least 1")),
        (Some(n), _) => Some(n),
        (None, "slack" | "teams") => Some(60),
        (None, "pagerduty") => Some(120),
        (None, "opsgenie") => Some(600),
        (None, _) => None,
    };
    let notify = match d.notify.as_deref() {
        None | Some("incident") => NotifyMode::Incident,
        Some("alert") => NotifyMode::Alert,
        Some(other) => {
            return Err(at.invalid(
                "notify",
                format!("{other:?}: use \"incident\" or \"alert\""),
            ))
        }
    };
    let (name, timeout, concurrency, tls_ca_file) = (
        d.name.clone(),
        Duration::from_secs(d.timeout_seconds.unwrap_or(10).max(1)),
        d.concurrency.unwrap_or(4).max(1),
        d.tls_ca_file.clone(),
    );
    let kind = if d.kind == "email" {
        email_destination(&at, d, env)?
    } else {
        http_destination(&at, d, env)?
    };
    Ok(Destination {
        name,
        min_severity,
        timeout,
        concurrency,
        tls_ca_file,
        max_per_minute,
        notify,
        kind,
    })
}

/// The secret parts of a destination URL, to scrub from every stored or
/// logged text: its password and query (and the query's long values), and with
/// `whole_path` (a URL that is itself the secret, such as a Slack webhook)
/// its path too. Longest first, so a part never leaves a piece of a longer one.
fn url_parts(url: &str, whole_path: bool) -> Vec<String> {
    let Ok(parsed) = url::Url::parse(url) else {
        return Vec::new();
    };
    let mut parts = Vec::new();
    if let Some(password) = parsed.password() {
        parts.push(password.to_string());
    }
    if let Some(query) = parsed.query() {
        parts.push(query.to_string());
        // Values long enough to be keys (a short one, `json`, would blank
        // ordinary words in every error).
        parts.extend(
            parsed
                .query_pairs()
                .map(|(_, v)| v.into_owned())
                .filter(|v| v.len() >= 8),
        );
    }
    if whole_path && parsed.path().len() > 1 {
        parts.push(parsed.path().to_string());
    }
    parts
}

/// `headers`: names checked, values expanded from the environment.
fn http_headers(
    at: &At,
    raw: &std::collections::BTreeMap<String, String>,
    env: &dyn Env,
    secrets: &mut Vec<String>,
) -> Result<Vec<(String, String)>, SettingError> {
    let mut headers = Vec::with_capacity(raw.len() + 1);
    for (k, v) in raw {
        let hk = format!("headers.{k}");
        if warp::http::HeaderName::from_bytes(k.as_bytes()).is_err() {
            return Err(at.invalid(&hk, "not a valid HTTP header name"));
        }
        let v = at.expand(&hk, v, env, secrets)?;
        headers.push((k.clone(), v));
    }
    Ok(headers)
}

/// A destination URL expanded from the environment, and as logs show it.
fn http_url(
    at: &At,
    template: &str,
    env: &dyn Env,
    secrets: &mut Vec<String>,
) -> Result<(String, String), SettingError> {
    let shown = shown_url(template);
    let url = at.expand("url", template, env, secrets)?;
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(at.invalid(
            "url",
            format!("{shown:?} must start with http:// or https://"),
        ));
    }
    Ok((url, shown))
}

/// A webhook's body: the alert as hexwatch writes it, or a template.
fn webhook_format(
    at: &At,
    body_template: Option<String>,
    content_type: Option<String>,
) -> Result<HttpFormat, SettingError> {
    Ok(match body_template {
        Some(body) => HttpFormat::Template {
            body,
            content_type: content_type.unwrap_or_else(|| "application/json".into()),
        },
        None if content_type.is_some() => {
            return Err(at.invalid("content_type", "only with a body_template"))
        }
        None => HttpFormat::Hexwatch,
    })
}

/// webhook, slack, teams, pagerduty, opsgenie: one POST per alert.
fn http_destination(
    at: &At,
    d: RawDestination,
    env: &dyn Env,
) -> Result<DestinationKind, SettingError> {
    let kind = d.kind.as_str();
    let mut secrets = Vec::new();
    let mut headers = http_headers(at, &d.headers, env, &mut secrets)?;
    let http_url = |template: &str, secrets: &mut Vec<String>| http_url(at, template, env, secrets);
    let (url, url_shown, format, signing_secret) = match kind {
        "webhook" => {
            let (url, shown) = http_url(&at.needs(kind, "url", d.url)?, &mut secrets)?;
            let format = webhook_format(at, d.body_template, d.content_type)?;
            let signing = match &d.signing_secret_env {
                Some(var) => Some(at.env(env, "signing_secret_env", var)?.into_bytes()),
                None => None,
            };
            (url, shown, format, signing)
        }
        "slack" | "teams" => {
            let var = at.needs(kind, "url_env", d.url_env)?;
            let url = at.env(env, "url_env", &var)?;
            secrets.push(url.clone());
            // The whole URL is the secret: a service that echoes the path
            // (an error page) must not put it in `last_error` or the log.
            secrets.extend(url_parts(&url, true));
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(at.invalid(
                    "url_env",
                    format!("the URL in {var} must start with https://"),
                ));
            }
            let format = if kind == "slack" {
                HttpFormat::Slack
            } else {
                HttpFormat::Teams
            };
            (url, format!("${{{var}}}"), format, None)
        }
        "pagerduty" => {
            let var = at.needs(kind, "routing_key_env", d.routing_key_env)?;
            let routing_key = at.env(env, "routing_key_env", &var)?;
            secrets.push(routing_key.clone());
            let template = d
                .url
                .unwrap_or_else(|| "https://events.pagerduty.com/v2/enqueue".into());
            let (url, shown) = http_url(&template, &mut secrets)?;
            (url, shown, HttpFormat::PagerDuty { routing_key }, None)
        }
        _ => {
            let var = at.needs(kind, "api_key_env", d.api_key_env)?;
            let key = at.env(env, "api_key_env", &var)?;
            secrets.push(key.clone());
            headers.push(("Authorization".into(), format!("GenieKey {key}")));
            let base = d.url.unwrap_or_else(|| "https://api.opsgenie.com".into());
            let (url, shown) = http_url(
                &format!("{}/v2/alerts", base.trim_end_matches('/')),
                &mut secrets,
            )?;
            (url, shown, HttpFormat::Opsgenie, None)
        }
    };
    secrets.extend(url_parts(&url, false));
    secrets.retain(|s| !s.is_empty());
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    secrets.dedup();
    Ok(DestinationKind::Webhook(WebhookConfig {
        url,
        url_shown,
        secrets,
        headers,
        signing_secret,
        connect_timeout: Duration::from_secs(d.connect_timeout_seconds.unwrap_or(5)),
        format,
    }))
}

fn email_destination(
    at: &At,
    d: RawDestination,
    env: &dyn Env,
) -> Result<DestinationKind, SettingError> {
    let smtp_url = at.needs("email", "smtp_url", d.smtp_url)?;
    let (host, port, tls) = parse_smtp_url(&smtp_url)
        .map_err(|reason| at.invalid("smtp_url", format!("{smtp_url:?}: {reason}")))?;
    let credentials = match (&d.smtp_user_env, &d.smtp_password_env) {
        (None, None) => None,
        (Some(u), Some(p)) => Some((
            at.env(env, "smtp_user_env", u)?,
            at.env(env, "smtp_password_env", p)?,
        )),
        _ => {
            return Err(at.invalid(
                "smtp_user_env",
                "smtp_user_env and smtp_password_env go together",
            ))
        }
    };
    if credentials.is_some() && tls == SmtpTls::None {
        return Err(at.invalid(
            "smtp_url",
            "credentials are only sent over TLS: use smtps://, or smtp://...?tls=required",
        ));
    }
    let from = at.needs("email", "from", d.from)?;
    if d.to.is_empty() {
        return Err(at.invalid("to", "an email destination needs at least one recipient"));
    }
    Ok(DestinationKind::Email(EmailConfig {
        smtp_url,
        host,
        port,
        tls,
        credentials,
        from,
        to: d.to,
        subject_template: d.subject_template,
        body_template: d.body_template,
    }))
}

/// `smtp://host[:port][?tls=required]` or `smtps://host[:port]`.
/// What is wrong is said in words: the caller names the setting.
pub(super) fn parse_smtp_url(s: &str) -> Result<(String, u16, SmtpTls), &'static str> {
    let url = url::Url::parse(s).map_err(|_| "not a URL")?;
    let host = url
        .host_str()
        .ok_or("needs a host")?
        .trim_matches(['[', ']'])
        .to_string();
    let mut tls = match url.scheme() {
        "smtp" => SmtpTls::None,
        "smtps" => SmtpTls::Implicit,
        _ => return Err("the scheme is not smtp:// or smtps://"),
    };
    for (k, v) in url.query_pairs() {
        match (k.as_ref(), v.as_ref(), tls) {
            ("tls", "required", SmtpTls::None) => tls = SmtpTls::StartTls,
            _ => return Err("an unknown option; the only one is tls=required on smtp://"),
        }
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("put credentials in smtp_user_env / smtp_password_env, not in the URL");
    }
    let port = url.port().unwrap_or(match tls {
        SmtpTls::Implicit => 465,
        SmtpTls::StartTls => 587,
        SmtpTls::None => 25,
    });
    Ok((host, port, tls))
}

#[cfg(test)]
mod tests {
    use super::url_parts;

    #[test]
    fn secret_parts_of_a_url_are_its_password_query_and_long_values() {
        let parts = url_parts(
            "https://bot:hunter2secret@siem.example/in?token=abcdef0123456789&x=1",
            false,
        );
        assert!(parts.contains(&"hunter2secret".to_string()), "{parts:?}");
        assert!(
            parts.contains(&"token=abcdef0123456789&x=1".to_string()),
            "{parts:?}"
        );
        assert!(parts.contains(&"abcdef0123456789".to_string()), "{parts:?}");
        assert!(!parts.contains(&"1".to_string()), "{parts:?}");
        assert!(!parts.contains(&"/in".to_string()), "{parts:?}");
        let whole = url_parts("https://hooks.slack.com/services/T0/B0/XYZ", true);
        assert_eq!(whole, vec!["/services/T0/B0/XYZ".to_string()]);
    }
}
