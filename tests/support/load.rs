//! Load for the crash tests (`crash.rs`, `replicas.rs`): rules and records that
//! create alerts of every kind, clients that stream batches the way Hex does
//! (a batch without a 200 is sent again later), and the checks made afterwards.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use super::*;

pub const RULES: &[(&str, &str)] = &[
    (
        "share.rhai",
        r#"let meta = #{ id: "C.Share", severity: "HIGH", actions: ["SHARE_PROJECT_WITH_PUBLIC"] };
fn rule(e) { true }
fn title(e) { `shared by ${actor(e)}` }"#,
    ),
    (
        "newip.rhai",
        r#"let meta = #{ id: "C.NewIp", severity: "MEDIUM" };
fn rule(e) { set_add("ips:" + actor(e), actor_ip(e), 30 * 86400) }
fn title(e) { `${actor(e)} from ${actor_ip(e)}` }"#,
    ),
    (
        "burst.rhai",
        r#"let meta = #{ id: "C.Burst", severity: "LOW", threshold: 25, dedup_minutes: 10, actions: ["RUN_PROJECT"] };
fn rule(e) { counter_incr("runs", 3600) > 0 }
fn dedup(e) { actor(e) }"#,
    ),
];

/// Writes [`RULES`] into `dir/rules`.
pub fn write_rules(dir: &Path) {
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    for (name, src) in RULES {
        std::fs::write(dir.join("rules").join(name), src).unwrap();
    }
}

/// Record `i`: seven actors, an address that changes every 60 records, one
/// share in ten, event times one second apart.
pub fn record(i: usize) -> Value {
    let mut r = hex_record(
        i,
        if i.is_multiple_of(10) {
            "SHARE_PROJECT_WITH_PUBLIC"
        } else {
            "RUN_PROJECT"
        },
    );
    r["event"]["context"]["location"] = json!(format!("198.51.100.{}", (i / 60) % 30));
    let t = chrono::DateTime::parse_from_rfc3339("2026-11-20T08:00:00Z").unwrap()
        + chrono::Duration::seconds(i as i64);
    r["event"]["occurred_at"] = json!(t.to_rfc3339());
    r
}

/// Records in a batch.
const BATCH: usize = 20;

/// What the clients sent and what was acknowledged.
#[derive(Clone, Default)]
pub struct Load {
    acked: Arc<Mutex<HashSet<String>>>,
    /// Batches whose request got no 200: sent again, as Hex retries.
    unanswered: Arc<Mutex<Vec<Vec<usize>>>>,
    next: Arc<AtomicUsize>,
}

