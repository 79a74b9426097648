//! Regression tests for what hostile clients, abusive rules, long outages and
//! operator mistakes did to the daemon (one test per defect, named after it).

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// Sends raw bytes on a fresh connection and returns what came back until the
/// server closed it (or `wait` passed).
async fn raw_exchange(d: &TestDaemon, request: &[u8], wait: Duration) -> std::io::Result<String> {
    let mut s = TcpStream::connect(d.addr).await?;
    s.write_all(request).await?;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn post_head(d: &TestDaemon, token: &str, len: usize) -> String {
    format!(
        "POST /ingest/hex HTTP/1.1\r\nHost: {}\r\n{AUTH}: {token}\r\nContent-Type: application/x-ndjson\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n",
        d.addr
    )
}

/// Polls `/metrics` until it contains `needle` (10 s at most).
async fn wait_for_metric(d: &TestDaemon, needle: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if d.metrics().await.contains(needle) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn sqlite_database_files_are_private() {
    let mut d = TestDaemon::start("").await;
    d.send(&[hex_record(1, "RUN_PROJECT")]).await;
    let data = d.dir.join("data");
    assert_eq!(mode(&data), 0o700, "storage directory");
    for file in ["hexwatch.db", "hexwatch.db-wal", "hexwatch.db-shm"] {
        assert_eq!(mode(&data.join(file)), 0o600, "{file}");
    }
    d.stop().await;

    // An install from before: loose modes are narrowed at the next start.
    for file in ["hexwatch.db", "hexwatch.db-wal", "hexwatch.db-shm"] {
        let p = data.join(file);
        if p.exists() {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    let mut d = d.restart().await;
    d.send(&[hex_record(2, "RUN_PROJECT")]).await;
    assert_eq!(mode(&data.join("hexwatch.db")), 0o600);
    d.stop().await;

    // A loosened data directory was only reported: it is narrowed back.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut d = d.restart().await;
    d.send(&[hex_record(3, "RUN_PROJECT")]).await;
    assert_eq!(
        mode(&data),
        0o700,
        "a_loosened_data_directory_is_narrowed_back"
    );
    d.stop().await;
}

#[tokio::test]
async fn early_401_and_413_reach_clients_that_send_the_whole_body_first() {
    let mut d = TestDaemon::start("").await;
    let body = "x".repeat(1_500_000);
    for round in 0..10 {
        // A 1.5 MB body sent in full before reading the answer: with a wrong
        // token, and with the right one but over max_body_bytes (1 MiB).
        for (token, status) in [("wrong", "401"), (SECRET, "413")] {
            let mut req = post_head(&d, token, body.len()).into_bytes();
            req.extend_from_slice(body.as_bytes());
            let answer = raw_exchange(&d, &req, Duration::from_secs(10))
                .await
                .unwrap_or_else(|e| panic!("round {round}: {status} case: {e}"));
            assert!(
                answer.starts_with(&format!("HTTP/1.1 {status}")),
                "round {round}: {answer:.100}"
            );
        }
    }
    d.stop().await;
}

#[tokio::test]
async fn records_per_request_are_capped() {
    let mut d = TestDaemon::start("[server]\nmax_records_per_request = 5\n").await;
    let records: Vec<Value> = (0..6).map(|i| hex_record(i, "RUN_PROJECT")).collect();
    let r = client()
        .post(d.ingest_url())
        .header(AUTH, SECRET)
        .body(ndjson(&records))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let b: Value = r.json().await.unwrap();
    assert!(
        b["error"]
            .as_str()
            .unwrap()
            .contains("max_records_per_request"),
        "{b}"
    );
    d.send(&records[..5]).await;
    d.stop().await;
    assert_eq!(d.count("SELECT count(*) FROM events"), 5);
    assert_eq!(d.count("SELECT count(*) FROM quarantine"), 0);

    // The default cap refuses a tiny gzip body of a million empty records,
    // storing nothing.
    let mut d = TestDaemon::start("").await;
    let bomb = gzip("{}\n".repeat(1_000_000).as_bytes());
    assert!(bomb.len() < 20_000);
    let r = client()
        .post(d.ingest_url())
        .header(AUTH, SECRET)
        .header("Content-Encoding", "gzip")
        .body(bomb)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    d.stop().await;
    assert_eq!(d.count("SELECT count(*) FROM quarantine"), 0);
    assert_eq!(d.count("SELECT count(*) FROM events"), 0);
}

#[tokio::test]
async fn utf8_bom_before_a_valid_body_is_accepted() {
    let mut d = TestDaemon::start("").await;
    let mut body = b"\xEF\xBB\xBF".to_vec();
    body.extend_from_slice(ndjson(&[hex_record(1, "RUN_PROJECT")]).as_bytes());
    let r = client()
        .post(d.ingest_url())
        .header(AUTH, SECRET)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    d.stop().await;
}

#[tokio::test]
async fn duplicate_keys_are_quarantined_not_last_wins() {
    let mut d = TestDaemon::start("").await;
    let good = hex_record(1, "VIEW_PROJECT").to_string();
    // The same record with a second "action" hidden behind the first.
    let sneaky = good.replacen(
        "\"action\":\"VIEW_PROJECT\"",
        "\"action\":\"VIEW_PROJECT\",\"action\":\"DELETE_PROJECT\"",
        1,
    );
    assert_ne!(good, sneaky);
    let r = client()
        .post(d.ingest_url())
        .header(AUTH, SECRET)
        .body(sneaky.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let b: Value = r.json().await.unwrap();
    let error = b["errors"][0]["error"].as_str().unwrap();
    assert!(error.starts_with("duplicate key \"action\""), "{error}");
    d.stop().await;
    assert_eq!(d.count("SELECT count(*) FROM events"), 0);
    let raw = d.strings("SELECT raw FROM quarantine").remove(0);
    assert_eq!(raw, sneaky, "kept as sent");
}

#[tokio::test]
async fn readyz_shows_rule_file_names_not_paths_or_errors() {
    let mut d = TestDaemon::start_with_env(
        "",
        &[],
        &[(
            "broken.rhai",
            "let meta = #{ id: \"B\", severity: \"LOW\" }; fn rule(e) { (",
        )],
    )
    .await;
    let problems = d.readyz().await["problems"].to_string();
    assert!(problems.contains("broken.rhai"), "{problems}");
    let dir = d.dir.display().to_string();
    assert!(!problems.contains(&dir), "absolute path shown: {problems}");
    assert!(
        !problems.contains("Expecting"),
        "compile error shown: {problems}"
    );
    assert!(d.metrics().await.contains("hexwatch_rules_broken 1"));
    d.stop().await;
}

#[tokio::test]
async fn sqlite_deleted_database_stops_acknowledging_and_shows_in_readyz() {
    let mut d = TestDaemon::start("").await;
    d.send(&[hex_record(1, "RUN_PROJECT")]).await;
    for suffix in ["", "-wal", "-shm"] {
        let mut p = d.db_path().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
    let r = client()
        .post(d.ingest_url())
        .header(AUTH, SECRET)
        .body(ndjson(&[hex_record(2, "RUN_PROJECT")]))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        503,
        "nothing may be acknowledged into a deleted file"
    );
    let r = client().get(d.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["storage"], false);
    let problems = b["problems"].to_string();
    assert!(problems.contains("hexwatch.db is gone"), "{b}");
    // `/readyz` answers anyone: the file's name, not where it is.
    assert!(!problems.contains(&d.dir.display().to_string()), "{b}");
    d.stop().await;
}

/// A rule that remembers every address an actor used, for a year.
const BASELINE_RULE: &str = r#"
let meta = #{ id: "T.NewIp", severity: "HIGH", dedup_minutes: 1 };
fn rule(e) { set_add("ips:" + e.event.actor.id, e.event.context.location, 365 * 86400) }
fn title(e) { `${e.event.actor.id} from ${e.event.context.location}` }
"#;

fn old_record(i: usize, ip: &str, day: u32) -> Value {
    let mut r = hex_record(i, "RUN_PROJECT");
    r["event"]["actor"]["id"] = json!(format!("user-{}", i % 3));
    r["event"]["context"]["location"] = json!(ip);
    r["event"]["occurred_at"] = json!(format!("2025-01-{day:02}T10:00:00Z"));
    r
}

#[tokio::test]
async fn retention_pruning_keeps_live_rule_state_and_matches_replay() {
    // Events from almost two years ago: far past the 30-day retention by the
    // wall clock, but their state (a 1-year TTL, in event time) is alive.
    let first: Vec<Value> = (0..30).map(|i| old_record(i, "198.51.100.1", 2)).collect();
    let second: Vec<Value> = (30..60)
        .map(|i| {
            old_record(
                i,
                if i % 10 == 0 {
                    "198.51.100.9"
                } else {
                    "198.51.100.1"
                },
                20,
            )
        })
        .collect();
    let d = TestDaemon::start_with_env("", &[], &[("newip.rhai", BASELINE_RULE)]).await;
    d.send(&first).await;
    assert!(
        wait_until(Duration::from_secs(10), || d
            .count("SELECT count(*) FROM cursors WHERE seq = 30")
            == 1)
        .await
    );
    // A restart runs the pruner at once.
    let d = d.restart().await;
    assert!(
        wait_for_metric(&d, "hexwatch_pruned_rows_total{table=\"state\"}").await,
        "the pruner did not run"
    );
    assert_eq!(d.count("SELECT count(*) FROM state_sets"), 3, "state kept");
    let mut d = d;
    d.send(&second).await;
    assert!(
        wait_until(Duration::from_secs(10), || d
            .count("SELECT count(*) FROM cursors WHERE seq = 60")
            == 1)
        .await
    );
    d.stop().await;
    let live: Vec<String> = { d.strings("SELECT dedup FROM alerts WHERE created ORDER BY dedup") };

    // The same records through `replay`.
    let alerts = d.replay(&[first, second].concat());
    let mut replayed: Vec<String> = alerts.into_iter().map(|a| a.dedup).collect();
    replayed.sort();
    assert_eq!(live, replayed);
    // 3 actors' first address, then user-0 and user-1... from the new address.
    assert_eq!(live.len(), 3 + 3);
}

/// Opens `n` connections that never finish a request: half send a request line
/// and a header or two, then trickle a header every half second (slowloris);
/// the rest send nothing or only the HTTP/2 preface.
async fn hostile_connections(d: &TestDaemon, n: usize) -> Vec<tokio::task::JoinHandle<()>> {
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        let addr = d.addr;
        held.push(tokio::spawn(async move {
            let Ok(mut s) = TcpStream::connect(addr).await else {
                return;
            };
            match i % 4 {
                0 | 1 => {
                    let _ = s
                        .write_all(b"POST /ingest/hex HTTP/1.1\r\nHost: x\r\n")
                        .await;
                    for k in 0..600 {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        if s.write_all(format!("X-{k}: a\r\n").as_bytes())
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
                2 => {
                    let _ = s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
                    let _ = s.read_to_end(&mut Vec::new()).await;
                }
                _ => {
                    let _ = s.read_to_end(&mut Vec::new()).await;
                }
            }
        }));
    }
    held
}

#[tokio::test]
async fn idle_and_slowloris_connections_do_not_lock_ingest_out() {
    let mut d =
        TestDaemon::start("[server]\nmax_connections = 64\nheader_timeout_seconds = 3\n").await;
    // Far more hostile connections than slots, opened before and kept open.
    let held = hostile_connections(&d, 300).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..20 {
        let started = Instant::now();
        let r = reqwest::Client::new()
            .post(d.ingest_url())
            .header(AUTH, SECRET)
            .body(hex_record(i, "RUN_PROJECT").to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "request {i}");
        let took = started.elapsed();
        assert!(took < Duration::from_secs(1), "request {i} took {took:?}");
    }
    let metrics = d.metrics().await;
    assert!(
        metrics.contains("hexwatch_connections_closed_total{reason=\"evicted\"}"),
        "{metrics}"
    );
    for h in held {
        h.abort();
    }
    d.stop().await;
    assert_eq!(d.count("SELECT count(*) FROM events"), 20);
}

#[tokio::test]
async fn connections_without_a_request_are_closed_after_the_header_timeout() {
    let mut d =
        TestDaemon::start("[server]\nheader_timeout_seconds = 1\nidle_timeout_seconds = 2\n").await;
    let started = Instant::now();
    // Nothing sent at all.
    let mut silent = TcpStream::connect(d.addr).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut buf))
        .await
        .expect("closed by the server")
        .ok();
    assert!(started.elapsed() >= Duration::from_millis(900));
    // Only the HTTP/2 preface.
    let mut h2 = TcpStream::connect(d.addr).await.unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), h2.read_to_end(&mut buf))
        .await
        .expect("closed by the server")
        .ok();
    // A keep-alive connection after one request: closed once idle too long.
    let mut ka = TcpStream::connect(d.addr).await.unwrap();
    ka.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", d.addr).as_bytes())
        .await
        .unwrap();
    let idle_from = Instant::now();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(6), ka.read_to_end(&mut answer))
        .await
        .expect("closed by the server")
        .ok();
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    assert!(idle_from.elapsed() >= Duration::from_millis(1900));
    let metrics = d.metrics().await;
    assert!(
        metrics.contains("reason=\"header_timeout\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("reason=\"idle_timeout\"} 1"), "{metrics}");
    d.stop().await;
}

/// Writes fresh keys until a limit stops it, on every record.
const KV_HAMMER: &str = r#"
let meta = #{ id: "T.Hammer", severity: "LOW" };
fn rule(e) { let i = 0; loop { kv_set(`k${e.keySuffix}${i}`, i, 3600); i += 1; } }
"#;
/// Reads in a loop until a limit stops it.
const GET_HAMMER: &str = r#"
let meta = #{ id: "T.Reader", severity: "LOW" };
fn rule(e) { let i = 0; loop { kv_get(`nope${i}`); i += 1; } }
"#;
/// Heavy but within the limits: 100 counters per record.
const HEAVY_OK: &str = r#"
let meta = #{ id: "T.Heavy", severity: "LOW" };
fn rule(e) { for i in 0..100 { counter_incr(`c${e.keySuffix}:${i}`, 3600); } false }
"#;

#[tokio::test]
async fn rules_that_hammer_the_state_helpers_are_capped_and_do_not_stall_ingest() {
    let mut d = TestDaemon::start_with_env(
        "",
        &[],
        &[
            ("hammer.rhai", KV_HAMMER),
            ("reader.rhai", GET_HAMMER),
            ("heavy.rhai", HEAVY_OK),
        ],
    )
    .await;
    // 100 records: each costs the reader 1,000 storage reads (on PostgreSQL,
    // 1,000 round trips), and the suite runs beside other tests.
    const PER_BATCH: usize = 10;
    let mut took = Vec::new();
    for b in 0..10 {
        let records: Vec<Value> = (0..PER_BATCH)
            .map(|i| hex_record(b * PER_BATCH + i, "RUN_PROJECT"))
            .collect();
        let started = Instant::now();
        d.send(&records).await;
        took.push(started.elapsed());
    }
    took.sort();
    let worst = *took.last().unwrap();
    assert!(
        worst < Duration::from_secs(2),
        "slowest ingest request: {worst:?}"
    );
    assert!(
        wait_until(Duration::from_secs(180), || d.count(
            "SELECT count(*) FROM cursors WHERE name = 'evaluator' AND seq = 100"
        ) == 1)
        .await,
        "the evaluator did not keep up: cursor {}, state {}",
        d.count("SELECT coalesce(max(seq), -1) FROM cursors"),
        d.count("SELECT count(*) FROM state_counters")
    );
    d.stop().await;
    // Nothing of the failed calls was kept; everything of the good ones was
    // (10,000 counters, committed in several short transactions).
    // (Names and baselines learned from the records are kept: they are not rule writes.)
    assert_eq!(
        d.count(
            "SELECT count(*) FROM state_kv WHERE key NOT LIKE 'name:%' AND key NOT LIKE 'bl:%'"
        ),
        0
    );
    assert_eq!(d.count("SELECT count(*) FROM state_counters"), 100 * 100);
    let errors =
        d.strings("SELECT DISTINCT rule_id FROM alerts WHERE type = 'RULE_ERROR' ORDER BY 1");
    assert_eq!(errors, ["T.Hammer", "T.Reader"]);
    let title = d
        .strings("SELECT title FROM alerts WHERE rule_id = 'T.Hammer' LIMIT 1")
        .remove(0);
    assert!(title.contains("state"), "{title}");
}
