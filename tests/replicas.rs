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
fn replica_dir(
    root: &Path,
    name: &str,
    port: u16,
    url: &str,
    hook: &str,
    incidents: &str,
) -> PathBuf {
    let dir = root.join(name);
    load::write_rules(&dir);
    // `query` reads the database URL from here, as for the suite's daemons.
    std::fs::write(dir.join(".pg-url"), url).unwrap();
    std::fs::write(
        dir.join("config.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[storage]\nurl = \"{url}\"\nca_file = \"{}\"\n\
             [delivery]\ninitial_backoff_ms = 50\nmax_backoff_seconds = 1\n\
             [incidents]\ngroup_wait_seconds = 0\ngroup_interval_minutes = 0.01\n\
             [[destinations]]\nnotify = \"alert\"\nname = \"hook\"\ntype = \"webhook\"\nurl = \"{hook}\"\ntimeout_seconds = 2\n\
             [[destinations]]\nname = \"incidents\"\ntype = \"webhook\"\nurl = \"{incidents}\"\ntimeout_seconds = 2\n",
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
    let incident_hook = WebhookReceiver::start(vec![Reply::Status(200)]).await;
    let ports = [free_port(), free_port()];
    let dirs = [
        replica_dir(
            tmp.path(),
            "a",
            ports[0],
            &url,
            &hook.url(),
            &incident_hook.url(),
        ),
        replica_dir(
            tmp.path(),
            "b",
            ports[1],
            &url,
            &hook.url(),
            &incident_hook.url(),
        ),
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
    // Evaluation and delivery finish (a dead replica's claims run out first).
    stop_load_and_settle(
        &load,
        &stop,
        clients,
        &urls[0],
        &dirs[0],
        Duration::from_secs(90),
    )
    .await;
    drop(replicas);
    let (acked, stored, alerts) = load.check(&dirs[0], &hook, Some(&incident_hook));

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
        "[[destinations]]\nnotify = \"alert\"\nname = \"hook\"\ntype = \"webhook\"\nurl = \"{}\"\n",
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

/// The latest record in the daemon's journal.
fn head(dir: &Path) -> i64 {
    query(dir, "SELECT coalesce(max(seq), 0) FROM events", &[])[0][0].int()
}

/// Waits until the replica on `port` holds the lease and its cursor reached
/// `seq`; false if it does not within `timeout`.
async fn evaluates_past(port: u16, dir: &Path, seq: i64, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if holds_lease(port).await && off_runtime(|| cursor(dir)) >= seq {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// What a PostgreSQL restart looks like to the daemon, for its database
/// alone (the suite's other tests share the server): every connection ends,
/// and new ones are refused until `down` is false again.
fn database_down(url: &str, down: bool) {
    let database = url.rsplit('/').next().unwrap();
    let mut admin = ::postgres::Client::connect(
        &format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            cluster().port
        ),
        ::postgres::NoTls,
    )
    .unwrap();
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {database} ALLOW_CONNECTIONS {}",
            !down
        ))
        .unwrap();
    if down {
        admin
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                &[&database],
            )
            .unwrap();
    }
}

/// Issue 38, defect 1: after a restart of PostgreSQL whose first reconnect
/// failed, the evaluator kept a stale lease and never evaluated again. Two
/// outages under load: each time evaluation resumes past everything received
/// meanwhile, and the alerts are exactly those of a clean `replay`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn evaluation_resumes_after_each_of_two_postgres_restarts_under_load() {
    let tmp = tempfile::tempdir().unwrap();
    let url = off_runtime(|| cluster().new_database());
    let hook = WebhookReceiver::start(vec![Reply::Status(200)]).await;
    let port = free_port();
    let dir = replica_dir(tmp.path(), "a", port, &url, &hook.url(), &hook.url());
    let daemon = BinaryDaemon::spawn(&dir);
    wait_ready(port).await;
    let load = Load::default();
    let urls = [format!("http://127.0.0.1:{port}/ingest/hex")];
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load.clients(2, &urls, &stop);
    for round in 0..2 {
        let before = off_runtime(|| head(&dir));
        assert!(
            evaluates_past(port, &dir, before.max(1), Duration::from_secs(30)).await,
            "round {round}: no evaluation before the outage"
        );
        off_runtime(|| database_down(&url, true));
        // The evaluator notices its connection is gone and stands down.
        let deadline = Instant::now() + Duration::from_secs(20);
        while holds_lease(port).await {
            assert!(Instant::now() < deadline, "round {round}: lease kept");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        // The server stays down a while (its reconnects fail), then returns.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        off_runtime(|| database_down(&url, false));
        // Records arrive again, and everything received is evaluated.
        let deadline = Instant::now() + Duration::from_secs(20);
        while off_runtime(|| head(&dir)) <= before {
            assert!(
                Instant::now() < deadline,
                "round {round}: ingest did not resume"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let after = off_runtime(|| head(&dir));
        assert!(
            evaluates_past(port, &dir, after, Duration::from_secs(30)).await,
            "round {round}: evaluation did not resume after the outage"
        );
    }
    stop_load_and_settle(
        &load,
        &stop,
        clients,
        &urls[0],
        &dir,
        Duration::from_secs(60),
    )
    .await;
    drop(daemon);
    let (acked, stored, alerts) = load.check(&dir, &hook, None);
    eprintln!("two outages: {acked} acknowledged, {stored} stored, {alerts} alerts, 0 lost");
}

fn signal(daemon: &BinaryDaemon, signal: &str) {
    let ok = std::process::Command::new("kill")
        .args([signal, &daemon.0.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success(), "kill {signal}");
}

/// The longest a paused lease holder may hold up evaluation: its lease runs
/// out (10 s), and a transaction it left open is ended by the server after as
/// long again; plus the standby's polling and this test's own.
const PAUSED_TAKEOVER: Duration = Duration::from_secs(25);

/// Issue 38, defect 2: a lease holder that stopped (SIGSTOP: a paused VM, a
/// frozen disk) kept its session-level lock, and the standby never
/// evaluated. Now its lease runs out, the standby evaluates within
/// [`PAUSED_TAKEOVER`], and when the old holder resumes its late commit is
/// refused: it stands by, and the alerts are exactly those of a clean `replay`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_lease_holder_loses_the_lease_to_the_standby() {
    let tmp = tempfile::tempdir().unwrap();
    let url = off_runtime(|| cluster().new_database());
    let hook = WebhookReceiver::start(vec![Reply::Status(200)]).await;
    let ports = [free_port(), free_port()];
    let dirs = [
        replica_dir(tmp.path(), "a", ports[0], &url, &hook.url(), &hook.url()),
        replica_dir(tmp.path(), "b", ports[1], &url, &hook.url(), &hook.url()),
    ];
    let replicas = [BinaryDaemon::spawn(&dirs[0]), BinaryDaemon::spawn(&dirs[1])];
    wait_ready(ports[0]).await;
    wait_ready(ports[1]).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let leader = loop {
        if holds_lease(ports[0]).await {
            break 0;
        }
        if holds_lease(ports[1]).await {
            break 1;
        }
        assert!(Instant::now() < deadline, "no replica took the lease");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let standby = 1 - leader;
    // The load goes to the standby (a paused replica answers nothing); the
    // leader evaluates what the standby journals.
    let load = Load::default();
    let urls = [format!("http://127.0.0.1:{}/ingest/hex", ports[standby])];
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load.clients(1, &urls, &stop);
    assert!(evaluates_past(ports[leader], &dirs[0], 1, Duration::from_secs(30)).await);
    signal(&replicas[leader], "-STOP");
    let paused = Instant::now();
    let before = off_runtime(|| head(&dirs[0]));
    assert!(
        evaluates_past(ports[standby], &dirs[0], before + 1, PAUSED_TAKEOVER).await,
        "the standby did not evaluate within {PAUSED_TAKEOVER:?} of the pause"
    );
    let takeover = paused.elapsed();
    signal(&replicas[leader], "-CONT");
    // The old holder learns it lost the lease and stands by; the new one
    // keeps evaluating.
    let deadline = Instant::now() + Duration::from_secs(20);
    while holds_lease(ports[leader]).await {
        assert!(
            Instant::now() < deadline,
            "the resumed replica still claims the lease"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let now = off_runtime(|| head(&dirs[0]));
    assert!(evaluates_past(ports[standby], &dirs[0], now, Duration::from_secs(30)).await);

    stop_load_and_settle(
        &load,
        &stop,
        clients,
        &urls[0],
        &dirs[0],
        Duration::from_secs(60),
    )
    .await;
    drop(replicas);
    let (acked, stored, alerts) = load.check(&dirs[0], &hook, None);
    eprintln!(
        "paused lease holder: taken over in {takeover:?}; {acked} acknowledged, {stored} stored, {alerts} alerts"
    );
}

/// Stops the load, sends what went unanswered to `url`, and waits until
/// evaluation and delivery are done (a dead replica's claims run out first).
async fn stop_load_and_settle(
    load: &Load,
    stop: &AtomicBool,
    clients: Vec<tokio::task::JoinHandle<()>>,
    url: &str,
    dir: &Path,
    timeout: Duration,
) {
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    load.send_unanswered(url).await;
    assert!(
        load::settled(dir, timeout).await,
        "evaluation or delivery did not finish"
    );
}
