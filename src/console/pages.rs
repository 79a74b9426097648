//! The console's HTML pages: server-rendered minijinja templates (escaping
//! every value), plain forms, no script.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, OnceLock};

use minijinja::Environment;
use serde_json::{json, Value};
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::auth::Who;
use super::ApiError;
use super::{triage_status, Console, ListParams, Problem, MAX_BODY, MAX_NOTE, PAGE, TRIAGE};

/// No script, no inline style, no framing; forms only post back here.
const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

fn templates() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        for (name, source) in [
            ("base.html", include_str!("templates/base.html")),
            ("login.html", include_str!("templates/login.html")),
            ("alerts.html", include_str!("templates/alerts.html")),
            ("alert.html", include_str!("templates/alert.html")),
            ("incidents.html", include_str!("templates/incidents.html")),
            ("incident.html", include_str!("templates/incident.html")),
            ("silences.html", include_str!("templates/silences.html")),
            ("rules.html", include_str!("templates/rules.html")),
            ("quarantine.html", include_str!("templates/quarantine.html")),
            ("health.html", include_str!("templates/health.html")),
            ("error.html", include_str!("templates/error.html")),
        ] {
            env.add_template(name, source)
                .expect("console templates parse");
        }
        env
    })
}

/// Headers every console response carries.
pub fn secure_headers(r: &mut Response) {
    let h = r.headers_mut();
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

pub(super) fn html(status: StatusCode, template: &str, ctx: Value) -> Response {
    let body = templates()
        .get_template(template)
        .and_then(|t| t.render(minijinja::Value::from(minijinja::value::Serde(&ctx))))
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, template, "console template failed");
            "<!doctype html><title>hexwatch</title><p>This page failed to render; the log has the error.".into()
        });
    let mut r = Response::new(body.into());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure_headers(&mut r);
    r
}

pub(super) fn redirect(to: &str, cookie: Option<String>) -> Response {
    let mut r = Response::new("".into());
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    if let Some(c) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        r.headers_mut().insert(header::SET_COOKIE, c);
    }
    secure_headers(&mut r);
    r
}

fn error_page(who: &Who, c: &Console, status: StatusCode, message: &str) -> Response {
    html(
        status,
        "error.html",
        page(c, who, "", json!({ "message": message })),
    )
}

pub(super) fn problem_page(who: &Who, c: &Console, p: Problem) -> Response {
    match p {
        Problem::NotFound => error_page(who, c, StatusCode::NOT_FOUND, "Not found."),
        Problem::BadRequest(m) => error_page(who, c, StatusCode::BAD_REQUEST, &m),
        Problem::Internal => error_page(
            who,
            c,
            StatusCode::INTERNAL_SERVER_ERROR,
            "An internal error; the log has it.",
        ),
        Problem::Storage(e) => {
            tracing::error!(error = %e, "console: storage error");
            error_page(
                who,
                c,
                StatusCode::SERVICE_UNAVAILABLE,
                "The storage is unavailable; the log has the error.",
            )
        }
    }
}

/// The context every page gets: who is logged in, the CSRF token, the nav.
pub(super) fn page(c: &Console, who: &Who, nav: &str, mut ctx: Value) -> Value {
    let (name, csrf) = match who {
        Who::Session { name, cookie } => (name.clone(), c.auth.csrf(cookie)),
        Who::Bearer => ("api".to_string(), String::new()),
    };
    ctx["me"] = json!(name);
    ctx["csrf"] = json!(csrf);
    ctx["nav"] = json!(nav);
    ctx
}

/// Who a page request is from: the session, or a Bearer token.
fn who(c: &Console, authorization: Option<&str>, cookie: Option<&str>) -> Option<Who> {
    c.auth.who(authorization, cookie)
}

/// The refusal of a state-changing form whose CSRF token is wrong, if it is.
pub(super) fn csrf_refusal(
    c: &Console,
    who: &Who,
    form: &HashMap<String, String>,
) -> Option<Response> {
    let ok = match who {
        Who::Session { cookie, .. } => c
            .auth
            .csrf_ok(cookie, form.get("csrf").map_or("", String::as_str)),
        // A Bearer token is not sent by browsers on their own: no CSRF risk.
        Who::Bearer => true,
    };
    (!ok).then(|| {
        error_page(
            who,
            c,
            StatusCode::FORBIDDEN,
            "This form is stale or did not come from the console (CSRF check failed). Go back, reload and try again.",
        )
    })
}

