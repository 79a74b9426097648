//! The ingest endpoint over real HTTP: formats, auth, limits, quarantine,
//! idempotency, restarts, TLS and graceful shutdown.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

async fn post(d: &TestDaemon, body: impl Into<reqwest::Body>) -> (u16, Value) {
    post_with(d, body, &[]).await
}

async fn post_with(
    d: &TestDaemon,
    body: impl Into<reqwest::Body>,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut req = client()
        .post(d.ingest_url())
        .header(AUTH, SECRET)
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

#[tokio::test]
async fn single_object_array_and_ndjson_are_accepted() {
    let mut d = TestDaemon::start("").await;
    let (s, b) = post(&d, hex_record(1, "RUN_PROJECT").to_string()).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        b,
        json!({"accepted": 1, "duplicates": 0, "quarantined": 0, "errors": []})
    );

    let arr = Value::Array((10..15).map(|i| hex_record(i, "VIEW_PROJECT")).collect());
    let (s, b) = post_with(&d, arr.to_string(), &[("Content-Type", "application/json")]).await;
    assert_eq!((s, b["accepted"].as_u64()), (200, Some(5)));

    let recs: Vec<Value> = (20..27).map(|i| hex_record(i, "RUN_CELL")).collect();
    let (s, b) = post_with(
        &d,
        ndjson(&recs),
        // Detected by content even when the type says otherwise.
        &[("Content-Type", "application/json")],
    )
    .await;
    assert_eq!((s, b["accepted"].as_u64()), (200, Some(7)));
    d.stop().await;
    assert_eq!(d.count("SELECT count(*) FROM events"), 13);
    // What rules will see: the record with Panther's fields.
    let rec = d.strings("SELECT record FROM events ORDER BY seq LIMIT 1");
    let rec: Value = serde_json::from_str(&rec[0]).unwrap();
    assert_eq!(rec["p_log_type"], "Hex.Audit");
    assert_eq!(rec["p_any_emails"], json!(["user1@acme.example"]));
    assert_eq!(rec["p_source_label"], "hex");
}

#[tokio::test]
async fn gzip_bodies_are_decoded() {
    let mut d = TestDaemon::start("").await;
    let recs: Vec<Value> = (0..50).map(|i| hex_record(i, "RUN_PROJECT")).collect();
    let (s, b) = post_with(
        &d,
        gzip(ndjson(&recs).as_bytes()),
        &[
            ("Content-Encoding", "gzip"),
            ("Content-Type", "application/x-ndjson"),
        ],
    )
    .await;
    assert_eq!((s, b["accepted"].as_u64()), (200, Some(50)), "{b}");
    d.stop().await;
}

#[tokio::test]
async fn wrong_or_missing_secret_is_401_and_stores_nothing() {
    let mut d = TestDaemon::start("").await;
    let body = hex_record(1, "RUN_PROJECT").to_string();
    let r = client()
        .post(d.ingest_url())
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client()
        .post(d.ingest_url())
        .header(AUTH, "test-secreT")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["error"], "missing or wrong X-Hexwatch-Token header");
    d.stop().await;
    assert_eq!(d.count("SELECT count(*) FROM events"), 0);
    assert_eq!(d.count("SELECT count(*) FROM quarantine"), 0);
}

#[tokio::test]
async fn oversized_bodies_are_413_with_and_without_content_length() {
    let mut d = TestDaemon::start("[server]\nmax_body_bytes = 100000\n").await;
    let big = format!(
        "[{}]",
        vec![hex_record(1, "RUN_PROJECT").to_string(); 200].join(",")
    );
    assert!(big.len() > 100_000);
    let (s, b) = post(&d, big.clone()).await;
    assert_eq!(s, 413, "{b}");
    assert!(b["error"].as_str().unwrap().contains("max_body_bytes"));

    // Chunked: no Content-Length, the cap applies while streaming.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = big
        .as_bytes()
        .chunks(8192)
        .map(|c| Ok(c.to_vec()))
        .collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let (s, _) = post(&d, body).await;
    assert_eq!(s, 413);

    // Just under the limit, chunked, is fine.
    let ok = ndjson(
        &(0..20)
            .map(|i| hex_record(i, "RUN_PROJECT"))
            .collect::<Vec<_>>(),
    );
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        ok.as_bytes().chunks(1000).map(|c| Ok(c.to_vec())).collect();
    let (s, b) = post(
        &d,
        reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)),
    )
    .await;
    assert_eq!((s, b["accepted"].as_u64()), (200, Some(20)));
    d.stop().await;
}

