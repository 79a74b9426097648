//! The JSON API of incidents and silences (`/api/incidents`, `/api/silences`):
//! lists with filters and a stable cursor, one incident with its alerts and
//! history, triage (acknowledge, resolve, reopen, assign, comment), and
//! silences made, changed and ended without a reload.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::api::{api_reply, ApiError, Creds};
use super::{Console, Problem, MAX_BODY, MAX_NOTE};
use crate::alerts::rfc3339;
use crate::incidents::message::{IncidentMessage, IncidentView};
use crate::incidents::silence::{check as check_matchers, MAX_SILENCE_DAYS};
use hexwatch_model::incident::{Matcher, Notice, Status};
use hexwatch_model::Severity;
use hexwatch_storage::incidents::{
    rank, Change, ChangeNotice, IncidentDetail, IncidentQuery, StoredIncident,
};
use hexwatch_storage::silences::Silence;

/// Incidents per page unless `limit` says (at most [`MAX_LIMIT`]).
const LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 500;

pub(super) fn routes(
    console: Arc<Console>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let with = warp::any().map(move || console.clone());
    let auth = warp::header::optional::<String>("authorization")
        .and(warp::header::optional::<String>("cookie"))
        .and(warp::header::optional::<String>("x-csrf-token"));
    let list = warp::path!("api" / "incidents")
        .and(warp::get())
        .and(with.clone())
        .and(auth)
        .and(raw_query())
        .then(list_incidents);
    let one = warp::path!("api" / "incidents" / String)
        .and(warp::get())
        .and(with.clone())
        .and(auth)
        .then(one_incident);
    let act = warp::path!("api" / "incidents" / String / String)
        .and(warp::post())
        .and(with.clone())
        .and(auth)
        .and(warp::body::content_length_limit(MAX_BODY))
        .and(warp::body::json::<ActionBody>())
        .then(act_on_incident);
    let silences = warp::path!("api" / "silences")
        .and(warp::get())
        .and(with.clone())
        .and(auth)
        .then(list_silences);
    let silence = warp::path!("api" / "silences")
        .and(warp::post())
        .and(with.clone())
        .and(auth)
        .and(warp::body::content_length_limit(MAX_BODY))
        .and(warp::body::json::<Value>())
        .then(create_silence);
    let edit = warp::path!("api" / "silences" / String)
        .and(warp::put())
        .and(with.clone())
        .and(auth)
        .and(warp::body::content_length_limit(MAX_BODY))
        .and(warp::body::json::<Value>())
        .then(edit_silence);
    let expire = warp::path!("api" / "silences" / String)
        .and(warp::delete())
        .and(with)
        .and(auth)
        .then(expire_silence);
    list.or(one)
        .unify()
        .or(act)
        .unify()
        .or(silences)
        .unify()
        .or(silence)
        .unify()
        .or(edit)
        .unify()
        .or(expire)
        .unify()
}

/// `GET /api/incidents` filters. Unknown parameters are refused by name.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncidentParams {
    pub status: Option<String>,
    /// At least this severity (`HIGH` lists CRITICAL too).
    pub severity: Option<String>,
    pub assignee: Option<String>,
    pub actor: Option<String>,
    pub ip: Option<String>,
    pub project: Option<String>,
    pub rule: Option<String>,
    /// Latest alert at or after this RFC 3339 time.
    pub since: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<i64>,
}

fn bad(what: String) -> ApiError {
    ApiError::Problem(Problem::BadRequest(what))
}

