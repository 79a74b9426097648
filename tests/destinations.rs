//! The destination types against local HTTP servers that check each request the
//! way the service documents it (required fields, types, enum values, size
//! limits, auth header) and answer 2xx, 400, 429 with Retry-After, 500 or hang
//! on demand; failure handling; the rate limit; `notify-test`; templates.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

const WAIT: Duration = Duration::from_secs(15);
const ROUTING_KEY: &str = "R0UT1NGKEY0123456789abcdefABCDEF";
const GENIE_KEY: &str = "eb243592-faa2-4ba2-a551-1afdf565c889";

fn json_of(body: &[u8]) -> Result<Value, String> {
    serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))
}

fn json_content(h: &warp::http::HeaderMap) -> Result<(), String> {
    match h.get("content-type").and_then(|v| v.to_str().ok()) {
        Some(t) if t.starts_with("application/json") => Ok(()),
        other => Err(format!("content-type {other:?}")),
    }
}

fn chars(v: &Value) -> usize {
    v.as_str().map_or(usize::MAX, |s| s.chars().count())
}

/// Slack incoming webhooks: `text` required (else `no_text`), ≤ 50 blocks,
/// header ≤ 150, section text ≤ 3,000, ≤ 10 fields of ≤ 2,000, context ≤ 10 elements.
fn slack(h: &warp::http::HeaderMap, body: &[u8]) -> Result<(), String> {
    json_content(h)?;
    let v = json_of(body)?;
    if v["text"].as_str().is_none_or(str::is_empty) {
        return Err("no_text".into());
    }
    let blocks = v["blocks"].as_array().ok_or("invalid_blocks")?;
    if blocks.len() > 50 {
        return Err("invalid_blocks: more than 50".into());
    }
    for b in blocks {
        match b["type"].as_str() {
            Some("header")
                if b["text"]["type"] == "plain_text" && chars(&b["text"]["text"]) <= 150 => {}
            Some("section") => {
                if let Some(t) = b.get("text") {
                    if chars(&t["text"]) > 3000
                        || !["mrkdwn", "plain_text"].contains(&t["type"].as_str().unwrap_or(""))
                    {
                        return Err("invalid_blocks: section text".into());
                    }
                }
                let fields = b["fields"].as_array().map_or(&[][..], |f| f.as_slice());
                if fields.len() > 10 || fields.iter().any(|f| chars(&f["text"]) > 2000) {
                    return Err("invalid_blocks: fields".into());
                }
            }
            Some("context") if b["elements"].as_array().is_some_and(|e| e.len() <= 10) => {}
            other => return Err(format!("invalid_blocks: {other:?}")),
        }
    }
    Ok(())
}

/// Teams Workflows: a `message` with an Adaptive Card attachment, under 28 KB.
fn teams(h: &warp::http::HeaderMap, body: &[u8]) -> Result<(), String> {
    json_content(h)?;
    if body.len() > 28 * 1024 {
        return Err(format!("payload too large: {} bytes", body.len()));
    }
    let v = json_of(body)?;
    let card = &v["attachments"][0];
    if v["type"] != "message" || card["contentType"] != "application/vnd.microsoft.card.adaptive" {
        return Err("not a message with an adaptive card".into());
    }
    let c = &card["content"];
    if c["type"] != "AdaptiveCard" || !c["version"].is_string() || !c["body"].is_array() {
        return Err("invalid AdaptiveCard".into());
    }
    Ok(())
}