#[tokio::test]
async fn gzip_bomb_is_413() {
    let mut d = TestDaemon::start("[server]\nmax_decoded_bytes = 2000000\n").await;
    // 1 GB of spaces compresses to about 1 MB; well over the decoded limit.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![b' '; 1 << 20];
    for _ in 0..64 {
        std::io::Write::write_all(&mut enc, &zeros).unwrap();
    }
    let bomb = enc.finish().unwrap();
    assert!(bomb.len() < 1_048_576);
    let (s, b) = post_with(&d, bomb, &[("Content-Encoding", "gzip")]).await;
    assert_eq!(s, 413, "{b}");
    assert!(b["error"].as_str().unwrap().contains("max_decoded_bytes"));
    d.stop().await;
}

#[tokio::test]
async fn invalid_json_is_400_and_quarantined() {
    let mut d = TestDaemon::start("").await;
    let (s, b) = post(&d, "this is not json").await;
    assert_eq!(s, 400);
    assert!(b["error"].as_str().unwrap().contains("not JSON"), "{b}");
    let (s, _) = post(&d, "[{\"event\": ").await;
    assert_eq!(s, 400);
    d.stop().await;
    assert_eq!(d.count("SELECT count(*) FROM quarantine"), 2);
    assert_eq!(
        d.count("SELECT count(*) FROM quarantine WHERE raw = 'this is not json'"),
        1
    );
}

#[tokio::test]
async fn mixed_batch_keeps_valid_and_quarantines_invalid() {
    let mut d = TestDaemon::start("").await;
    let mut bad_time = hex_record(2, "RUN_PROJECT");
    bad_time["event"]["occurred_at"] = json!("yesterday");
    let mut no_action = hex_record(3, "RUN_PROJECT");
    no_action["event"].as_object_mut().unwrap().remove("action");
    let body = format!(
        "{}\n{}\n{{broken\n{}\n",
        hex_record(1, "RUN_PROJECT"),
        bad_time,
        no_action
    );
    let (s, b) = post(&d, body).await;
    assert_eq!(s, 200);
    assert_eq!(b["accepted"], 1);
    assert_eq!(b["quarantined"], 3);
    assert_eq!(
        b["errors"][0],
        json!({"index": 1, "line": 2, "error": "event.occurred_at: expected an RFC 3339 timestamp, got \"yesterday\""})
    );
    assert_eq!(b["errors"][1]["line"], 3);
    assert!(b["errors"][1]["error"]
        .as_str()
        .unwrap()
        .starts_with("not valid JSON"));
    assert_eq!(
        b["errors"][2],
        json!({"index": 3, "line": 4, "error": "event.action: required field is missing"})
    );

    // In a JSON array, errors name the index.
    let arr = json!([hex_record(5, "RUN_PROJECT"), {"event": 1}]);
    let (s, b) = post(&d, arr.to_string()).await;
    assert_eq!(s, 200);
    assert_eq!(
        b["errors"],
        json!([{"index": 1, "error": "event: expected an object, got a number"}])
    );
    d.stop().await;
    assert_eq!(d.count("SELECT count(*) FROM events"), 2);
    assert_eq!(d.count("SELECT count(*) FROM quarantine"), 4);
    assert_eq!(
        d.count("SELECT count(*) FROM quarantine WHERE line = 2 AND reason LIKE 'event.occurred_at:%' AND raw LIKE '%yesterday%'"),
        1
    );
}

#[tokio::test]
async fn all_invalid_is_422() {
    let mut d = TestDaemon::start("").await;
    let (s, b) = post(&d, json!([{"event": {}}, {"nope": true}]).to_string()).await;
    assert_eq!(s, 422, "{b}");
    assert_eq!(b["accepted"], 0);
    assert_eq!(b["quarantined"], 2);
    assert_eq!(b["errors"].as_array().unwrap().len(), 2);
    d.stop().await;
}

