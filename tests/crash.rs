//! Crash consistency: the real binary under concurrent clients, killed with
//! SIGKILL at random moments and restarted, again and again. Afterwards every
//! acknowledged record is in the journal exactly once, every created alert was
//! delivered, and the alerts are exactly those a clean `replay` of the accepted
//! records creates.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

pub(crate) const RULES: &[(&str, &str)] = &[
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

/// Record `i`: seven actors, an address that changes every 60 records, one
/// share in ten, event times one second apart.
pub(crate) fn record(i: usize) -> Value {
    let mut r = hex_record(
        i,
        if i % 10 == 0 {
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

fn query_strings(dir: &Path, sql: &str) -> Vec<String> {
    query(dir, sql, &[])
        .into_iter()
        .map(|r| r[0].text())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_load_loses_nothing_and_matches_replay() {
    const ROUNDS: usize = 10;
    const CLIENTS: usize = 4;
    const BATCH: usize = 20;

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir(dir.join("rules")).unwrap();
    for (name, src) in RULES {
        std::fs::write(dir.join("rules").join(name), src).unwrap();
    }
    let hook = WebhookReceiver::start(vec![Reply::Status(200)]).await;
    let port = free_port();
    std::fs::write(
        dir.join("config.toml"),
        format!(
            "{}[server]\nlisten = \"127.0.0.1:{port}\"\n[delivery]\ninitial_backoff_ms = 50\nmax_backoff_seconds = 1\n[[destinations]]\nname = \"hook\"\ntype = \"webhook\"\nurl = \"{}\"\n",
            storage_toml(dir),
            hook.url()
        ),
    )
    .unwrap();

    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Batches whose request failed (the daemon died): sent again after the
    // restart, as Hex retries.
    let unanswered: Arc<Mutex<Vec<Vec<usize>>>> = Arc::default();
    let url = format!("http://127.0.0.1:{port}/ingest/hex");
    let mut kills = 0;
    for round in 0..ROUNDS {
        let daemon = BinaryDaemon::spawn(dir);
        wait_ready(port).await;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut clients = Vec::new();
        for _ in 0..CLIENTS {
            let (acked, next, unanswered, stop, url) = (
                acked.clone(),
                next.clone(),
                unanswered.clone(),
                stop.clone(),
                url.clone(),
            );
            clients.push(tokio::spawn(async move {
                let http = reqwest::Client::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let retry = unanswered.lock().unwrap().pop();
                    let batch = retry.unwrap_or_else(|| {
                        let first = next.fetch_add(BATCH, std::sync::atomic::Ordering::SeqCst);
                        (first..first + BATCH).collect()
                    });
                    let records: Vec<Value> = batch.iter().map(|&i| record(i)).collect();
                    let sent = http
                        .post(&url)
                        .header(AUTH, SECRET)
                        .body(ndjson(&records))
                        .timeout(Duration::from_secs(5))
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status() == 200 => {
                            let mut a = acked.lock().unwrap();
                            for r in &records {
                                a.insert(format!("ks:{}", r["keySuffix"].as_str().unwrap()));
                            }
                        }
                        _ => {
                            unanswered.lock().unwrap().push(batch);
                            return;
                        }
                    }
                }
            }));
        }
        // Kill at a moment that differs from round to round.
        let ms = 300 + (round * 137) % 500;
        tokio::time::sleep(Duration::from_millis(ms as u64)).await;
        if round + 1 < ROUNDS {
            drop(daemon); // SIGKILL
            kills += 1;
            for c in clients {
                let _ = c.await;
            }
        } else {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            for c in clients {
                let _ = c.await;
            }
            // Everything still unanswered goes in now.
            let left: Vec<Vec<usize>> = std::mem::take(&mut *unanswered.lock().unwrap());
            for batch in left {
                let records: Vec<Value> = batch.iter().map(|&i| record(i)).collect();
                let r = client()
                    .post(&url)
                    .header(AUTH, SECRET)
                    .body(ndjson(&records))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                let mut a = acked.lock().unwrap();
                for r in &records {
                    a.insert(format!("ks:{}", r["keySuffix"].as_str().unwrap()));
                }
            }
            // Let evaluation and delivery finish, then stop gently.
            let settled = wait_until(Duration::from_secs(60), || {
                let lag = query(
                    dir,
                    "SELECT (SELECT max(seq) FROM events) - (SELECT seq FROM cursors WHERE name = 'evaluator')",
                    &[],
                );
                let undelivered = query(
                    dir,
                    "SELECT count(*) FROM deliveries WHERE status != 'delivered'",
                    &[],
                );
                lag[0][0] == Cell::Int(0) && undelivered[0][0] == Cell::Int(0)
            })
            .await;
            assert!(settled, "evaluation or delivery did not finish");
            let mut daemon = daemon;
            sigterm(daemon.0.id());
            daemon.0.wait().unwrap();
        }
    }
    assert_eq!(kills, ROUNDS - 1);

    // 1. Every acknowledged record is in the journal, once.
    let acked = acked.lock().unwrap().clone();
    let stored = query_strings(dir, "SELECT key FROM events ORDER BY seq");
    let stored_set: HashSet<String> = stored.iter().cloned().collect();
    assert_eq!(stored.len(), stored_set.len(), "a key stored twice");
    let missing: Vec<_> = acked.difference(&stored_set).collect();
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
    assert!(acked.len() >= 1000, "too little load: {}", acked.len());

    // 2. Every created alert was delivered (at least once, same id).
    let created: BTreeSet<String> = query_strings(dir, "SELECT alert_id FROM alerts WHERE created")
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
    let records = query_strings(dir, "SELECT record FROM events ORDER BY seq");
    let file = dir.join("accepted.ndjson");
    std::fs::write(&file, records.join("\n")).unwrap();
    let config =
        hexwatch::config::Config::parse(&dir.join("config.toml"), "", &MapEnv(Default::default()))
            .unwrap();
    let (alerts, _) = hexwatch::replay::run(&config, &[file], &mut Vec::new()).unwrap();
    let replayed: BTreeSet<String> = alerts.into_iter().map(|a| a.alert_id).collect();
    assert_eq!(created, replayed);
    eprintln!(
        "crash test: {kills} kills, {} records acknowledged, {} stored, {} alerts, all delivered, 0 lost",
        acked.len(),
        stored.len(),
        created.len()
    );
}

/// Asks the daemon to stop gracefully (SIGTERM).
fn sigterm(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}
