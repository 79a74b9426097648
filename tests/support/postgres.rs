//! A real PostgreSQL for the tests: the server binaries of Debian's
//! `postgresql` package, one cluster per test process in a temporary directory
//! on a loopback port. A watchdog shell stops the server and deletes the
//! cluster when the test process exits. Each daemon gets a database of its own.
//!
//! `HEXWATCH_TEST_BACKEND=postgres` runs the daemons of the whole suite on it
//! (`postgres_runs_the_whole_suite` does that with the test binary itself).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The storage the suite's daemons run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub fn backend() -> Backend {
    match std::env::var("HEXWATCH_TEST_BACKEND").as_deref() {
        Ok("postgres") => Backend::Postgres,
        _ => Backend::Sqlite,
    }
}

pub struct Cluster {
    pub port: u16,
    /// The server's self-signed certificate: every daemon trusts it
    /// (`storage.ca_file`), so the suite's PostgreSQL connections use TLS.
    pub ca_file: PathBuf,
    admin: Mutex<postgres::Client>,
    /// Ends by itself once the test process is gone.
    _watchdog: std::process::Child,
}

/// Runs `f` on a thread of its own: the synchronous PostgreSQL client runs a
/// runtime of its own, which cannot start on a thread that drives async tasks.
pub fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(f).join().unwrap())
}

/// The test process's cluster, started on first use.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| off_runtime(start))
}