#[tokio::test]
async fn redelivery_counts_duplicates_even_across_restarts() {
    let d = TestDaemon::start("").await;
    let recs: Vec<Value> = (0..10).map(|i| hex_record(i, "RUN_PROJECT")).collect();
    let (s, b) = post(&d, ndjson(&recs)).await;
    assert_eq!((s, b["accepted"].as_u64()), (200, Some(10)));
    let (s, b) = post(&d, ndjson(&recs[5..])).await;
    assert_eq!(s, 200);
    assert_eq!(
        (b["accepted"].as_u64(), b["duplicates"].as_u64()),
        (Some(0), Some(5))
    );

    let mut d = d.restart().await;
    let more: Vec<Value> = (5..15).map(|i| hex_record(i, "RUN_PROJECT")).collect();
    let (s, b) = post(&d, ndjson(&more)).await;
    assert_eq!(s, 200);
    assert_eq!(
        (b["accepted"].as_u64(), b["duplicates"].as_u64()),
        (Some(5), Some(5))
    );
    d.stop().await;
    assert_eq!(d.count("SELECT count(*) FROM events"), 15);
}

#[tokio::test]
async fn health_ready_and_metrics() {
    let mut d = TestDaemon::start("").await;
    let c = client();
    assert_eq!(c.get(d.url("/healthz")).send().await.unwrap().status(), 200);
    let r = c.get(d.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["ready"], true);

    post(&d, hex_record(1, "RUN_PROJECT").to_string()).await;
    post(&d, hex_record(1, "RUN_PROJECT").to_string()).await;
    post(&d, "{}").await;
    let text = d.metrics().await;
    assert!(text.contains("hexwatch_events_accepted_total 1"), "{text}");
    assert!(text.contains("hexwatch_events_duplicate_total 1"), "{text}");
    assert!(
        text.contains("hexwatch_events_quarantined_total 1"),
        "{text}"
    );
    assert!(
        text.contains("hexwatch_ingest_requests_total{status=\"422\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("hexwatch_ingest_latency_seconds_count 3"),
        "{text}"
    );

    assert_eq!(c.get(d.url("/nope")).send().await.unwrap().status(), 404);
    assert_eq!(c.get(d.ingest_url()).send().await.unwrap().status(), 405);
    d.stop().await;
}

#[tokio::test]
async fn https_with_a_self_signed_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::create_dir_all(tmp.path().join("rules")).unwrap();
    std::fs::write(tmp.path().join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(tmp.path().join("key.pem"), cert.key_pair.serialize_pem()).unwrap();
    let mut d = TestDaemon::start_in(
        tmp.path(),
        "[server]\ntls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n",
    )
    .await;
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .resolve("localhost", d.addr)
        .build()
        .unwrap();
    let url = format!("https://localhost:{}/ingest/hex", d.addr.port());
    let r = https
        .post(&url)
        .header(AUTH, SECRET)
        .body(hex_record(1, "RUN_PROJECT").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Plain HTTP to the TLS port does not get through.
    assert!(client()
        .post(format!("http://{}/ingest/hex", d.addr))
        .header(AUTH, SECRET)
        .body("{}")
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .is_err());
    d.stop().await;
    assert_eq!(d.count("SELECT count(*) FROM events"), 1);
}

/// A client that trusts only `cert` and reaches "localhost" at `addr`.
fn trusting(cert: &rcgen::CertifiedKey, addr: std::net::SocketAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .tls_built_in_root_certs(false)
        .resolve("localhost", addr)
        .build()
        .unwrap()
}

/// Certbot-style renewal: the files are replaced on disk, and the daemon serves
/// the new certificate to new connections without a restart, while a
/// connection opened before keeps working.
#[tokio::test]
async fn renewed_certificate_files_are_served_without_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let old = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let new = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::create_dir_all(tmp.path().join("rules")).unwrap();
    let install = |c: &rcgen::CertifiedKey| {
        std::fs::write(tmp.path().join("key.pem"), c.key_pair.serialize_pem()).unwrap();
        std::fs::write(tmp.path().join("cert.pem"), c.cert.pem()).unwrap();
    };
    install(&old);
    let mut d = TestDaemon::start_in(
        tmp.path(),
        "[server]\ntls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\ntls_reload_seconds = 1\n",
    )
    .await;
    let url = format!("https://localhost:{}/ingest/hex", d.addr.port());
    let send = |c: &reqwest::Client, n: usize| {
        c.post(&url)
            .header(AUTH, SECRET)
            .body(hex_record(n, "RUN_PROJECT").to_string())
            .timeout(Duration::from_secs(5))
            .send()
    };
    let before = trusting(&old, d.addr);
    assert_eq!(send(&before, 1).await.unwrap().status(), 200);
    assert!(send(&trusting(&new, d.addr), 2).await.is_err());

    install(&new);
    let renewed = trusting(&new, d.addr);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        match send(&renewed, 3).await {
            Ok(r) => {
                assert_eq!(r.status(), 200);
                break;
            }
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("the renewed certificate is not served: {e}"),
        }
    }
    // The connection opened under the old certificate still carries requests;
    // a new connection that trusts only the old certificate is refused.
    assert_eq!(send(&before, 4).await.unwrap().status(), 200);
    assert!(send(&trusting(&old, d.addr), 5).await.is_err());
    d.stop().await;
    assert_eq!(d.count("SELECT count(*) FROM events"), 3);
}

