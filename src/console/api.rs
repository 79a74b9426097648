//! The console's JSON API (`/api/...`): the admin token as a Bearer token,
//! or a session cookie with its CSRF token for changes.

use std::sync::Arc;

use futures_util::stream;
use serde_json::json;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::{
    pages, triage_status, Console, ListParams, Problem, TriageBody, MAX_BODY, MAX_NOTE, PAGE,
};

/// Characters of a quarantined record read from the storage at a time: the
/// whole record streams out in parts, so a 16 MB record never sits whole in
/// memory, and many at once cannot add up.
const RAW_PART: i64 = 256 * 1024;

pub(super) fn api_routes(
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
                c.check(a, k, x, false).await?;
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
    let raw = warp::path!("api" / "quarantine" / i64 / "raw")
        .and(warp::get())
        .and(with.clone())
        .and(auth)
        .then(api_quarantine_raw);
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
        .or(raw)
        .unify()
        .or(health)
        .unify()
}

pub(super) type Creds = Option<String>;

async fn api_list(c: Arc<Console>, a: Creds, k: Creds, x: Creds, p: ListParams) -> Response {
    api_reply(async {
        c.check(a, k, x, false).await?;
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
        let who = c.check(a, k, x, true).await?;
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
        c.check(a, k, x, true).await?;
        if !c.query(move |db| db.retry_delivery(id)).await? {
            return Err(ApiError::Conflict("no failed delivery with this id".into()));
        }
        Ok(json!({ "status": "pending" }))
    })
    .await
}

async fn api_rules(c: Arc<Console>, a: Creds, k: Creds, x: Creds) -> Response {
    api_reply(async {
        c.check(a, k, x, false).await?;
        Ok(c.rules_view().await?)
    })
    .await
}

async fn api_quarantine(c: Arc<Console>, a: Creds, k: Creds, x: Creds) -> Response {
    api_reply(async {
        c.check(a, k, x, false).await?;
        let rows = c.query(|db| db.recent_quarantine(PAGE)).await?;
        Ok(json!({ "quarantine": rows }))
    })
    .await
}

/// One quarantined record, whole, as sent: plain text to download, never
/// rendered; read from the storage a part at a time.
async fn api_quarantine_raw(id: i64, c: Arc<Console>, a: Creds, k: Creds, x: Creds) -> Response {
    if let Err(e) = c.check(a, k, x, false).await {
        return api_reply(async { Err(e) }).await;
    }
    let first = match c.query(move |db| db.quarantine_part(id, 1, RAW_PART)).await {
        Ok(Some(part)) => part,
        Ok(None) => return api_reply(async { Err(ApiError::NotFound) }).await,
        Err(p) => return api_reply(async { Err(ApiError::from(p)) }).await,
    };
    // (the part just read, where the next starts; none after a short part)
    let parts = stream::unfold(Some((first, 1 + RAW_PART)), move |state| {
        let c = c.clone();
        async move {
            let (part, next) = state?;
            let more = part.chars().count() as i64 == RAW_PART;
            let following = if more {
                match c
                    .query(move |db| db.quarantine_part(id, next, RAW_PART))
                    .await
                {
                    Ok(Some(p)) if !p.is_empty() => Some((p, next + RAW_PART)),
                    Ok(_) => None,
                    Err(_) => return Some((Err(std::io::Error::other("storage")), None)),
                }
            } else {
                None
            };
            Some((Ok::<_, std::io::Error>(part), following))
        }
    });
    let mut r = warp::reply::stream(parts).into_response();
    let h = r.headers_mut();
    h.insert(
        "content-type",
        "text/plain; charset=utf-8".parse().expect("valid"),
    );
    let disposition = format!("attachment; filename=\"quarantine-{id}.txt\"");
    h.insert("content-disposition", disposition.parse().expect("ASCII"));
    pages::secure_headers(&mut r);
    r
}

async fn api_health(c: Arc<Console>, a: Creds, k: Creds, x: Creds) -> Response {
    api_reply(async {
        c.check(a, k, x, false).await?;
        Ok(c.health_view().await?)
    })
    .await
}

/// Why an API request failed.
#[derive(Debug)]
pub enum ApiError {
    Unauthorized,
    /// Too many wrong credentials being answered at once.
    TooManyGuesses,
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

pub(super) async fn api_reply(
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
                ApiError::TooManyGuesses => (
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many wrong credentials at once; try again in a second".into(),
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