/// PagerDuty Events API v2.
fn pagerduty(h: &warp::http::HeaderMap, body: &[u8]) -> Result<(), String> {
    json_content(h)?;
    let v = json_of(body)?;
    let p = &v["payload"];
    let checks = [
        (v["routing_key"] == ROUTING_KEY, "routing_key"),
        (v["event_action"] == "trigger", "event_action"),
        (
            v["dedup_key"]
                .as_str()
                .is_some_and(|k| !k.is_empty() && k.len() <= 255),
            "dedup_key",
        ),
        (
            (1..=1024).contains(&chars(&p["summary"])),
            "payload.summary",
        ),
        (
            p["source"].as_str().is_some_and(|s| !s.is_empty()),
            "payload.source",
        ),
        (
            ["critical", "error", "warning", "info"]
                .contains(&p["severity"].as_str().unwrap_or("")),
            "payload.severity",
        ),
        (p["custom_details"].is_object(), "payload.custom_details"),
        (
            v["links"]
                .as_array()
                .is_some_and(|l| l.iter().all(|x| x["href"].is_string())),
            "links",
        ),
    ];
    match checks.iter().find(|(ok, _)| !ok) {
        Some((_, field)) => Err(format!("Event object is invalid: {field}")),
        None => Ok(()),
    }
}

/// Opsgenie / JSM alert API.
fn opsgenie(h: &warp::http::HeaderMap, body: &[u8]) -> Result<(), String> {
    json_content(h)?;
    if h.get("authorization").and_then(|v| v.to_str().ok())
        != Some(&format!("GenieKey {GENIE_KEY}"))
    {
        return Err("Authorization: GenieKey missing or wrong".into());
    }
    let v = json_of(body)?;
    let checks = [
        ((1..=130).contains(&chars(&v["message"])), "message"),
        (chars(&v["alias"]) <= 512, "alias"),
        (chars(&v["description"]) <= 15000, "description"),
        (
            ["P1", "P2", "P3", "P4", "P5"].contains(&v["priority"].as_str().unwrap_or("")),
            "priority",
        ),
        (
            v["details"]
                .as_object()
                .is_some_and(|d| d.values().all(Value::is_string)),
            "details",
        ),
        (
            v["tags"]
                .as_array()
                .is_some_and(|t| t.len() <= 20 && t.iter().all(|x| chars(x) <= 50)),
            "tags",
        ),
    ];
    match checks.iter().find(|(ok, _)| !ok) {
        Some((_, field)) => Err(format!("Request body is not processable: {field}")),
        None => Ok(()),
    }
}

/// Ten matches make one alert (10 sample events) whose context holds 50 KB.
const BIG_RULE: &str = r#"let meta = #{ id: "T.Big", severity: "CRITICAL", actions: ["SHARE_PROJECT_WITH_PUBLIC"], threshold: 10,
    runbook: "https://runbooks.example/hex-share", reference: "https://learn.hex.tech/docs" };
