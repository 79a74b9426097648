//! Alerts reaching people, over real sockets: webhook retries with a stable
//! alert id and a valid signature, a receiver that comes up late, e-mail to a real
//! SMTP server, STARTTLS refusal, pending deliveries across a kill, and a
//! hanging destination that must not slow ingestion or the other destinations.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

const WAIT: Duration = Duration::from_secs(10);

const SHARE_RULE: &str = r#"let meta = #{ id: "T.Share", severity: "HIGH", actions: ["SHARE_PROJECT_WITH_PUBLIC"] };
fn rule(e) { true }
fn title(e) { `${actor(e)} shared <${target_name(e)}> to the web` }
"#;

fn webhook_config(name: &str, url: &str, extra: &str) -> String {
    format!("[[destinations]]\nnotify = \"alert\"\nname = \"{name}\"\ntype = \"webhook\"\nurl = \"{url}\"\n{extra}\n")
}

const FAST_RETRY: &str =
    "[delivery]\ninitial_backoff_ms = 50\nmax_backoff_seconds = 1\nmax_attempts = 50\n";

fn delivery_status(d: &TestDaemon, destination: &str) -> Option<(String, i64)> {
    query(
        &d.dir,
        "SELECT status, attempts FROM deliveries WHERE destination = $1 ORDER BY id DESC LIMIT 1",
        &[&Cell::Text(destination.into())],
    )
    .first()
    .map(|r| (r[0].text(), r[1].int()))
}

#[tokio::test]
async fn webhook_retries_until_accepted_with_stable_id_and_signature() {
    let hook = WebhookReceiver::start(vec![
        Reply::Status(500),
        Reply::Status(500),
        Reply::Status(200),
    ])
    .await;
    let extra = format!(
        "{FAST_RETRY}{}",
        webhook_config(
            "hook",
            &hook.url(),
            "signing_secret_env = \"HOOK_SECRET\"\nheaders = { \"Authorization\" = \"Bearer ${HOOK_TOKEN}\" }"
        )
    );
    let mut d = TestDaemon::start_with_env(
        &extra,
        &[("HOOK_SECRET", "s3cret"), ("HOOK_TOKEN", "t0ken")],
        &[("share.rhai", SHARE_RULE)],
    )
    .await;
    d.send(&[hex_record(1, "SHARE_PROJECT_WITH_PUBLIC")]).await;
    assert!(
        wait_until(WAIT, || delivery_status(&d, "hook")
            .is_some_and(|s| s.0 == "delivered"))
        .await
    );
    assert_eq!(delivery_status(&d, "hook"), Some(("delivered".into(), 3)));
    let reqs = hook.requests();
    assert_eq!(reqs.len(), 3);
    let alert: Value = serde_json::from_slice(&reqs[2].body).unwrap();
    let id = alert["alertId"].as_str().unwrap();
    for r in &reqs {
        assert_eq!(r.headers["idempotency-key"], id);
        assert_eq!(r.headers["authorization"], "Bearer t0ken");
        assert_eq!(r.headers["content-type"], "application/json");
        let expected = hexwatch::dispatch::http::signature(b"s3cret", &r.body);
        assert_eq!(r.headers["x-hexwatch-signature"], expected.as_str());
    }
    assert_eq!(alert["id"], "T.Share");
    assert_eq!(alert["type"], "RULE");
    assert_eq!(alert["severity"], "HIGH");
    assert_eq!(alert["destinations"], serde_json::json!(["hook"]));
    assert_eq!(
        alert["events"][0]["event"]["action"],
        "SHARE_PROJECT_WITH_PUBLIC"
    );
    // Backoff: the first retry after about 50 ms here (about a second by default).
    assert!(reqs[1].at - reqs[0].at >= Duration::from_millis(30));
    d.stop().await;
}