#[tokio::test]
async fn shutdown_finishes_requests_in_flight() {
    let mut d = TestDaemon::start("").await;
    let recs: Vec<Value> = (0..30).map(|i| hex_record(i, "RUN_PROJECT")).collect();
    let body = ndjson(&recs).into_bytes();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let url = d.ingest_url();
    let request =
        tokio::spawn(async move {
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|c| (c, rx))
            });
            client()
                .post(url)
                .header(AUTH, SECRET)
                .body(reqwest::Body::wrap_stream(stream))
                .send()
                .await
        });
    let (first, rest) = body.split_at(body.len() / 2);
    tx.send(Ok(first.to_vec())).await.unwrap();
    // The request is in progress (this scrape is the other one)...
    let in_progress = "hexwatch_requests_in_progress 2";
    for tries in 0.. {
        if d.metrics().await.contains(in_progress) {
            break;
        }
        assert!(tries < 1000, "the request never reached the daemon");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // ...when shutdown begins; the rest follows once the daemon has stopped
    // accepting connections.
    let (rest, addr) = (rest.to_vec(), d.addr);
    let finisher = tokio::spawn(async move {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tx.send(Ok(rest)).await.unwrap();
    });
    d.stop().await;
    finisher.await.unwrap();
    let resp = request.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    let b: Value = resp.json().await.unwrap();
    assert_eq!(b["accepted"], 30);
    assert_eq!(d.count("SELECT count(*) FROM events"), 30);
}