fn rule(e) { true }
fn title(e) { `${actor(e)} shared "${target_name(e)}" to the web: "quotes" & <tags> ${"é".pad(300, "é")}` }
fn dedup(e) { "one" }
fn alert_context(e) { let big = ""; big.pad(50000, "x"); #{ actor: actor(e), ip: actor_ip(e), big: big } }
"#;

#[tokio::test]
async fn every_destination_type_sends_what_its_service_accepts() {
    let slack_rx = WebhookReceiver::validating(vec![Reply::Status(200)], slack).await;
    let teams_rx = WebhookReceiver::validating(vec![Reply::Status(202)], teams).await;
    let pd_rx = WebhookReceiver::validating(vec![Reply::Status(202)], pagerduty).await;
    let og_rx = WebhookReceiver::validating(vec![Reply::Status(202)], opsgenie).await;
    let hook_rx = WebhookReceiver::start(vec![Reply::Status(200)]).await;
    let config = format!(
        r#"
[[destinations]]
notify = "alert"
name = "soc-slack"
type = "slack"
url_env = "SLACK_WEBHOOK_URL"
[[destinations]]
notify = "alert"
name = "soc-teams"
type = "teams"
url_env = "TEAMS_WEBHOOK_URL"
[[destinations]]
notify = "alert"
name = "oncall"
type = "pagerduty"
routing_key_env = "PD_ROUTING_KEY"
url = "http://{pd}/v2/enqueue"
[[destinations]]
notify = "alert"
name = "opsgenie"
type = "opsgenie"
api_key_env = "OPSGENIE_API_KEY"
url = "http://{og}"
[[destinations]]
notify = "alert"
name = "siem"
type = "webhook"
url = "{hook}"
body_template = '{{"text": "{{{{ alert.title }}}}", "sev": "{{{{ alert.severity }}}}", "n": {{{{ alert.eventCount }}}}}}'
"#,
        pd = pd_rx.addr,
        og = og_rx.addr,
        hook = hook_rx.url(),
    );
    let mut d = TestDaemon::start_with_env(
        &config,
        &[
            ("SLACK_WEBHOOK_URL", &slack_rx.url()),
            ("TEAMS_WEBHOOK_URL", &teams_rx.url()),
            ("PD_ROUTING_KEY", ROUTING_KEY),
            ("OPSGENIE_API_KEY", GENIE_KEY),
        ],
        &[("big.rhai", BIG_RULE)],
    )
    .await;
    let records: Vec<Value> = (0..10)
        .map(|i| hex_record(i, "SHARE_PROJECT_WITH_PUBLIC"))
        .collect();
    d.send(&records).await;
    let all = [&slack_rx, &teams_rx, &pd_rx, &og_rx, &hook_rx];
    assert!(
        wait_until(WAIT, || all.iter().all(|r| !r.requests().is_empty())).await,
        "{:?}",
        all.iter().map(|r| r.requests().len()).collect::<Vec<_>>()
    );
    for r in all {
        let got = r.requests();
        assert_eq!(got.len(), 1, "exactly one request each");
        assert_eq!(
            got[0].invalid,
            None,
            "{}",
            String::from_utf8_lossy(&got[0].body)
        );
    }
    let alert = d.last_alert("T.Big").unwrap();
    assert_eq!(alert["events"].as_array().unwrap().len(), 10);
    let id = alert["alertId"].as_str().unwrap();
    let body =
        |r: &WebhookReceiver| serde_json::from_slice::<Value>(&r.requests()[0].body).unwrap();

    let s = body(&slack_rx);
    assert!(s["text"]
        .as_str()
        .unwrap()
        .starts_with("[CRITICAL] user0@acme.example shared"));
    assert!(s
        .to_string()
        .contains("<https://runbooks.example/hex-share|open>"));
    let p = body(&pd_rx);
    assert_eq!(
        (p["dedup_key"].as_str(), p["payload"]["severity"].as_str()),
        (Some(id), Some("critical"))
    );
    assert_eq!(p["links"][0]["href"], "https://runbooks.example/hex-share");
    let o = body(&og_rx);
    assert_eq!(
        (o["alias"].as_str(), o["priority"].as_str()),
        (Some(id), Some("P1"))
    );
    assert_eq!(og_rx.requests()[0].path, "/v2/alerts");
    assert!(o["details"]["context.big"].as_str().unwrap().ends_with('…'));
    let h = body(&hook_rx);
    assert_eq!(h["text"], alert["title"]);
    assert_eq!(
        (h["sev"].as_str(), h["n"].as_i64()),
        (Some("CRITICAL"), Some(10))
    );
    // Secrets never reach the database.
    let stored = d
        .strings("SELECT coalesce(last_error, '') FROM deliveries")
        .join(",");
    assert!(!stored.contains(ROUTING_KEY) && !stored.contains(GENIE_KEY));
    d.stop().await;
}

const SHARE_RULE: &str = r#"let meta = #{ id: "T.Share", severity: "HIGH", actions: ["SHARE_PROJECT_WITH_PUBLIC"] };
fn rule(e) { true }
fn dedup(e) { e.keySuffix }
"#;

fn delivery(d: &TestDaemon, destination: &str) -> (String, i64, String) {
    query(
        &d.dir,
        "SELECT status, attempts, coalesce(last_error, '') FROM deliveries WHERE destination = $1 ORDER BY id DESC LIMIT 1",
        &[&Cell::Text(destination.into())],
    )
    .first()
    .map(|r| (r[0].text(), r[1].int(), r[2].text()))
    .unwrap_or_default()
}

#[tokio::test]
async fn a_permanent_4xx_fails_after_one_attempt_and_retry_after_is_honoured() {
    let refusing = WebhookReceiver::start(vec![Reply::Status(400)]).await;
    let throttling =
        WebhookReceiver::start(vec![Reply::RetryAfter(429, 2), Reply::Status(200)]).await;
    let config = format!(
        "[delivery]\ninitial_backoff_ms = 50\nmax_backoff_seconds = 30\n\
         [[destinations]]\nnotify = \"alert\"\nname = \"refusing\"\ntype = \"slack\"\nurl_env = \"REFUSING_URL\"\n\
         [[destinations]]\nnotify = \"alert\"\nname = \"throttling\"\ntype = \"webhook\"\nurl = \"{}\"\n",
        throttling.url()
    );
    let mut d = TestDaemon::start_with_env(
        &config,
        &[("REFUSING_URL", &refusing.url())],
        &[("share.rhai", SHARE_RULE)],
    )
    .await;
    d.send(&[hex_record(1, "SHARE_PROJECT_WITH_PUBLIC")]).await;
    assert!(wait_until(WAIT, || delivery(&d, "refusing").0 == "failed").await);
    assert!(wait_until(WAIT, || delivery(&d, "throttling").0 == "delivered").await);
    let (_, attempts, error) = delivery(&d, "refusing");
    assert_eq!(attempts, 1);
    assert!(error.starts_with("HTTP 400: error 400: xxx"), "{error}");
    assert_eq!(
        error.len(),
        "HTTP 400: ".len() + 500,
        "the first 500 bytes of the answer"
    );
    let t = throttling.requests();
    assert_eq!(t.len(), 2);
    let waited = t[1].at - t[0].at;
    assert!(
        waited >= Duration::from_millis(1900),
        "retried after {waited:?}, not the 2 s asked"
    );
    // Not retried later either: `failed` is final (only `redeliver` queues it
    // again), and by now the other destination's retry 2 s later has happened.
    assert_eq!(delivery(&d, "refusing").0, "failed");
    assert_eq!(refusing.requests().len(), 1);
    let metrics = d.metrics().await;
    assert!(
        metrics
            .contains("hexwatch_deliveries_total{destination=\"refusing\",outcome=\"rejected\"} 1"),
        "{metrics}"
    );
    d.stop().await;
}

#[tokio::test]
async fn the_rate_limit_holds_under_a_burst_of_200_alerts_and_all_arrive() {
    let rx = WebhookReceiver::validating(vec![Reply::Status(200)], slack).await;
    let config = "[[destinations]]\nnotify = \"alert\"\nname = \"slack\"\ntype = \"slack\"\nurl_env = \"SLACK_URL\"\nmax_per_minute = 3000\nconcurrency = 8\n";
    let mut d = TestDaemon::start_with_env(
        config,
        &[("SLACK_URL", &rx.url())],
        &[("share.rhai", SHARE_RULE)],
    )
    .await;
    let records: Vec<Value> = (0..200)
        .map(|i| hex_record(i, "SHARE_PROJECT_WITH_PUBLIC"))
        .collect();
    let started = Instant::now();
    d.send(&records).await;
    assert!(
        wait_until(Duration::from_secs(30), || rx.requests().len() >= 200).await,
        "{}",
        rx.requests().len()
    );
    let got = rx.requests();
    assert_eq!(got.len(), 200);
    assert!(got.iter().all(|r| r.invalid.is_none()));
    // 50 a second with one second of burst: no second holds more than 100 (plus a
    // little for network jitter between the sends and their receipt), and after
    // the burst the remaining 150 take at least three seconds.
    let times: Vec<Instant> = got.iter().map(|r| r.at).collect();
    for (i, t) in times.iter().enumerate() {
        let in_window = times[i..]
            .iter()
            .take_while(|u| **u - *t < Duration::from_secs(1))
            .count();
        assert!(in_window <= 105, "{in_window} deliveries within one second");
    }
    assert!(
        times[199] - times[49] >= Duration::from_millis(2700),
        "{:?}",
        times[199] - times[49]
    );
    assert!(
        times[199] - started >= Duration::from_millis(2800),
        "{:?}",
        times[199] - started
    );
    d.stop().await;
}

fn hexwatch() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_hexwatch"))
}