#[tokio::test]
async fn receiver_that_is_down_at_first_gets_the_alert_when_it_comes_up() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let extra = format!("{FAST_RETRY}{}", webhook_config("late", &url, ""));
    let mut d = TestDaemon::start_with_env(&extra, &[], &[("share.rhai", SHARE_RULE)]).await;
    d.send(&[hex_record(1, "SHARE_PROJECT_WITH_PUBLIC")]).await;
    assert!(
        wait_until(WAIT, || delivery_status(&d, "late")
            .is_some_and(|s| s.1 >= 2))
        .await
    );
    assert_eq!(delivery_status(&d, "late").unwrap().0, "pending");
    let hook = WebhookReceiver::start_on(
        format!("127.0.0.1:{port}").parse().unwrap(),
        vec![Reply::Status(204)],
    )
    .await;
    assert!(
        wait_until(WAIT, || delivery_status(&d, "late")
            .is_some_and(|s| s.0 == "delivered"))
        .await
    );
    assert_eq!(hook.requests().len(), 1);
    d.stop().await;
}

#[tokio::test]
async fn threshold_alert_is_delivered_once_and_updated_afterwards() {
    let hook = WebhookReceiver::start(vec![Reply::Status(200)]).await;
    let rule = r#"let meta = #{ id: "T.Burst", severity: "MEDIUM", actions: ["DOWNLOAD_AS_CSV"], threshold: 3, dedup_minutes: 15 };
fn rule(e) { true }
fn dedup(e) { actor(e) }
"#;
    let extra = webhook_config("hook", &hook.url(), "min_severity = \"LOW\"");
    let mut d = TestDaemon::start_with_env(&extra, &[], &[("burst.rhai", rule)]).await;
    let at = |i: usize, min: usize| {
        event_at(
            i,
            "DOWNLOAD_AS_CSV",
            "eve@acme.example",
            &format!("2024-03-05T10:{min:02}:00Z"),
        )
    };
    d.send(&[at(1, 0), at(2, 1)]).await;
    // Both records evaluated: below the threshold, no alert and nothing queued.
    assert!(
        wait_until(WAIT, || d.count(
            "SELECT coalesce(max(seq), 0) FROM cursors WHERE name = 'evaluator'"
        ) == 2)
        .await
    );
    assert_eq!(d.alerts_of("T.Burst"), 0);
    assert_eq!(
        d.count("SELECT count(*) FROM deliveries"),
        0,
        "below the threshold: nothing sent"
    );
    d.send(&[at(3, 2)]).await;
    assert!(wait_until(WAIT, || hook.requests().len() == 1).await);
    let first: Value = serde_json::from_slice(&hook.requests()[0].body).unwrap();
    assert_eq!(first["eventCount"], 3);
    d.send(&[at(4, 3), at(5, 4)]).await;
    assert!(
        wait_until(WAIT, || d
            .last_alert("T.Burst")
            .is_some_and(|a| a["eventCount"] == 5))
        .await
    );
    // An update queues no delivery: the one row is the first, delivered.
    assert!(
        wait_until(WAIT, || d.count(
            "SELECT count(*) FROM deliveries WHERE status = 'delivered'"
        ) == 1)
        .await
    );
    assert_eq!(
        d.count("SELECT count(*) FROM deliveries"),
        1,
        "updates are not delivered again"
    );
    assert_eq!(hook.requests().len(), 1);
    d.stop().await;
}

