//! The console's incident and silence pages: the incident list ("open,
//! MEDIUM and above" by default, worst first), an incident with its alerts
//! and history and the triage forms (acknowledge, resolve, reopen, assign,
//! comment, silence similar), bulk actions, and silences.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{json, Value};
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::auth::Who;
use super::incidents_api::{
    change_for, change_incident, cursor_of, detail_json, params, raw_query, silence_from,
    silence_json, summary, ActionBody, IncidentParams,
};
use super::pages::{csrf_refusal, form, html, page, problem_page, redirect, url_segment};
use super::{ApiError, Console, Problem, MAX_BODY};
use crate::alerts::rfc3339;
use hexwatch_model::incident::Matcher;
use hexwatch_model::Severity;

/// A silence that held nothing back for this long is flagged.
const IDLE_MS: i64 = 7 * 86_400_000;
/// A silence that ends within this is listed as ending.
const ENDING_MS: i64 = 86_400_000;

pub(super) fn routes(
    authed: impl Filter<Extract = (Arc<Console>, Who), Error = Rejection>
        + Clone
        + Send
        + Sync
        + 'static,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let list = warp::path!("ui" / "incidents")
        .and(warp::get())
        .and(authed.clone())
        .and(raw_query())
        .then(incidents_page);
    let bulk = warp::path!("ui" / "incidents" / "bulk")
        .and(warp::post())
        .and(authed.clone())
        .and(warp::body::content_length_limit(MAX_BODY))
        .and(warp::body::form::<Vec<(String, String)>>())
        .then(bulk_action);
    let one = warp::path!("ui" / "incidents" / String)
        .and(warp::get())
        .and(authed.clone())
        .then(incident_page);
    let act = warp::path!("ui" / "incidents" / String / String)
        .and(warp::post())
        .and(authed.clone())
        .and(form())
        .then(incident_action);
    let silences = warp::path!("ui" / "silences")
        .and(warp::get())
        .and(authed.clone())
        .and(raw_query())
        .then(silences_page);
    let create = warp::path!("ui" / "silences")
        .and(warp::post())
        .and(authed.clone())
        .and(form())
        .then(create_silence);
    let expire = warp::path!("ui" / "silences" / String / "expire")
        .and(warp::post())
        .and(authed)
        .and(form())
        .then(expire_silence);
    list.or(bulk)
        .unify()
        .or(one)
        .unify()
        .or(act)
        .unify()
        .or(silences)
        .unify()
        .or(create)
        .unify()
        .or(expire)
        .unify()
}

fn api_problem(w: &Who, c: &Console, e: ApiError) -> Response {
    match e {
        ApiError::NotFound => problem_page(w, c, Problem::NotFound),
        ApiError::Problem(p) => problem_page(w, c, p),
        other => problem_page(w, c, Problem::BadRequest(format!("{other:?}"))),
    }
}

/// The list's filters: `open` and `MEDIUM` unless the page asks otherwise
/// (`status=any` lists every status).
fn list_filters(query: &str) -> Result<IncidentParams, ApiError> {
    let mut p: IncidentParams = params(query)?;
    if query.is_empty() {
        p.status = Some("open".into());
        p.severity = Some(Severity::Medium.to_string());
    }
    if p.status.as_deref() == Some("any") {
        p.status = None;
    }
    Ok(p)
}

async fn incidents_page(c: Arc<Console>, w: Who, query: String) -> Response {
    let p = match list_filters(&query) {
        Ok(p) => p,
        Err(e) => return api_problem(&w, &c, e),
    };
    let q = match p.query() {
        Ok(q) => q,
        Err(e) => return api_problem(&w, &c, e),
    };
    let limit = (q.limit - 1) as usize;
    let rows = match c.query(move |db| db.list_incidents(&q)).await {
        Ok(r) => r,
        Err(e) => return problem_page(&w, &c, e),
    };
    let next = rows.get(limit).map(|_| {
        let cursor = cursor_of(&rows[limit - 1]);
        let mut s = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            if k != "cursor" {
                s.append_pair(&k, &v);
            }
        }
        s.append_pair("cursor", &cursor);
        format!("/ui/incidents?{}", s.finish())
    });
    let list: Vec<Value> = rows.iter().take(limit).map(summary).collect();
    let shown = |v: &Option<String>| v.clone().unwrap_or_default();
    let ctx = json!({
        "incidents": list,
        "filter": {
            "status": p.status.clone().unwrap_or_else(|| "any".into()),
            "severity": shown(&p.severity).to_ascii_uppercase(),
            "actor": shown(&p.actor), "ip": shown(&p.ip), "project": shown(&p.project),
            "rule": shown(&p.rule), "assignee": shown(&p.assignee),
        },
        "severities": ["CRITICAL", "HIGH", "MEDIUM", "LOW", "INFO"],
        "statuses": ["open", "acknowledged", "resolved"],
        "next": next,
    });
    html(
        StatusCode::OK,
        "incidents.html",
        page(&c, &w, "incidents", ctx),
    )
}