impl IncidentParams {
    pub fn query(&self) -> Result<IncidentQuery, ApiError> {
        let given = |v: &Option<String>| v.clone().filter(|s| !s.trim().is_empty());
        let status = given(&self.status);
        if let Some(s) = &status {
            if Status::parse(s).is_none() {
                return Err(bad(format!(
                    "status: {s:?} is not open, acknowledged or resolved"
                )));
            }
        }
        let min_severity = match given(&self.severity) {
            None => None,
            Some(s) => Some(
                Severity::parse(&s.to_ascii_uppercase())
                    .ok_or_else(|| bad(format!("severity: {s:?} is not a severity")))?,
            ),
        };
        let since_ms = match given(&self.since) {
            None => None,
            Some(t) => Some(
                chrono::DateTime::parse_from_rfc3339(&t)
                    .map_err(|_| bad(format!("since: {t:?} is not an RFC 3339 time")))?
                    .timestamp_millis(),
            ),
        };
        let limit = self.limit.unwrap_or(LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(bad(format!(
                "limit: {limit} is not between 1 and {MAX_LIMIT}"
            )));
        }
        let group = given(&self.actor)
            .map(|a| format!("actor:{a}"))
            .or_else(|| given(&self.ip).map(|i| format!("ip:{i}")));
        Ok(IncidentQuery {
            status,
            min_severity,
            assignee: given(&self.assignee),
            group,
            rule: given(&self.rule),
            project: given(&self.project),
            since_ms,
            after: given(&self.cursor).map(|c| parse_cursor(&c)).transpose()?,
            limit: limit + 1,
        })
    }
}

/// A list position: `rank.last_ms.id` of the last incident shown.
pub(super) fn cursor_of(i: &StoredIncident) -> String {
    format!(
        "{}.{}.{}",
        rank(i.incident.severity),
        i.incident.last_ms,
        i.incident.id
    )
}

fn parse_cursor(c: &str) -> Result<(i64, i64, String), ApiError> {
    let mut parts = c.splitn(3, '.');
    let parsed = (|| {
        let r = parts.next()?.parse().ok()?;
        let l = parts.next()?.parse().ok()?;
        let id = parts.next()?.to_string();
        Some((r, l, id))
    })();
    parsed.ok_or_else(|| bad(format!("cursor: {c:?} is not a cursor this API gave")))
}

/// An incident as lists show it.
pub fn summary(i: &StoredIncident) -> Value {
    let mut v = serde_json::to_value(IncidentView::of(i)).expect("serialisable");
    v["resolution"] = json!(i.resolution);
    v
}

/// The query string as sent (empty when there is none): parameters are
/// read in the handler, so a bad one is a 400 that names it.
pub(super) fn raw_query(
) -> impl Filter<Extract = (String,), Error = std::convert::Infallible> + Clone {
    warp::query::raw().or(warp::any().map(String::new)).unify()
}

/// Query parameters into `T`; an unknown or unreadable one is named.
pub fn params<T: serde::de::DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    serde_urlencoded::from_str(query).map_err(|e| bad(format!("query parameters: {e}")))
}

async fn list_incidents(c: Arc<Console>, a: Creds, k: Creds, x: Creds, query: String) -> Response {
    api_reply(async {
        c.check(a, k, x, false).await?;
        let q = params::<IncidentParams>(&query)?.query()?;
        let limit = q.limit - 1;
        let mut rows = c.query(move |db| db.list_incidents(&q)).await?;
        let next = (rows.len() as i64 > limit).then(|| cursor_of(&rows[limit as usize - 1]));
        rows.truncate(limit as usize);
        let list: Vec<Value> = rows.iter().map(summary).collect();
        Ok(json!({ "incidents": list, "next": next }))
    })
    .await
}

/// The incident with its alerts (samples included) and history.
pub fn detail_json(d: &IncidentDetail) -> Value {
    let mut v = summary(&d.stored);
    v["alerts"] = serde_json::to_value(&d.alerts).expect("serialisable");
    v["history"] = d
        .history
        .iter()
        .map(|h| json!({"at": rfc3339(h.at), "by": h.by, "what": h.what, "detail": h.detail}))
        .collect();
    v
}

async fn one_incident(id: String, c: Arc<Console>, a: Creds, k: Creds, x: Creds) -> Response {
    api_reply(async {
        c.check(a, k, x, false).await?;
        let d = c.query(move |db| db.incident_detail(&id)).await?;
        Ok(detail_json(&d.ok_or(ApiError::NotFound)?))
    })
    .await
}

