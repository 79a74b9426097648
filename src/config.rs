//! The config file (docs/configuration.md), in two stages: `RawConfig` records exactly what the
//! user wrote (serde, unknown keys rejected so a typo never silently disables a
//! destination), and `Config` is the validated result with paths resolved against
//! the config file's directory and secrets read from the environment.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use hexwatch_model::Severity;
use hexwatch_rules::ruleset::{CounterRegistry, Loader};
pub use hexwatch_storage::{PostgresUrl, StorageConfig};

/// An error in the config: what is wrong and where, phrased so the user can fix it.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    fn new(path: &Path, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.display().to_string(),
            message: message.into(),
        }
    }
}

// ---------------------------------------------------------------------------
// Raw: what the file says.

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawConfig {
    server: RawServer,
    ingest: RawIngest,
    rules: RawRules,
    storage: RawStorage,
    delivery: RawDelivery,
    destinations: Vec<RawDestination>,
    ui: RawUi,
    suppressions: Vec<toml::Spanned<hexwatch_rules::tuning::RawSuppression>>,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawServer {
    listen: String,
    max_body_bytes: u64,
    max_decoded_bytes: u64,
    max_connections: usize,
    max_records_per_request: usize,
    header_timeout_seconds: u64,
    body_timeout_seconds: u64,
    idle_timeout_seconds: u64,
    shutdown_grace_seconds: u64,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_reload_seconds: u64,
    acme: Option<RawAcme>,
}

/// `[ui]`: the console, off unless `admin_token_env` is set.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawUi {
    admin_token_env: Option<String>,
    listen: Option<String>,
}

/// `[server.acme]`: certificates from an ACME CA (Let's Encrypt by default).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAcme {
    domains: Vec<String>,
    contact: String,
    #[serde(default)]
    directory_url: Option<String>,
    #[serde(default)]
    cache_dir: Option<PathBuf>,
    #[serde(default)]
    directory_ca_file: Option<PathBuf>,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 1_048_576,
            max_decoded_bytes: 16_777_216,
            max_connections: 1024,
            max_records_per_request: 10_000,
            header_timeout_seconds: 10,
            body_timeout_seconds: 60,
            idle_timeout_seconds: 60,
            shutdown_grace_seconds: 30,
            tls_cert: None,
            tls_key: None,
            tls_reload_seconds: 30,
            acme: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawIngest {
    path: String,
    auth_header: String,
    auth_secret_env: String,
    source_label: String,
}

