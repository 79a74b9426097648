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

mod auth;
mod pages;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection};

use crate::alerts::rfc3339;
use crate::config::UiConfig;
use crate::health::Health;
use crate::hot_reload::SharedRules;
use crate::metrics::Metrics;
use hexwatch_storage::inspect::{AlertQuery, ConsoleQueries};
use hexwatch_storage::{Storage, StorageError};

pub use auth::Auth;

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
}

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
    pub severity: Option<String>,
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
        let triage = nonempty(&self.status);
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
    let api = api_routes(console.clone());
    let ui = pages::routes(console);
    api.or(ui).unify()
}

fn api_routes(
    console: Arc<Console>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let with = warp::any().map(move || console.clone());
    let auth = warp::header::optional::<String>("authorization")
        .and(warp::header::optional::<String>("cookie"))
        .and(warp::header::optional::<String>("x-csrf-token"));
    let list = warp::path!("api" / "alerts")
        .and(warp::get())
        .and(with.clone())
        .and(auth)
        .and(warp::query::<ListParams>())
        .then(api_list);
    let one = warp::path!("api" / "alerts" / String)
        .and(warp::get())
        .and(with.clone())
        .and(auth)
        .then(|id: String, c: Arc<Console>, a, k, x| async move {
            api_reply(async {
                c.auth.check(a, k, x, false)?;
                let d = c.query(move |db| db.alert_detail(&id)).await?;
                Ok(serde_json::to_value(d.ok_or(ApiError::NotFound)?).expect("serialisable"))
            })
            .await
        });
    let triage = warp::path!("api" / "alerts" / String / String)
        .and(warp::post())
        .and(with.clone())
        .and(auth)
        .and(warp::body::content_length_limit(MAX_BODY))
        .and(warp::body::json::<TriageBody>())
        .then(api_triage);
    let retry = warp::path!("api" / "deliveries" / i64 / "retry")
        .and(warp::post())
        .and(with.clone())
        .and(auth)
        .then(api_retry);
    let rules = warp::path!("api" / "rules")
        .and(warp::get())
        .and(with.clone())
        .and(auth)
        .then(api_rules);
    let quarantine = warp::path!("api" / "quarantine")
        .and(warp::get())
        .and(with.clone())
        .and(auth)
        .then(api_quarantine);
    let health = warp::path!("api" / "health")
        .and(warp::get())
        .and(with)
        .and(auth)
        .then(api_health);
    list.or(one)
        .unify()
        .or(triage)
        .unify()
        .or(retry)
        .unify()
        .or(rules)
        .unify()
        .or(quarantine)
        .unify()
        .or(health)
        .unify()
}

type Creds = Option<String>;

async fn api_list(c: Arc<Console>, a: Creds, k: Creds, x: Creds, p: ListParams) -> Response {
    api_reply(async {
        c.auth.check(a, k, x, false)?;
        let q = p.query()?;
        let page = q.offset / PAGE + 1;
        let mut rows = c.query(move |db| db.list_alerts(&q)).await?;
        let more = rows.len() as i64 > PAGE;
        rows.truncate(PAGE as usize);
        Ok(json!({ "alerts": rows, "page": page, "more": more }))
    })
    .await
}

async fn api_triage(
    id: String,
    action: String,
    c: Arc<Console>,
    a: Creds,
    k: Creds,
    x: Creds,
    body: TriageBody,
) -> Response {
    api_reply(async {
        let who = c.auth.check(a, k, x, true)?;
        let status = triage_status(&action).ok_or(ApiError::NotFound)?;
        let by = who.name(body.by.as_deref());
        let note: String = body.note.chars().take(MAX_NOTE).collect();
        let at = hexwatch_storage::now_ms();
        let done = c
            .query(move |db| db.set_triage(&id, status, &by, &note, at))
            .await?;
        if !done {
            return Err(ApiError::NotFound);
        }
        Ok(json!({ "status": status }))
    })
    .await
}

async fn api_retry(id: i64, c: Arc<Console>, a: Creds, k: Creds, x: Creds) -> Response {
    api_reply(async {
        c.auth.check(a, k, x, true)?;
        if !c.query(move |db| db.retry_delivery(id)).await? {
            return Err(ApiError::Conflict("no failed delivery with this id".into()));
        }
        Ok(json!({ "status": "pending" }))
    })
    .await
}

async fn api_rules(c: Arc<Console>, a: Creds, k: Creds, x: Creds) -> Response {
    api_reply(async {
        c.auth.check(a, k, x, false)?;
        Ok(c.rules_view().await?)
    })
    .await
}

async fn api_quarantine(c: Arc<Console>, a: Creds, k: Creds, x: Creds) -> Response {
    api_reply(async {
        c.auth.check(a, k, x, false)?;
        let rows = c.query(|db| db.recent_quarantine(PAGE)).await?;
        Ok(json!({ "quarantine": rows }))
    })
    .await
}

async fn api_health(c: Arc<Console>, a: Creds, k: Creds, x: Creds) -> Response {
    api_reply(async {
        c.auth.check(a, k, x, false)?;
        Ok(c.health_view().await?)
    })
    .await
}

/// Why an API request failed.
#[derive(Debug)]
pub enum ApiError {
    Unauthorized,
    Forbidden(String),
    NotFound,
    Conflict(String),
    Problem(Problem),
}

impl From<Problem> for ApiError {
    fn from(p: Problem) -> Self {
        match p {
            Problem::NotFound => ApiError::NotFound,
            p => ApiError::Problem(p),
        }
    }
}

async fn api_reply(
    f: impl std::future::Future<Output = Result<serde_json::Value, ApiError>>,
) -> Response {
    let (status, body) = match f.await {
        Ok(v) => (StatusCode::OK, v),
        Err(e) => {
            let (s, m) = match e {
                ApiError::Unauthorized => (
                    StatusCode::UNAUTHORIZED,
                    "send Authorization: Bearer <admin token>, or log in at /ui/login".into(),
                ),
                ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, m),
                ApiError::NotFound => (StatusCode::NOT_FOUND, "not found".into()),
                ApiError::Conflict(m) => (StatusCode::CONFLICT, m),
                ApiError::Problem(Problem::BadRequest(m)) => (StatusCode::BAD_REQUEST, m),
                ApiError::Problem(Problem::NotFound) => (StatusCode::NOT_FOUND, "not found".into()),
                ApiError::Problem(Problem::Internal) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error; the log has it".into(),
                ),
                ApiError::Problem(Problem::Storage(e)) => {
                    tracing::error!(error = %e, "console: storage error");
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "storage unavailable; the log has the error".into(),
                    )
                }
            };
            (s, json!({ "error": m }))
        }
    };
    let mut r = warp::reply::with_status(warp::reply::json(&body), status).into_response();
    pages::secure_headers(&mut r);
    r
}

use warp::Reply;

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
