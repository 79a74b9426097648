//! The console (`/ui`) and its JSON API (`/api`): alerts with their events and
//! delivery history, triage (acknowledge, resolve, retry a failed delivery),
//! rules, quarantine and ingest health. Off unless `ui.admin_token_env` is set.
//!
//! Security: audit records carry attacker-controlled text, so every page is a
//! template that escapes by default, served with a Content-Security-Policy that
//! allows no script at all. The admin token (compared in constant time) either
//! comes with each API request (`Authorization: Bearer`) or is exchanged once for
//! a signed, HttpOnly, SameSite=Strict session cookie; every state-changing
//! request under a cookie needs a CSRF token derived from that cookie. Sessions
//! are signed with a key derived from the token, so any replica accepts them.

mod api;
mod auth;
mod incident_pages;
mod incidents_api;
mod pages;
pub mod users;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use warp::reply::Response;
use warp::{Filter, Rejection};

use crate::alerts::rfc3339;
use crate::config::UiConfig;
use crate::health::Health;
use crate::hot_reload::SharedRules;
use crate::metrics::Metrics;
use hexwatch_storage::inspect::{AlertQuery, ConsoleQueries};
use hexwatch_storage::{Storage, StorageError};

pub use api::ApiError;
pub use auth::{Auth, Who};

/// Alerts per page.
pub const PAGE: i64 = 50;
/// Largest form or JSON body the console accepts.
const MAX_BODY: u64 = 16 * 1024;

/// What the console reads from.
pub struct Console {
    db: Mutex<Box<dyn ConsoleQueries>>,
    storage: Storage,
    pub auth: Auth,
    rules: SharedRules,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    /// Records accepted per second, sampled every few seconds.
    ingest_rate: AtomicU64,
    /// Turns for answering a wrong credential (see [`Console::refuse_guess`]).
    guesses: tokio::sync::Semaphore,
    /// `ui.external_url`: where notifications link to.
    pub external_url: Option<String>,
    /// Named users (`[[ui.users]]`); none: the admin token opens the console.
    pub(super) users: Vec<users::ConsoleUser>,
}

impl crate::server::Trust for Console {
    /// Whether a request carries the admin token or a session (signature
    /// and expiry; a logged-out session is refused later, by the handler).
    fn trusted(&self, headers: &warp::http::HeaderMap) -> bool {
        let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
        self.auth
            .who(text("authorization"), text("cookie"))
            .is_some()
    }
}

/// Wrong credentials answered at once, each after [`GUESS_DELAY`]: at most
/// eight guesses a second however many clients try, and a flood of wrong
/// guesses is refused (429) instead of queueing.
const GUESSES_AT_ONCE: usize = 4;
const GUESS_DELAY: Duration = Duration::from_millis(500);

/// Why a console request failed.
#[derive(Debug)]
pub enum Problem {
    NotFound,
    BadRequest(String),
    Storage(StorageError),
    /// A storage call that panicked (logged where it happened).
    Internal,
}

impl Console {
    pub fn new(
        config: &UiConfig,
        storage: &Storage,
        rules: SharedRules,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
        secure_cookie: bool,
    ) -> Result<Arc<Console>, StorageError> {
        Ok(Arc::new(Console {
            db: Mutex::new(storage.console()?),
            storage: storage.clone(),
            auth: Auth::new(&config.token, secure_cookie),
            rules,
            health,
            metrics,
            ingest_rate: AtomicU64::new(0),
            guesses: tokio::sync::Semaphore::new(GUESSES_AT_ONCE),
            external_url: config.external_url.clone(),
            users: config.users.clone(),
        }))
    }

