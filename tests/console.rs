//! The console and its API over HTTP, on the real daemon: login, the alert
//! list and page (attacker-controlled text escaped), acknowledge / resolve with
//! CSRF, retrying a failed delivery, broken rules, quarantine, health; off
//! without a token; on a separate listener when configured.

use std::time::Duration;

use serde_json::Value;

use crate::support::*;

pub(crate) const TOKEN: &str = "console-admin-token-0123456789";
const XSS: &str = "<img src=x onerror=alert(1)>";

const RULE: &str = r#"let meta = #{ id: "Test.PublicShare", severity: "HIGH", actions: ["SHARE_PROJECT_WITH_PUBLIC"],
    runbook: "Ask the owner why.", reference: "https://learn.hex.tech/docs" };
fn rule(e) { true }
fn title(e) { `Shared publicly by ${e.event.actor.metadata.email}` }
fn dedup(e) { e.keySuffix }
"#;

pub(crate) fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

pub(crate) async fn start(extra: &str, hook: &str) -> TestDaemon {
    let config = format!(
        "[ui]\nadmin_token_env = \"HEXWATCH_ADMIN_TOKEN\"\n{extra}[delivery]\nretry_hours = 1\n[[destinations]]\nnotify = \"alert\"\nname = \"siem\"\ntype = \"webhook\"\nurl = \"{hook}\"\n"
    );
    TestDaemon::start_with_env(
        &config,
        &[("HEXWATCH_ADMIN_TOKEN", TOKEN)],
        &[
            ("public_share.rhai", RULE),
            ("broken.rhai", "let meta = #{ id: \"Broken\", severity: \"LOW\" }; fn rule(e) { e.event.action == }"),
        ],
    )
    .await
}

