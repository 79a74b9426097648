//! From what the file says ([`raw`](super::raw)) to what the daemon runs with
//! ([`Config`]): one function a section, each checking its keys and naming the
//! key in what it refuses.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hexwatch_rules::tuning::{RawTuning, Tuning};

use super::destinations::{build_destination, Destination};
use super::env::Env;
use super::raw::{RawAcme, RawConfig, RawDelivery, RawIngest, RawServer, RawStorage, RawUi};
use super::{
    Acme, Config, DeliveryConfig, IngestConfig, PostgresUrl, RulesConfig, ServerConfig,
    SettingError, StorageConfig, TlsFiles, UiConfig, LETS_ENCRYPT, MIN_ADMIN_TOKEN,
};

/// Paths in the file are relative to the file's directory.
struct Resolver<'a>(&'a Path);

impl Resolver<'_> {
    fn path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.0.join(p)
        }
    }
}

/// Validates every section; `text` is the file's text (tuning errors name its lines).
pub(super) fn build(
    path: &Path,
    base: &Path,
    raw: RawConfig,
    env: &dyn Env,
    secrets: &dyn Env,
    text: &str,
) -> Result<Config, SettingError> {
    let resolve = Resolver(base);
    let database = resolve.path(&raw.storage.path);
    let destination_names: Vec<String> = raw.destinations.iter().map(|d| d.name.clone()).collect();
    let tuning = Tuning::build(
        text,
        RawTuning {
            overrides: raw.rules.overrides,
            params: raw.rules.params,
        },
        raw.suppressions,
        &destination_names,
    )
    .map_err(|e| SettingError::Conflict(e.to_string()))?;
    if raw.rules.max_operations == 0 {
        return Err(at_least_one("rules.max_operations"));
    }
    Ok(Config {
        source: path.to_path_buf(),
        server: server(raw.server, &database, &resolve)?,
        ingest: ingest(raw.ingest, env)?,
        rules: RulesConfig {
            dir: resolve.path(&raw.rules.dir),
            hot_reload: raw.rules.hot_reload,
            max_operations: raw.rules.max_operations,
            tuning,
        },
        storage: storage(raw.storage, env, &resolve)?,
        delivery: delivery(raw.delivery)?,
        destinations: destinations(raw.destinations, secrets, &resolve)?,
        ui: ui(raw.ui, secrets)?,
        incidents: super::incidents::build(raw.incidents)?,
    })
}

fn at_least_one(key: &str) -> SettingError {
    SettingError::invalid(key, "must be at least 1")
}

fn server(s: RawServer, database: &Path, resolve: &Resolver) -> Result<ServerConfig, SettingError> {
    let listen: SocketAddr = s.listen.parse().map_err(|_| {
        SettingError::invalid(
            "server.listen",
            format!("{:?} is not an address like \"127.0.0.1:8080\"", s.listen),
        )
    })?;
    if s.max_body_bytes == 0 || s.max_decoded_bytes == 0 {
        return Err(SettingError::Conflict(
            "server.max_body_bytes and server.max_decoded_bytes must be at least 1".into(),
        ));
    }
    if s.max_decoded_bytes < s.max_body_bytes {
        return Err(SettingError::invalid(
            "server.max_decoded_bytes",
            format!(
                "({}) must not be smaller than server.max_body_bytes ({})",
                s.max_decoded_bytes, s.max_body_bytes
            ),
        ));
    }
    let tls = match (s.tls_cert, s.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert: resolve.path(&cert),
            key: resolve.path(&key),
            reload_every: Duration::from_secs(s.tls_reload_seconds),
        }),
        (None, None) => None,
        _ => return Err(SettingError::Conflict(
            "server.tls_cert and server.tls_key go together: set both to serve HTTPS, or neither"
                .into(),
        )),
    };
    let acme = match s.acme {
        None => None,
        Some(_) if tls.is_some() => return Err(SettingError::Conflict(
            "server.acme and server.tls_cert/tls_key both set: choose one source of certificates"
                .into(),
        )),
        Some(a) => Some(acme_settings(a, database, resolve)?),
    };
    for (key, v) in [
        ("max_records_per_request", s.max_records_per_request as u64),
        ("header_timeout_seconds", s.header_timeout_seconds),
        ("body_timeout_seconds", s.body_timeout_seconds),
        ("idle_timeout_seconds", s.idle_timeout_seconds),
        ("tls_reload_seconds", s.tls_reload_seconds),
    ] {
        if v == 0 {
            return Err(at_least_one(&format!("server.{key}")));
        }
    }
    Ok(ServerConfig {
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
    })
}