async fn incident_page(id: String, c: Arc<Console>, w: Who) -> Response {
    let d = match c.query(move |db| db.incident_detail(&id)).await {
        Ok(Some(d)) => d,
        Ok(None) => return problem_page(&w, &c, Problem::NotFound),
        Err(e) => return problem_page(&w, &c, e),
    };
    // "Silence similar": the incident's key and its rules.
    let mut similar = url::form_urlencoded::Serializer::new(String::new());
    similar.append_pair("incident", &d.stored.incident.id);
    if let Some((field, value)) = d.stored.incident.group_key.split_once(':') {
        if field != "alert" {
            similar
                .append_pair("field0", field)
                .append_pair("value0", value);
        }
    }
    if let [rule] = d.stored.incident.rules.as_slice() {
        similar
            .append_pair("field1", "rule")
            .append_pair("value1", rule);
    }
    let ctx = json!({ "i": detail_json(&d), "similar": similar.finish() });
    html(
        StatusCode::OK,
        "incident.html",
        page(&c, &w, "incidents", ctx),
    )
}

fn body_of(f: &HashMap<String, String>) -> ActionBody {
    let get = |k: &str| f.get(k).cloned().filter(|v| !v.trim().is_empty());
    ActionBody {
        note: get("note"),
        assignee: get("assignee"),
        text: get("text"),
        reason: get("reason"),
        by: None,
    }
}

async fn incident_action(
    id: String,
    action: String,
    c: Arc<Console>,
    w: Who,
    f: HashMap<String, String>,
) -> Response {
    if let Some(r) = csrf_refusal(&c, &w, &f) {
        return r;
    }
    let change = match change_for(&action, &body_of(&f)) {
        Ok(ch) => ch,
        Err(e) => return api_problem(&w, &c, e),
    };
    let target = format!("/ui/incidents/{}", url_segment(&id));
    match change_incident(&c, id, w.name(None), change).await {
        Ok(true) => redirect(&target, None),
        Ok(false) => problem_page(&w, &c, Problem::NotFound),
        Err(e) => api_problem(&w, &c, e),
    }
}

async fn bulk_action(c: Arc<Console>, w: Who, f: Vec<(String, String)>) -> Response {
    let map: HashMap<String, String> = f.iter().cloned().collect();
    if let Some(r) = csrf_refusal(&c, &w, &map) {
        return r;
    }
    let action = map.get("action").cloned().unwrap_or_default();
    let ids: Vec<String> = f
        .into_iter()
        .filter(|(k, _)| k == "id")
        .map(|(_, v)| v)
        .collect();
    for id in ids {
        let change = match change_for(&action, &ActionBody::default()) {
            Ok(ch) => ch,
            Err(e) => return api_problem(&w, &c, e),
        };
        if let Err(e) = change_incident(&c, id, w.name(None), change).await {
            return api_problem(&w, &c, e);
        }
    }
    redirect("/ui/incidents", None)
}

/// The silence form's matchers, pre-filled from `fieldN`/`opN`/`valueN`
/// (three rows, blank ones ignored when the form comes back).
fn draft_matchers(query: &HashMap<String, String>) -> Vec<Matcher> {
    (0..3)
        .map(|n| {
            let get = |k: &str| query.get(&format!("{k}{n}")).cloned().unwrap_or_default();
            let field = get("field");
            let op = match get("op").as_str() {
                "" if field == "ip" && get("value").contains('/') => "cidr".to_string(),
                "" => "=".to_string(),
                op => op.to_string(),
            };
            Matcher {
                field,
                op,
                value: get("value"),
            }
        })
        .collect()
}