impl Default for RawIngest {
    fn default() -> Self {
        RawIngest {
            path: "/ingest/hex".into(),
            auth_header: "X-Hexwatch-Token".into(),
            auth_secret_env: "HEXWATCH_SECRET".into(),
            source_label: "hex".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawRules {
    dir: PathBuf,
    hot_reload: bool,
    max_operations: u64,
    overrides: BTreeMap<toml::Spanned<String>, hexwatch_rules::tuning::RawOverride>,
    params: toml::Table,
}

impl Default for RawRules {
    fn default() -> Self {
        RawRules {
            dir: "rules".into(),
            hot_reload: true,
            max_operations: 100_000,
            overrides: BTreeMap::new(),
            params: toml::Table::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawStorage {
    path: PathBuf,
    retention_days: u32,
    url: Option<String>,
    password_env: String,
    ca_file: Option<PathBuf>,
}

impl Default for RawStorage {
    fn default() -> Self {
        RawStorage {
            path: "data/hexwatch.db".into(),
            retention_days: 30,
            url: None,
            password_env: "HEXWATCH_DATABASE_PASSWORD".into(),
            ca_file: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawDelivery {
    max_attempts: Option<u32>,
    retry_hours: u64,
    initial_backoff_ms: u64,
    max_backoff_seconds: u64,
}

impl Default for RawDelivery {
    fn default() -> Self {
        RawDelivery {
            max_attempts: None,
            // A weekend outage of the receiving end must not lose an alert.
            retry_hours: 72,
            initial_backoff_ms: 1000,
            max_backoff_seconds: 300,
        }
    }
}

/// One `[[destinations]]` table. A flat struct (not a tagged enum) so that serde
/// keeps the line numbers of unknown keys; which keys a type needs is checked
/// in `build_destination`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawDestination {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    min_severity: Option<String>,
    timeout_seconds: Option<u64>,
    concurrency: Option<usize>,
    tls_ca_file: Option<PathBuf>,
    // webhook
    url: Option<String>,
    headers: BTreeMap<String, String>,
    signing_secret_env: Option<String>,
    connect_timeout_seconds: Option<u64>,
    // webhook: a body template (minijinja) and its content type
    body_template: Option<String>,
    content_type: Option<String>,
    // slack, teams: the webhook URL from the environment
    url_env: Option<String>,
    // pagerduty
    routing_key_env: Option<String>,
    // opsgenie
    api_key_env: Option<String>,
    // email
    smtp_url: Option<String>,
    smtp_user_env: Option<String>,
    smtp_password_env: Option<String>,
    from: Option<String>,
    to: Vec<String>,
    subject_template: Option<String>,
    // every type
    max_per_minute: Option<u32>,
}

// ---------------------------------------------------------------------------
// Built: what the daemon runs with.

#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was read from (for messages).
    pub source: PathBuf,
    pub server: ServerConfig,
    pub ingest: IngestConfig,
    pub rules: RulesConfig,
    pub storage: StorageConfig,
    pub delivery: DeliveryConfig,
    pub destinations: Vec<Destination>,
    /// The console and its API; `None`: off (`/ui` and `/api` answer 404).
    pub ui: Option<UiConfig>,
}

/// The console: its admin token (from the environment) and where it listens.
#[derive(Clone)]
pub struct UiConfig {
    pub token_env: String,
    pub token: String,
    /// A separate listener for the console; `None`: the main one.
    pub listen: Option<SocketAddr>,
}

impl fmt::Debug for UiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UiConfig")
            .field("token", &format_args!("${} (hidden)", self.token_env))
            .field("listen", &self.listen)
            .finish()
    }
}

/// Shortest admin token accepted: it guards what alerts say about the workspace.
const MIN_ADMIN_TOKEN: usize = 16;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    pub max_decoded_bytes: usize,
    pub max_connections: usize,
    pub max_records_per_request: usize,
    /// From accepting a connection (or finishing a request on it) until the next
    /// request's headers are complete: bounds idle and slowloris connections.
    pub header_timeout: Duration,
    /// For the whole request body to arrive.
    pub body_timeout: Duration,
    /// How long a keep-alive connection may wait, idle, for its next request.
    pub idle_timeout: Duration,
    pub shutdown_grace: Duration,
    pub tls: Option<TlsFiles>,
    /// Certificates obtained and renewed by ACME (TLS-ALPN-01 on `listen`).
    pub acme: Option<Acme>,
}

/// Let's Encrypt's production directory, the default of `server.acme.directory_url`.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

#[derive(Debug, Clone)]
pub struct Acme {
    pub domains: Vec<String>,
    /// An e-mail address the CA may write to about the certificates.
    pub contact: String,
    pub directory_url: String,
    /// The account key, certificates and their keys (kept private, 0700).
    pub cache_dir: PathBuf,
    /// An extra CA trusted for the directory's HTTPS (a private ACME server).
    pub directory_ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// How often the files are checked for a renewal.
    pub reload_every: Duration,
}

#[derive(Clone)]
pub struct IngestConfig {
    pub path: String,
    pub auth_header: String,
    pub auth_secret_env: String,
    /// The value of `auth_secret_env` when it is set; otherwise `serve` generates one.
    pub secret: Option<String>,
    pub source_label: String,
}

impl fmt::Debug for IngestConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IngestConfig")
            .field("path", &self.path)
            .field("auth_header", &self.auth_header)
            .field("auth_secret_env", &self.auth_secret_env)
            .field("secret_set", &self.secret.is_some())
            .field("source_label", &self.source_label)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct RulesConfig {
    pub dir: PathBuf,
    pub hot_reload: bool,
    pub max_operations: u64,
    /// Overrides, parameters and suppressions (hot-reloaded with the rules).
    pub tuning: hexwatch_rules::tuning::Tuning,
}

#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Attempts before a delivery is abandoned; `None`: only `retry_for` limits it.
    pub max_attempts: Option<u32>,
    /// How long after it was queued a delivery is retried before it is abandoned.
    pub retry_for: Duration,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl DeliveryConfig {
    /// Whether a delivery that has failed `attempts` times and was queued `queued`
    /// ago is given up.
    pub fn gives_up(&self, attempts: u32, queued: Duration) -> bool {
        self.max_attempts.is_some_and(|max| attempts >= max) || queued >= self.retry_for
    }
}

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
    pub kind: DestinationKind,
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

/// Checks `[server.acme]`; the cache defaults to `acme/` beside the database.
fn acme_settings(
    a: RawAcme,
    database: &Path,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<Acme, String> {
    if a.domains.is_empty() {
        return Err("server.acme.domains: name at least one domain".into());
    }
    for d in &a.domains {
        let valid = !d.is_empty()
            && d.len() <= 253
            && d.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid {
            return Err(format!(
                "server.acme.domains: {d:?} is not a domain name (no scheme, port or wildcard: TLS-ALPN-01 validates one name at a time)"
            ));
        }
    }
    let contact = a.contact.trim().trim_start_matches("mailto:").to_string();
    if !contact.contains('@') || contact.contains(char::is_whitespace) {
        return Err(format!(
            "server.acme.contact: {:?} is not an e-mail address",
            a.contact
        ));
    }
    let directory_url = a.directory_url.unwrap_or_else(|| LETS_ENCRYPT.into());
    if !directory_url.starts_with("https://") {
        return Err(format!(
            "server.acme.directory_url: {directory_url:?} must be an https:// URL"
        ));
    }
    let cache_dir = match a.cache_dir {
        Some(d) => resolve(&d),
        None => database
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join("acme"),
    };
    Ok(Acme {
        domains: a.domains,
        contact,
        directory_url,
        cache_dir,
        directory_ca_file: a.directory_ca_file.map(|f| resolve(&f)),
    })
}

/// The destination types.
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

/// Reads environment variables; a trait object so tests can pass their own.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Config {
    /// The rules loader every command uses for this config: its rules
    /// directory, operation limit, destination names and tuning. `follow`
    /// re-reads the config file's tuning on each scan (the daemon's hot reload).
    pub fn rules_loader(&self, counters: Option<Arc<dyn CounterRegistry>>, follow: bool) -> Loader {
        // The loader only compiles files and runs their top level: throwaway state.
        let engine = hexwatch_rules::engine::build(
            self.rules.max_operations,
            Arc::new(hexwatch_rules::state::MemoryState::default()),
        );
        let names = self.destinations.iter().map(|d| d.name.clone()).collect();
        Loader::new(engine, &self.rules.dir, Some(names), counters).with_tuning(
            self.rules.tuning.clone(),
            follow.then_some(self.source.as_path()),
        )
    }

    /// Reads and validates the config file, taking secrets from the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(
                path,
                format!("cannot read the config file: {e} (pass another with -c FILE)"),
            )
        })?;
        Config::parse(path, &text, &ProcessEnv)
    }