/// Logs in; returns the `Cookie` header value.
pub(crate) async fn login(base: &str) -> String {
    let c = no_redirects();
    let r = c
        .post(format!("{base}/ui/login"))
        .form(&[("token", "wrong-token-0123456789"), ("name", "eve")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .post(format!("{base}/ui/login"))
        .form(&[("token", TOKEN), ("name", "ana")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/ui/alerts");
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    set.split(';').next().unwrap().to_string()
}

pub(crate) async fn page(
    base: &str,
    path: &str,
    cookie: &str,
) -> (u16, String, reqwest::header::HeaderMap) {
    let r = no_redirects()
        .get(format!("{base}{path}"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    (status, r.text().await.unwrap(), headers)
}

async fn api(base: &str, path: &str) -> Value {
    let r = client()
        .get(format!("{base}{path}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{path}");
    r.json().await.unwrap()
}

/// The CSRF token a page's forms carry.
pub(crate) fn csrf(html: &str) -> String {
    let at = html
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token")
        + 19;
    html[at..at + 64].to_string()
}

#[tokio::test]
async fn console_triage_end_to_end() {
    // The siem refuses the first delivery for good (400), then takes the retry.
    let hook = WebhookReceiver::start(vec![Reply::Status(400), Reply::Status(200)]).await;
    let mut d = start("", &hook.url()).await;
    let base = format!("http://{}", d.addr);

    let mut share = hex_record(1, "SHARE_PROJECT_WITH_PUBLIC");
    share["event"]["actor"]["metadata"]["email"] = XSS.into();
    d.send(&[share, serde_json::json!({"event": "not an object"})])
        .await;

    // Without a login: pages send you to log in, the API says 401.
    let r = no_redirects()
        .get(format!("{base}/ui/alerts"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/ui/login");
    let r = client()
        .get(format!("{base}/api/alerts"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client()
        .get(format!("{base}/api/alerts"))
        .bearer_auth("not-the-token-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // The alert appears; its delivery fails.
    let mut id = String::new();
    assert!(
        wait_until(Duration::from_secs(15), || {
            let rows = d.strings("SELECT alert_id FROM alerts WHERE created");
            let failed = d.count("SELECT count(*) FROM deliveries WHERE status = 'failed'");
            if let (Some(a), 1) = (rows.first(), failed) {
                id = a.clone();
                true
            } else {
                false
            }
        })
        .await
    );
    let list = api(&base, "/api/alerts").await;
    assert_eq!(list["alerts"].as_array().unwrap().len(), 1);
    assert_eq!(
        list["alerts"][0]["title"],
        format!("Shared publicly by {XSS}")
    );
    assert_eq!(list["alerts"][0]["triage"], "open");
    assert_eq!(
        api(&base, "/api/alerts?severity=low").await["alerts"],
        serde_json::json!([])
    );
    // Time filters are on event time (the record is dated 2024-03-05);
    // a minimum severity lists the more severe too.
    for (query, n) in [
        ("since=2024-03-05T00:00:00Z&status=open", 1),
        ("since=1h", 0),
        ("min_severity=medium", 1),
        ("min_severity=HIGH", 1),
        ("min_severity=CRITICAL", 0),
        ("rule=Test.", 1),
        ("rule=Hex.", 0),
    ] {
        let listed = api(&base, &format!("/api/alerts?{query}")).await;
        assert_eq!(listed["alerts"].as_array().unwrap().len(), n, "{query}");
    }
    let r = client()
        .get(format!("{base}/api/alerts?severity=SEVERE"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    let cookie = login(&base).await;
    let (status, html, headers) = page(&base, "/ui/alerts", &cookie).await;
    assert_eq!(status, 200);
    assert!(headers["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("default-src 'none'"));
    // Attacker-controlled text is shown as text.
    assert!(
        html.contains("Shared publicly by &lt;img src=x onerror=alert(1)&gt;"),
        "{html}"
    );
    assert!(!html.contains(XSS));

    // The alert page: runbook, events, the failed delivery with its error.
    let (status, html, _) = page(&base, &format!("/ui/alerts/{id}"), &cookie).await;
    assert_eq!(status, 200);
    assert!(html.contains("Ask the owner why."), "{html}");
    assert!(html.contains("HTTP 400"), "{html}");
    assert!(
        html.contains("&quot;SHARE_PROJECT_WITH_PUBLIC&quot;")
            || html.contains("SHARE_PROJECT_WITH_PUBLIC")
    );
    assert!(!html.contains(XSS));
    let token = csrf(&html);

    // Acknowledge: refused without the CSRF token, done with it.
    let ack = |csrf: &'static str| {
        let (base, id, cookie) = (base.clone(), id.clone(), cookie.clone());
        async move {
            no_redirects()
                .post(format!("{base}/ui/alerts/{id}/ack"))
                .header("cookie", cookie)
                .form(&[("csrf", csrf), ("note", "looking into it")])
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(ack("forged").await, 403);
    let token: &'static str = Box::leak(token.into_boxed_str());
    assert_eq!(ack(token).await, 303);
    let detail = api(&base, &format!("/api/alerts/{id}")).await;
    assert_eq!(detail["triage"]["status"], "acknowledged");
    assert_eq!(detail["triage"]["by"], "ana");
    assert_eq!(detail["triage"]["note"], "looking into it");

    // Retry the failed delivery from the page: the siem gets it again.
    let delivery = detail["deliveries"][0]["id"].as_i64().unwrap();
    assert_eq!(detail["deliveries"][0]["status"], "failed");
    let r = no_redirects()
        .post(format!("{base}/ui/deliveries/{delivery}/retry"))
        .header("cookie", &cookie)
        .form(&[("csrf", token), ("alert", id.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert!(wait_until(Duration::from_secs(10), || hook.requests().len() == 2).await);
    assert!(
        wait_until(Duration::from_secs(5), || d.count(
            "SELECT count(*) FROM deliveries WHERE status = 'delivered'"
        ) == 1)
        .await
    );

    // The API: resolve with a Bearer token; a session needs its CSRF header.
    let r = client()
        .post(format!("{base}/api/alerts/{id}/resolve"))
        .header("cookie", &cookie)
        .json(&serde_json::json!({"note": "owner confirmed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = client()
        .post(format!("{base}/api/alerts/{id}/resolve"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"note": "owner confirmed", "by": "soar"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let detail = api(&base, &format!("/api/alerts/{id}")).await;
    assert_eq!(detail["triage"]["status"], "resolved");
    assert_eq!(detail["triage"]["by"], "soar");
    assert_eq!(detail["deliveries"][0]["status"], "delivered");
    assert_eq!(
        api(&base, "/api/alerts?status=open").await["alerts"],
        serde_json::json!([])
    );

    // Rules: the loaded one with its alert, the broken one with its error.
    let rules = api(&base, "/api/rules").await;
    let share = rules["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "Test.PublicShare")
        .unwrap();
    assert_eq!(share["alerts_24h"], 1);
    assert!(rules["broken"][0]["file"] == "broken.rhai", "{rules}");
    let (_, html, _) = page(&base, "/ui/rules", &cookie).await;
    assert!(html.contains("broken.rhai") && html.contains("Test.PublicShare"));

    // Quarantine and health.
    let q = api(&base, "/api/quarantine").await;
    assert!(
        q["quarantine"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("event"),
        "{q}"
    );
    let (_, html, _) = page(&base, "/ui/quarantine", &cookie).await;
    assert!(html.contains("not an object"));
    let h = api(&base, "/api/health").await;
    assert_eq!(h["evaluator_lag"], 0);
    assert_eq!(h["delivery_queue"], 0);
    let (status, _, _) = page(&base, "/ui/health", &cookie).await;
    assert_eq!(status, 200);
    d.stop().await;
}

#[tokio::test]
async fn console_is_off_without_a_token() {
    let mut d = TestDaemon::start("").await;
    for path in ["/ui", "/ui/alerts", "/api/alerts", "/ui/static/console.css"] {
        let r = client()
            .get(d.url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    d.stop().await;
}

#[tokio::test]
async fn console_on_its_own_listener() {
    let hook = WebhookReceiver::start(vec![]).await;
    let port = free_port();
    let mut d = start(&format!("listen = \"127.0.0.1:{port}\"\n"), &hook.url()).await;
    // Not on the ingest listener...
    let r = client()
        .get(d.url("/api/alerts"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // ...on its own, where ingest is not.
    let base = format!("http://127.0.0.1:{port}");
    assert_eq!(
        api(&base, "/api/alerts").await["alerts"],
        serde_json::json!([])
    );
    let r = client()
        .post(format!("{base}/ingest/hex"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    d.stop().await;
}