#[tokio::test]
async fn email_reaches_a_real_smtp_server() {
    let smtp = SmtpSink::start();
    let extra = format!(
        "[[destinations]]\nnotify = \"alert\"\nname = \"mail\"\ntype = \"email\"\nsmtp_url = \"smtp://127.0.0.1:{}\"\nfrom = \"hexwatch@acme.example\"\nto = [\"secops@acme.example\", \"oncall@acme.example\"]\nmin_severity = \"HIGH\"\n",
        smtp.port
    );
    let mut d = TestDaemon::start_with_env(&extra, &[], &[("share.rhai", SHARE_RULE)]).await;
    d.send(&[hex_record(1, "SHARE_PROJECT_WITH_PUBLIC")]).await;
    assert!(wait_until(WAIT, || smtp.messages().len() == 1).await);
    let (rcpts, data) = &smtp.messages()[0];
    assert_eq!(
        rcpts,
        &vec![
            "secops@acme.example".to_string(),
            "oncall@acme.example".to_string()
        ]
    );
    let unfolded = data.replace("=\r\n", "").replace("=\n", "");
    assert!(
        data.contains("Subject: [HIGH] user1@acme.example shared <Revenue model 1> to the web"),
        "{data}"
    );
    assert!(data.contains("From: hexwatch@acme.example"), "{data}");
    assert!(data.contains("multipart/alternative"), "{data}");
    assert!(data.contains("text/plain"), "{data}");
    assert!(data.contains("text/html"), "{data}");
    // The HTML part escapes the title; both parts carry the alert id and the sample event.
    assert!(
        unfolded.contains("shared &lt;Revenue model 1&gt; to the web"),
        "{data}"
    );
    let alert = d.last_alert("T.Share").unwrap();
    let id = alert["alertId"].as_str().unwrap();
    // Both parts carry the alert id, and so does the Message-ID.
    assert_eq!(unfolded.matches(id).count(), 3, "{data}");
    assert!(
        data.contains(&format!("Message-ID: <{id}@hexwatch>")),
        "{data}"
    );
    assert!(unfolded.contains("SHARE_PROJECT_WITH_PUBLIC"), "{data}");
    // The sink has the message before the daemon has recorded the delivery.
    assert!(
        wait_until(WAIT, || delivery_status(&d, "mail")
            == Some(("delivered".into(), 1)))
        .await
    );
    d.stop().await;
}

