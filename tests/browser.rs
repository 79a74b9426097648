//! The console in a real browser: headless Chromium driven over WebDriver
//! (Debian's `chromium` and `chromium-driver`, which `.ci/run` installs).
//! Logs in, sees the incident sample's alerts, opens one, acknowledges it,
//! retries a failed delivery, sees a broken rule, and checks that a project
//! titled `<img src=x onerror=alert(1)>` stays text. Saves screenshots of the
//! alert list and an alert page to `target/screenshots/` (the README's come
//! from there).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};

use crate::support::*;

const TOKEN: &str = "browser-admin-token-0123456789";
const XSS: &str = "<img src=x onerror=alert(1)>";

pub(crate) struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) async fn browser() -> (Driver, Client) {
    let port = free_port();
    let driver = Driver(
        Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver: install Debian's chromium and chromium-driver (.ci/run does)"),
    );
    let caps: serde_json::Map<String, Value> = serde_json::from_value(json!({
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1360,900", "--hide-scrollbars"]
        }
    }))
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // chromedriver listens on loopback: plain HTTP, no TLS stack to build.
        match ClientBuilder::new(HttpConnector::new())
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(c) => return (driver, c),
            Err(e) => {
                assert!(Instant::now() < deadline, "no WebDriver session: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

pub(crate) fn shipped_rules() -> Vec<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "rhai"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect()
}

/// The text of the element `css` once `ready` holds for it. A click that
/// submits a form returns before the next page is there, so the element is
/// looked up again until then (10 s at most).
pub(crate) async fn text_when(c: &Client, css: &str, ready: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(e) = c.find(Locator::Css(css)).await {
            if let Ok(t) = e.text().await {
                if ready(&t) {
                    return t;
                }
                last = t;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{css} never became ready; last text: {last}");
}

/// Waits (10 s at most) until the browser shows a page under `path`.
pub(crate) async fn wait_for_page(c: &Client, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if c.current_url()
            .await
            .is_ok_and(|u| u.path().ends_with(path))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the browser never got to {path}");
}

pub(crate) fn save(name: &str, png: &[u8]) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), png).unwrap();
}

