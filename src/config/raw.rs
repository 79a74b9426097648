//! What the config file says, exactly as written: serde structs with every
//! key's default and unknown keys refused (a typo must never silently disable
//! a destination). [`build`](super::build) checks and converts them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) server: RawServer,
    pub(super) ingest: RawIngest,
    pub(super) rules: RawRules,
    pub(super) storage: RawStorage,
    pub(super) delivery: RawDelivery,
    pub(super) destinations: Vec<RawDestination>,
    pub(super) ui: RawUi,
    pub(super) incidents: super::incidents::RawIncidents,
    pub(super) suppressions: Vec<toml::Spanned<hexwatch_rules::tuning::RawSuppression>>,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) listen: String,
    pub(super) max_body_bytes: u64,
    pub(super) max_decoded_bytes: u64,
    pub(super) max_connections: usize,
    pub(super) max_records_per_request: usize,
    pub(super) header_timeout_seconds: u64,
    pub(super) body_timeout_seconds: u64,
    pub(super) idle_timeout_seconds: u64,
    pub(super) shutdown_grace_seconds: u64,
    pub(super) tls_cert: Option<PathBuf>,
    pub(super) tls_key: Option<PathBuf>,
    pub(super) tls_reload_seconds: u64,
    pub(super) acme: Option<RawAcme>,
}

/// `[ui]`: the console, off unless `admin_token_env` is set.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawUi {
    pub(super) admin_token_env: Option<String>,
    pub(super) listen: Option<String>,
    pub(super) external_url: Option<String>,
    pub(super) users: Vec<RawUser>,
}

/// `[[ui.users]]`: a person who signs in to the console.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawUser {
    pub(super) name: String,
    pub(super) password_hash: String,
}

/// `[server.acme]`: certificates from an ACME CA (Let's Encrypt by default).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAcme {
    pub(super) domains: Vec<String>,
    pub(super) contact: String,
    #[serde(default)]
    pub(super) directory_url: Option<String>,
    #[serde(default)]
    pub(super) cache_dir: Option<PathBuf>,
    #[serde(default)]
    pub(super) directory_ca_file: Option<PathBuf>,
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
pub(super) struct RawIngest {
    pub(super) path: String,
    pub(super) auth_header: String,
    pub(super) auth_secret_env: String,
    pub(super) source_label: String,
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
pub(super) struct RawRules {
    pub(super) dir: PathBuf,
    pub(super) hot_reload: bool,
    pub(super) max_operations: u64,
    pub(super) overrides: BTreeMap<toml::Spanned<String>, hexwatch_rules::tuning::RawOverride>,
    pub(super) params: toml::Table,
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
pub(super) struct RawStorage {
    pub(super) path: PathBuf,
    pub(super) retention_days: u32,
    pub(super) url: Option<String>,
    pub(super) password_env: String,
    pub(super) ca_file: Option<PathBuf>,
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
pub(super) struct RawDelivery {
    pub(super) max_attempts: Option<u32>,
    pub(super) retry_hours: u64,
    pub(super) initial_backoff_ms: u64,
    pub(super) max_backoff_seconds: u64,
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
pub(super) struct RawDestination {
    pub(super) name: String,
    #[serde(rename = "type")]
    pub(super) kind: String,
    pub(super) min_severity: Option<String>,
    pub(super) timeout_seconds: Option<u64>,
    pub(super) concurrency: Option<usize>,
    pub(super) tls_ca_file: Option<PathBuf>,
    // webhook
    pub(super) url: Option<String>,
    pub(super) headers: BTreeMap<String, String>,
    pub(super) signing_secret_env: Option<String>,
    pub(super) connect_timeout_seconds: Option<u64>,
    // webhook: a body template (minijinja) and its content type
    pub(super) body_template: Option<String>,
    pub(super) content_type: Option<String>,
    // slack, teams: the webhook URL from the environment
    pub(super) url_env: Option<String>,
    // pagerduty
    pub(super) routing_key_env: Option<String>,
    // opsgenie
    pub(super) api_key_env: Option<String>,
    // email
    pub(super) smtp_url: Option<String>,
    pub(super) smtp_user_env: Option<String>,
    pub(super) smtp_password_env: Option<String>,
    pub(super) from: Option<String>,
    pub(super) to: Vec<String>,
    pub(super) subject_template: Option<String>,
    // every type
    pub(super) max_per_minute: Option<u32>,
    /// `incident` (default) or `alert`.
    pub(super) notify: Option<String>,
}
