//! Secrets come from the environment, never the file: the [`Env`] a config is
//! built with, `${VAR}` expansion, and how a setting that holds a secret is
//! shown in logs and stored errors.

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

/// The environment of a command that sends nothing (`check`, `test`,
/// `coverage`, `replay` without `--dispatch`, `redeliver`): a secret that is
/// not exported reads as [`UNSET`] and is noted, so rule authors and deploy
/// pipelines run them without production secrets.
pub struct Offline<'a> {
    inner: &'a dyn Env,
    missing: std::cell::RefCell<Vec<String>>,
}

/// What an unexported secret reads as offline: valid wherever a secret goes
/// (a URL, a header, a token of 16 characters or more), and never sent.
pub const UNSET: &str = "https://unset.invalid/";

impl<'a> Offline<'a> {
    pub fn new(inner: &'a dyn Env) -> Offline<'a> {
        Offline {
            inner,
            missing: Default::default(),
        }
    }

    /// The variables that were asked for and are not exported, each once.
    pub fn missing(&self) -> Vec<String> {
        let mut names = self.missing.borrow().clone();
        names.sort();
        names.dedup();
        names
    }
}

impl Env for Offline<'_> {
    fn var(&self, name: &str) -> Option<String> {
        let value = self.inner.var(name).filter(|v| !v.is_empty());
        if value.is_none() {
            self.missing.borrow_mut().push(name.to_string());
        }
        Some(value.unwrap_or_else(|| UNSET.to_string()))
    }
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

/// Why a `${VAR}` in a setting could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("unterminated ${{ in {0:?}")]
    Unterminated(String),
    #[error("environment variable {0} is not set (export it before starting hexwatch)")]
    Unset(String),
}

/// `expand_env`, also collecting the expanded values (the secrets to scrub).
pub(super) fn expand_env_into(
    s: &str,
    env: &dyn Env,
    values: &mut Vec<String>,
) -> Result<String, EnvError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| EnvError::Unterminated(s.to_string()))?;
        let name = &after[..end];
        let value = env
            .var(name)
            .ok_or_else(|| EnvError::Unset(name.to_string()))?;
        out.push_str(&value);
        values.push(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Replaces every `${VAR}` with the variable's value; an unset variable is an error.
pub fn expand_env(s: &str, env: &dyn Env) -> Result<String, EnvError> {
    expand_env_into(s, env, &mut Vec::new())
}