/// `POST /api/incidents/{id}/{action}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionBody {
    pub note: Option<String>,
    pub assignee: Option<String>,
    pub text: Option<String>,
    /// `resolve`: why, e.g. `false_positive`.
    pub reason: Option<String>,
    /// An API client's name for the history (sessions use their own).
    pub by: Option<String>,
}

fn clip(s: &Option<String>) -> Option<String> {
    s.as_ref()
        .map(|t| t.trim().chars().take(MAX_NOTE).collect::<String>())
        .filter(|t| !t.is_empty())
}

/// The change an action asks for.
pub fn change_for(action: &str, body: &ActionBody) -> Result<Change, ApiError> {
    let status = |status, resolution| Change::Status {
        status,
        resolution,
        note: clip(&body.note),
    };
    Ok(match action {
        "ack" => status(Status::Acknowledged, None),
        "resolve" => status(Status::Resolved, clip(&body.reason)),
        "reopen" => status(Status::Open, None),
        "assign" => Change::Assign(clip(&body.assignee)),
        "comment" => Change::Comment(
            clip(&body.text).ok_or_else(|| bad("text: a comment needs text".into()))?,
        ),
        _ => return Err(ApiError::NotFound),
    })
}

/// Applies a change by `by`; an acknowledgement or resolution is sent to
/// every destination the incident was notified at.
pub async fn change_incident(
    c: &Arc<Console>,
    id: String,
    by: String,
    change: Change,
) -> Result<bool, ApiError> {
    let external_url = c.external_url.clone();
    let (who, note) = match &change {
        Change::Status { note, .. } => (by.clone(), note.clone()),
        _ => (by.clone(), None),
    };
    let notice = match &change {
        Change::Status {
            status: Status::Acknowledged,
            ..
        } => Some(Notice::Acknowledged),
        Change::Status {
            status: Status::Resolved,
            ..
        } => Some(Notice::Resolved),
        _ => None,
    };
    let done = c
        .query(move |db| {
            db.change_incident(&id, &by, &change, &mut |changed| {
                let kind = notice?;
                let mut m =
                    IncidentMessage::new(kind, changed, Vec::new(), 0, external_url.as_deref());
                (m.by, m.note) = (Some(who.clone()), note.clone());
                let at = hexwatch_storage::now_ms();
                Some(ChangeNotice {
                    notice: kind,
                    message_id: format!("{}.{}.{at}", changed.incident.id, kind.as_str()),
                    body: serde_json::to_string(&m).ok()?,
                })
            })
        })
        .await?;
    Ok(done)
}

async fn act_on_incident(
    id: String,
    action: String,
    c: Arc<Console>,
    a: Creds,
    k: Creds,
    x: Creds,
    body: ActionBody,
) -> Response {
    api_reply(async {
        let who = c.check(a, k, x, true).await?;
        let change = change_for(&action, &body)?;
        let by = who.name(body.by.as_deref());
        if !change_incident(&c, id.clone(), by, change).await? {
            return Err(ApiError::NotFound);
        }
        let d = c.query(move |db| db.incident_detail(&id)).await?;
        Ok(detail_json(&d.ok_or(ApiError::NotFound)?))
    })
    .await
}

/// A silence as the API shows it.
pub fn silence_json(s: &Silence, now: i64) -> Value {
    json!({
        "id": s.id, "matchers": s.matchers, "starts_at": rfc3339(s.starts_at),
        "ends_at": rfc3339(s.ends_at), "created_by": s.created_by, "comment": s.comment,
        "state": s.state(now), "matched": s.matched,
        "last_matched_at": s.last_matched_at.map(rfc3339),
    })
}