async fn silences_page(c: Arc<Console>, w: Who, query: String) -> Response {
    let asked: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let rows = match c.query(|db| db.list_silences(500)).await {
        Ok(r) => r,
        Err(e) => return problem_page(&w, &c, e),
    };
    let now = hexwatch_storage::now_ms();
    let list: Vec<Value> = rows
        .iter()
        .map(|s| {
            let mut v = silence_json(s, now);
            let active = s.active(now);
            let last = s.last_matched_at.unwrap_or(s.starts_at.max(s.created_at));
            v["idle"] = json!(active && now - last > IDLE_MS);
            v["ending"] = json!(active && s.ends_at - now < ENDING_MS);
            v
        })
        .collect();
    // Editing a silence: the form comes filled with it.
    let editing = asked
        .get("edit")
        .and_then(|id| rows.iter().find(|s| &s.id == id && s.ends_at > now));
    let matchers = match editing {
        Some(s) => {
            let mut m = s.matchers.clone();
            m.resize(
                3,
                Matcher {
                    field: String::new(),
                    op: "=".into(),
                    value: String::new(),
                },
            );
            m
        }
        None => draft_matchers(&asked),
    };
    let draft = json!({
        "matchers": matchers, "incident": asked.get("incident"),
        "edit": editing.map(|s| &s.id), "comment": editing.map(|s| &s.comment),
    });
    let ctx = json!({ "silences": list, "draft": draft });
    html(
        StatusCode::OK,
        "silences.html",
        page(&c, &w, "silences", ctx),
    )
}

async fn create_silence(c: Arc<Console>, w: Who, f: HashMap<String, String>) -> Response {
    if let Some(r) = csrf_refusal(&c, &w, &f) {
        return r;
    }
    let matchers: Vec<Matcher> = draft_matchers(&f)
        .into_iter()
        .filter(|m| !m.field.trim().is_empty() || !m.value.is_empty())
        .collect();
    let hours: i64 = f.get("hours").and_then(|h| h.parse().ok()).unwrap_or(24);
    let ends = chrono::Utc::now() + chrono::Duration::hours(hours.clamp(1, 24 * 90));
    let body = json!({
        "matchers": matchers, "ends_at": ends.to_rfc3339(),
        "comment": f.get("comment").cloned().unwrap_or_default(),
    });
    let silence = match silence_from(body, &|_| w.name(None)) {
        Ok(s) => s,
        Err(e) => return api_problem(&w, &c, e),
    };
    if let Some(id) = f.get("edit").filter(|i| !i.is_empty()) {
        let mut edited = silence;
        edited.id = id.clone();
        let now = hexwatch_storage::now_ms();
        return match c.query(move |db| db.edit_silence(&edited, now)).await {
            Ok(true) => redirect("/ui/silences", None),
            Ok(false) => problem_page(&w, &c, Problem::NotFound),
            Err(e) => problem_page(&w, &c, e),
        };
    }
    // Made from an incident's "Silence similar": its history says so.
    let incident = f.get("incident").filter(|i| !i.is_empty()).cloned();
    let by = w.name(None);
    let made = c
        .query(move |db| {
            db.create_silence(&silence)?;
            let Some(id) = incident else { return Ok(None) };
            let what: Vec<String> = silence
                .matchers
                .iter()
                .map(|m| format!("{} {} {}", m.field, m.op, m.value))
                .collect();
            let detail = format!("{} (until {})", what.join(", "), rfc3339(silence.ends_at));
            db.record_activity(&id, &by, "silenced similar alerts", Some(&detail))?;
            Ok(Some(id))
        })
        .await;
    match made {
        Ok(Some(id)) => redirect(&format!("/ui/incidents/{}", url_segment(&id)), None),
        Ok(None) => redirect("/ui/silences", None),
        Err(e) => problem_page(&w, &c, e),
    }
}

async fn expire_silence(
    id: String,
    c: Arc<Console>,
    w: Who,
    f: HashMap<String, String>,
) -> Response {
    if let Some(r) = csrf_refusal(&c, &w, &f) {
        return r;
    }
    let now = hexwatch_storage::now_ms();
    match c.query(move |db| db.expire_silence(&id, now)).await {
        Ok(_) => redirect("/ui/silences", None),
        Err(e) => problem_page(&w, &c, e),
    }
}
