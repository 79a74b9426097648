//! Backup and restore as an operator does them: `hexwatch backup` while
//! records arrive, then the copy put in place of the database.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

/// Every record is its own alert.
const EACH: &str = r#"let meta = #{ id: "T.Each", severity: "HIGH", actions: ["RUN_PROJECT"] };
fn rule(e) { true }
fn dedup(e) { e.keySuffix }
"#;

/// Deliveries the receiver got, per alert id.
fn delivered(hook: &WebhookReceiver) -> HashMap<String, usize> {
    let mut per = HashMap::new();
    for r in hook.requests() {
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        *per.entry(body["alertId"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    per
}

/// There was no backup command and no restore had ever been tried. A backup
/// taken under load holds every record acknowledged before it began; the
/// daemon restored from it evaluates on from the backup's cursor, and
/// nothing delivered before the backup is delivered again.
#[tokio::test]
async fn sqlite_backup_under_load_restores_at_the_right_cursor() {
    let hook = WebhookReceiver::start(vec![Reply::Status(200)]).await;
    let destination = format!(
        "[[destinations]]\nnotify = \"alert\"\nname = \"hook\"\ntype = \"webhook\"\nurl = \"{}\"\n",
        hook.url()
    );
    let mut d = TestDaemon::start_with_env(&destination, &[], &[("each.rhai", EACH)]).await;
    let (acked, stop) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let load = {
        let (acked, stop, url) = (acked.clone(), stop.clone(), d.ingest_url());
        tokio::spawn(async move {
            let mut batch = 0;
            while !stop.load(Ordering::Acquire) {
                let records: Vec<Value> = (0..20)
                    .map(|i| hex_record(batch * 20 + i, "RUN_PROJECT"))
                    .collect();
                let r = client()
                    .post(&url)
                    .header(AUTH, SECRET)
                    .body(ndjson(&records))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                batch += 1;
                acked.store(batch * 20, Ordering::Release);
            }
        })
    };
    assert!(wait_until(Duration::from_secs(20), || delivered(&hook).len() >= 100).await);

    let before = acked.load(Ordering::Acquire);
    let copy = d.dir.join("backup.db");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hexwatch"))
        .args(["backup", "-c"])
        .arg(d.dir.join("config.toml"))
        .arg(&copy)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let from = acked.load(Ordering::Acquire);
    assert!(
        wait_until(Duration::from_secs(20), || acked.load(Ordering::Acquire)
            >= from + 100)
        .await
    );
    stop.store(true, Ordering::Release);
    load.await.unwrap();
    d.stop().await;

    // What the backup holds.
    let (keys, cursor, done): (Vec<String>, i64, Vec<String>) = {
        let c = rusqlite::Connection::open(&copy).unwrap();
        let keys = c
            .prepare("SELECT key FROM events")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let cursor = c
            .query_row(
                "SELECT seq FROM cursors WHERE name = 'evaluator'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let done = c
            .prepare("SELECT alert_id FROM deliveries WHERE status = 'delivered'")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        (keys, cursor, done)
    };
    assert!(
        keys.len() >= before,
        "{} stored, {before} acknowledged before",
        keys.len()
    );
    for i in 0..before {
        let key = format!(
            "ks:{}",
            hex_record(i, "RUN_PROJECT")["keySuffix"].as_str().unwrap()
        );
        assert!(
            keys.contains(&key),
            "record {i}, acknowledged before the backup, is missing"
        );
    }

    // Restore: the copy in place of the database and its WAL.
    let db = d.db_path();
    for suffix in ["", "-wal", "-shm"] {
        let mut p = db.clone().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
    std::fs::copy(&copy, &db).unwrap();
    let before_restore = delivered(&hook);
    let mut d = d.restart().await;
    let last = keys.len() as i64;
    assert!(
        wait_until(Duration::from_secs(30), || d.count(
            "SELECT count(*) FROM deliveries WHERE status = 'delivered'"
        ) == last
            && d.count(
                "SELECT coalesce(max(seq), 0) FROM cursors WHERE name = 'evaluator'"
            ) == d.count("SELECT max(seq) FROM events"))
        .await,
        "the restored daemon did not evaluate and deliver from the backup's cursor {cursor}"
    );
    d.stop().await;
    let after = delivered(&hook);
    for id in &done {
        assert_eq!(
            after.get(id),
            before_restore.get(id),
            "{id}, delivered before the backup, was delivered again"
        );
    }
}

/// `migrate-storage` copied a database a running daemon was still writing
/// (what arrived during the copy was lost to the new database), and a second
/// `serve` could start on the same file. Both are refused now.
#[tokio::test]
async fn sqlite_migrate_storage_refuses_a_source_a_running_daemon_holds() {
    let mut d = TestDaemon::start("").await;
    d.send(&[hex_record(1, "RUN_PROJECT")]).await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hexwatch"))
        .args([
            "migrate-storage",
            "--to",
            "postgres://hexwatch@127.0.0.1:9/hexwatch",
            "--from",
        ])
        .arg(d.db_path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("a running hexwatch serve holds the database"),
        "{stderr}"
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hexwatch"))
        .args(["serve", "-c"])
        .arg(d.dir.join("config.toml"))
        .env("HEXWATCH_SECRET", SECRET)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("a running hexwatch serve holds the database"),
        "{stderr}"
    );
    d.stop().await;
}
