//! Incidents: the shipped incident sample and bursts grouped into incidents,
//! one notification stream per incident to a webhook and a PagerDuty-style
//! receiver, silences, triage.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{json, Value};

use crate::browser::shipped_rules;
use crate::support::*;

/// The incident sample's records.
pub(crate) fn incident_sample() -> Vec<Value> {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/samples/incident.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A daemon on the shipped pack with a webhook (incidents), a PagerDuty-style
/// receiver (incidents) and `extra` config.
async fn pack_daemon(hook: &WebhookReceiver, pager: &WebhookReceiver, extra: &str) -> TestDaemon {
    let rules = shipped_rules();
    let rules: Vec<(&str, &str)> = rules
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let config = format!(
        "{extra}[[destinations]]\nname = \"hook\"\ntype = \"webhook\"\nurl = \"{}\"\n\
         [[destinations]]\nname = \"oncall\"\ntype = \"pagerduty\"\nrouting_key_env = \"PD_KEY\"\n\
         url = \"{}\"\nmin_severity = \"MEDIUM\"\n",
        hook.url(),
        pager.url()
    );
    TestDaemon::start_with_env(&config, &[("PD_KEY", "pd-routing-key")], &rules).await
}

/// Waits until every record is evaluated, every incident's first
/// notification is made and nothing is left to deliver.
async fn notified(d: &TestDaemon) {
    let settled = wait_until(Duration::from_secs(120), || {
        let waiting =
            d.count("SELECT count(*) FROM incidents WHERE notify_at IS NOT NULL OR notices = 0");
        let lag = d.count(
            "SELECT coalesce((SELECT max(seq) FROM events), 0)
                  - coalesce((SELECT seq FROM cursors WHERE name = 'evaluator'), 0)",
        );
        let undelivered = d.count("SELECT count(*) FROM deliveries WHERE status != 'delivered'");
        lag == 0 && waiting == 0 && undelivered == 0
    })
    .await;
    assert!(settled, "incidents were not all notified and delivered");
}

/// The bodies a receiver got, parsed.
fn bodies(r: &WebhookReceiver) -> Vec<Value> {
    r.requests()
        .iter()
        .map(|q| serde_json::from_slice(&q.body).unwrap())
        .collect()
}

#[tokio::test]
async fn incident_sample_pages_once_per_compromised_account() {
    let hook = WebhookReceiver::start(vec![Reply::Status(200)]).await;
    let pager = WebhookReceiver::start(vec![Reply::Status(202)]).await;
    let d = pack_daemon(&hook, &pager, "[incidents]\ngroup_wait_seconds = 1\n").await;
    for chunk in incident_sample().chunks(500) {
        d.send(chunk).await;
    }
    notified(&d).await;

    let alerts = d.count("SELECT count(*) FROM alerts WHERE created");
    let medium_up = d.count(
        "SELECT count(*) FROM alerts WHERE created AND severity IN ('MEDIUM', 'HIGH', 'CRITICAL')",
    );
    let incidents = d.strings("SELECT incident_id FROM incidents ORDER BY incident_id");
    eprintln!(
        "{alerts} alerts ({medium_up} MEDIUM and above) in {} incidents",
        incidents.len()
    );
    // Every created alert is a member of exactly one incident.
    assert_eq!(d.count("SELECT count(*) FROM incident_alerts"), alerts);
    assert_eq!(
        d.count(
            "SELECT count(*) FROM alerts WHERE created
             AND alert_id NOT IN (SELECT alert_id FROM incident_alerts)"
        ),
        0
    );

    // The webhook: versioned incident payloads, at most 3 per incident, and
    // every member alert listed in one of them.
    let mut per_incident: BTreeMap<String, usize> = BTreeMap::new();
    let mut listed: BTreeSet<String> = BTreeSet::new();
    for b in bodies(&hook) {
        assert_eq!(b["version"], "hexwatch.incident/1", "{b}");
        *per_incident
            .entry(b["incident"]["id"].as_str().unwrap().into())
            .or_default() += 1;
        for a in b["alerts"].as_array().unwrap() {
            listed.insert(a["alertId"].as_str().unwrap().into());
        }
        assert_eq!(b["alerts_omitted"], 0);
    }
    assert_eq!(
        per_incident.len(),
        incidents.len(),
        "every incident notified"
    );
    assert!(per_incident.values().all(|n| *n <= 3), "{per_incident:?}");
    let members: BTreeSet<String> = d
        .strings("SELECT alert_id FROM incident_alerts")
        .into_iter()
        .collect();
    assert_eq!(listed, members, "every member alert is in a notification");

    // The compromised accounts: one incident each (and at most one more for
    // the address they share).
    let actor_incidents = d.strings(
        "SELECT group_key FROM incidents WHERE severity IN ('HIGH', 'CRITICAL') ORDER BY group_key",
    );
    eprintln!("HIGH and above: {actor_incidents:?}");
    for t in d.strings("SELECT severity || ' ' || title FROM incidents ORDER BY last_ms") {
        eprintln!("  {t}");
    }
    let keys: BTreeSet<String> = actor_incidents.iter().cloned().collect();
    assert_eq!(
        keys.len(),
        actor_incidents.len(),
        "one incident per account"
    );

    // PagerDuty: triggers keyed by the incident id, MEDIUM and above only.
    let pages = bodies(&pager);
    assert!(!pages.is_empty());
    for p in &pages {
        assert_eq!(p["event_action"], "trigger");
        assert_eq!(p["routing_key"], "pd-routing-key");
        let key = p["dedup_key"].as_str().unwrap();
        assert!(incidents.iter().any(|i| i == key), "{key}");
    }
    eprintln!("pages: {} for {medium_up} MEDIUM+ alerts", pages.len());
}

/// `n` public shares of different projects by one editor, `step_s` apart.
fn public_shares(n: usize, step_s: i64) -> Vec<Value> {
    let start = chrono::DateTime::parse_from_rfc3339("2024-03-12T09:00:00Z").unwrap();
    (0..n)
        .map(|i| {
            let at = start + chrono::Duration::seconds(step_s * i as i64);
            let at = at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            let mut r = event_at(
                9000 + i,
                "SHARE_PROJECT_WITH_PUBLIC",
                "eve@acme.example",
                &at,
            );
            r["event"]["actor"]["id"] = json!("user-eve");
            r["event"]["context"]["location"] = json!("203.0.113.77");
            let project = format!("proj-eve-{i}");
            r["event"]["targets"] = json!([{
                "id": project, "type": "project",
                "metadata": {"created": false, "representation":
                    json!({"id": project, "publicRole": "CAN_VIEW"}).to_string()}
            }]);
            r
        })
        .collect()
}

#[tokio::test]
async fn a_burst_of_public_shares_is_one_incident() {
    let hook = WebhookReceiver::start(vec![Reply::Status(200)]).await;
    let pager = WebhookReceiver::start(vec![Reply::Status(202)]).await;
    let d = pack_daemon(&hook, &pager, "[incidents]\ngroup_wait_seconds = 1\n").await;
    d.send(&public_shares(25, 280)).await;
    notified(&d).await;
    for t in d.strings("SELECT severity || ' ' || title FROM incidents ORDER BY last_ms") {
        eprintln!("  {t}");
    }
    for t in d.strings("SELECT severity || ' ' || rule_id FROM alerts WHERE created") {
        eprintln!("  alert {t}");
    }
    let incidents = d.strings("SELECT incident_id FROM incidents");
    assert_eq!(incidents.len(), 1, "one incident");
    let severity = d.strings("SELECT severity FROM incidents")[0].clone();
    let escalated =
        d.count("SELECT count(*) FROM incidents WHERE incident LIKE '%\"escalated\":\"%'");
    assert!(
        escalated == 1 || severity != "CRITICAL",
        "{severity} without a chain"
    );
    assert!(bodies(&hook).len() <= 3);
    assert!(bodies(&pager).len() <= 3);
}

const TOKEN: &str = crate::console::TOKEN;

/// A rule that alerts on every public share, one alert per record.
const SHARE_RULE: &str = r#"let meta = #{ id: "Test.Share", severity: "HIGH", actions: ["SHARE_PROJECT_WITH_PUBLIC"],
    reports: #{ "MITRE ATT&CK": ["TA0010:T1567"] } };
fn rule(e) { true }
fn title(e) { `Shared publicly by ${e.event.actor.metadata.email}` }
fn dedup(e) { e.keySuffix }
"#;

/// A daemon with the console, one test rule, a webhook (incidents) and a
/// PagerDuty-style receiver (incidents), notifying after `wait` seconds.
async fn triage_daemon(hook: &WebhookReceiver, pager: &WebhookReceiver, wait: f64) -> TestDaemon {
    let config = format!(
        "[ui]\nadmin_token_env = \"HEXWATCH_ADMIN_TOKEN\"\nexternal_url = \"https://hexwatch.example.com\"\n\
         [incidents]\ngroup_wait_seconds = {wait}\ngroup_interval_minutes = 0.02\n\
         [[destinations]]\nname = \"hook\"\ntype = \"webhook\"\nurl = \"{}\"\n\
         [[destinations]]\nname = \"oncall\"\ntype = \"pagerduty\"\nrouting_key_env = \"PD_KEY\"\nurl = \"{}\"\n",
        hook.url(),
        pager.url()
    );
    TestDaemon::start_with_env(
        &config,
        &[("HEXWATCH_ADMIN_TOKEN", TOKEN), ("PD_KEY", "pd-key")],
        &[("share.rhai", SHARE_RULE)],
    )
    .await
}

async fn api(
    d: &TestDaemon,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = client().request(method, d.url(path)).bearer_auth(TOKEN);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn share_by(i: usize, email: &str, at: &str) -> Value {
    let mut r = event_at(i, "SHARE_PROJECT_WITH_PUBLIC", email, at);
    r["event"]["actor"]["id"] = json!(format!("id-{email}"));
    r
}

/// Waits until `n` requests reached the receiver.
async fn received(r: &WebhookReceiver, n: usize) {
    assert!(
        wait_until(Duration::from_secs(60), || r.requests().len() >= n).await,
        "{} of {n} requests arrived",
        r.requests().len()
    );
}

#[tokio::test]
async fn silences_hold_back_notifications_until_they_expire() {
    let hook = WebhookReceiver::start(vec![Reply::Status(200)]).await;
    let pager = WebhookReceiver::start(vec![Reply::Status(202)]).await;
    let d = triage_daemon(&hook, &pager, 0.0).await;

    // A malformed matcher is refused, naming it.
    for (matchers, named) in [
        (
            json!([{"field": "ip", "op": "cidr", "value": "10.0.0.0/99"}]),
            "matchers[0].value",
        ),
        (
            json!([{"field": "actor", "op": "~", "value": "x"}]),
            "matchers[0].op",
        ),
        (json!([]), "matchers"),
    ] {
        let body = json!({"matchers": matchers, "ends_at": "2999-01-01T00:00:00Z"});
        let (status, v) = api(&d, reqwest::Method::POST, "/api/silences", Some(body)).await;
        assert_eq!(status, 400, "{v}");
        assert!(v["error"].as_str().unwrap().contains(named), "{v}");
    }
    let ends = (chrono::Utc::now() + chrono::Duration::hours(2)).to_rfc3339();
    let body = json!({
        "matchers": [{"field": "actor", "op": "=", "value": "ana@acme.example"},
                     {"field": "ip", "op": "cidr", "value": "203.0.113.0/24"}],
        "ends_at": ends, "comment": "Ana's migration", "by": "sec-bot"
    });
    let (status, v) = api(&d, reqwest::Method::POST, "/api/silences", Some(body)).await;
    assert_eq!(status, 201, "{v}");
    let silence = v["id"].as_str().unwrap().to_string();
    // Edited without a reload: a new comment, the same matchers.
    let edit = json!({
        "matchers": [{"field": "actor", "op": "=", "value": "ana@acme.example"},
                     {"field": "ip", "op": "cidr", "value": "203.0.113.0/24"}],
        "ends_at": ends, "comment": "Ana's migration, till Friday"
    });
    let path = format!("/api/silences/{silence}");
    let (status, v) = api(&d, reqwest::Method::PUT, &path, Some(edit)).await;
    assert_eq!(
        (status, v["comment"].as_str()),
        (200, Some("Ana's migration, till Friday"))
    );

    // Silenced: recorded, shown as silenced, counted, not delivered. Bob's
    // alert beside it is delivered.
    d.send(&[
        share_by(1, "ana@acme.example", "2024-03-12T09:00:00Z"),
        share_by(2, "bob@acme.example", "2024-03-12T09:00:01Z"),
    ])
    .await;
    received(&hook, 1).await;
    assert!(
        wait_until(Duration::from_secs(30), || {
            d.count("SELECT count(*) FROM alerts WHERE created AND silence_id IS NOT NULL") == 1
        })
        .await
    );
    let metrics = d.metrics().await;
    assert!(
        metrics.contains("hexwatch_alerts_silenced_total{rule=\"Test.Share\"} 1"),
        "{metrics}"
    );
    let (_, list) = api(&d, reqwest::Method::GET, "/api/silences", None).await;
    let s = &list["silences"][0];
    assert_eq!(
        (s["state"].as_str(), s["matched"].as_i64()),
        (Some("active"), Some(1))
    );
    assert_eq!(s["created_by"], "sec-bot");
    let notified: Vec<Value> = bodies(&hook);
    assert!(
        notified
            .iter()
            .all(|b| b["incident"]["group_key"] == "actor:bob@acme.example"),
        "{notified:?}"
    );

    // Expired: the next matching alert is delivered.
    let (status, _) = api(
        &d,
        reqwest::Method::DELETE,
        &format!("/api/silences/{silence}"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (_, list) = api(&d, reqwest::Method::GET, "/api/silences", None).await;
    assert_eq!(list["silences"][0]["state"], "expired");
    // The evaluator's copy is refreshed within seconds: wait for the fact.
    let mut i = 10;
    let delivered_for_ana = || {
        bodies(&hook)
            .iter()
            .any(|b| b["incident"]["group_key"] == "actor:ana@acme.example")
    };
    while !delivered_for_ana() {
        i += 1;
        assert!(
            i < 200,
            "ana's alert is never delivered after the silence ended"
        );
        d.send(&[share_by(i, "ana@acme.example", "2024-03-12T09:05:00Z")])
            .await;
        wait_until(Duration::from_millis(300), delivered_for_ana).await;
    }
}

#[tokio::test]
async fn pagerduty_gets_one_dedup_key_through_trigger_acknowledge_and_resolve() {
    let hook = WebhookReceiver::start(vec![Reply::Status(200)]).await;
    let pager = WebhookReceiver::start(vec![Reply::Status(202)]).await;
    let d = triage_daemon(&hook, &pager, 0.0).await;
    d.send(&[share_by(1, "ana@acme.example", "2024-03-12T09:00:00Z")])
        .await;
    received(&pager, 1).await;
    let (_, list) = api(&d, reqwest::Method::GET, "/api/incidents?status=open", None).await;
    let id = list["incidents"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{list}"))
        .to_string();
    assert_eq!(list["incidents"][0]["alert_count"], 1);
    assert_eq!(list["next"], Value::Null);

    // A second alert after the interval: an update with only the new alert.
    d.send(&[share_by(2, "ana@acme.example", "2024-03-12T09:01:00Z")])
        .await;
    received(&pager, 2).await;
    received(&hook, 2).await;
    let update = &bodies(&hook)[1];
    assert_eq!(update["event"], "updated");
    assert_eq!(update["alerts"].as_array().unwrap().len(), 1);
    assert_eq!(
        update["url"],
        format!("https://hexwatch.example.com/ui/incidents/{id}")
    );

    let (status, v) = api(
        &d,
        reqwest::Method::POST,
        &format!("/api/incidents/{id}/ack"),
        Some(json!({"note": "looking", "by": "ana"})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    received(&pager, 3).await;
    let (status, v) = api(
        &d,
        reqwest::Method::POST,
        &format!("/api/incidents/{id}/resolve"),
        Some(json!({"reason": "false_positive", "by": "ana"})),
    )
    .await;
    assert_eq!((status, v["status"].as_str()), (200, Some("resolved")));
    assert_eq!(v["resolution"], "false_positive");
    received(&pager, 4).await;
    let actions: Vec<(String, String)> = bodies(&pager)
        .iter()
        .map(|p| {
            (
                p["event_action"].as_str().unwrap().into(),
                p["dedup_key"].as_str().unwrap().into(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = ["trigger", "trigger", "acknowledge", "resolve"]
        .iter()
        .map(|a| (a.to_string(), id.clone()))
        .collect();
    assert_eq!(actions, expected);
    // The same notification keeps its Idempotency-Key; each has its own.
    let keys: BTreeSet<String> = pager
        .requests()
        .iter()
        .map(|r| r.headers["idempotency-key"].to_str().unwrap().to_string())
        .collect();
    assert_eq!(keys.len(), 4);

    // The history names who did what.
    let (_, v) = api(
        &d,
        reqwest::Method::GET,
        &format!("/api/incidents/{id}"),
        None,
    )
    .await;
    let history: Vec<String> = v["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            format!(
                "{} {}",
                h["by"].as_str().unwrap(),
                h["what"].as_str().unwrap()
            )
        })
        .collect();
    assert!(
        history.contains(&"ana acknowledged".to_string()),
        "{history:?}"
    );
    assert!(
        history.contains(&"ana resolved (false_positive)".to_string()),
        "{history:?}"
    );
    assert!(
        history
            .iter()
            .any(|h| h.starts_with("hexwatch notification delivered to oncall")),
        "{history:?}"
    );
    assert_eq!(v["alerts"].as_array().unwrap().len(), 2);

    // Bad parameters are refused by name.
    for (query, named) in [
        ("severity=severe", "severity"),
        ("limit=100000", "limit"),
        ("cursor=x", "cursor"),
        ("colour=red", "colour"),
    ] {
        let r = client()
            .get(d.url(&format!("/api/incidents?{query}")))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{query}");
        assert!(r.text().await.unwrap().contains(named), "{query}");
    }
}

/// Defect: the console had no incidents, silences or triage history — a
/// responder worked alerts one by one. The pages, driven as a browser
/// would (forms with the CSRF token), with hostile text escaped.
#[tokio::test]
async fn console_pages_triage_an_incident_with_its_history() {
    use crate::console::{csrf, login, page};
    let hook = WebhookReceiver::start(vec![Reply::Status(200)]).await;
    let pager = WebhookReceiver::start(vec![Reply::Status(202)]).await;
    let d = triage_daemon(&hook, &pager, 0.0).await;
    let base = d.url("");
    let xss = "<script>alert(1)</script>@acme.example";
    d.send(&[share_by(1, xss, "2024-03-12T09:00:00Z")]).await;
    received(&pager, 1).await;
    let cookie = login(&base).await;

    // The default list: open, MEDIUM and above, linking to the incident.
    let (status, list, headers) = page(&base, "/ui/incidents", &cookie).await;
    assert_eq!(status, 200);
    assert!(headers["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("default-src 'none'"));
    assert!(!list.contains("<script>"), "escaped");
    assert!(list.contains("&lt;script&gt;"));
    let id = d.strings("SELECT incident_id FROM incidents")[0].clone();
    assert!(list.contains(&format!("/ui/incidents/{id}")));

    // Assign, comment, acknowledge through the forms.
    let (_, detail, _) = page(&base, &format!("/ui/incidents/{id}"), &cookie).await;
    let token = csrf(&detail);
    for (action, fields) in [
        ("assign", vec![("assignee", "ana")]),
        ("comment", vec![("text", "calling the account owner")]),
        ("ack", vec![("note", "on it")]),
    ] {
        let mut form = vec![("csrf", token.as_str())];
        form.extend(fields);
        let r = crate::console::no_redirects()
            .post(format!("{base}/ui/incidents/{id}/{action}"))
            .header("cookie", &cookie)
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303, "{action}");
    }
    let (_, detail, _) = page(&base, &format!("/ui/incidents/{id}"), &cookie).await;
    for seen in [
        "ana</b> assigned to ana",
        "ana</b> commented: calling the account owner",
        "ana</b> acknowledged: on it",
    ] {
        assert!(detail.contains(seen), "{seen} in the history");
    }
    // "Silence similar" pre-fills the actor and the rule.
    let similar = detail
        .split("href=\"/ui/silences?")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let (status, form, _) = page(
        &base,
        &format!("/ui/silences?{}", similar.replace("&amp;", "&")),
        &cookie,
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        form.contains("value=\"actor\"") && form.contains("value=\"Test.Share\""),
        "{form}"
    );
    let r = crate::console::no_redirects()
        .post(format!("{base}/ui/silences"))
        .header("cookie", &cookie)
        .form(&[
            ("csrf", token.as_str()),
            ("field0", "actor"),
            ("op0", "="),
            ("value0", xss),
            ("field1", "rule"),
            ("op1", "="),
            ("value1", "Test.Share"),
            ("hours", "4"),
            ("comment", "known test account"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let (_, silences, _) = page(&base, "/ui/silences", &cookie).await;
    assert!(silences.contains("known test account") && silences.contains("active"));
    assert!(!silences.contains("<script>"));

    // Edited from the console: the form comes filled, and saving changes it.
    let id = d.strings("SELECT silence_id FROM silences")[0].clone();
    let (_, form, _) = page(&base, &format!("/ui/silences?edit={id}"), &cookie).await;
    assert!(form.contains("value=\"known test account\"") && form.contains("Save silence"));
    let r = crate::console::no_redirects()
        .post(format!("{base}/ui/silences"))
        .header("cookie", &cookie)
        .form(&[
            ("csrf", token.as_str()),
            ("edit", id.as_str()),
            ("field0", "actor"),
            ("op0", "="),
            ("value0", xss),
            ("hours", "24"),
            ("comment", "known test account, all rules"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(
        d.strings("SELECT comment FROM silences"),
        ["known test account, all rules"]
    );
}

/// Several people sign in under their own names (`[[ui.users]]`, Argon2
/// hashes made by `hexwatch hash-password`); the admin token no longer opens
/// the console, and the history names the person.
#[tokio::test]
async fn named_users_sign_in_as_themselves_and_the_history_says_who() {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hexwatch"))
        .arg("hash-password")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"correct horse battery staple\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(hash.starts_with("$argon2id$"), "{hash}");

    let hook = WebhookReceiver::start(vec![Reply::Status(200)]).await;
    let config = format!(
        "[ui]\nadmin_token_env = \"HEXWATCH_ADMIN_TOKEN\"\n\
         [[ui.users]]\nname = \"ana@acme.example\"\npassword_hash = \"{hash}\"\n\
         [incidents]\ngroup_wait_seconds = 0\n\
         [[destinations]]\nname = \"hook\"\ntype = \"webhook\"\nurl = \"{}\"\n",
        hook.url()
    );
    let d = TestDaemon::start_with_env(
        &config,
        &[("HEXWATCH_ADMIN_TOKEN", TOKEN)],
        &[("share.rhai", SHARE_RULE)],
    )
    .await;
    d.send(&[share_by(1, "bob@acme.example", "2024-03-12T09:00:00Z")])
        .await;
    received(&hook, 1).await;
    let base = d.url("");
    let login = |fields: Vec<(&'static str, String)>| {
        let base = base.clone();
        async move {
            crate::console::no_redirects()
                .post(format!("{base}/ui/login"))
                .form(&fields)
                .send()
                .await
                .unwrap()
        }
    };
    let r = login(vec![
        ("name", "ana@acme.example".into()),
        ("password", "wrong password!".into()),
    ])
    .await;
    assert_eq!(r.status(), 401);
    let r = login(vec![("name", "admin".into()), ("token", TOKEN.into())]).await;
    assert_eq!(
        r.status(),
        401,
        "the admin token does not open the console once users exist"
    );
    let r = login(vec![
        ("name", "ana@acme.example".into()),
        ("password", "correct horse battery staple".into()),
    ])
    .await;
    assert_eq!(r.status(), 303);
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let id = d.strings("SELECT incident_id FROM incidents")[0].clone();
    let (_, page, _) = crate::console::page(&base, &format!("/ui/incidents/{id}"), &cookie).await;
    let token = crate::console::csrf(&page);
    let r = crate::console::no_redirects()
        .post(format!("{base}/ui/incidents/{id}/ack"))
        .header("cookie", &cookie)
        .form(&[("csrf", token.as_str()), ("note", "mine")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let (_, v) = api(
        &d,
        reqwest::Method::GET,
        &format!("/api/incidents/{id}"),
        None,
    )
    .await;
    let last = v["history"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|h| h["what"] == "acknowledged")
        .unwrap()
        .clone();
    assert_eq!(last["by"], "ana@acme.example");
}

/// An incident by e-mail: one message when it opens, its Message-ID the
/// incident's; the update replies to it (In-Reply-To, References), so a
/// mail client shows one thread.
#[tokio::test]
async fn incident_emails_carry_message_ids_and_thread() {
    let smtp = SmtpSink::start();
    let config = format!(
        "[incidents]\ngroup_wait_seconds = 0\ngroup_interval_minutes = 0.01\n\
         [[destinations]]\nname = \"mail\"\ntype = \"email\"\nsmtp_url = \"smtp://127.0.0.1:{}\"\n\
         from = \"hexwatch@acme.example\"\nto = [\"secops@acme.example\"]\n",
        smtp.port
    );
    let d = TestDaemon::start_with_env(&config, &[], &[("share.rhai", SHARE_RULE)]).await;
    d.send(&[share_by(1, "ana@acme.example", "2024-03-12T09:00:00Z")])
        .await;
    assert!(wait_until(Duration::from_secs(30), || smtp.messages().len() == 1).await);
    d.send(&[share_by(2, "ana@acme.example", "2024-03-12T09:01:00Z")])
        .await;
    assert!(wait_until(Duration::from_secs(30), || smtp.messages().len() == 2).await);
    let id = d.strings("SELECT incident_id FROM incidents")[0].clone();
    let messages = smtp.messages();
    let (first, second) = (&messages[0].1, &messages[1].1);
    assert!(
        first.contains(&format!("Message-ID: <{id}@hexwatch>")),
        "{first}"
    );
    assert!(first.contains("(opened)"), "{first}");
    assert!(
        second.contains(&format!("In-Reply-To: <{id}@hexwatch>")),
        "{second}"
    );
    assert!(
        second.contains(&format!("References: <{id}@hexwatch>")),
        "{second}"
    );
    assert!(second.contains("Message-ID: <"), "{second}");
}