/// At most `max` characters of `s`, marked when cut (the API has it whole).
fn cut(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

pub(super) fn when(ms: Option<i64>) -> Value {
    ms.map_or(Value::Null, |ms| json!(crate::alerts::rfc3339(ms)))
}

/// Every console page, behind a login but the login page and the style sheet.
pub fn routes(
    console: Arc<Console>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let with = warp::any().map(move || console.clone());
    public_routes(with.clone())
        .or(page_routes(with))
        .unify()
        .recover(|r: Rejection| async move {
            if r.find::<LoginFirst>().is_some() {
                Ok(redirect("/ui/login", None))
            } else {
                Err(r)
            }
        })
        .unify()
}

/// A form body (bounded).
pub(super) fn form() -> impl Filter<Extract = (HashMap<String, String>,), Error = Rejection> + Clone
{
    warp::body::content_length_limit(MAX_BODY).and(warp::body::form::<HashMap<String, String>>())
}

/// The pages anyone may ask for: the style sheet and logging in.
fn public_routes(
    with: impl Filter<Extract = (Arc<Console>,), Error = Infallible> + Clone + Send + Sync + 'static,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let css = warp::path!("ui" / "static" / "console.css")
        .and(warp::get())
        .map(style_sheet);
    let login_page = warp::path!("ui" / "login")
        .and(warp::get())
        .and(with.clone())
        .map(|c: Arc<Console>| {
            let ctx = json!({ "failed": false, "users": !c.users.is_empty() });
            html(StatusCode::OK, "login.html", ctx)
        });
    let login = warp::path!("ui" / "login")
        .and(warp::post())
        .and(with)
        .and(form())
        .then(log_in);
    let home = warp::path!("ui")
        .and(warp::get())
        .map(|| redirect("/ui/alerts", None));
    css.or(login_page)
        .unify()
        .or(login)
        .unify()
        .or(home)
        .unify()
}

/// The pages behind a login; without one, a rejection that leads to the
/// login page.
fn page_routes(
    with: impl Filter<Extract = (Arc<Console>,), Error = Infallible> + Clone + Send + Sync + 'static,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let creds = warp::header::optional::<String>("authorization")
        .and(warp::header::optional::<String>("cookie"));
    let authed = with
        .and(creds)
        .and_then(
            |c: Arc<Console>, a: Option<String>, k: Option<String>| async move {
                let w = match who(&c, a.as_deref(), k.as_deref()) {
                    Some(w) => c.unless_ended(w).await,
                    None if a.is_some() => {
                        c.refuse_guess().await;
                        None
                    }
                    None => None,
                };
                w.map(|w| (c, w))
                    .ok_or_else(|| warp::reject::custom(LoginFirst))
            },
        )
        .untuple_one();
    let incidents = super::incident_pages::routes(authed.clone());
    let logout = warp::path!("ui" / "logout")
        .and(warp::post())
        .and(authed.clone())
        .and(form())
        .then(log_out);
    let alerts = warp::path!("ui" / "alerts")
        .and(warp::get())
        .and(authed.clone())
        .and(warp::query::<ListParams>())
        .then(alerts_page);
    let alert = warp::path!("ui" / "alerts" / String)
        .and(warp::get())
        .and(authed.clone())
        .then(alert_page);
    let triage = warp::path!("ui" / "alerts" / String / String)
        .and(warp::post())
        .and(authed.clone())
        .and(form())
        .then(triage_alert);
    let retry = warp::path!("ui" / "deliveries" / i64 / "retry")
        .and(warp::post())
        .and(authed.clone())
        .and(form())
        .then(retry_delivery);
    let rules = warp::path!("ui" / "rules")
        .and(warp::get())
        .and(authed.clone())
        .then(rules_page);
    let quarantine = warp::path!("ui" / "quarantine")
        .and(warp::get())
        .and(authed.clone())
        .then(quarantine_page);
    let health = warp::path!("ui" / "health")
        .and(warp::get())
        .and(authed)
        .then(health_page);
    logout
        .or(incidents)
        .unify()
        .or(alerts)
        .unify()
        .or(alert)
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

/// Ends the session for good (its cookie is refused from now on, on every
/// replica), not only in this browser.
async fn log_out(c: Arc<Console>, w: Who, f: HashMap<String, String>) -> Response {
    if let Some(r) = csrf_refusal(&c, &w, &f) {
        return r;
    }
    if let Who::Session { cookie, .. } = &w {
        if let Err(e) = c.end_session(cookie).await {
            return problem_page(&w, &c, e);
        }
    }
    redirect("/ui/login", Some(c.auth.set_cookie("")))
}

async fn rules_page(c: Arc<Console>, w: Who) -> Response {
    match c.rules_view().await {
        Ok(v) => html(StatusCode::OK, "rules.html", page(&c, &w, "rules", v)),
        Err(e) => problem_page(&w, &c, e),
    }
}

async fn health_page(c: Arc<Console>, w: Who) -> Response {
    match c.health_view().await {
        Ok(v) => html(StatusCode::OK, "health.html", page(&c, &w, "health", v)),
        Err(e) => problem_page(&w, &c, e),
    }
}

fn style_sheet() -> Response {
    let mut r = Response::new(include_str!("templates/console.css").into());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/css; charset=utf-8"),
    );
    r.headers_mut().insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

async fn log_in(c: Arc<Console>, f: HashMap<String, String>) -> Response {
    let field = |k: &str| f.get(k).cloned().unwrap_or_default();
    let named = !c.users.is_empty();
    // Named users sign in as themselves; without them, the admin token
    // and the name given.
    let signed_in = if named {
        let users = c.users.clone();
        let (name, password) = (field("name"), field("password"));
        tokio::task::spawn_blocking(move || super::users::verify(&users, &name, &password))
            .await
            .ok()
            .flatten()
    } else {
        c.auth.token_matches(&field("token")).then(|| field("name"))
    };
    let Some(name) = signed_in else {
        // Slows guessing; secrets are compared in constant time.
        let status = match c.refuse_guess().await {
            ApiError::TooManyGuesses => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::UNAUTHORIZED,
        };
        return html(
            status,
            "login.html",
            json!({ "failed": true, "users": named }),
        );
    };
    let session = c.auth.session(&name, hexwatch_storage::now_ms());
    redirect("/ui/alerts", Some(c.auth.set_cookie(&session)))
}

async fn alerts_page(c: Arc<Console>, w: Who, mut p: ListParams) -> Response {
    // The default view: open alerts of MEDIUM and above, worst first.
    let untouched = p.severity.is_none()
        && p.min_severity.is_none()
        && p.rule.is_none()
        && p.status.is_none()
        && p.since.is_none();
    if untouched {
        p.status = Some("open".into());
        p.min_severity = Some("MEDIUM".into());
    }
    let q = match p.query() {
        Ok(q) => q,
        Err(e) => return problem_page(&w, &c, e),
    };
    let page_no = q.offset / PAGE + 1;
    let rows = match c.query(move |db| db.list_alerts(&q)).await {
        Ok(r) => r,
        Err(e) => return problem_page(&w, &c, e),
    };
    let more = rows.len() as i64 > PAGE;
    let rows: Vec<_> = rows.into_iter().take(PAGE as usize).collect();
    let ctx = json!({
        "alerts": rows,
        "filter": {
            "severity": p.severity.clone().unwrap_or_default().to_ascii_uppercase(),
            "min_severity": p.min_severity.clone().unwrap_or_default().to_ascii_uppercase(),
            "rule": p.rule.clone().unwrap_or_default(),
            "status": p.status.clone().unwrap_or_default(),
            "since": p.since.clone().unwrap_or_default(),
        },
        "severities": ["CRITICAL", "HIGH", "MEDIUM", "LOW", "INFO"],
        "statuses": TRIAGE,
        "page": page_no,
        "prev": (page_no > 1).then(|| p.page_link(page_no - 1)),
        "next": more.then(|| p.page_link(page_no + 1)),
    });
    html(StatusCode::OK, "alerts.html", page(&c, &w, "alerts", ctx))
}

async fn alert_page(id: String, c: Arc<Console>, w: Who) -> Response {
    let d = match c.query(move |db| db.alert_detail(&id)).await {
        Ok(Some(d)) => d,
        Ok(None) => return problem_page(&w, &c, Problem::NotFound),
        Err(e) => return problem_page(&w, &c, e),
    };
    let a = &d.alert;
    let events: Vec<String> = a["events"]
        .as_array()
        .map(|e| e.iter().map(pretty).collect())
        .unwrap_or_default();
    let deliveries: Vec<Value> = d
        .deliveries
        .iter()
        .map(|r| {
            json!({
                "id": r.id, "destination": r.destination, "status": r.status,
                "attempts": r.attempts,
                "last_error": r.last_error.as_deref().map(|e| cut(e, 300)),
                "updated_at": when(Some(r.updated_at)),
            })
        })
        .collect();
    let ctx = json!({
        "alert": a,
        "context": pretty(&a["alertContext"]),
        "events": events,
        "deliveries": deliveries,
        "triage": {
            "status": d.triage.status, "by": d.triage.by,
            "at": when(d.triage.at), "note": d.triage.note,
        },
    });
    html(StatusCode::OK, "alert.html", page(&c, &w, "alerts", ctx))
}

async fn triage_alert(
    id: String,
    action: String,
    c: Arc<Console>,
    w: Who,
    f: HashMap<String, String>,
) -> Response {
    if let Some(r) = csrf_refusal(&c, &w, &f) {
        return r;
    }
    let Some(status) = triage_status(&action) else {
        return problem_page(&w, &c, Problem::NotFound);
    };
    let by = w.name(None);
    let note: String = f
        .get("note")
        .map_or("", String::as_str)
        .chars()
        .take(MAX_NOTE)
        .collect();
    let at = hexwatch_storage::now_ms();
    let target = format!("/ui/alerts/{}", url_segment(&id));
    match c
        .query(move |db| db.set_triage(&id, status, &by, &note, at))
        .await
    {
        Ok(true) => redirect(&target, None),
        Ok(false) => problem_page(&w, &c, Problem::NotFound),
        Err(e) => problem_page(&w, &c, e),
    }
}

async fn retry_delivery(id: i64, c: Arc<Console>, w: Who, f: HashMap<String, String>) -> Response {
    if let Some(r) = csrf_refusal(&c, &w, &f) {
        return r;
    }
    let back = f
        .get("alert")
        .map(|a| format!("/ui/alerts/{}", url_segment(a)))
        .unwrap_or_else(|| "/ui/alerts".into());
    match c.query(move |db| db.retry_delivery(id)).await {
        Ok(_) => redirect(&back, None),
        Err(e) => problem_page(&w, &c, e),
    }
}

async fn quarantine_page(c: Arc<Console>, w: Who) -> Response {
    let rows = match c.query(|db| db.recent_quarantine(PAGE)).await {
        Ok(rows) => rows,
        Err(e) => return problem_page(&w, &c, e),
    };
    let rows: Vec<Value> = rows
        .iter()
        .map(|q| {
            json!({
                "id": q.id, "received_at": when(Some(q.received_at)),
                "index": q.index, "line": q.line, "reason": q.reason,
                "preview": q.preview, "size": q.size,
                "cut": q.size > q.preview.len() as i64,
            })
        })
        .collect();
    let ctx = json!({ "rows": rows });
    html(
        StatusCode::OK,
        "quarantine.html",
        page(&c, &w, "quarantine", ctx),
    )
}

impl ListParams {
    /// The alert list's page `n` with these filters.
    fn page_link(&self, n: i64) -> String {
        let mut s = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("severity", &self.severity),
            ("min_severity", &self.min_severity),
            ("rule", &self.rule),
            ("status", &self.status),
            ("since", &self.since),
        ] {
            if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
                s.append_pair(k, v);
            }
        }
        s.append_pair("page", &n.to_string());
        format!("/ui/alerts?{}", s.finish())
    }
}

/// A page was asked for without a login.
#[derive(Debug)]
struct LoginFirst;
impl warp::reject::Reject for LoginFirst {}

/// An alert id as a path segment (ids are hex; anything else is encoded).
pub(super) fn url_segment(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