#[tokio::test]
async fn generated_secret_when_env_is_unset() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("config.toml");
    let text = "[storage]\npath = \"data/hexwatch.db\"\n";
    std::fs::write(&path, text).unwrap();
    std::fs::create_dir(tmp.path().join("rules")).unwrap();
    let env = MapEnv(Default::default());
    let config = hexwatch::config::Config::parse(&path, text, &env).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(hexwatch::daemon::run(config, listener, async move {
        let _ = stopped.await;
    }));
    let url = format!("http://{addr}/ingest/hex");
    // Wait for the secret file, then use it.
    let secret_path = tmp.path().join("data/ingest.secret");
    for _ in 0..100 {
        if secret_path.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secret = std::fs::read_to_string(&secret_path).unwrap();
    let r = client()
        .post(&url)
        .header(AUTH, secret.trim())
        .body(hex_record(1, "RUN_PROJECT").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client()
        .post(&url)
        .body(hex_record(2, "RUN_PROJECT").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

/// Hex's documented example event, posted as Hex streams it, is accepted, and a
/// rule sees the project's title from its `project_version` target.
#[tokio::test]
async fn hex_documented_event_is_accepted_over_http() {
    let rule = r#"let meta = #{ id: "T.Ran", severity: "LOW", actions: ["RUN_CELL"] };
fn rule(e) { true }
fn title(e) { `${actor(e)} ran a cell of "${target_name(e, "project")}"` }
"#;
    let mut d = TestDaemon::start_with_env("", &[], &[("ran.rhai", rule)]).await;
    let body = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/hex_documented_event.json"
    ))
    .unwrap();
    let (status, reply) = post(&d, body).await;
    assert_eq!(
        (status, reply["accepted"].as_i64()),
        (200, Some(1)),
        "{reply}"
    );
    assert!(
        wait_until(std::time::Duration::from_secs(5), || d.alerts_of("T.Ran")
            == 1)
        .await
    );
    assert_eq!(
        d.last_alert("T.Ran").unwrap()["title"],
        "user@example.com ran a cell of \"Sample Project\""
    );
    d.stop().await;
}

/// The load generator writes its real-shaped records straight into text (it
/// used to build a `serde_json` tree for each, and took 40% of the machine
/// from the daemon it measured): the text must be what the tree gave, byte
/// for byte, for every action of the mix and every user, project and cell.
#[test]
fn loadgen_records_are_written_as_the_tree_built_them() {
    for i in (0..30_000).chain(999_999_000..1_000_001_000) {
        let fast = records::real_record(i);
        let tree = records::real_record_by_tree(i);
        assert_eq!(fast, tree, "record {i}");
    }
}

/// A record object with 400,000 keys (a 1 MB gzip body) took minutes of CPU,
/// and every other compressed body waited behind it. One with 200,000 keys
/// (what fits in the default 1 MiB body) is now read in linear time and
/// quarantined with a reason naming the limit, and a small compressed body
/// sent beside it is answered and stored.
#[tokio::test]
async fn quadratic_cost_in_keys_per_object() {
    let mut d = TestDaemon::start("").await;
    let mut record = hex_record(1, "RUN_PROJECT");
    let keys: serde_json::Map<String, Value> =
        (0..200_000).map(|i| (format!("k{i}"), json!(i))).collect();
    record["event"]["metadata"] = Value::Object(keys);
    let huge = gzip(record.to_string().as_bytes());
    let gz = [("Content-Encoding", "gzip")];
    let small = gzip(hex_record(2, "RUN_PROJECT").to_string().as_bytes());
    let ((s1, b1), (s2, b2)) = tokio::join!(post_with(&d, huge, &gz), post_with(&d, small, &gz));
    assert_eq!(s1, 422, "{b1}");
    let error = b1["errors"][0]["error"].as_str().unwrap();
    assert!(error.contains("too many keys in one object"), "{error}");
    assert_eq!((s2, b2["accepted"].as_u64()), (200, Some(1)), "{b2}");
    d.stop().await;
    assert_eq!(d.count("SELECT count(*) FROM events"), 1);
    assert_eq!(d.count("SELECT count(*) FROM quarantine"), 1);
}

/// Changing the ingest secret meant a 401 window: hexwatch accepted one
/// secret, read once at start. It now accepts the previous one beside the
/// current one: `<env var>_PREVIOUS`, or the secret file's second line, read
/// again when the file changes, without a restart.
#[tokio::test]
async fn rotate_the_ingest_secret_without_a_401_window() {
    // From the environment.
    let mut d = TestDaemon::start_with_env(
        "",
        &[("HEXWATCH_SECRET_PREVIOUS", "old-secret-0123456789")],
        &[],
    )
    .await;
    let send = |secret: &'static str, i: usize, url: String| async move {
        client()
            .post(url)
            .header(AUTH, secret)
            .body(hex_record(i, "RUN_PROJECT").to_string())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(send(SECRET, 1, d.ingest_url()).await, 200);
    assert_eq!(send("old-secret-0123456789", 2, d.ingest_url()).await, 200);
    assert_eq!(send("neither-0123456789", 3, d.ingest_url()).await, 401);
    assert!(d
        .metrics()
        .await
        .contains("hexwatch_ingest_secret_used_total{secret=\"previous\"} 1"));
    d.stop().await;

    // From the secret file: the new secret is added as the first line, the
    // old one stays as the second until every sender has moved.
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("config.toml");
    let text = "[storage]\npath = \"data/hexwatch.db\"\n";
    std::fs::write(&path, text).unwrap();
    std::fs::create_dir(tmp.path().join("rules")).unwrap();
    let config = hexwatch::config::Config::parse(&path, text, &MapEnv(Default::default())).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/ingest/hex", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(hexwatch::daemon::run(config, listener, async move {
        let _ = stopped.await;
    }));
    let secret_path = tmp.path().join("data/ingest.secret");
    let old = loop {
        match std::fs::read_to_string(&secret_path) {
            Ok(s) if !s.trim().is_empty() => break s.trim().to_string(),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let old: &'static str = Box::leak(old.into_boxed_str());
    assert_eq!(send(old, 10, url.clone()).await, 200);
    std::fs::write(&secret_path, format!("new-secret-0123456789\n{old}\n")).unwrap();
    let mut i = 11;
    // Until the new secret is taken, the old one keeps working: no 401 window.
    while send("new-secret-0123456789", i, url.clone()).await != 200 {
        assert_eq!(
            send(old, i + 1000, url.clone()).await,
            200,
            "the old secret stopped first"
        );
        i += 1;
    }
    assert_eq!(
        send(old, 2000, url.clone()).await,
        200,
        "both during the rotation"
    );
    // The rotation finished: the old secret goes.
    std::fs::write(&secret_path, "new-secret-0123456789\n").unwrap();
    while send(old, i + 3000, url.clone()).await != 401 {
        assert!(i < 2000, "the changed secret file was never read");
        tokio::time::sleep(Duration::from_millis(20)).await;
        i += 1;
    }
    assert_eq!(send("new-secret-0123456789", 4000, url.clone()).await, 200);
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}