/// Checks `[server.acme]`; the cache defaults to `acme/` beside the database.
fn acme_settings(a: RawAcme, database: &Path, resolve: &Resolver) -> Result<Acme, SettingError> {
    if a.domains.is_empty() {
        return Err(SettingError::invalid(
            "server.acme.domains",
            "name at least one domain",
        ));
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
            return Err(SettingError::invalid(
                "server.acme.domains",
                format!("{d:?} is not a domain name (no scheme, port or wildcard: TLS-ALPN-01 validates one name at a time)"),
            ));
        }
    }
    let contact = a.contact.trim().trim_start_matches("mailto:").to_string();
    if !contact.contains('@') || contact.contains(char::is_whitespace) {
        return Err(SettingError::invalid(
            "server.acme.contact",
            format!("{:?} is not an e-mail address", a.contact),
        ));
    }
    let directory_url = a.directory_url.unwrap_or_else(|| LETS_ENCRYPT.into());
    if !directory_url.starts_with("https://") {
        return Err(SettingError::invalid(
            "server.acme.directory_url",
            format!("{directory_url:?} must be an https:// URL"),
        ));
    }
    let cache_dir = match a.cache_dir {
        Some(d) => resolve.path(&d),
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
        directory_ca_file: a.directory_ca_file.map(|f| resolve.path(&f)),
    })
}

fn ingest(i: RawIngest, env: &dyn Env) -> Result<IngestConfig, SettingError> {
    if !i.path.starts_with('/') {
        return Err(SettingError::invalid(
            "ingest.path",
            format!("{:?} must start with '/'", i.path),
        ));
    }
    if warp::http::HeaderName::from_bytes(i.auth_header.as_bytes()).is_err() {
        return Err(SettingError::invalid(
            "ingest.auth_header",
            format!("{:?} is not a valid HTTP header name", i.auth_header),
        ));
    }
    if i.auth_secret_env.is_empty() {
        return Err(SettingError::invalid(
            "ingest.auth_secret_env",
            "name the environment variable that holds the ingest secret",
        ));
    }
    Ok(IngestConfig {
        path: i.path,
        auth_header: i.auth_header,
        secret: env.var(&i.auth_secret_env).filter(|v| !v.is_empty()),
        previous_secret: env
            .var(&format!("{}_PREVIOUS", i.auth_secret_env))
            .filter(|v| !v.is_empty()),
        auth_secret_env: i.auth_secret_env,
        source_label: i.source_label,
    })
}

fn storage(
    s: RawStorage,
    env: &dyn Env,
    resolve: &Resolver,
) -> Result<StorageConfig, SettingError> {
    if s.retention_days == 0 {
        return Err(at_least_one("storage.retention_days"));
    }
    let url = match s.url {
        Some(url) => {
            let parsed = url::Url::parse(&url)
                .ok()
                .filter(|u| matches!(u.scheme(), "postgres" | "postgresql"));
            let Some(parsed) = parsed else {
                return Err(SettingError::invalid(
                    "storage.url",
                    format!("expected postgres://user@host:port/database, got {url:?}"),
                ));
            };
            if parsed.password().is_some() {
                return Err(SettingError::invalid(
                    "storage.url",
                    format!(
                        "the URL holds a password; remove it and set the environment variable {} instead",
                        s.password_env
                    ),
                ));
            }
            Some(PostgresUrl {
                url,
                password: env.var(&s.password_env).filter(|v| !v.is_empty()),
                ca_file: s.ca_file.as_deref().map(|p| resolve.path(p)),
            })
        }
        None => None,
    };
    Ok(StorageConfig {
        path: resolve.path(&s.path),
        retention: Duration::from_secs(u64::from(s.retention_days) * 86_400),
        url,
    })
}