impl Load {
    /// `n` clients streaming batches, each to one of `urls` at random, until `stop`.
    pub fn clients(
        &self,
        n: usize,
        urls: &[String],
        stop: &Arc<AtomicBool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        (0..n)
            .map(|_| {
                let (load, urls, stop) = (self.clone(), urls.to_vec(), stop.clone());
                tokio::spawn(async move {
                    let http = reqwest::Client::new();
                    while !stop.load(Ordering::Relaxed) {
                        let batch = load.unanswered.lock().unwrap().pop().unwrap_or_else(|| {
                            let first = load.next.fetch_add(BATCH, Ordering::SeqCst);
                            (first..first + BATCH).collect()
                        });
                        let url = &urls[(rand::random::<u64>() % urls.len() as u64) as usize];
                        if !load.send(&http, url, &batch).await {
                            load.unanswered.lock().unwrap().push(batch);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                })
            })
            .collect()
    }

    /// Sends one batch; true when it was acknowledged.
    async fn send(&self, http: &reqwest::Client, url: &str, batch: &[usize]) -> bool {
        let records: Vec<Value> = batch.iter().map(|&i| record(i)).collect();
        let sent = http
            .post(url)
            .header(AUTH, SECRET)
            .body(ndjson(&records))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        let ok = matches!(&sent, Ok(r) if r.status() == 200);
        if ok {
            let mut a = self.acked.lock().unwrap();
            for r in &records {
                a.insert(format!("ks:{}", r["keySuffix"].as_str().unwrap()));
            }
        }
        ok
    }

    /// Sends everything still unanswered to `url`, which must take it.
    pub async fn send_unanswered(&self, url: &str) {
        let left: Vec<Vec<usize>> = std::mem::take(&mut *self.unanswered.lock().unwrap());
        let http = client();
        for batch in left {
            assert!(self.send(&http, url, &batch).await, "not acknowledged");
        }
    }

    /// Checks, once evaluation and delivery are done, that every acknowledged
    /// record is in the journal once, every created alert was delivered, and
    /// the alerts are those of a clean `replay` of the accepted records.
    /// Returns (records acknowledged, stored, alerts).
    pub fn check(
        &self,
        dir: &Path,
        hook: &WebhookReceiver,
        incident_hook: Option<&WebhookReceiver>,
    ) -> (usize, usize, usize) {
        let strings = |sql: &str| -> Vec<String> {
            query(dir, sql, &[])
                .into_iter()
                .map(|r| r[0].text())
                .collect()
        };
        // 1. Every acknowledged record is in the journal, once.
        let acked = self.acked.lock().unwrap().clone();
        let stored = strings("SELECT key FROM events ORDER BY seq");
        let stored_set: HashSet<String> = stored.iter().cloned().collect();
        assert_eq!(stored.len(), stored_set.len(), "a key stored twice");
        let missing: Vec<_> = acked.difference(&stored_set).collect();
        assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
        assert!(acked.len() >= 1000, "too little load: {}", acked.len());

        // 2. Every created alert was delivered (at least once, same id).
        let created: BTreeSet<String> = strings("SELECT alert_id FROM alerts WHERE created")
            .into_iter()
            .collect();
        let received: BTreeSet<String> = hook
            .requests()
            .iter()
            .map(|r| r.headers["Idempotency-Key"].to_str().unwrap().to_string())
            .collect();
        assert!(!created.is_empty());
        let undelivered: Vec<_> = created.difference(&received).collect();
        assert!(
            undelivered.is_empty(),
            "created, never delivered: {undelivered:?}"
        );

        // 3. The alerts are exactly those of a clean replay of the accepted records.
        let file = dir.join("accepted.ndjson");
        std::fs::write(
            &file,
            strings("SELECT record FROM events ORDER BY seq").join("\n"),
        )
        .unwrap();
        let config = hexwatch::config::Config::parse(
            &dir.join("config.toml"),
            "",
            &MapEnv(Default::default()),
        )
        .unwrap();
        let (alerts, summary) = hexwatch::replay::run(&config, &[file], &mut Vec::new()).unwrap();
        let replayed: BTreeSet<String> = alerts.into_iter().map(|a| a.alert_id).collect();
        assert_eq!(created, replayed);

        // 4. The incidents, with their members in order, are those of the
        // replay, and each was notified: every member alert is listed in a
        // delivered notification.
        let stored_incidents: BTreeSet<String> = strings(
            "SELECT incident_id || ':' || alert_id FROM incident_alerts ORDER BY incident_id, idx",
        )
        .into_iter()
        .collect();
        let replayed_incidents: BTreeSet<String> = summary
            .incidents
            .iter()
            .flat_map(|(i, members)| {
                members
                    .iter()
                    .map(move |m| format!("{}:{m}", i.incident.id))
            })
            .collect();
        assert_eq!(
            stored_incidents, replayed_incidents,
            "incidents differ from replay"
        );
        if let Some(incident_hook) = incident_hook {
            let mut listed = BTreeSet::new();
            for r in incident_hook.requests() {
                let n: Value = serde_json::from_slice(&r.body).unwrap();
                for a in n["alerts"].as_array().unwrap() {
                    listed.insert(format!(
                        "{}:{}",
                        n["incident"]["id"].as_str().unwrap(),
                        a["alertId"].as_str().unwrap()
                    ));
                }
            }
            let unlisted: Vec<_> = stored_incidents.difference(&listed).collect();
            assert!(
                unlisted.is_empty(),
                "in an incident, never notified: {unlisted:?}"
            );
        }
        (acked.len(), stored.len(), created.len())
    }
}

/// Waits (`timeout` at most) until the evaluator has caught up and nothing is
/// left to deliver; true when it did.
pub async fn settled(dir: &Path, timeout: Duration) -> bool {
    wait_until(timeout, || {
        let lag = query(
            dir,
            "SELECT (SELECT max(seq) FROM events) - (SELECT seq FROM cursors WHERE name = 'evaluator')",
            &[],
        );
        let undelivered = query(
            dir,
            "SELECT (SELECT count(*) FROM deliveries WHERE status != 'delivered')
                  + (SELECT count(*) FROM incidents WHERE notify_at IS NOT NULL)",
            &[],
        );
        lag[0][0] == Cell::Int(0) && undelivered[0][0] == Cell::Int(0)
    })
    .await
}