#[tokio::test]
async fn notify_test_sends_through_the_real_path_and_exits_by_outcome() {
    let ok = WebhookReceiver::validating(vec![Reply::Status(202)], pagerduty).await;
    let refusing = WebhookReceiver::start(vec![Reply::Status(404)]).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[[destinations]]\nnotify = \"alert\"\nname = \"oncall\"\ntype = \"pagerduty\"\nrouting_key_env = \"PD_KEY\"\nurl = \"http://{}/v2/enqueue\"\n\
             [[destinations]]\nnotify = \"alert\"\nname = \"teams\"\ntype = \"teams\"\nurl_env = \"TEAMS_URL\"\n",
            ok.addr
        ),
    )
    .unwrap();
    let run = |dest: &str| {
        let config = config.clone();
        let teams = refusing.url();
        let dest = dest.to_string();
        async move {
            tokio::task::spawn_blocking(move || {
                hexwatch()
                    .args(["notify-test", "-c"])
                    .arg(&config)
                    .arg(&dest)
                    .env("PD_KEY", ROUTING_KEY)
                    .env("TEAMS_URL", teams)
                    .output()
                    .unwrap()
            })
            .await
            .unwrap()
        }
    };
    let out = run("oncall").await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("delivered to oncall (pagerduty): HTTP 202 in "),
        "{stdout}"
    );
    let sent: Value = serde_json::from_slice(&ok.requests()[0].body).unwrap();
    assert!(sent["payload"]["summary"]
        .as_str()
        .unwrap()
        .contains("hexwatch test alert"));

    let out = run("teams").await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("rejected by teams (teams)") && stdout.contains("HTTP 404"),
        "{stdout}"
    );
    let out = run("nope").await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("configured: oncall, teams"));
}