fn bindir() -> PathBuf {
    if let Ok(dir) = std::env::var("HEXWATCH_PG_BINDIR") {
        return dir.into();
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").exists())
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!(
            "the PostgreSQL tests need PostgreSQL's server binaries: apt-get install postgresql \
             (or set HEXWATCH_PG_BINDIR); .ci/run installs it"
        )
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// A command run as the `postgres` user when the tests run as root
/// (PostgreSQL refuses to run as root).
fn command(program: &Path, root: bool) -> Command {
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn start() -> Cluster {
    let bin = bindir();
    let root = is_root();
    let dir = std::env::temp_dir().join(format!("hexwatch-pg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    if root {
        let ok = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(ok.success(), "chown of the cluster directory");
    }
    let data = dir.join("data");
    let out = command(&bin.join("initdb"), root)
        .arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // TLS: a certificate for 127.0.0.1, the key private to the server's user.
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, cert.cert.pem()).unwrap();
    std::fs::write(data.join("server.crt"), cert.cert.pem()).unwrap();
    let key = data.join("server.key");
    std::fs::write(&key, cert.key_pair.serialize_pem()).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    if root {
        let ok = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(data.join("server.crt"))
            .arg(&key)
            .status()
            .unwrap();
        assert!(ok.success(), "chown of the server's certificate");
    }
    let port = super::free_port();
    // The watchdog: runs the server until this test process is gone, then
    // stops it and removes the cluster.
    let script = r#"
        "$@" &
        pg=$!
        while [ -d "/proc/$PARENT" ] && kill -0 "$pg" 2>/dev/null; do sleep 0.5; done
        kill -INT "$pg" 2>/dev/null
        wait "$pg"
        rm -rf "$DIR"
    "#;
    let mut watchdog = if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "-w", "PARENT,DIR", "--", "/bin/sh"]);
        c
    } else {
        Command::new("/bin/sh")
    };
    watchdog
        .args(["-c", script, "sh"])
        .arg(bin.join("postgres"))
        .arg("-D")
        .arg(&data)
        .args(["-p", &port.to_string(), "-k"])
        .arg(&dir)
        .args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "max_connections=400",
            "-c",
            "shared_buffers=64MB",
            "-c",
            "ssl=on",
            "-c",
            "ssl_cert_file=server.crt",
            "-c",
            "ssl_key_file=server.key",
        ])
        .env("PARENT", std::process::id().to_string())
        .env("DIR", &dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let watchdog = watchdog.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let admin = loop {
        match postgres::Client::connect(
            &format!("host=127.0.0.1 port={port} user=postgres dbname=postgres"),
            postgres::NoTls,
        ) {
            Ok(c) => break c,
            Err(e) if Instant::now() > deadline => panic!("PostgreSQL did not start: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    Cluster {
        port,
        ca_file,
        admin: Mutex::new(admin),
        _watchdog: watchdog,
    }
}

impl Cluster {
    /// A fresh, empty database; returns its URL.
    pub fn new_database(&self) -> String {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!("hw_{}", N.fetch_add(1, Ordering::Relaxed));
        off_runtime(|| {
            self.admin
                .lock()
                .unwrap()
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .unwrap()
        });
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }
}

/// The `[storage]` section for a daemon in `dir`: SQLite in `dir/data`, or a
/// PostgreSQL database of its own (kept for restarts in the same directory, in
/// `dir/.pg-url`; a test that writes that file moves the daemon there).
pub fn storage_toml(dir: &Path) -> String {
    let mut text = "[storage]\npath = \"data/hexwatch.db\"\n".to_string();
    let remembered = dir.join(".pg-url");
    if backend() == Backend::Postgres || remembered.exists() {
        let url = match std::fs::read_to_string(&remembered) {
            Ok(url) => url,
            Err(_) => {
                let url = cluster().new_database();
                std::fs::write(&remembered, &url).unwrap();
                url
            }
        };
        text.push_str(&format!(
            "url = \"{url}\"\nca_file = \"{}\"\n",
            cluster().ca_file.display()
        ));
    }
    text
}

/// A value read back by [`query`].
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Int(i64),
    Text(String),
    Null,
}

impl Cell {
    pub fn int(&self) -> i64 {
        match self {
            Cell::Int(i) => *i,
            other => panic!("expected an integer, got {other:?}"),
        }
    }

    pub fn text(&self) -> String {
        match self {
            Cell::Text(t) => t.clone(),
            other => panic!("expected text, got {other:?}"),
        }
    }
}

/// Runs one SQL statement on a daemon's storage (its PostgreSQL database when
/// `dir/.pg-url` names one, else `dir/data/hexwatch.db`); returns its rows. Parameters are written `$1`, `$2`…
/// (both engines take them) and given as text or integers.
pub fn query(dir: &Path, sql: &str, params: &[&Cell]) -> Vec<Vec<Cell>> {
    match std::fs::read_to_string(dir.join(".pg-url")) {
        Ok(url) => off_runtime(|| {
            let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            let owned: Vec<Box<dyn postgres::types::ToSql + Sync>> = params
                .iter()
                .map(|p| -> Box<dyn postgres::types::ToSql + Sync> {
                    match p {
                        Cell::Int(i) => Box::new(*i),
                        Cell::Text(t) => Box::new(t.clone()),
                        Cell::Null => Box::new(None::<String>),
                    }
                })
                .collect();
            let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
                owned.iter().map(|b| b.as_ref()).collect();
            let rows = c.query(sql, &refs).unwrap();
            rows.iter()
                .map(|r| {
                    (0..r.len())
                        .map(|i| {
                            if let Ok(v) = r.try_get::<_, Option<i64>>(i) {
                                return v.map_or(Cell::Null, Cell::Int);
                            }
                            if let Ok(v) = r.try_get::<_, Option<i32>>(i) {
                                return v.map_or(Cell::Null, |v| Cell::Int(v.into()));
                            }
                            if let Ok(v) = r.try_get::<_, Option<bool>>(i) {
                                return v.map_or(Cell::Null, |v| Cell::Int(v.into()));
                            }
                            match r.try_get::<_, Option<String>>(i) {
                                Ok(v) => v.map_or(Cell::Null, Cell::Text),
                                Err(e) => panic!("column {i} of {sql}: {e}"),
                            }
                        })
                        .collect()
                })
                .collect()
        }),
        _ => {
            let conn = rusqlite::Connection::open(dir.join("data/hexwatch.db")).unwrap();
            let params: Vec<rusqlite::types::Value> = params
                .iter()
                .map(|p| match p {
                    Cell::Int(i) => rusqlite::types::Value::Integer(*i),
                    Cell::Text(t) => rusqlite::types::Value::Text(t.clone()),
                    Cell::Null => rusqlite::types::Value::Null,
                })
                .collect();
            let mut stmt = conn.prepare(sql).unwrap();
            let n = stmt.column_count();
            stmt.query_map(rusqlite::params_from_iter(params), |r| {
                Ok((0..n)
                    .map(|i| match r.get::<_, rusqlite::types::Value>(i).unwrap() {
                        rusqlite::types::Value::Integer(v) => Cell::Int(v),
                        rusqlite::types::Value::Text(t) => Cell::Text(t),
                        rusqlite::types::Value::Null => Cell::Null,
                        other => panic!("column {i} of {sql}: {other:?}"),
                    })
                    .collect())
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
        }
    }
}
