//! High availability: two replicas of the real binary on one PostgreSQL, a
//! load spread over both, and kill -9 of either at moments that differ from
//! round to round. Afterwards every acknowledged record is in the journal
//! exactly once, every created alert was delivered, the alerts are exactly
//! those a clean `replay` of the accepted records creates, and each time the
//! evaluating replica died the other took over within 5 s.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::load::{self, Load};
use crate::support::postgres::{cluster, off_runtime};
use crate::support::*;

const ROUNDS: usize = 10;
const CLIENTS: usize = 4;
const TAKEOVER: Duration = Duration::from_secs(5);

/// The `/readyz` answer of the replica on `port`, if it answers.
async fn readyz(port: u16) -> Option<Value> {
    client()
        .get(format!("http://127.0.0.1:{port}/readyz"))
        .timeout(Duration::from_secs(1))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

async fn holds_lease(port: u16) -> bool {
    readyz(port)
        .await
        .is_some_and(|r| r["evaluator"] == Value::Bool(true))
}

fn cursor(dir: &Path) -> i64 {
    match query(dir, "SELECT seq FROM cursors WHERE name = 'evaluator'", &[]).first() {
        Some(row) => row[0].int(),
        None => 0,
    }
}

/// A replica's directory: its own config (port) on the shared database.
fn replica_dir(root: &Path, name: &str, port: u16, url: &str, hook: &str) -> PathBuf {
    let dir = root.join(name);
    load::write_rules(&dir);
    // `query` reads the database URL from here, as for the suite's daemons.
    std::fs::write(dir.join(".pg-url"), url).unwrap();
    std::fs::write(
        dir.join("config.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[storage]\nurl = \"{url}\"\nca_file = \"{}\"\n\
             [delivery]\ninitial_backoff_ms = 50\nmax_backoff_seconds = 1\n\
             [[destinations]]\nname = \"hook\"\ntype = \"webhook\"\nurl = \"{hook}\"\ntimeout_seconds = 2\n",
            cluster().ca_file.display()
        ),
    )
    .unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_postgres_lose_nothing_when_either_is_killed() {
    let tmp = tempfile::tempdir().unwrap();
    let url = off_runtime(|| cluster().new_database());
    let hook = WebhookReceiver::start(vec![Reply::Status(200)]).await;
    let ports = [free_port(), free_port()];
    let dirs = [
        replica_dir(tmp.path(), "a", ports[0], &url, &hook.url()),
        replica_dir(tmp.path(), "b", ports[1], &url, &hook.url()),
    ];
    let mut replicas = [
        Some(BinaryDaemon::spawn(&dirs[0])),
        Some(BinaryDaemon::spawn(&dirs[1])),
    ];
    wait_ready(ports[0]).await;
    wait_ready(ports[1]).await;

    // The load: every batch to either replica at random; a batch whose
    // request failed goes again later (as Hex retries), to whichever replica.
    let load = Load::default();
    let urls = ports.map(|p| format!("http://127.0.0.1:{p}/ingest/hex"));
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load.clients(CLIENTS, &urls, &stop);

    let mut takeovers = Vec::new();
    for round in 0..ROUNDS {
        tokio::time::sleep(Duration::from_millis(300 + (round as u64 * 137) % 500)).await;
        let leader = if holds_lease(ports[0]).await { 0 } else { 1 };
        // Every other round the evaluating replica dies, else the standby.
        let victim = if round % 2 == 0 { leader } else { 1 - leader };
        let survivor = 1 - victim;
        let before = off_runtime(|| cursor(&dirs[0]));
        replicas[victim] = None; // SIGKILL
        let killed = Instant::now();
        if victim == leader {
            // The survivor takes the lease and evaluates past where the dead
            // one stopped, with the load still running.
            loop {
                let advanced = off_runtime(|| cursor(&dirs[0])) > before;
                if holds_lease(ports[survivor]).await && advanced {
                    break;
                }
                assert!(
                    killed.elapsed() < TAKEOVER,
                    "round {round}: no evaluation on the survivor {}s after the kill",
                    TAKEOVER.as_secs()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            takeovers.push(killed.elapsed());
        }
        replicas[victim] = Some(BinaryDaemon::spawn(&dirs[victim]));
        wait_ready(ports[victim]).await;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    load.send_unanswered(&urls[0]).await;
    // Evaluation and delivery finish (a dead replica's claims run out first).
    assert!(
        load::settled(&dirs[0], Duration::from_secs(90)).await,
        "evaluation or delivery did not finish"
    );
    drop(replicas);
    let (acked, stored, alerts) = load.check(&dirs[0], &hook);

    // 4. Each death of the evaluating replica was covered within 5 s.
    assert_eq!(takeovers.len(), ROUNDS / 2);
    eprintln!(
        "replicas test: {ROUNDS} kills ({} of the evaluating replica, taken over in {:?}), {acked} records acknowledged, {stored} stored, {alerts} alerts, all delivered, 0 lost",
        takeovers.len(),
        takeovers,
    );
}

/// PostgreSQL ends every connection of the daemon (a failover, a restart of
/// the server, an operator's `pg_terminate_backend`): the daemon reconnects
/// each stage, answers 503 meanwhile at most, and goes on evaluating and
/// delivering.
#[tokio::test]
async fn cut_postgres_connections_are_opened_again() {
    let hook = WebhookReceiver::start(vec![Reply::Status(200)]).await;
    let tmp = tempfile::tempdir().unwrap();
    let url = off_runtime(|| cluster().new_database());
    std::fs::create_dir_all(tmp.path().join("rules")).unwrap();
    std::fs::write(tmp.path().join(".pg-url"), &url).unwrap();
    std::fs::write(
        tmp.path().join("rules/share.rhai"),
        r#"let meta = #{ id: "T.Share", severity: "HIGH", actions: ["SHARE_PROJECT_WITH_PUBLIC"] };
fn rule(e) { true }
fn dedup(e) { e.keySuffix }
"#,
    )
    .unwrap();
    let extra = format!(
        "[[destinations]]\nname = \"hook\"\ntype = \"webhook\"\nurl = \"{}\"\n",
        hook.url()
    );
    let mut d = TestDaemon::start_in(tmp.path(), &extra).await;
    d.send(&[hex_record(1, "SHARE_PROJECT_WITH_PUBLIC")]).await;
    assert!(wait_until(Duration::from_secs(10), || hook.requests().len() == 1).await);

    let database = url.rsplit('/').next().unwrap().to_string();
    let cut = off_runtime(|| {
        let mut admin = ::postgres::Client::connect(
            &format!(
                "host=127.0.0.1 port={} user=postgres dbname=postgres",
                cluster().port
            ),
            ::postgres::NoTls,
        )
        .unwrap();
        admin
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                &[&database],
            )
            .unwrap()
            .len()
    });
    assert!(cut >= 3, "journal, evaluator and delivery sessions: {cut}");

    // Hex retries what got no 200; within a few tries everything is in.
    for i in 2..=6 {
        let body = ndjson(&[hex_record(i, "SHARE_PROJECT_WITH_PUBLIC")]);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = client()
                .post(d.ingest_url())
                .header(AUTH, SECRET)
                .body(body.clone())
                .send()
                .await
                .unwrap();
            if r.status() == 200 {
                break;
            }
            assert_eq!(r.status(), 503);
            assert!(Instant::now() < deadline, "still refused after the cut");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(
        wait_until(Duration::from_secs(20), || hook.requests().len() == 6).await,
        "evaluation or delivery did not resume: {} delivered",
        hook.requests().len()
    );
    assert_eq!(d.readyz().await["evaluator"], Value::Bool(true));
    d.stop().await;
}
