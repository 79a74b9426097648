//! The config file (docs/configuration.md), in two stages: [`raw`] records
//! exactly what the user wrote (serde, unknown keys rejected so a typo never
//! silently disables a destination), and [`Config`] is the validated result,
//! built by [`build`], with paths resolved against the config file's directory
//! and secrets read from the environment ([`env`]). Destinations, the largest
//! part, have their own module ([`destinations`]).

mod build;
pub mod destinations;
pub mod env;
pub mod incidents;
mod raw;
#[cfg(test)]
mod tests;
pub mod users;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hexwatch_rules::ruleset::{CounterRegistry, Loader};
pub use hexwatch_storage::{PostgresUrl, StorageConfig};

pub use destinations::{
    Destination, DestinationKind, EmailConfig, HttpFormat, NotifyMode, SmtpTls, WebhookConfig,
    DESTINATION_TYPES,
};
pub use env::{expand_env, scrub, shown_url, Env, ProcessEnv};

/// An error in the config: which file, and what is wrong where, phrased so
/// the user can fix it.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct ConfigError {
    pub path: String,
    pub problem: SettingError,
}

impl ConfigError {
    fn new(path: &Path, problem: SettingError) -> Self {
        ConfigError {
            path: path.display().to_string(),
            problem,
        }
    }
}

/// What is wrong with the settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingError {
    /// The file cannot be read, or is not TOML of the expected shape (the
    /// parser's message names the line and key).
    #[error("{0}")]
    File(String),
    /// A setting names an environment variable that is not set.
    #[error(
        "{key}: the environment variable {var} is not set (export it before starting hexwatch)"
    )]
    MissingEnv { key: String, var: String },
    /// A setting's value cannot be used.
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
    /// Settings that cannot go together, or one that needs another.
    #[error("{0}")]
    Conflict(String),
}

impl SettingError {
    pub(crate) fn invalid(key: impl Into<String>, reason: impl Into<String>) -> SettingError {
        SettingError::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }
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
    pub incidents: incidents::IncidentsConfig,
}

/// The console: its admin token (from the environment) and where it listens.
#[derive(Clone)]
pub struct UiConfig {
    pub token_env: String,
    pub token: String,
    /// A separate listener for the console; `None`: the main one.
    pub listen: Option<SocketAddr>,
    /// Where responders reach the console: links in notifications.
    pub external_url: Option<String>,
    /// Named users who sign in with their own password.
    pub users: Vec<users::ConsoleUser>,
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
pub(crate) const MIN_ADMIN_TOKEN: usize = 16;

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
    /// `<auth_secret_env>_PREVIOUS`: the secret still accepted during a rotation.
    pub previous_secret: Option<String>,
    pub source_label: String,
}

impl fmt::Debug for IngestConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IngestConfig")
            .field("path", &self.path)
            .field("auth_header", &self.auth_header)
            .field("auth_secret_env", &self.auth_secret_env)
            .field("secret_set", &self.secret.is_some())
            .field("previous_secret_set", &self.previous_secret.is_some())
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

/// The config file's text.
fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(
            path,
            SettingError::File(format!(
                "cannot read the config file: {e} (pass another with -c FILE)"
            )),
        )
    })
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
        Config::parse(path, &read(path)?, &ProcessEnv)
    }

    /// Reads the config file for a command that sends nothing: the secrets of
    /// destinations and the console that are not exported read as
    /// [`env::UNSET`]; their variables come back, to warn about.
    pub fn load_offline(path: &Path) -> Result<(Config, Vec<String>), ConfigError> {
        let offline = env::Offline::new(&ProcessEnv);
        let config = Config::parse_with(path, &read(path)?, &ProcessEnv, &offline)?;
        Ok((config, offline.missing()))
    }

    /// Parses config text; `path` is used for messages and to resolve relative paths.
    pub fn parse(path: &Path, text: &str, env: &dyn Env) -> Result<Config, ConfigError> {
        Config::parse_with(path, text, env, env)
    }

    /// [`Config::parse`], reading the destinations' and the console's secrets
    /// from `secrets`.
    pub fn parse_with(
        path: &Path,
        text: &str,
        env: &dyn Env,
        secrets: &dyn Env,
    ) -> Result<Config, ConfigError> {
        let raw: raw::RawConfig = toml::from_str(text).map_err(|e| {
            ConfigError::new(path, SettingError::File(e.to_string().trim_end().into()))
        })?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        build::build(path, base, raw, env, secrets, text).map_err(|e| ConfigError::new(path, e))
    }
}
