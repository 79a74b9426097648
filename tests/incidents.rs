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
        d.count("SELECT count(*) FROM alerts WHERE created AND incident_id IS NULL"),
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