#[test]
fn check_refuses_templates_that_do_not_render() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    let config = dir.path().join("config.toml");
    let check = |destination: &str| {
        std::fs::write(&config, destination).unwrap();
        let out = hexwatch()
            .args(["check", "-c"])
            .arg(&config)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let hook = "[[destinations]]\nnotify = \"alert\"\nname = \"siem\"\ntype = \"webhook\"\nurl = \"https://siem.example/hook\"\n";
    let (code, err) = check(&format!(
        "{hook}body_template = '{{\"text\": \"{{{{ alert.titel }}}}\"}}'\n"
    ));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("destination siem: body_template") && err.contains("titel"),
        "{err}"
    );
    let (code, err) = check(&format!(
        "{hook}body_template = 'text: {{{{ alert.title }}}}'\n"
    ));
    assert_eq!(code, Some(1));
    assert!(err.contains("not JSON"), "{err}");
    let (code, err) = check(&format!(
        "{hook}body_template = 'text: {{{{ alert.title }}}}'\ncontent_type = \"text/plain\"\n"
    ));
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = check(
        "[[destinations]]\nnotify = \"alert\"\nname = \"mail\"\ntype = \"email\"\nsmtp_url = \"smtp://127.0.0.1:2525\"\nfrom = \"a@b.example\"\nto = [\"c@d.example\"]\nsubject_template = \"{% if %}\"\n",
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("subject_template"), "{err}");
}