    /// Samples the ingest rate until `stop`.
    pub async fn sample_rate(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        const EVERY: Duration = Duration::from_secs(5);
        let mut last = self.metrics.events_accepted.get();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(EVERY) => {}
            }
            let now = self.metrics.events_accepted.get();
            self.ingest_rate
                .store((now - last) / EVERY.as_secs(), Ordering::Relaxed);
            last = now;
        }
    }

    /// Checks an API request (see [`Auth::check`]), refusing a session that
    /// was logged out, and slowing every wrong credential.
    async fn check(
        self: &Arc<Self>,
        authorization: Option<String>,
        cookie: Option<String>,
        csrf: Option<String>,
        changes: bool,
    ) -> Result<Who, ApiError> {
        let presented = authorization.is_some() || cookie.is_some();
        let checked = match self.auth.check(authorization, cookie, csrf, changes) {
            Ok(who) => self.unless_ended(who).await.ok_or(ApiError::Unauthorized),
            Err(e) => Err(e),
        };
        match checked {
            Err(ApiError::Unauthorized) if presented => Err(self.refuse_guess().await),
            other => other,
        }
    }

    /// The session, unless it was logged out; a Bearer client as it is.
    pub async fn unless_ended(self: &Arc<Self>, who: Who) -> Option<Who> {
        let Who::Session { cookie, .. } = &who else {
            return Some(who);
        };
        let signature = Auth::signature(cookie).to_string();
        match self.query(move |db| db.session_ended(&signature)).await {
            Ok(false) => Some(who),
            _ => None,
        }
    }

    /// Ends a session everywhere (every replica reads the same storage).
    pub async fn end_session(self: &Arc<Self>, cookie: &str) -> Result<(), Problem> {
        let signature = Auth::signature(cookie).to_string();
        let expires = Auth::expiry(cookie);
        self.query(move |db| db.end_session(&signature, expires))
            .await
    }

    /// A wrong credential: answered after [`GUESS_DELAY`], or at once with
    /// 429 while [`GUESSES_AT_ONCE`] others are being answered.
    pub async fn refuse_guess(&self) -> ApiError {
        match self.guesses.try_acquire() {
            Ok(_turn) => {
                tracing::warn!("console: a wrong admin token or session");
                tokio::time::sleep(GUESS_DELAY).await;
                ApiError::Unauthorized
            }
            Err(_) => ApiError::TooManyGuesses,
        }
    }

    /// Runs a storage call off the async threads; a broken connection is replaced.
    async fn query<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut dyn ConsoleQueries) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, Problem> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut db = me.db.lock();
            let result = f(db.as_mut());
            if result.is_err() {
                // A dropped PostgreSQL connection: the next request gets a new one.
                if let Ok(fresh) = me.storage.console() {
                    *db = fresh;
                }
            }
            result.map_err(Problem::Storage)
        })
        .await
        .map_err(|_| Problem::Internal)?
    }

    /// The rules page's data: every loaded rule with its activity over 24 hours,
    /// and the files that do not load.
    async fn rules_view(self: &Arc<Self>) -> Result<serde_json::Value, Problem> {
        let since = rfc3339(hexwatch_storage::now_ms() - 24 * 3600 * 1000);
        let activity = self.query(move |db| db.rule_activity(&since)).await?;
        let rules = self.rules.load();
        let mut list: Vec<serde_json::Value> = rules
            .rules()
            .iter()
            .map(|r| {
                let a = activity.iter().find(|a| a.rule_id == r.meta.id);
                json!({
                    "id": r.meta.id,
                    "severity": r.meta.severity.as_str(),
                    "enabled": r.meta.enabled,
                    "description": r.meta.description,
                    "file": r.file.file_name().map(|f| f.to_string_lossy().into_owned()),
                    "alerts_24h": a.map_or(0, |a| a.alerts),
                    "matches_24h": a.map_or(0, |a| a.matches),
                    "last_fired": a.and_then(|a| a.last_fired.clone()),
                    "evaluations": r.counters.evaluations.get(),
                })
            })
            .collect();
        list.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
        Ok(json!({ "rules": list, "broken": self.health.rule_errors() }))
    }

    async fn health_view(self: &Arc<Self>) -> Result<serde_json::Value, Problem> {
        let queue = self.query(|db| db.queue_depth()).await?;
        let r = self.health.readiness();
        Ok(json!({
            "ready": r.ready,
            "evaluator": r.evaluator,
            "problems": r.problems,
            "records_per_second": self.ingest_rate.load(Ordering::Relaxed),
            "records_accepted": self.metrics.events_accepted.get(),
            "records_quarantined": self.metrics.events_quarantined.get(),
            "evaluator_lag": self.metrics.evaluator_lag.get(),
            "delivery_queue": queue,
            "rules_loaded": self.metrics.rules_loaded.get(),
            "rules_broken": self.health.rule_errors().len(),
        }))
    }
}

/// The alert list's filters as they come in a query string.
#[derive(Debug, Default, Deserialize)]
pub struct ListParams {
    /// Exactly this severity.
    pub severity: Option<String>,
    /// At least this severity (HIGH lists CRITICAL too).
    pub min_severity: Option<String>,
    pub rule: Option<String>,
    pub status: Option<String>,
    /// `24h`, `7d` or an RFC 3339 time.
    pub since: Option<String>,
    pub page: Option<i64>,
}