    /// Parses config text; `path` is used for messages and to resolve relative paths.
    pub fn parse(path: &Path, text: &str, env: &dyn Env) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text)
            .map_err(|e| ConfigError::new(path, e.to_string().trim_end().to_string()))?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        build(path, base, raw, env, text)
    }
}

fn build(
    path: &Path,
    base: &Path,
    raw: RawConfig,
    env: &dyn Env,
    text: &str,
) -> Result<Config, ConfigError> {
    let err = |m: String| ConfigError::new(path, m);
    let resolve = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };

    let s = raw.server;
    let listen: SocketAddr = s.listen.parse().map_err(|_| {
        err(format!(
            "server.listen: {:?} is not an address like \"127.0.0.1:8080\"",
            s.listen
        ))
    })?;
    if s.max_body_bytes == 0 || s.max_decoded_bytes == 0 {
        return Err(err(
            "server.max_body_bytes and server.max_decoded_bytes must be at least 1".into(),
        ));
    }
    if s.max_decoded_bytes < s.max_body_bytes {
        return Err(err(format!(
            "server.max_decoded_bytes ({}) must not be smaller than server.max_body_bytes ({})",
            s.max_decoded_bytes, s.max_body_bytes
        )));
    }
    let tls = match (s.tls_cert, s.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert: resolve(&cert),
            key: resolve(&key),
            reload_every: Duration::from_secs(s.tls_reload_seconds),
        }),
        (None, None) => None,
        _ => return Err(err(
            "server.tls_cert and server.tls_key go together: set both to serve HTTPS, or neither"
                .into(),
        )),
    };
    let acme = match s.acme {
        None => None,
        Some(_) if tls.is_some() => return Err(err(
            "server.acme and server.tls_cert/tls_key both set: choose one source of certificates"
                .into(),
        )),
        Some(a) => Some(acme_settings(a, &resolve(&raw.storage.path), &resolve).map_err(err)?),
    };
    for (key, v) in [
        ("max_records_per_request", s.max_records_per_request as u64),
        ("header_timeout_seconds", s.header_timeout_seconds),
        ("body_timeout_seconds", s.body_timeout_seconds),
        ("idle_timeout_seconds", s.idle_timeout_seconds),
        ("tls_reload_seconds", s.tls_reload_seconds),
    ] {
        if v == 0 {
            return Err(err(format!("server.{key} must be at least 1")));
        }
    }
    let server = ServerConfig {
        listen,
        max_body_bytes: s.max_body_bytes as usize,
        max_decoded_bytes: s.max_decoded_bytes as usize,
        max_connections: s.max_connections.max(1),
        max_records_per_request: s.max_records_per_request,
        header_timeout: Duration::from_secs(s.header_timeout_seconds),
        body_timeout: Duration::from_secs(s.body_timeout_seconds),
        idle_timeout: Duration::from_secs(s.idle_timeout_seconds),
        shutdown_grace: Duration::from_secs(s.shutdown_grace_seconds),
        tls,
        acme,
    };

    let i = raw.ingest;
    if !i.path.starts_with('/') {
        return Err(err(format!(
            "ingest.path: {:?} must start with '/'",
            i.path
        )));
    }
    if warp::http::HeaderName::from_bytes(i.auth_header.as_bytes()).is_err() {
        return Err(err(format!(
            "ingest.auth_header: {:?} is not a valid HTTP header name",
            i.auth_header
        )));
    }
    if i.auth_secret_env.is_empty() {
        return Err(err(
            "ingest.auth_secret_env: name the environment variable that holds the ingest secret"
                .into(),
        ));
    }
    let ingest = IngestConfig {
        path: i.path,
        auth_header: i.auth_header,
        secret: env.var(&i.auth_secret_env).filter(|v| !v.is_empty()),
        auth_secret_env: i.auth_secret_env,
        source_label: i.source_label,
    };

    if raw.rules.max_operations == 0 {
        return Err(err("rules.max_operations must be at least 1".into()));
    }
    let destination_names: Vec<String> = raw.destinations.iter().map(|d| d.name.clone()).collect();
    let tuning = hexwatch_rules::tuning::Tuning::build(
        text,
        hexwatch_rules::tuning::RawTuning {
            overrides: raw.rules.overrides,
            params: raw.rules.params,
        },
        raw.suppressions,
        &destination_names,
    )
    .map_err(err)?;
    let rules = RulesConfig {
        dir: resolve(&raw.rules.dir),
        hot_reload: raw.rules.hot_reload,
        max_operations: raw.rules.max_operations,
        tuning,
    };
    let url = match raw.storage.url {
        Some(url) => {
            let parsed = url::Url::parse(&url)
                .ok()
                .filter(|u| matches!(u.scheme(), "postgres" | "postgresql"));
            let Some(parsed) = parsed else {
                return Err(err(format!(
                    "storage.url: expected postgres://user@host:port/database, got {url:?}"
                )));
            };
            if parsed.password().is_some() {
                return Err(err(format!(
                    "storage.url: the URL holds a password; remove it and set the environment variable {} instead",
                    raw.storage.password_env
                )));
            }
            Some(PostgresUrl {
                url,
                password: env.var(&raw.storage.password_env).filter(|v| !v.is_empty()),
                ca_file: raw.storage.ca_file.as_deref().map(resolve),
            })
        }
        None => None,
    };
    let storage = StorageConfig {
        path: resolve(&raw.storage.path),
        retention: Duration::from_secs(u64::from(raw.storage.retention_days) * 86_400),
        url,
    };
    if raw.storage.retention_days == 0 {
        return Err(err("storage.retention_days must be at least 1".into()));
    }
    let d = raw.delivery;
    if d.max_attempts == Some(0) {
        return Err(err(
            "delivery.max_attempts must be at least 1 (leave it out for no limit but retry_hours)"
                .into(),
        ));
    }
    if d.retry_hours == 0 {
        return Err(err("delivery.retry_hours must be at least 1".into()));
    }
    let delivery = DeliveryConfig {
        max_attempts: d.max_attempts,
        retry_for: Duration::from_secs(d.retry_hours.saturating_mul(3600)),
        initial_backoff: Duration::from_millis(d.initial_backoff_ms.max(1)),
        max_backoff: Duration::from_secs(d.max_backoff_seconds.max(1)),
    };

    let mut destinations: Vec<Destination> = Vec::with_capacity(raw.destinations.len());
    for (n, rd) in raw.destinations.into_iter().enumerate() {
        let mut d = build_destination(n, rd, env).map_err(&err)?;
        d.tls_ca_file = d.tls_ca_file.as_deref().map(resolve);
        if destinations.iter().any(|o| o.name == d.name) {
            return Err(err(format!(
                "destinations[{n}].name: {:?} is used twice; destination names must be unique",
                d.name
            )));
        }
        destinations.push(d);
    }

    let ui = match raw.ui.admin_token_env {
        None => {
            if raw.ui.listen.is_some() {
                return Err(err(
                    "ui.listen is set but ui.admin_token_env is not: the console stays off without a token".into(),
                ));
            }
            None
        }
        Some(var) => {
            let token = env.var(&var).filter(|v| !v.is_empty()).ok_or_else(|| {
                err(format!(
                    "ui.admin_token_env: the environment variable {var} is not set"
                ))
            })?;
            if token.chars().count() < MIN_ADMIN_TOKEN {
                return Err(err(format!(
                    "ui.admin_token_env: ${var} is shorter than {MIN_ADMIN_TOKEN} characters"
                )));
            }
            let listen = match raw.ui.listen {
                None => None,
                Some(l) => Some(l.parse::<SocketAddr>().map_err(|_| {
                    err(format!(
                        "ui.listen: {l:?} is not an address like \"127.0.0.1:8081\""
                    ))
                })?),
            };
            Some(UiConfig {
                token_env: var,
                token,
                listen,
            })
        }
    };
    Ok(Config {
        source: path.to_path_buf(),
        server,
        ingest,
        rules,
        storage,
        delivery,
        destinations,
        ui,
    })
}

