//! Shared helpers: a daemon under test, Hex-shaped records, database peeks.

#![allow(dead_code)]

pub mod load;
pub mod pebble;
pub mod postgres;
/// The records the benchmarks and the load generator send.
#[path = "../../examples/common/records.rs"]
pub mod records;
pub use postgres::{backend, query, storage_toml, Backend, Cell};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use hexwatch::config::{Config, Env};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const SECRET: &str = "test-secret";
pub const AUTH: &str = "X-Hexwatch-Token";

pub struct MapEnv(pub HashMap<String, String>);

impl Env for MapEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
}

/// A daemon running in this process, with its own directory.
pub struct TestDaemon {
    pub dir: PathBuf,
    pub addr: SocketAddr,
    pub scheme: &'static str,
    pub extra: String,
    pub env: Vec<(String, String)>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    _tmp: Option<tempfile::TempDir>,
}

impl TestDaemon {
    /// Starts a daemon whose config is `extra` appended to the test defaults.
    pub async fn start(extra: &str) -> TestDaemon {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        std::fs::create_dir_all(dir.join("rules")).unwrap();
        let mut d = TestDaemon::start_in(&dir, extra).await;
        d._tmp = Some(tmp);
        d
    }

    /// Starts a daemon with extra environment variables and rule files in place.
    pub async fn start_with_env(
        extra: &str,
        env: &[(&str, &str)],
        rules: &[(&str, &str)],
    ) -> TestDaemon {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        std::fs::create_dir_all(dir.join("rules")).unwrap();
        for (name, source) in rules {
            std::fs::write(dir.join("rules").join(name), source).unwrap();
        }
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut d = TestDaemon::start_in_with(&dir, extra, env).await;
        d._tmp = Some(tmp);
        d
    }

    /// Starts a daemon on an existing directory (for restarts).
    pub async fn start_in(dir: &Path, extra: &str) -> TestDaemon {
        TestDaemon::start_in_with(dir, extra, Vec::new()).await
    }

    async fn start_in_with(dir: &Path, extra: &str, vars: Vec<(String, String)>) -> TestDaemon {
        let config_text = format!("{}[rules]\ndir = \"rules\"\n{extra}", storage_toml(dir));
        let config_path = dir.join("config.toml");
        std::fs::write(&config_path, &config_text).unwrap();
        let mut map = HashMap::from([("HEXWATCH_SECRET".to_string(), SECRET.to_string())]);
        map.extend(vars.iter().cloned());
        let env = MapEnv(map);
        let config = Config::parse(&config_path, &config_text, &env).unwrap();
        let scheme = if config.server.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(hexwatch::daemon::run(config, listener, async move {
            let _ = stopped.await;
        }));
        TestDaemon {
            dir: dir.to_path_buf(),
            addr,
            scheme,
            extra: extra.to_string(),
            env: vars,
            stop: Some(stop),
            task: Some(task),
            _tmp: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{}", self.scheme, self.addr, path)
    }

    pub fn ingest_url(&self) -> String {
        self.url("/ingest/hex")
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.join("data/hexwatch.db")
    }

    /// Graceful shutdown; returns once the daemon has exited.
    pub async fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
    }

    /// Stops and starts again on the same directory and config.
    pub async fn restart(mut self) -> TestDaemon {
        self.stop().await;
        let tmp = self._tmp.take();
        let extra = std::mem::take(&mut self.extra);
        let env = std::mem::take(&mut self.env);
        let mut d = TestDaemon::start_in_with(&self.dir, &extra, env).await;
        d._tmp = tmp;
        d
    }

    /// Runs one SQL query returning a single integer.
    pub fn count(&self, sql: &str) -> i64 {
        query(&self.dir, sql, &[])[0][0].int()
    }