#[tokio::test]
async fn console_in_a_real_browser() {
    // The siem refuses every alert once (400, for good), then takes retries.
    let hook = WebhookReceiver::start(vec![Reply::Status(400); 64]).await;
    let mut rules = shipped_rules();
    rules.push((
        "broken.rhai".into(),
        "let meta = #{ id: \"Broken\", severity: \"LOW\" }; fn rule(e) { e.event. }".into(),
    ));
    let rules: Vec<(&str, &str)> = rules
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let config = format!(
        "[ui]\nadmin_token_env = \"HEXWATCH_ADMIN_TOKEN\"\n[[destinations]]\nnotify = \"alert\"\nname = \"siem\"\ntype = \"webhook\"\nurl = \"{}\"\nmin_severity = \"HIGH\"\n",
        hook.url()
    );
    let mut d =
        TestDaemon::start_with_env(&config, &[("HEXWATCH_ADMIN_TOKEN", TOKEN)], &rules).await;

    // The incident sample, then one public share of a project with a hostile title.
    let incident: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/samples/incident.json"),
        )
        .unwrap(),
    )
    .unwrap();
    for chunk in incident.chunks(500) {
        d.send(chunk).await;
    }
    let mut share = incident
        .iter()
        .find(|r| r["event"]["action"] == "SHARE_PROJECT_WITH_PUBLIC")
        .expect("the incident shares a project")
        .clone();
    share["keySuffix"] = json!("browser-xss-1");
    // Hex puts a project's title on its `project_version` target.
    let project = share["event"]["targets"][0]["id"].clone();
    share["event"]["targets"]
        .as_array_mut()
        .unwrap()
        .push(json!({
            "id": "7f1c2d3e-0000-4000-8000-000000000001",
            "type": "project_version",
            "metadata": {
                "created": false,
                "representation": json!({
                    "id": "7f1c2d3e-0000-4000-8000-000000000001",
                    "hexId": project,
                    "title": XSS,
                    "version": "draft",
                    "published": true
                })
                .to_string()
            }
        }));
    d.send(&[share]).await;
    assert!(
        wait_until(Duration::from_secs(30), || {
            d.count("SELECT count(*) FROM deliveries WHERE status = 'failed'") > 0
                && d.count("SELECT count(*) FROM deliveries WHERE status = 'pending'") == 0
        })
        .await
    );

    let (_driver, c) = browser().await;
    let base = format!("http://{}", d.addr);

    // Log in.
    c.goto(&format!("{base}/ui")).await.unwrap();
    assert!(c.current_url().await.unwrap().path().ends_with("/ui/login"));
    c.find(Locator::Css("input[name=name]"))
        .await
        .unwrap()
        .send_keys("ana")
        .await
        .unwrap();
    c.find(Locator::Css("input[name=token]"))
        .await
        .unwrap()
        .send_keys(TOKEN)
        .await
        .unwrap();
    c.find(Locator::Css("button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for_page(&c, "/ui/alerts").await;

    // The incident's alerts, newest first.
    let listed = text_when(&c, "table.list", |t| t.contains("Hex.")).await;
    let rows = c
        .find_all(Locator::Css("table.list tbody tr"))
        .await
        .unwrap();
    assert!(rows.len() >= 20, "{} alerts listed", rows.len());
    assert!(listed.contains("Hex.Data.CsvDownloadBurst"), "{listed}");
    save("alerts.png", &c.screenshot().await.unwrap());

    // Open an alert whose delivery failed, acknowledge it, retry the delivery.
    let failed_alert = d.strings(
        "SELECT a.alert_id FROM alerts a JOIN deliveries d ON d.alert_id = a.alert_id
         WHERE d.status = 'failed' ORDER BY a.severity = 'CRITICAL' DESC LIMIT 1",
    )[0]
    .clone();
    c.goto(&format!("{base}/ui/alerts/{failed_alert}"))
        .await
        .unwrap();
    text_when(&c, "table.list", |t| t.contains("failed")).await;
    save("alert.png", &c.screenshot().await.unwrap());
    c.find(Locator::Css("form[action$='/ack'] input[name=note]"))
        .await
        .unwrap()
        .send_keys("ana is on it")
        .await
        .unwrap();
    c.find(Locator::Css("form[action$='/ack'] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    text_when(&c, "dl.facts", |t| {
        t.contains("acknowledged by ana") && t.contains("ana is on it")
    })
    .await;
    let before = hook.requests().len();
    c.find(Locator::Css("form[action$='/retry'] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || hook.requests().len() > before).await);

    // The broken rule, with its error.
    c.goto(&format!("{base}/ui/rules")).await.unwrap();
    text_when(&c, "section.broken", |t| t.contains("broken.rhai")).await;

    // The hostile title is text: no image element, no dialog.
    let xss_alert = d.strings(
        "SELECT a.alert_id FROM alerts a JOIN alert_samples s ON s.alert_id = a.alert_id
         WHERE s.record LIKE '%browser-xss-1%' AND a.created LIMIT 1",
    );
    let id = xss_alert.first().expect("the public share raised an alert");
    c.goto(&format!("{base}/ui/alerts/{id}")).await.unwrap();
    assert!(c.find_all(Locator::Css("img")).await.unwrap().is_empty());
    assert!(c.get_alert_text().await.is_err(), "a script ran");
    let source = c.source().await.unwrap();
    assert!(
        source.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "the title is shown as text: {}",
        source
            .find("onerror")
            .map(|i| &source[i.saturating_sub(200)..(i + 100).min(source.len())])
            .unwrap_or("no onerror in the page")
    );

    c.close().await.unwrap();
    d.stop().await;
}