/// Where a destination key is, for messages: `destinations[N].key`.
struct At(usize);

impl At {
    fn key(&self, key: &str) -> String {
        format!("destinations[{}].{key}", self.0)
    }

    /// The value of a required `*_env` variable.
    fn env(&self, env: &dyn Env, key: &str, var: &str) -> Result<String, String> {
        env.var(var).filter(|v| !v.is_empty()).ok_or_else(|| {
            format!(
                "{}: environment variable {var} is not set (export it before starting hexwatch)",
                self.key(key)
            )
        })
    }

    fn needs<T>(&self, kind: &str, key: &str, v: Option<T>) -> Result<T, String> {
        v.ok_or_else(|| format!("{}: a {kind} destination needs {key}", self.key(key)))
    }
}

/// Refuses keys that belong to another destination type (a typo'd type must
/// not silently drop, say, the routing key).
fn check_destination_keys(at: &At, d: &RawDestination) -> Result<(), String> {
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
        "" => {
            return Err(format!(
                "{}: set type = one of {DESTINATION_TYPES}",
                at.key("type")
            ))
        }
        other => {
            return Err(format!(
                "{}: {other:?} is not a destination type; use {DESTINATION_TYPES}",
                at.key("type")
            ))
        }
    };
    match set.iter().find(|(k, on)| *on && !allowed.contains(k)) {
        Some((key, _)) => Err(format!(
            "{}: not a key of a {} destination",
            at.key(key),
            d.kind
        )),
        None => Ok(()),
    }
}