async fn list_silences(c: Arc<Console>, a: Creds, k: Creds, x: Creds) -> Response {
    api_reply(async {
        c.check(a, k, x, false).await?;
        let now = hexwatch_storage::now_ms();
        let rows = c.query(|db| db.list_silences(500)).await?;
        let list: Vec<Value> = rows.iter().map(|s| silence_json(s, now)).collect();
        Ok(json!({ "silences": list }))
    })
    .await
}

/// `POST /api/silences`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SilenceBody {
    pub matchers: Vec<Matcher>,
    pub ends_at: String,
    pub starts_at: Option<String>,
    #[serde(default)]
    pub comment: String,
    pub by: Option<String>,
}

fn time_field(name: &str, text: &str) -> Result<i64, ApiError> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .map_err(|_| bad(format!("{name}: {text:?} is not an RFC 3339 time")))
}

/// A silence from the request, checked: matchers, a start before its end,
/// an end in the future and at most [`MAX_SILENCE_DAYS`] away.
pub fn silence_from(body: Value, by: &dyn Fn(Option<&str>) -> String) -> Result<Silence, ApiError> {
    let body: SilenceBody =
        serde_json::from_value(body).map_err(|e| bad(format!("silence: {e}")))?;
    check_matchers(&body.matchers).map_err(|e| bad(e.to_string()))?;
    let now = hexwatch_storage::now_ms();
    let ends_at = time_field("ends_at", &body.ends_at)?;
    let starts_at = match &body.starts_at {
        Some(t) => time_field("starts_at", t)?,
        None => now,
    };
    if ends_at <= now || ends_at <= starts_at {
        return Err(bad(
            "ends_at: must be in the future and after starts_at".into()
        ));
    }
    if ends_at - now > MAX_SILENCE_DAYS * 86_400_000 {
        return Err(bad(format!(
            "ends_at: a silence lasts at most {MAX_SILENCE_DAYS} days; use a [[suppressions]] entry in config.toml for lasting tuning"
        )));
    }
    Ok(Silence {
        id: format!("sil-{:016x}", rand::random::<u64>()),
        matchers: body.matchers,
        starts_at,
        ends_at,
        created_by: by(body.by.as_deref()),
        comment: body.comment.chars().take(MAX_NOTE).collect(),
        created_at: now,
        matched: 0,
        last_matched_at: None,
    })
}

async fn create_silence(c: Arc<Console>, a: Creds, k: Creds, x: Creds, body: Value) -> Response {
    let made = async {
        let who = c.check(a, k, x, true).await?;
        let silence = silence_from(body, &|claimed| who.name(claimed))?;
        let id = silence.id.clone();
        c.query(move |db| db.create_silence(&silence)).await?;
        Ok(json!({ "id": id }))
    };
    let mut r = api_reply(made).await;
    if r.status() == StatusCode::OK {
        *r.status_mut() = StatusCode::CREATED;
    }
    r.into_response()
}

/// `PUT /api/silences/{id}`: new matchers, times or comment for a silence
/// that has not ended (its creator and count stay).
async fn edit_silence(
    id: String,
    c: Arc<Console>,
    a: Creds,
    k: Creds,
    x: Creds,
    body: Value,
) -> Response {
    api_reply(async {
        let who = c.check(a, k, x, true).await?;
        let mut silence = silence_from(body, &|claimed| who.name(claimed))?;
        silence.id = id;
        let now = hexwatch_storage::now_ms();
        let edited = silence.clone();
        if !c.query(move |db| db.edit_silence(&edited, now)).await? {
            return Err(ApiError::NotFound);
        }
        Ok(silence_json(&silence, now))
    })
    .await
}

async fn expire_silence(id: String, c: Arc<Console>, a: Creds, k: Creds, x: Creds) -> Response {
    api_reply(async {
        c.check(a, k, x, true).await?;
        let now = hexwatch_storage::now_ms();
        if !c.query(move |db| db.expire_silence(&id, now)).await? {
            return Err(ApiError::NotFound);
        }
        Ok(json!({ "state": "expired" }))
    })
    .await
}
