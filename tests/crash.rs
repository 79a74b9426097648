//! Crash consistency: the real binary under concurrent clients, killed with
//! SIGKILL at random moments and restarted, again and again. Afterwards every
//! acknowledged record is in the journal exactly once, every created alert was
//! delivered, and the alerts are exactly those a clean `replay` of the accepted
//! records creates.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::load::{self, Load};
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_load_loses_nothing_and_matches_replay() {
    const ROUNDS: usize = 10;
    const CLIENTS: usize = 4;

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    load::write_rules(dir);
    let hook = WebhookReceiver::start(vec![Reply::Status(200)]).await;
    let incident_hook = WebhookReceiver::start(vec![Reply::Status(200)]).await;
    let port = free_port();
    std::fs::write(
        dir.join("config.toml"),
        format!(
            "{}[server]\nlisten = \"127.0.0.1:{port}\"\n[delivery]\ninitial_backoff_ms = 50\nmax_backoff_seconds = 1\n\
             [incidents]\ngroup_wait_seconds = 0\ngroup_interval_minutes = 0.01\n\
             [[destinations]]\nnotify = \"alert\"\nname = \"hook\"\ntype = \"webhook\"\nurl = \"{}\"\n\
             [[destinations]]\nname = \"incidents\"\ntype = \"webhook\"\nurl = \"{}\"\n",
            storage_toml(dir),
            hook.url(),
            incident_hook.url()
        ),
    )
    .unwrap();

    let load = Load::default();
    let url = format!("http://127.0.0.1:{port}/ingest/hex");
    let mut kills = 0;
    for round in 0..ROUNDS {
        let daemon = BinaryDaemon::spawn(dir);
        wait_ready(port).await;
        let stop = Arc::new(AtomicBool::new(false));
        let clients = load.clients(CLIENTS, std::slice::from_ref(&url), &stop);
        // Kill at a moment that differs from round to round.
        let ms = 300 + (round * 137) % 500;
        tokio::time::sleep(Duration::from_millis(ms as u64)).await;
        let last = round + 1 == ROUNDS;
        let daemon = if last {
            Some(daemon)
        } else {
            drop(daemon); // SIGKILL
            kills += 1;
            None
        };
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.await.unwrap();
        }
        if let Some(mut daemon) = daemon {
            load.send_unanswered(&url).await;
            // Let evaluation and delivery finish, then stop gently.
            assert!(
                load::settled(dir, Duration::from_secs(60)).await,
                "evaluation or delivery did not finish"
            );
            sigterm(daemon.0.id());
            daemon.0.wait().unwrap();
        }
    }
    assert_eq!(kills, ROUNDS - 1);
    let (acked, stored, alerts) = load.check(dir, &hook, Some(&incident_hook));
    eprintln!(
        "crash test: {kills} kills, {acked} records acknowledged, {stored} stored, {alerts} alerts, all delivered, 0 lost"
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