    /// The first column of every row of a query, as text.
    pub fn strings(&self, sql: &str) -> Vec<String> {
        query(&self.dir, sql, &[])
            .into_iter()
            .map(|r| r[0].text())
            .collect()
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().build().unwrap()
}

/// A realistic Hex audit envelope; `i` makes it unique.
pub fn hex_record(i: usize, action: &str) -> Value {
    json!({
        "source": "Hex",
        "keySuffix": format!("01HQZX3V5W1B2C3D4E5F{i:06}"),
        "timestamp": "2024-03-05T18:05:25.001Z",
        "event": {
            "actor": {
                "id": format!("user-{}", i % 7),
                "type": "USER",
                "metadata": {
                    "email": format!("user{}@acme.example", i % 7),
                    "workspace": "Acme Analytics",
                    "workspaceId": "ws-8f14e45f",
                    "actorOrgRole": "EDITOR"
                }
            },
            "action": action,
            "context": {"location": format!("203.0.113.{}", i % 250), "user_agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_3) AppleWebKit/537.36"},
            "targets": [{
                "id": format!("proj-{}", i % 13),
                "type": "project",
                "metadata": {"created": false, "representation": format!("{{\"name\":\"Revenue model {}\",\"status\":\"published\"}}", i % 13)}
            }],
            "version": "1",
            "metadata": {
                "result": "SUCCESS",
                "requestArgs": "{\"projectId\":\"proj\",\"includeLogic\":true}",
                "hexTraceId": format!("trace-{i:08x}"),
                "source": "WEB"
            },
            "occurred_at": "2024-03-05T18:05:23.123Z"
        }
    })
}

pub fn ndjson(records: &[Value]) -> String {
    let mut s = String::new();
    for r in records {
        s.push_str(&r.to_string());
        s.push('\n');
    }
    s
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Polls `f` until it returns true or `timeout` passes.
pub async fn wait_until(timeout: std::time::Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    f()
}

impl TestDaemon {
    pub fn rules_dir(&self) -> PathBuf {
        self.dir.join("rules")
    }

    /// Writes a rule file into the daemon's rules directory.
    pub fn write_rule(&self, name: &str, source: &str) {
        std::fs::write(self.rules_dir().join(name), source).unwrap();
    }

    /// Sends records as NDJSON and asserts they were accepted.
    pub async fn send(&self, records: &[Value]) {
        let r = client()
            .post(self.ingest_url())
            .header(AUTH, SECRET)
            .body(ndjson(records))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }

    /// The `/readyz` answer.
    pub async fn readyz(&self) -> Value {
        client()
            .get(self.url("/readyz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        client()
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Rule directory reloads so far with `outcome` ("ok": every file loads;
    /// "error": some file does not). A test that edits a rule or the config's
    /// tuning reads this first, then waits with [`TestDaemon::wait_for_reload`].
    pub async fn reloads(&self, outcome: &str) -> u64 {
        let prefix = format!("hexwatch_rule_reloads_total{{outcome=\"{outcome}\"}} ");
        self.metrics()
            .await
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix)?.parse::<u64>().ok())
            .sum()
    }

    /// Waits until a reload with `outcome` happened after `before` of them
    /// were counted: the daemon has read the edit (a file caught half written
    /// loads with "error" and is read again).
    pub async fn wait_for_reload(&self, outcome: &str, before: u64) {
        let wait = std::time::Duration::from_secs(15);
        let deadline = std::time::Instant::now() + wait;
        while self.reloads(outcome).await <= before {
            assert!(
                std::time::Instant::now() < deadline,
                "no {outcome} reload within {wait:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }

    /// Waits until `n` rules are loaded (`hexwatch_rules_loaded`): after
    /// adding or deleting rule files.
    pub async fn wait_for_rules_loaded(&self, n: usize) {
        let wait = std::time::Duration::from_secs(15);
        let deadline = std::time::Instant::now() + wait;
        let line = format!("hexwatch_rules_loaded {n}");
        while !self.metrics().await.lines().any(|l| l == line) {
            assert!(
                std::time::Instant::now() < deadline,
                "{n} rules not loaded within {wait:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }

    /// Number of created alerts of a rule.
    pub fn alerts_of(&self, rule_id: &str) -> i64 {
        query(
            &self.dir,
            "SELECT count(*) FROM alerts WHERE created AND rule_id = $1",
            &[&Cell::Text(rule_id.into())],
        )[0][0]
            .int()
    }

    /// The alerts `replay` raises on `records` with this daemon's config.
    pub fn replay(&self, records: &[Value]) -> Vec<hexwatch::alerts::Alert> {
        let file = self.dir.join("replayed.ndjson");
        std::fs::write(&file, ndjson(records)).unwrap();
        let config = hexwatch::config::Config::parse(
            &self.dir.join("config.toml"),
            "",
            &MapEnv(Default::default()),
        )
        .unwrap();
        hexwatch::replay::run(&config, &[file], &mut Vec::new())
            .unwrap()
            .0
    }

    /// The JSON of the newest created alert of a rule, with its sample
    /// records (stored apart, in `alert_samples`).
    pub fn last_alert(&self, rule_id: &str) -> Option<Value> {
        let row = query(
            &self.dir,
            "SELECT alert_id, alert FROM alerts WHERE created AND rule_id = $1 ORDER BY window_start DESC, updated_at DESC LIMIT 1",
            &[&Cell::Text(rule_id.into())],
        );
        let row = row.first()?;
        let mut alert: Value = serde_json::from_str(&row[1].text()).unwrap();
        let samples = query(
            &self.dir,
            "SELECT record FROM alert_samples WHERE alert_id = $1 ORDER BY idx",
            &[&Cell::Text(row[0].text())],
        );
        alert["events"] = samples
            .iter()
            .map(|r| serde_json::from_str::<Value>(&r[0].text()).unwrap())
            .collect();
        Some(alert)
    }
}

/// A record with a given action, actor e-mail and event time.
pub fn event_at(i: usize, action: &str, email: &str, occurred_at: &str) -> Value {
    let mut r = hex_record(i, action);
    r["event"]["actor"]["metadata"]["email"] = json!(email);
    r["event"]["occurred_at"] = json!(occurred_at);
    r
}

/// A free TCP port on loopback (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real SMTP server (Python's aiosmtpd) writing what it receives to a directory.
pub struct SmtpSink {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: std::process::Child,
}

fn ensure_aiosmtpd() {
    static ONCE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        let have = std::process::Command::new("python3")
            .args(["-c", "import aiosmtpd"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            have,
            "the e-mail tests need Python's aiosmtpd (`bash .ci/run` installs it; or: python3 -m pip install aiosmtpd)"
        );
    });
}

impl SmtpSink {
    pub fn start() -> SmtpSink {
        SmtpSink::start_with(&[])
    }

    /// With TLS: `mode` is "starttls" (required) or "implicit".
    pub fn start_tls(mode: &str, cert: &Path, key: &Path) -> SmtpSink {
        SmtpSink::start_with(&[mode, cert.to_str().unwrap(), key.to_str().unwrap()])
    }

    fn start_with(extra: &[&str]) -> SmtpSink {
        ensure_aiosmtpd();
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/smtp_sink.py");
        let mut child = std::process::Command::new("python3")
            .arg(script)
            .arg(dir.path())
            .arg(port.to_string())
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "ready", "SMTP sink did not start");
        SmtpSink { port, dir, child }
    }

    /// Messages received so far: (envelope recipients, raw message).
    pub fn messages(&self) -> Vec<(Vec<String>, String)> {
        let mut files: Vec<_> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        files
            .iter()
            .map(|p| {
                let v: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
                let rcpts = v["rcpt_tos"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r.as_str().unwrap().to_string())
                    .collect();
                (rcpts, v["data"].as_str().unwrap().to_string())
            })
            .collect()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a webhook receiver does with a request.
#[derive(Clone, Copy, Debug)]
pub enum Reply {
    Status(u16),
    /// This status with `Retry-After: <seconds>`.
    RetryAfter(u16, u64),
    /// Never answers (a hanging destination).
    Hang,
    /// This status with `Location: /elsewhere` (a redirect to the same server).
    Redirect(u16),
    /// This status with a body that never ends.
    EndlessBody(u16),
    /// This status with a body that repeats the request's path and query.
    EchoPath(u16),
}

/// Checks a request the way a service documents it; `Err` makes the receiver
/// answer 400 with the reason, as the service would.
pub type Validator = fn(&warp::http::HeaderMap, &[u8]) -> Result<(), String>;

/// A request the webhook receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub headers: warp::http::HeaderMap,
    pub body: bytes::Bytes,
    pub at: std::time::Instant,
    /// Why the validator refused it, if it did.
    pub invalid: Option<String>,
}

/// A real HTTP server (warp) that records requests and answers from a script:
/// the i-th request gets `script[i]`, later ones the last entry.
pub struct WebhookReceiver {
    pub addr: SocketAddr,
    pub received: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
    stop: Option<oneshot::Sender<()>>,
}

impl WebhookReceiver {
    pub async fn start(script: Vec<Reply>) -> WebhookReceiver {
        WebhookReceiver::start_on("127.0.0.1:0".parse().unwrap(), script).await
    }

    pub async fn start_on(addr: SocketAddr, script: Vec<Reply>) -> WebhookReceiver {
        WebhookReceiver::serve(addr, script, None).await
    }

    /// A receiver that checks every request with `validator` (400 when invalid)
    /// before following the script.
    pub async fn validating(script: Vec<Reply>, validator: Validator) -> WebhookReceiver {
        WebhookReceiver::serve("127.0.0.1:0".parse().unwrap(), script, Some(validator)).await
    }

    async fn serve(
        addr: SocketAddr,
        script: Vec<Reply>,
        validator: Option<Validator>,
    ) -> WebhookReceiver {
        use warp::Filter;
        let received: std::sync::Arc<std::sync::Mutex<Vec<Received>>> = Default::default();
        let rec = received.clone();
        let script = std::sync::Arc::new(script);
        let route = warp::post()
            .and(warp::path::full())
            .and(warp::header::headers_cloned())
            .and(warp::body::bytes())
            .then(
                move |path: warp::path::FullPath,
                      headers: warp::http::HeaderMap,
                      body: bytes::Bytes| {
                    let path = path.as_str().to_string();
                    let path_echo = path.clone();
                    let rec = rec.clone();
                    let script = script.clone();
                    async move {
                        if let Some(v) = validator {
                            if let Err(why) = v(&headers, &body) {
                                rec.lock().unwrap().push(Received {
                                    path,
                                    headers,
                                    body,
                                    at: std::time::Instant::now(),
                                    invalid: Some(why.clone()),
                                });
                                let mut r = warp::reply::Response::new(why.into());
                                *r.status_mut() = warp::http::StatusCode::BAD_REQUEST;
                                return r;
                            }
                        }
                        let n = {
                            let mut r = rec.lock().unwrap();
                            r.push(Received {
                                path,
                                headers,
                                body,
                                at: std::time::Instant::now(),
                                invalid: None,
                            });
                            r.len() - 1
                        };
                        let reply = script
                            .get(n)
                            .or(script.last())
                            .copied()
                            .unwrap_or(Reply::Status(200));
                        let (status, retry_after) = match reply {
                            Reply::Status(s) => (s, None),
                            Reply::RetryAfter(s, secs) => (s, Some(secs)),
                            Reply::Hang => {
                                tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                                (500, None)
                            }
                            Reply::Redirect(s) => {
                                let mut r = warp::reply::Response::new("moved".into());
                                *r.status_mut() = warp::http::StatusCode::from_u16(s).unwrap();
                                r.headers_mut()
                                    .insert("location", "/elsewhere".parse().unwrap());
                                return r;
                            }
                            Reply::EchoPath(s) => {
                                let mut r = warp::reply::Response::new(
                                    format!("no such hook: {path_echo}").into(),
                                );
                                *r.status_mut() = warp::http::StatusCode::from_u16(s).unwrap();
                                return r;
                            }
                            Reply::EndlessBody(s) => {
                                let chunk =
                                    bytes::Bytes::from(format!("error {s}: {}", "x".repeat(65536)));
                                let endless = futures_util::stream::repeat_with(move || {
                                    Ok::<_, std::convert::Infallible>(chunk.clone())
                                });
                                let reply = warp::reply::with_status(
                                    warp::reply::stream(endless),
                                    warp::http::StatusCode::from_u16(s).unwrap(),
                                );
                                return warp::Reply::into_response(reply);
                            }
                        };
                        let body = if status >= 400 {
                            format!("error {status}: {}", "x".repeat(600))
                        } else {
                            "ok".into()
                        };
                        let mut r = warp::reply::Response::new(body.into());
                        *r.status_mut() = warp::http::StatusCode::from_u16(status).unwrap();
                        if let Some(secs) = retry_after {
                            r.headers_mut()
                                .insert("retry-after", secs.to_string().parse().unwrap());
                        }
                        r
                    }
                },
            );
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            warp::serve(route)
                .incoming(listener)
                .graceful(async move {
                    let _ = stopped.await;
                })
                .run()
                .await;
        });
        WebhookReceiver {
            addr,
            received,
            stop: Some(stop),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// The real `hexwatch serve` binary on `dir/config.toml`; killed (SIGKILL) when
/// dropped, so a failing test leaves no daemon behind.
pub struct BinaryDaemon(pub std::process::Child);

impl BinaryDaemon {
    pub fn spawn(dir: &Path) -> BinaryDaemon {
        BinaryDaemon(
            std::process::Command::new(env!("CARGO_BIN_EXE_hexwatch"))
                .args(["serve", "-c"])
                .arg(dir.join("config.toml"))
                .env("HEXWATCH_SECRET", SECRET)
                .env("RUST_LOG", "error")
                .spawn()
                .unwrap(),
        )
    }
}

impl Drop for BinaryDaemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits (20 s at most) until the daemon on `port` answers `/readyz` with 200.
pub async fn wait_ready(port: u16) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if let Ok(r) = client()
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
        {
            if r.status() == 200 {
                return;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("daemon not ready");
}