/// E-mail over STARTTLS and over implicit TLS to a server whose certificate comes
/// from a CA given in `tls_ca_file`.
#[tokio::test]
async fn email_over_starttls_and_implicit_tls() {
    let tmp = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let (cert_path, key_path) = (tmp.path().join("cert.pem"), tmp.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    for (mode, url) in [
        ("starttls", "smtp://127.0.0.1:{}?tls=required"),
        ("implicit", "smtps://127.0.0.1:{}"),
    ] {
        let smtp = SmtpSink::start_tls(mode, &cert_path, &key_path);
        let extra = format!(
            "[[destinations]]\nnotify = \"alert\"\nname = \"mail\"\ntype = \"email\"\nsmtp_url = \"{}\"\ntls_ca_file = \"{}\"\nfrom = \"hexwatch@acme.example\"\nto = [\"secops@acme.example\"]\n",
            url.replace("{}", &smtp.port.to_string()),
            cert_path.display()
        );
        let mut d = TestDaemon::start_with_env(&extra, &[], &[("share.rhai", SHARE_RULE)]).await;
        d.send(&[hex_record(1, "SHARE_PROJECT_WITH_PUBLIC")]).await;
        assert!(
            wait_until(WAIT, || smtp.messages().len() == 1).await,
            "{mode}: {:?}",
            {
                query(&d.dir, "SELECT last_error FROM deliveries", &[])
                    .first()
                    .map(|r| match &r[0] {
                        Cell::Text(t) => Some(t.clone()),
                        _ => None,
                    })
            }
        );
        assert!(smtp.messages()[0].1.contains("Subject: [HIGH]"), "{mode}");
        d.stop().await;
    }
}

#[tokio::test]
async fn starttls_required_against_a_server_without_it_refuses_to_send() {
    let smtp = SmtpSink::start();
    let extra = format!(
        "[delivery]\nmax_attempts = 2\ninitial_backoff_ms = 50\n[[destinations]]\nnotify = \"alert\"\nname = \"mail\"\ntype = \"email\"\nsmtp_url = \"smtp://127.0.0.1:{}?tls=required\"\nsmtp_user_env = \"SMTP_USER\"\nsmtp_password_env = \"SMTP_PASSWORD\"\nfrom = \"hexwatch@acme.example\"\nto = [\"secops@acme.example\"]\n",
        smtp.port
    );
    let mut d = TestDaemon::start_with_env(
        &extra,
        &[("SMTP_USER", "hexwatch"), ("SMTP_PASSWORD", "pw")],
        &[("share.rhai", SHARE_RULE)],
    )
    .await;
    d.send(&[hex_record(1, "SHARE_PROJECT_WITH_PUBLIC")]).await;
    assert!(
        wait_until(WAIT, || delivery_status(&d, "mail")
            .is_some_and(|s| s.0 == "failed"))
        .await
    );
    assert_eq!(delivery_status(&d, "mail"), Some(("failed".into(), 2)));
    let err = d.strings("SELECT last_error FROM deliveries").remove(0);
    assert!(err.to_lowercase().contains("tls"), "{err}");
    assert!(smtp.messages().is_empty());
    d.stop().await;
}

#[tokio::test]
async fn pending_deliveries_survive_a_kill() {
    // The real binary, killed with SIGKILL while its destination is down.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    std::fs::write(dir.path().join("rules/share.rhai"), SHARE_RULE).unwrap();
    let daemon_port = free_port();
    let hook_port = free_port();
    let config = format!(
        "{}[server]\nlisten = \"127.0.0.1:{daemon_port}\"\n{FAST_RETRY}{}",
        storage_toml(dir.path()),
        webhook_config(
            "hook",
            &format!("http://127.0.0.1:{hook_port}/hook"),
            "timeout_seconds = 1"
        )
    );
    std::fs::write(dir.path().join("config.toml"), config).unwrap();
    let status = || {
        query(dir.path(), "SELECT status, attempts FROM deliveries", &[])
            .first()
            .map(|r| (r[0].text(), r[1].int()))
    };

    let child = BinaryDaemon::spawn(dir.path());
    wait_ready(daemon_port).await;
    let r = client()
        .post(format!("http://127.0.0.1:{daemon_port}/ingest/hex"))
        .header(AUTH, SECRET)
        .body(hex_record(1, "SHARE_PROJECT_WITH_PUBLIC").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(wait_until(WAIT, || status().is_some_and(|s| s.1 >= 1)).await);
    drop(child); // SIGKILL
    assert_eq!(status().unwrap().0, "pending");

    let hook = WebhookReceiver::start_on(
        format!("127.0.0.1:{hook_port}").parse().unwrap(),
        vec![Reply::Status(200)],
    )
    .await;
    let _child = BinaryDaemon::spawn(dir.path());
    wait_ready(daemon_port).await;
    // Killed between claiming the delivery and recording the failed send, the
    // first daemon leaves a claim that lasts 3 × timeout + 15 s (18 s here):
    // the delivery waits it out, so no replica ever sends it twice.
    let claim_expired = Duration::from_secs(30);
    assert!(
        wait_until(claim_expired, || status()
            .is_some_and(|s| s.0 == "delivered"))
        .await
    );
    assert_eq!(hook.requests().len(), 1);
}

#[tokio::test]
async fn hanging_destination_slows_neither_ingestion_nor_other_destinations() {
    let hanging = WebhookReceiver::start(vec![Reply::Hang]).await;
    let healthy = WebhookReceiver::start(vec![Reply::Status(200)]).await;
    let rule = r#"let meta = #{ id: "T.Every", severity: "HIGH", actions: ["RUN_PROJECT"] };
fn rule(e) { true }
fn dedup(e) { e.keySuffix }
"#;
    let extra = format!(
        "{}{}",
        webhook_config(
            "hanging",
            &hanging.url(),
            "timeout_seconds = 60\nconcurrency = 2"
        ),
        webhook_config("healthy", &healthy.url(), "")
    );
    let mut d = TestDaemon::start_with_env(&extra, &[], &[("every.rhai", rule)]).await;
    // 20 batches of 50 records, every record an alert for both destinations.
    let started = Instant::now();
    for b in 0..20 {
        let recs: Vec<Value> = (0..50)
            .map(|i| hex_record(b * 50 + i, "RUN_PROJECT"))
            .collect();
        d.send(&recs).await;
    }
    let ingest = started.elapsed();
    println!("ingested 1000 records in {ingest:?} while a destination hangs");
    assert!(
        wait_until(Duration::from_secs(30), || healthy.requests().len() == 1000).await,
        "healthy destination got {} of 1000",
        healthy.requests().len()
    );
    // Every record was acknowledged and the healthy destination has every
    // alert while the hanging one has not finished a single delivery (its
    // attempts time out only after 60 s): nothing waited for it.
    assert_eq!(
        d.count("SELECT count(*) FROM deliveries WHERE destination = 'hanging' AND status = 'delivered'"),
        0
    );
    println!(
        "healthy destination had all 1000 alerts after {:?}",
        started.elapsed()
    );
    // The hanging one holds exactly its concurrency in flight.
    assert_eq!(hanging.requests().len(), 2);
    d.stop().await;
}

/// Webhook over HTTPS to a receiver whose certificate comes from a CA given in
/// `tls_ca_file`; without it the same receiver is refused.
#[tokio::test]
async fn webhook_over_https_trusts_only_the_configured_ca() {
    use warp::Filter;
    let tmp = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let (cert_path, key_path) = (tmp.path().join("cert.pem"), tmp.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();

    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    let route = warp::post()
        .map(move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            warp::reply::Response::new("ok".into())
        })
        .recover(|_| async {
            Ok::<_, std::convert::Infallible>(warp::reply::Response::new("".into()))
        })
        .unify();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/hook", listener.local_addr().unwrap());
    let acceptor = hexwatch::tls::acceptor_from_files(&cert_path, &key_path).unwrap();
    /// The destination trusts every request it gets.
    struct Everyone;
    impl hexwatch::server::Trust for Everyone {
        fn trusted(&self, _: &warp::http::HeaderMap) -> bool {
            true
        }
    }
    tokio::spawn(hexwatch::server::serve(
        listener,
        Some(acceptor),
        route,
        std::sync::Arc::new(Everyone),
        hexwatch::server::ConnLimits {
            max_connections: 16,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(10),
            grace: Duration::from_secs(1),
            untrusted_time: Duration::from_secs(10),
        },
        std::sync::Arc::new(hexwatch::metrics::Metrics::new()),
        std::future::pending(),
    ));

    // Without the CA: the certificate is not trusted, nothing arrives.
    let extra = format!(
        "[delivery]\nmax_attempts = 1\n{}",
        webhook_config("hook", &url, "")
    );
    let mut d = TestDaemon::start_with_env(&extra, &[], &[("share.rhai", SHARE_RULE)]).await;
    d.send(&[hex_record(1, "SHARE_PROJECT_WITH_PUBLIC")]).await;
    assert!(
        wait_until(WAIT, || delivery_status(&d, "hook")
            .is_some_and(|s| s.0 == "failed"))
        .await
    );
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    d.stop().await;

    // With it: delivered.
    let extra = webhook_config(
        "hook",
        &url,
        &format!("tls_ca_file = \"{}\"", cert_path.display()),
    );
    let mut d = TestDaemon::start_with_env(&extra, &[], &[("share.rhai", SHARE_RULE)]).await;
    d.send(&[hex_record(1, "SHARE_PROJECT_WITH_PUBLIC")]).await;
    assert!(
        wait_until(WAIT, || delivery_status(&d, "hook")
            .is_some_and(|s| s.0 == "delivered"))
        .await
    );
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    d.stop().await;
}

#[tokio::test]
async fn long_outage_does_not_lose_alerts() {
    // Defaults but fast backoff: a dead destination is retried past the old
    // 12-attempt limit, and the delivery stays pending.
    let dead = format!("http://127.0.0.1:{}/hook", free_port());
    let extra = format!(
        "[delivery]\ninitial_backoff_ms = 20\nmax_backoff_seconds = 1\n{}",
        webhook_config("hook", &dead, "")
    );
    let mut d = TestDaemon::start_with_env(&extra, &[], &[("share.rhai", SHARE_RULE)]).await;
    d.send(&[hex_record(1, "SHARE_PROJECT_WITH_PUBLIC")]).await;
    assert!(
        wait_until(Duration::from_secs(30), || delivery_status(&d, "hook")
            .is_some_and(|s| s.1 > 14))
        .await
    );
    assert_eq!(delivery_status(&d, "hook").unwrap().0, "pending");
    d.stop().await;

    // Abandoned (here by max_attempts), counted, then queued again with
    // `hexwatch redeliver` once the destination is back: delivered.
    let port = free_port();
    let extra = format!(
        "[delivery]\nmax_attempts = 2\ninitial_backoff_ms = 20\n{}",
        webhook_config("hook", &format!("http://127.0.0.1:{port}/hook"), "")
    );
    let mut d = TestDaemon::start_with_env(&extra, &[], &[("share.rhai", SHARE_RULE)]).await;
    d.send(&[hex_record(2, "SHARE_PROJECT_WITH_PUBLIC")]).await;
    assert!(
        wait_until(WAIT, || delivery_status(&d, "hook")
            .is_some_and(|s| s.0 == "failed"))
        .await
    );
    let metrics = d.metrics().await;
    assert!(
        metrics.contains("hexwatch_deliveries_total{destination=\"hook\",outcome=\"abandoned\"} 1"),
        "{metrics}"
    );
    let hook = WebhookReceiver::start_on(
        format!("127.0.0.1:{port}").parse().unwrap(),
        vec![Reply::Status(200)],
    )
    .await;
    let redeliver = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_hexwatch"))
            .arg("redeliver")
            .arg("-c")
            .arg(d.dir.join("config.toml"))
            .args(args)
            .output()
            .unwrap()
    };
    let out = redeliver(&["--destination", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    let out = redeliver(&["--destination", "hook", "--since", "1h"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1 failed deliveries queued again"
    );
    assert!(wait_until(WAIT, || hook.requests().len() == 1).await);
    assert!(
        wait_until(WAIT, || delivery_status(&d, "hook")
            .is_some_and(|s| s.0 == "delivered"))
        .await
    );
    d.stop().await;
}

#[tokio::test]
async fn secrets_in_destination_urls_are_redacted() {
    // The path part of the URL is a secret, as in Slack and Teams webhook URLs.
    let port = free_port();
    let extra = format!(
        "[delivery]\nmax_attempts = 1\n{}",
        webhook_config(
            "slackish",
            &format!("http://127.0.0.1:{port}/services/${{HOOK_PATH}}?sig=querysecret"),
            "headers = { \"X-Key\" = \"${HOOK_KEY}\" }"
        )
    );
    let mut d = TestDaemon::start_with_env(
        &extra,
        &[
            ("HOOK_PATH", "T000/B000/pathsecret"),
            ("HOOK_KEY", "headersecret"),
        ],
        &[("share.rhai", SHARE_RULE)],
    )
    .await;
    d.send(&[hex_record(1, "SHARE_PROJECT_WITH_PUBLIC")]).await;
    assert!(
        wait_until(WAIT, || delivery_status(&d, "slackish")
            .is_some_and(|s| s.0 == "failed"))
        .await
    );
    d.stop().await;
    let err = d.strings("SELECT last_error FROM deliveries").remove(0);
    assert!(!err.is_empty());
    for secret in ["pathsecret", "querysecret", "headersecret"] {
        assert!(!err.contains(secret), "{secret} in {err}");
    }
}