fn build_destination(n: usize, d: RawDestination, env: &dyn Env) -> Result<Destination, String> {
    let at = At(n);
    if d.name.is_empty() {
        return Err(format!(
            "{}: every destination needs a name",
            at.key("name")
        ));
    }
    let min_severity = match &d.min_severity {
        None => Severity::Info,
        Some(s) => Severity::parse(s).ok_or_else(|| {
            format!(
                "{}: {s:?} is not a severity; use INFO, LOW, MEDIUM, HIGH or CRITICAL",
                at.key("min_severity")
            )
        })?,
    };
    check_destination_keys(&at, &d)?;
    // Slack webhooks take about one message a second; PagerDuty's Events API
    // 120 events a minute per routing key.
    let max_per_minute = match (d.max_per_minute, d.kind.as_str()) {
        (Some(0), _) => return Err(format!("{}: must be at least 1", at.key("max_per_minute"))),
        (Some(n), _) => Some(n),
        (None, "slack" | "teams") => Some(60),
        (None, "pagerduty") => Some(120),
        (None, "opsgenie") => Some(600),
        (None, _) => None,
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
        kind,
    })
}

/// webhook, slack, teams, pagerduty, opsgenie: one POST per alert.
fn http_destination(at: &At, d: RawDestination, env: &dyn Env) -> Result<DestinationKind, String> {
    let kind = d.kind.as_str();
    let mut secrets = Vec::new();
    let mut headers = Vec::with_capacity(d.headers.len() + 1);
    for (k, v) in &d.headers {
        let hk = format!("headers.{k}");
        if warp::http::HeaderName::from_bytes(k.as_bytes()).is_err() {
            return Err(format!("{}: not a valid HTTP header name", at.key(&hk)));
        }
        let v =
            expand_env_into(v, env, &mut secrets).map_err(|e| format!("{}: {e}", at.key(&hk)))?;
        headers.push((k.clone(), v));
    }
    let http_url =
        |template: &str, secrets: &mut Vec<String>| -> Result<(String, String), String> {
            let shown = shown_url(template);
            let url = expand_env_into(template, env, secrets)
                .map_err(|e| format!("{}: {e}", at.key("url")))?;
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!(
                    "{}: {shown:?} must start with http:// or https://",
                    at.key("url")
                ));
            }
            Ok((url, shown))
        };
    let (url, url_shown, format, signing_secret) = match kind {
        "webhook" => {
            let (url, shown) = http_url(&at.needs(kind, "url", d.url)?, &mut secrets)?;
            let format = match d.body_template {
                Some(body) => HttpFormat::Template {
                    body,
                    content_type: d.content_type.unwrap_or_else(|| "application/json".into()),
                },
                None if d.content_type.is_some() => {
                    return Err(format!(
                        "{}: only with a body_template",
                        at.key("content_type")
                    ))
                }
                None => HttpFormat::Hexwatch,
            };
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
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(format!(
                    "{}: the URL in {var} must start with https://",
                    at.key("url_env")
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

fn email_destination(at: &At, d: RawDestination, env: &dyn Env) -> Result<DestinationKind, String> {
    let smtp_url = at.needs("email", "smtp_url", d.smtp_url)?;
    let (host, port, tls) = parse_smtp_url(&smtp_url)
        .map_err(|e| format!("{}: {smtp_url:?}: {e}", at.key("smtp_url")))?;
    let credentials = match (&d.smtp_user_env, &d.smtp_password_env) {
        (None, None) => None,
        (Some(u), Some(p)) => Some((
            at.env(env, "smtp_user_env", u)?,
            at.env(env, "smtp_password_env", p)?,
        )),
        _ => {
            return Err(format!(
                "{}: smtp_user_env and smtp_password_env go together",
                at.key("smtp_user_env")
            ))
        }
    };
    if credentials.is_some() && tls == SmtpTls::None {
        return Err(format!(
            "{}: credentials are only sent over TLS: use smtps://, or smtp://...?tls=required",
            at.key("smtp_url")
        ));
    }
    let from = at.needs("email", "from", d.from)?;
    if d.to.is_empty() {
        return Err(format!(
            "{}: an email destination needs at least one recipient",
            at.key("to")
        ));
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
fn parse_smtp_url(s: &str) -> Result<(String, u16, SmtpTls), String> {
    let url = url::Url::parse(s).map_err(|e| format!("not a URL ({e})"))?;
    let host = url
        .host_str()
        .ok_or("needs a host")?
        .trim_matches(['[', ']'])
        .to_string();
    let mut tls = match url.scheme() {
        "smtp" => SmtpTls::None,
        "smtps" => SmtpTls::Implicit,
        other => return Err(format!("scheme {other}:// is not smtp:// or smtps://")),
    };
    for (k, v) in url.query_pairs() {
        match (k.as_ref(), v.as_ref(), tls) {
            ("tls", "required", SmtpTls::None) => tls = SmtpTls::StartTls,
            _ => {
                return Err(format!(
                    "unknown option {k}={v}; the only one is tls=required on smtp://"
                ))
            }
        }
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("put credentials in smtp_user_env / smtp_password_env, not in the URL".into());
    }
    let port = url.port().unwrap_or(match tls {
        SmtpTls::Implicit => 465,
        SmtpTls::StartTls => 587,
        SmtpTls::None => 25,
    });
    Ok((host, port, tls))
}

/// A URL template from the config as it may be logged or stored: `${VAR}` parts
/// stay unexpanded, and a userinfo part or a query string becomes `***`.
pub fn shown_url(template: &str) -> String {
    let (base, query) = match template.split_once('?') {
        Some((b, _)) => (b, "?***"),
        None => (template, ""),
    };
    let (scheme, rest) = base.split_once("://").unwrap_or(("", base));
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => authority.to_string(),
    };
    let sep = if scheme.is_empty() { "" } else { "://" };
    format!("{scheme}{sep}{authority}{path}{query}")
}

/// Removes every secret value from `text` (an error message, say), so that no
/// expanded variable reaches a log line or the database.
pub fn scrub(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        out = out.replace(secret.as_str(), "***");
    }
    out
}

/// `expand_env`, also collecting the expanded values (the secrets to scrub).
fn expand_env_into(s: &str, env: &dyn Env, values: &mut Vec<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unterminated ${{ in {s:?}"))?;
        let name = &after[..end];
        let value = env.var(name).ok_or_else(|| {
            format!("environment variable {name} is not set (export it before starting hexwatch)")
        })?;
        out.push_str(&value);
        values.push(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Replaces every `${VAR}` with the variable's value; an unset variable is an error.
pub fn expand_env(s: &str, env: &dyn Env) -> Result<String, String> {
    expand_env_into(s, env, &mut Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct MapEnv(HashMap<&'static str, &'static str>);
    impl Env for MapEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|s| s.to_string())
        }
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let env = MapEnv(HashMap::from([("TOKEN", "s3cret"), ("HOOK", "k")]));
        Config::parse(Path::new("/etc/hexwatch/config.toml"), text, &env)
    }

    #[test]
    fn console_token_comes_from_the_environment() {
        let err = |text: &str| parse(text).unwrap_err().to_string();
        assert!(err("[ui]\nadmin_token_env = \"NOPE\"\n")
            .contains("the environment variable NOPE is not set"));
        // TOKEN is "s3cret": too short to guard the console.
        assert!(err("[ui]\nadmin_token_env = \"TOKEN\"\n").contains("shorter than 16"));
        assert!(err("[ui]\nlisten = \"127.0.0.1:8081\"\n").contains("admin_token_env is not"));
        assert!(parse("").unwrap().ui.is_none());
        let env = MapEnv(HashMap::from([("ADMIN", "0123456789abcdef0123")]));
        let c = Config::parse(
            Path::new("/etc/hexwatch/config.toml"),
            "[ui]\nadmin_token_env = \"ADMIN\"\nlisten = \"127.0.0.1:8081\"\n",
            &env,
        )
        .unwrap();
        let ui = c.ui.unwrap();
        assert_eq!(ui.listen, Some("127.0.0.1:8081".parse().unwrap()));
        assert!(!format!("{ui:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn acme_settings_are_checked() {
        let c = parse("[server.acme]\ndomains = [\"hexwatch.example.com\"]\ncontact = \"mailto:secops@example.com\"\n").unwrap();
        let a = c.server.acme.unwrap();
        assert_eq!(a.contact, "secops@example.com");
        assert_eq!(a.directory_url, LETS_ENCRYPT);
        assert_eq!(a.cache_dir, Path::new("/etc/hexwatch/data/acme"));
        let err = |text: &str| parse(text).unwrap_err().to_string();
        assert!(err("[server]\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n[server.acme]\ndomains = [\"a.example\"]\ncontact = \"x@example.com\"\n")
            .contains("choose one source of certificates"));
        assert!(
            err("[server.acme]\ndomains = [\"*.example.com\"]\ncontact = \"x@example.com\"\n")
                .contains("is not a domain name")
        );
        assert!(
            err("[server.acme]\ndomains = []\ncontact = \"x@example.com\"\n")
                .contains("name at least one domain")
        );
        assert!(
            err("[server.acme]\ndomains = [\"a.example\"]\ncontact = \"nobody\"\n")
                .contains("server.acme.contact")
        );
        assert!(err("[server.acme]\ndomains = [\"a.example\"]\ncontact = \"x@example.com\"\ndirectory_url = \"http://ca.example/dir\"\n")
            .contains("https://"));
    }

    #[test]
    fn empty_file_is_the_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.server.max_body_bytes, 1_048_576);
        assert_eq!(c.server.max_decoded_bytes, 16_777_216);
        assert_eq!(c.ingest.path, "/ingest/hex");
        assert_eq!(c.ingest.auth_header, "X-Hexwatch-Token");
        assert_eq!(c.rules.dir, Path::new("/etc/hexwatch/rules"));
        assert_eq!(c.storage.path, Path::new("/etc/hexwatch/data/hexwatch.db"));
        assert!(c.destinations.is_empty());
        assert_eq!(c.delivery.max_attempts, None);
        assert!(c.delivery.retry_for >= Duration::from_secs(24 * 3600));
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let e = parse("[server]\nlisten = \"127.0.0.1:1\"\nmax_body_byte = 5\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_body_byte"), "{e}");
        assert!(e.contains("line 3"), "{e}");
    }

    #[test]
    fn unknown_destination_key_is_rejected_with_line() {
        let e = parse(
            "[[destinations]]\nname = \"a\"\ntype = \"webhook\"\nurl = \"https://x\"\nmin_severty = \"HIGH\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("min_severty") && e.contains("line 5"), "{e}");
    }

    #[test]
    fn destinations_expand_env_and_validate() {
        let c = parse(
            r#"
[[destinations]]
name = "hook"
type = "webhook"
url = "https://example.com/h"
min_severity = "MEDIUM"
headers = { "Authorization" = "Bearer ${TOKEN}" }
signing_secret_env = "HOOK"

[[destinations]]
name = "mail"
type = "email"
smtp_url = "smtp://127.0.0.1:2525"
from = "a@example.com"
to = ["b@example.com"]
"#,
        )
        .unwrap();
        let DestinationKind::Webhook(w) = &c.destinations[0].kind else {
            panic!()
        };
        assert_eq!(w.headers[0].1, "Bearer s3cret");
        assert_eq!(w.signing_secret.as_deref(), Some(&b"k"[..]));
        assert_eq!(c.destinations[0].min_severity, Severity::Medium);
        let DestinationKind::Email(e) = &c.destinations[1].kind else {
            panic!()
        };
        assert_eq!(
            (e.host.as_str(), e.port, e.tls),
            ("127.0.0.1", 2525, SmtpTls::None)
        );
    }

    #[test]
    fn urls_are_shown_without_secrets() {
        assert_eq!(
            shown_url("https://hooks.slack.com/services/${SLACK_PATH}"),
            "https://hooks.slack.com/services/${SLACK_PATH}"
        );
        assert_eq!(
            shown_url("https://user:pw@siem.example:8443/hook?token=abc&x=1"),
            "https://***@siem.example:8443/hook?***"
        );
        assert_eq!(
            scrub("failed for https://x/T0K3N/y", &["T0K3N".into()]),
            "failed for https://x/***/y"
        );
        let c = parse(
            "[[destinations]]\nname = \"h\"\ntype = \"webhook\"\nurl = \"https://x/${TOKEN}?k=1\"\n",
        )
        .unwrap();
        let DestinationKind::Webhook(w) = &c.destinations[0].kind else {
            panic!()
        };
        assert_eq!(w.url, "https://x/s3cret?k=1");
        assert_eq!(w.url_shown, "https://x/${TOKEN}?***");
        assert_eq!(w.secrets, vec!["s3cret".to_string()]);
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn smtp_urls_and_credentials() {
        assert_eq!(
            parse_smtp_url("smtp://mail.example.com?tls=required").unwrap(),
            ("mail.example.com".into(), 587, SmtpTls::StartTls)
        );
        assert_eq!(
            parse_smtp_url("smtps://mail.example.com").unwrap(),
            ("mail.example.com".into(), 465, SmtpTls::Implicit)
        );
        assert!(parse_smtp_url("smtp://u:p@host").is_err());
        assert!(parse_smtp_url("http://host").is_err());
        let e = parse(
            "[[destinations]]\nname = \"m\"\ntype = \"email\"\nsmtp_url = \"smtp://relay:25\"\nsmtp_user_env = \"TOKEN\"\nsmtp_password_env = \"HOOK\"\nfrom = \"a@b\"\nto = [\"c@d\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("credentials are only sent over TLS"), "{e}");
    }

    #[test]
    fn unset_variable_is_named() {
        let e = parse(
            "[[destinations]]\nname = \"h\"\ntype = \"webhook\"\nurl = \"https://x\"\nheaders = { A = \"${NOPE}\" }\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("NOPE") && e.contains("destinations[0].headers.A"),
            "{e}"
        );
    }

    #[test]
    fn wrong_type_keys_and_bad_values() {
        let e = parse("[[destinations]]\nname = \"h\"\ntype = \"webhook\"\nurl = \"https://x\"\nto = [\"a@b\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("destinations[0].to: not a key of a webhook destination"),
            "{e}"
        );
        let e = parse("[[destinations]]\nname = \"h\"\ntype = \"pager\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"pager\" is not a destination type"), "{e}");
        let e = parse("[server]\nlisten = \"nowhere\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("server.listen"), "{e}");
        let e = parse("[server]\ntls_cert = \"c.pem\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("go together"), "{e}");
    }
}
