//! Incident triage in a real browser (headless Chromium over WebDriver): the
//! incident sample's incidents, worst first; open one, assign it, comment,
//! silence similar alerts, resolve it as a false positive; the history names
//! the responder at each step. Then the list at phone width (390 px) fits
//! the screen. Screenshots go to `target/screenshots/`.

use std::time::Duration;

use fantoccini::{Client, Locator};
use serde_json::Value;

use crate::browser::{browser, save, shipped_rules, text_when, wait_for_page};
use crate::incidents::incident_sample;
use crate::support::*;

const TOKEN: &str = "browser-admin-token-0123456789";

async fn fill(c: &Client, css: &str, text: &str) {
    let e = c.find(Locator::Css(css)).await.unwrap();
    e.clear().await.unwrap();
    e.send_keys(text).await.unwrap();
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

#[tokio::test]
async fn incident_triage_in_a_real_browser() {
    let hook = WebhookReceiver::start(vec![Reply::Status(200)]).await;
    let rules = shipped_rules();
    let rules: Vec<(&str, &str)> = rules
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let config = format!(
        "[ui]\nadmin_token_env = \"HEXWATCH_ADMIN_TOKEN\"\n[incidents]\ngroup_wait_seconds = 0\n\
         [[destinations]]\nname = \"hook\"\ntype = \"webhook\"\nurl = \"{}\"\n",
        hook.url()
    );
    let d = TestDaemon::start_with_env(&config, &[("HEXWATCH_ADMIN_TOKEN", TOKEN)], &rules).await;
    for chunk in incident_sample().chunks(500) {
        d.send(chunk).await;
    }
    assert!(
        wait_until(Duration::from_secs(60), || {
            d.count("SELECT count(*) FROM incidents WHERE severity = 'CRITICAL' AND notices > 0")
                == 1
        })
        .await
    );
    let (_driver, c) = browser().await;
    let base = format!("http://{}", d.addr);

    c.goto(&format!("{base}/ui/login")).await.unwrap();
    fill(&c, "input[name=name]", "ana").await;
    fill(&c, "input[name=token]", TOKEN).await;
    click(&c, "button").await;
    wait_for_page(&c, "/ui/alerts").await;

    // The incidents, worst first: dana's takeover on top.
    c.goto(&format!("{base}/ui/incidents")).await.unwrap();
    let listed = text_when(&c, "table.list", |t| t.contains("dana@")).await;
    let first = c
        .find(Locator::Css("table.list tbody tr"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        first.contains("CRITICAL") && first.contains("dana@initech.example"),
        "{listed}"
    );
    save("incidents.png", &c.screenshot().await.unwrap());

    // Open it; assign, comment.
    click(&c, "table.list tbody tr a").await;
    wait_for_page(&c, "").await;
    text_when(&c, "dl.facts", |t| t.contains("nobody")).await;
    let url = c.current_url().await.unwrap();
    let id = url.path().rsplit('/').next().unwrap().to_string();
    click(&c, "form[action$='/assign'] button").await;
    text_when(&c, "dl.facts", |t| {
        t.contains("Assignee\nana") || t.contains("Assignee ana")
    })
    .await;
    fill(
        &c,
        "form[action$='/comment'] textarea",
        "called dana: not her",
    )
    .await;
    click(&c, "form[action$='/comment'] button").await;
    text_when(&c, "ol.history", |t| t.contains("called dana: not her")).await;
    save("incident.png", &c.screenshot().await.unwrap());

    // Silence similar: the form comes filled with the account.
    click(&c, "a[href^='/ui/silences?']").await;
    wait_for_page(&c, "/ui/silences").await;
    let value = c
        .find(Locator::Css("input[name=value0]"))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap()
        .unwrap_or_default();
    assert_eq!(value, "dana@initech.example");
    fill(
        &c,
        "input[name=comment]",
        "dana's account is locked; noise from the cleanup",
    )
    .await;
    click(&c, "form.silence button").await;
    wait_for_page(&c, &id).await;

    // Resolve as a false positive... of the noise; the history tells it all.
    let reason = c
        .find(Locator::Css(
            "form[action$='/resolve'] select[name=reason] option[value=false_positive]",
        ))
        .await
        .unwrap();
    reason.click().await.unwrap();
    click(&c, "form[action$='/resolve'] button").await;
    let history = text_when(&c, "ol.history", |t| t.contains("resolved")).await;
    for step in [
        "ana assigned to ana",
        "ana commented: called dana: not her",
        "ana silenced similar alerts: actor = dana@initech.example",
        "ana resolved (false_positive)",
    ] {
        assert!(history.contains(step), "{step} missing from:\n{history}");
    }
    assert!(!history.contains("admin"), "{history}");

    // The list at phone width fits the screen.
    c.set_window_size(390, 844).await.unwrap();
    c.goto(&format!("{base}/ui/incidents?status=any"))
        .await
        .unwrap();
    text_when(&c, "table.list", |t| t.contains("dana@")).await;
    let width = c
        .execute("return document.documentElement.scrollWidth", vec![])
        .await
        .unwrap();
    let width = width.as_f64().unwrap_or(f64::MAX);
    save("incidents-phone.png", &c.screenshot().await.unwrap());
    assert!(width <= 400.0, "the page is {width} px wide at 390 px");
    let _: Value = Value::Null;
    c.close().await.unwrap();
}