#[tokio::test]
async fn email_templates_shape_subject_and_body_on_a_real_smtp_server() {
    let smtp = SmtpSink::start();
    let config = format!(
        "[[destinations]]\nnotify = \"alert\"\nname = \"mail\"\ntype = \"email\"\nsmtp_url = \"smtp://127.0.0.1:{}\"\nfrom = \"hexwatch@acme.example\"\nto = [\"secops@acme.example\"]\n\
         subject_template = \"Hex alert {{{{ alert.severity }}}}: {{{{ alert.id }}}}\"\n\
         body_template = \"Look at {{{{ alert.title }}}} ({{{{ alert.eventCount }}}} event) id={{{{ alert.alertId }}}}\"\n",
        smtp.port
    );
    let mut d = TestDaemon::start_with_env(&config, &[], &[("share.rhai", SHARE_RULE)]).await;
    d.send(&[hex_record(1, "SHARE_PROJECT_WITH_PUBLIC")]).await;
    assert!(wait_until(WAIT, || smtp.messages().len() == 1).await);
    let (_, data) = &smtp.messages()[0];
    let id = d.last_alert("T.Share").unwrap()["alertId"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(data.contains("Subject: Hex alert HIGH: T.Share"), "{data}");
    assert!(
        data.contains(&format!("Look at T.Share (1 event) id={id}")),
        "{data}"
    );
    assert!(!data.contains("multipart/alternative"), "{data}");
    d.stop().await;
}

/// Runs `notify-test` for the one webhook destination of a config pointing
/// at `url`; returns (exit code, stdout).
async fn notify_test_webhook(url: String, headers: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[[destinations]]\nnotify = \"alert\"\nname = \"hook\"\ntype = \"webhook\"\nurl = \"{url}\"\ntimeout_seconds = 5\n{headers}"
        ),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        hexwatch()
            .args(["notify-test", "-c"])
            .arg(&config)
            .arg("hook")
            .env("HOOK_KEY", "k-0123456789")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Issue 38, defect 6: destinations followed redirects, re-posting the alert
/// with its secret header to another address (and fetching internal URLs
/// into `last_error`). A 3xx is now a permanent failure naming the Location,
/// and nothing is sent there.
#[tokio::test]
async fn destinations_do_not_follow_redirects() {
    for status in [302, 307, 308] {
        let hook = WebhookReceiver::start(vec![Reply::Redirect(status), Reply::Status(200)]).await;
        let (code, stdout) = notify_test_webhook(
            hook.url(),
            "headers = { \"X-Api-Key\" = \"${HOOK_KEY}\" }\n",
        )
        .await;
        assert_eq!(code, Some(1), "{status}: {stdout}");
        assert!(
            stdout.contains(&format!("HTTP {status}")) && stdout.contains("/elsewhere"),
            "{status}: {stdout}"
        );
        let paths: Vec<String> = hook.requests().iter().map(|r| r.path.clone()).collect();
        assert_eq!(paths.len(), 1, "{status}: followed to {paths:?}");
    }
}

/// Issue 38, defect 7: an error answer's body was read whole (hundreds of
/// megabytes in memory). Now only its first bytes are read: an answer whose
/// body never ends still gives its status and the start of its text at once.
#[tokio::test]
async fn destination_error_bodies_are_read_only_in_part() {
    let hook = WebhookReceiver::start(vec![Reply::EndlessBody(500)]).await;
    let (code, stdout) = notify_test_webhook(hook.url(), "").await;
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("HTTP 500: error 500: xxx"), "{stdout}");
    assert!(!stdout.contains("timed out"), "{stdout}");
}

/// Issue 38, defect 8: a destination whose error page echoed the request
/// path put the secret path of a `url_env` (Slack, Teams) URL in
/// `last_error`, the log and `notify-test`'s output. Every secret part of a
/// destination URL is scrubbed, whatever text it comes back in.
#[tokio::test]
async fn secret_url_parts_echoed_by_a_destination_are_scrubbed() {
    let hook = WebhookReceiver::start(vec![Reply::EchoPath(404)]).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "[[destinations]]\nnotify = \"alert\"\nname = \"team\"\ntype = \"teams\"\nurl_env = \"TEAMS_URL\"\n",
    )
    .unwrap();
    let secret_path = "/webhookb2/0123abcd-SECRET-PART/IncomingWebhook/feedface";
    let url = format!("http://{}{secret_path}", hook.addr);
    let out = tokio::task::spawn_blocking(move || {
        hexwatch()
            .args(["notify-test", "-c"])
            .arg(&config)
            .arg("team")
            .env("TEAMS_URL", url)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(hook.requests()[0].path, secret_path);
    assert!(stdout.contains("HTTP 404: no such hook: ***"), "{stdout}");
    for text in [&stdout, &stderr] {
        assert!(!text.contains("SECRET-PART"), "{text}");
    }
}