impl ListParams {
    fn query(&self) -> Result<AlertQuery, Problem> {
        let nonempty = |v: &Option<String>| v.clone().filter(|s| !s.trim().is_empty());
        let severity = nonempty(&self.severity).map(|s| s.to_ascii_uppercase());
        if let Some(s) = &severity {
            if hexwatch_model::Severity::parse(s).is_none() {
                return Err(Problem::BadRequest(format!(
                    "severity: {s:?} is not a severity"
                )));
            }
        }
        let min_rank = match nonempty(&self.min_severity).map(|s| s.to_ascii_uppercase()) {
            None => 0,
            Some(s) => {
                hexwatch_storage::incidents::rank(hexwatch_model::Severity::parse(&s).ok_or_else(
                    || Problem::BadRequest(format!("min_severity: {s:?} is not a severity")),
                )?)
            }
        };
        let triage = nonempty(&self.status).filter(|s| s != "any");
        if let Some(t) = &triage {
            if !TRIAGE.contains(&t.as_str()) {
                return Err(Problem::BadRequest(format!(
                    "status: {t:?} is not open, acknowledged or resolved"
                )));
            }
        }
        let since = match nonempty(&self.since) {
            None => None,
            Some(s) => Some(since(&s).ok_or_else(|| {
                Problem::BadRequest(format!(
                    "since: {s:?} is neither a span such as 24h or 7d nor an RFC 3339 time"
                ))
            })?),
        };
        // Far past any real list, and no overflow in the offset.
        let page = self.page.unwrap_or(1).clamp(1, 1_000_000);
        Ok(AlertQuery {
            severity,
            min_rank,
            rule: nonempty(&self.rule),
            triage,
            since,
            limit: PAGE + 1, // one more tells whether there is a next page
            offset: (page - 1) * PAGE,
        })
    }
}

const TRIAGE: [&str; 3] = ["open", "acknowledged", "resolved"];

/// `24h`, `30m`, `7d` back from now, or an RFC 3339 time, as RFC 3339 (UTC, ms).
fn since(s: &str) -> Option<String> {
    let s = s.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(rfc3339(t.timestamp_millis()));
    }
    let unit = s.chars().last()?;
    let n: i64 = s[..s.len() - unit.len_utf8()]
        .parse()
        .ok()
        .filter(|n| *n >= 0)?;
    let ms = match unit {
        'm' => n.checked_mul(60_000)?,
        'h' => n.checked_mul(3_600_000)?,
        'd' => n.checked_mul(86_400_000)?,
        _ => return None,
    };
    Some(rfc3339(hexwatch_storage::now_ms().saturating_sub(ms)))
}

/// What an acknowledge or resolve says.
#[derive(Debug, Deserialize)]
pub struct TriageBody {
    #[serde(default)]
    pub note: String,
    /// Who (API clients say; the console takes it from the session).
    #[serde(default)]
    pub by: Option<String>,
    /// The CSRF token (forms).
    #[serde(default)]
    pub csrf: String,
}

/// Longest note kept.
const MAX_NOTE: usize = 2000;

fn triage_status(action: &str) -> Option<&'static str> {
    match action {
        "ack" => Some("acknowledged"),
        "resolve" => Some("resolved"),
        "reopen" => Some("open"),
        _ => None,
    }
}

/// The console's routes (`/ui/...`, `/api/...`); other paths are rejected as
/// not found, for the routes behind it.
pub fn routes(
    console: Arc<Console>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let api = api::api_routes(console.clone());
    let incidents = incidents_api::routes(console.clone());
    let ui = pages::routes(console);
    api.or(incidents).unify().or(ui).unify()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_filters_refuse_what_they_cannot_read() {
        assert!(since("24h").is_some() && since("7d").is_some() && since("30m").is_some());
        assert_eq!(
            since("2024-03-05T18:00:00+01:00").unwrap(),
            "2024-03-05T17:00:00.000Z"
        );
        for bad in ["", "h", "1é", "é", "-1d", "99999999999999999d", "soon"] {
            assert!(since(bad).is_none(), "{bad:?}");
        }
        let p = ListParams {
            page: Some(i64::MAX),
            ..ListParams::default()
        };
        assert_eq!(p.query().ok().unwrap().offset, 999_999 * PAGE);
        let p = ListParams {
            severity: Some("severe".into()),
            ..ListParams::default()
        };
        assert!(matches!(p.query(), Err(Problem::BadRequest(_))));
    }
}