fn delivery(d: RawDelivery) -> Result<DeliveryConfig, SettingError> {
    if d.max_attempts == Some(0) {
        return Err(SettingError::invalid(
            "delivery.max_attempts",
            "must be at least 1 (leave it out for no limit but retry_hours)",
        ));
    }
    if d.retry_hours == 0 {
        return Err(at_least_one("delivery.retry_hours"));
    }
    Ok(DeliveryConfig {
        max_attempts: d.max_attempts,
        retry_for: Duration::from_secs(d.retry_hours.saturating_mul(3600)),
        initial_backoff: Duration::from_millis(d.initial_backoff_ms.max(1)),
        max_backoff: Duration::from_secs(d.max_backoff_seconds.max(1)),
    })
}

fn destinations(
    raw: Vec<super::raw::RawDestination>,
    env: &dyn Env,
    resolve: &Resolver,
) -> Result<Vec<Destination>, SettingError> {
    let mut destinations: Vec<Destination> = Vec::with_capacity(raw.len());
    for (n, rd) in raw.into_iter().enumerate() {
        let mut d = build_destination(n, rd, env)?;
        d.tls_ca_file = d.tls_ca_file.as_deref().map(|p| resolve.path(p));
        if destinations.iter().any(|o| o.name == d.name) {
            return Err(SettingError::invalid(
                format!("destinations[{n}].name"),
                format!(
                    "{:?} is used twice; destination names must be unique",
                    d.name
                ),
            ));
        }
        destinations.push(d);
    }
    Ok(destinations)
}

fn ui(u: RawUi, env: &dyn Env) -> Result<Option<UiConfig>, SettingError> {
    let Some(var) = u.admin_token_env else {
        if u.listen.is_some() {
            return Err(SettingError::Conflict(
                "ui.listen is set but ui.admin_token_env is not: the console stays off without a token".into(),
            ));
        }
        return Ok(None);
    };
    let token =
        env.var(&var)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| SettingError::MissingEnv {
                key: "ui.admin_token_env".into(),
                var: var.clone(),
            })?;
    if token.chars().count() < MIN_ADMIN_TOKEN {
        return Err(SettingError::invalid(
            "ui.admin_token_env",
            format!("${var} is shorter than {MIN_ADMIN_TOKEN} characters"),
        ));
    }
    let listen = match u.listen {
        None => None,
        Some(l) => Some(l.parse::<SocketAddr>().map_err(|_| {
            SettingError::invalid(
                "ui.listen",
                format!("{l:?} is not an address like \"127.0.0.1:8081\""),
            )
        })?),
    };
    let external_url = match u.external_url {
        Some(url) if !(url.starts_with("https://") || url.starts_with("http://")) => {
            return Err(SettingError::invalid(
                "ui.external_url",
                format!("{url:?} is not an http(s) URL like \"https://hexwatch.example.com\""),
            ))
        }
        other => other.map(|u| u.trim_end_matches('/').to_string()),
    };
    let mut users: Vec<super::users::ConsoleUser> = Vec::new();
    for (n, u) in u.users.into_iter().enumerate() {
        let key = |k: &str| format!("ui.users[{n}].{k}");
        let name = u.name.trim().to_string();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(SettingError::invalid(
                key("name"),
                "give a name of 1 to 200 characters",
            ));
        }
        if users.iter().any(|x| x.name == name) {
            return Err(SettingError::invalid(
                key("name"),
                format!("{name:?} is listed twice"),
            ));
        }
        super::users::check_hash(&u.password_hash)
            .map_err(|e| SettingError::invalid(key("password_hash"), e.to_string()))?;
        users.push(super::users::ConsoleUser {
            name,
            password_hash: u.password_hash,
        });
    }
    Ok(Some(UiConfig {
        token_env: var,
        token,
        listen,
        external_url,
        users,
    }))
}
