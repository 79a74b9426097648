//! The `hexwatch` command line (docs/commands.md). Parses arguments, maps every error to
//! its exit code in one place: 0 success, 1 failed checks or tests, 2 bad usage or
//! unusable config.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use hexwatch::config::Config;

mod storage_commands;
use storage_commands::{backup, migrate_storage, redeliver};

/// mimalloc: rule calls and parsing allocate many small objects; with the
/// system allocator `replay` takes about 17% more CPU (README, Performance).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "hexwatch",
    version = hexwatch::VERSION,
    about = "Detection daemon for the Hex audit log stream"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Serve {
        /// The config file.
        #[arg(short, long, default_value = "config.toml")]
        config: PathBuf,
    },
    /// Validate the config and compile every rule; exit 1 on any problem.
    /// Secrets that are not exported are warnings (errors with --strict).
    Check {
        #[arg(short, long, default_value = "config.toml")]
        config: PathBuf,
        /// Every secret the config names must be exported (deploy pipelines).
        #[arg(long)]
        strict: bool,
    },
    /// Show which Hex audit actions the rules watch, which none does, and the
    /// ATT&CK techniques they cover.
    Coverage {
        #[arg(short, long, default_value = "config.toml")]
        config: PathBuf,
        /// Also write an ATT&CK Navigator layer (JSON) to this file.
        #[arg(long, value_name = "FILE")]
        navigator: Option<PathBuf>,
    },
    /// Run the rules' unit tests (rules/<name>.tests.json).
    Test {
        /// The rules directory (default: the config's `rules.dir`, else `rules`).
        rules_dir: Option<PathBuf>,
        /// Only tests whose rule id, file or case name contains this text.
        #[arg(long)]
        filter: Option<String>,
        /// Take `rules.dir` and `rules.max_operations` from this config file
        /// (default: ./config.toml when it exists), so tests run under the
        /// daemon's limits.
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Run recorded events (JSON, JSON array or NDJSON; `-` is stdin, `.gz` is
    /// decompressed) through the rules; alerts go to stdout as JSON lines.
    Replay {
        #[arg(short, long, default_value = "config.toml")]
        config: PathBuf,
        /// Also deliver the alerts to their destinations.
        #[arg(long)]
        dispatch: bool,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Send a clearly marked test alert to one destination through the real
    /// delivery code; prints the outcome; exit 0 only when it was delivered.
    NotifyTest {
        #[arg(short, long, default_value = "config.toml")]
        config: PathBuf,
        /// The destination's name.
        destination: String,
        /// Severity of the test alert (routing does not apply; it is sent anyway).
        #[arg(long, default_value = "HIGH")]
        severity: String,
    },
    /// Queue abandoned (failed) deliveries again; a running daemon sends them
    /// within a second.
    Redeliver {
        #[arg(short, long, default_value = "config.toml")]
        config: PathBuf,
        /// Only deliveries to this destination.
        #[arg(long)]
        destination: Option<String>,
        /// Only deliveries created at or after this time: RFC 3339, or a span
        /// back from now such as 12h or 7d.
        #[arg(long)]
        since: Option<String>,
    },
    /// Write an online, consistent copy of the SQLite database to FILE (which
    /// must not exist), while the daemon runs. PostgreSQL: use pg_dump.
    Backup {
        #[arg(short, long, default_value = "config.toml")]
        config: PathBuf,
        file: PathBuf,
    },
    /// Print an Argon2id hash of the password read from stdin (its first
    /// line), for a console user's `password_hash` in `[[ui.users]]`.
    HashPassword,
    /// Copy an installation's SQLite database into an empty PostgreSQL
    /// database, for replicas to share (password from
    /// $HEXWATCH_DATABASE_PASSWORD). Stop the daemon first.
    MigrateStorage {
        /// The SQLite database (storage.path).
        #[arg(long)]
        from: PathBuf,
        /// postgres://user@host:port/database (no password in it).
        #[arg(long)]
        to: String,
        /// A CA certificate (PEM) for the server's TLS certificate, besides the
        /// public roots (as storage.ca_file).
        #[arg(long)]
        ca_file: Option<PathBuf>,
    },
}

/// `hexwatch hash-password`: the password from stdin's first line, never an
/// argument (arguments are visible to every user of the machine).
fn hash_password() -> ExitCode {
    let mut line = String::new();
    if let Err(e) = std::io::stdin().read_line(&mut line) {
        eprintln!("error: cannot read the password from stdin: {e}");
        return ExitCode::from(2);
    }
    let password = line.trim_end_matches(['\n', '\r']);
    if password.chars().count() < 12 {
        eprintln!("error: use a password of at least 12 characters");
        return ExitCode::from(2);
    }
    match hexwatch::console::users::hash_password(password) {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Turns transparent huge pages off for this process. Where the system has
/// them always on, every 2 MiB region the allocator touches becomes resident
/// whole: peak RSS at 50,000 records/s was about 150 MiB with them and
/// 100-105 MiB without, for the same CPU. Memory use is all it changes, so a kernel that
/// refuses is no reason to stop.
fn small_pages_only() {
    #[cfg(target_os = "linux")]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
}

fn main() -> ExitCode {
    small_pages_only();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_tracing();
    match cli.command {
        Command::Serve { config } => serve(config),
        Command::Check { config, strict } => check(config, strict),
        Command::Coverage { config, navigator } => coverage(config, navigator),
        Command::Test {
            rules_dir,
            filter,
            config,
        } => test(rules_dir, filter, config),
        Command::Replay {
            config,
            dispatch,
            files,
        } => replay(config, files, dispatch),
        Command::Redeliver {
            config,
            destination,
            since,
        } => redeliver(config, destination, since),
        Command::MigrateStorage { from, to, ca_file } => migrate_storage(from, to, ca_file),
        Command::Backup { config, file } => backup(config, file),
        Command::HashPassword => hash_password(),
        Command::NotifyTest {
            config,
            destination,
            severity,
        } => notify_test(config, destination, severity),
    }
}

/// Logs go to stderr: human-readable, or one JSON object per line with
/// `HEXWATCH_LOG_FORMAT=json` (for shipping to a log pipeline), each field a
/// field of its own. `RUST_LOG` sets the level: by default `info` for
/// hexwatch and `warn` for the libraries it uses (refinery reported every
/// migration check on every start).
fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    const DEFAULT: &str =
        "warn,hexwatch=info,hexwatch_storage=info,hexwatch_rules=info,hexwatch_model=info";
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT));
    // Colour only for a person at a terminal; log files and journald get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if std::env::var("HEXWATCH_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().flatten_event(true).init();
    } else {
        builder
            .fmt_fields(hexwatch::logging::escaped_fields())
            .init();
    }
}

/// The config of a command that sends nothing: secrets that are not
/// exported do not stop it (see [`Config::load_offline`]).
fn load_offline(path: &std::path::Path) -> Result<(Config, Vec<String>), ExitCode> {
    Config::load_offline(path).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

fn serve(path: PathBuf) -> ExitCode {
    let config = match load(&path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // Every connection is a file descriptor: allow as many as the hard limit lets
    // us, so `server.max_connections` (not a low default soft limit) is the cap.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) if (n as usize) < config.server.max_connections + 64 => eprintln!(
            "warning: only {n} file descriptors may be open; server.max_connections is {}",
            config.server.max_connections
        ),
        Ok(_) => {}
        Err(e) => eprintln!("warning: cannot raise the open file limit: {e}"),
    }
    let runtime = tokio::runtime::Runtime::new().expect("starting the tokio runtime");
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.server.listen)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "{}: server.listen: cannot listen on {}: {e}",
                    config.source.display(),
                    config.server.listen
                )
            })?;
        hexwatch::daemon::run(config, listener, shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
    }
}

/// Loads the config and scans its rules (with the config's tuning); on failure
/// prints the error and gives the exit code `failure`.
/// Secrets the config names that are not exported come back too (the
/// config reads them as placeholders: nothing is sent).
fn config_and_rules(
    path: &std::path::Path,
    failure: u8,
) -> Result<(Config, Vec<String>, hexwatch_rules::ruleset::ScanReport), ExitCode> {
    let (config, missing) = Config::load_offline(path).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(failure)
    })?;
    let mut loader = config.rules_loader(None, false);
    let report = loader.scan().map_err(|e| {
        eprintln!(
            "error: {}: rules.dir: cannot read {}: {e}",
            config.source.display(),
            config.rules.dir.display()
        );
        ExitCode::from(failure)
    })?;
    Ok((config, missing, report))
}

fn check(path: PathBuf, strict: bool) -> ExitCode {
    let (config, missing, report) = match config_and_rules(&path, 1) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let mut problems: Vec<String> = report.errors.iter().map(|e| e.to_string()).collect();
    let mut warnings: Vec<String> = report.warnings.iter().map(|w| w.to_string()).collect();
    for var in missing {
        let text = format!(
            "{}: environment variable {var} is not set: `serve` will not start without it",
            config.source.display()
        );
        match strict {
            true => problems.push(text),
            false => warnings.push(text),
        }
    }
    if let Some(tls) = &config.server.tls {
        if let Err(e) = hexwatch::tls::load(&tls.cert, &tls.key) {
            problems.push(format!("{}: {e}", config.source.display()));
        }
    }
    problems.extend(
        hexwatch::dispatch::check(&config.destinations)
            .into_iter()
            .map(|e| format!("{}: {e}", config.source.display())),
    );
    for p in &problems {
        eprintln!("error: {p}");
    }
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    println!(
        "{}: config OK ({} destination(s)); {} rule(s) loaded from {}, {} problem(s), {} warning(s)",
        config.source.display(),
        config.destinations.len(),
        report.rules.len(),
        config.rules.dir.display(),
        problems.len(),
        warnings.len()
    );
    if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn notify_test(path: PathBuf, name: String, severity: String) -> ExitCode {
    use hexwatch::dispatch::{formats, Outcome, Sender};
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(d) = config.destinations.iter().find(|d| d.name == name) else {
        let names: Vec<&str> = config
            .destinations
            .iter()
            .map(|d| d.name.as_str())
            .collect();
        eprintln!(
            "error: no destination named {name:?} in {}; configured: {}",
            config.source.display(),
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        );
        return ExitCode::from(2);
    };
    let Some(severity) = hexwatch_model::Severity::parse(&severity) else {
        eprintln!("error: --severity {severity:?}: use INFO, LOW, MEDIUM, HIGH or CRITICAL");
        return ExitCode::from(2);
    };
    let sender = match Sender::new(d) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: destination {name}: {e}");
            return ExitCode::from(2);
        }
    };
    let alert = formats::sample_alert(severity);
    let json = serde_json::to_string(&alert).expect("an alert serialises");
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let started = std::time::Instant::now();
    let outcome = runtime.block_on(sender.send(&alert.alert_id, &json));
    let ms = started.elapsed().as_millis();
    let kind = d.type_name();
    match outcome {
        Outcome::Delivered { detail } => {
            println!(
                "delivered to {name} ({kind}): {detail} in {ms} ms (alert {})",
                alert.alert_id
            );
            ExitCode::SUCCESS
        }
        Outcome::Rejected { error } => {
            println!("rejected by {name} ({kind}) in {ms} ms, would not be retried: {error}");
            ExitCode::from(1)
        }
        Outcome::Transient { error, retry_after } => {
            let after = retry_after
                .map(|d| format!(" (asked to retry after {} s)", d.as_secs()))
                .unwrap_or_default();
            println!(
                "failed to reach {name} ({kind}) in {ms} ms, would be retried{after}: {error}"
            );
            ExitCode::from(1)
        }
    }
}

fn coverage(path: PathBuf, navigator: Option<PathBuf>) -> ExitCode {
    let (_, _, report) = match config_and_rules(&path, 2) {
        Ok(x) => x,
        Err(code) => return code,
    };
    for e in &report.errors {
        eprintln!("warning: not counted, does not load: {e}");
    }
    let c = hexwatch_rules::coverage::Coverage::of(&report.rules);
    print!("{}", c.text());
    if let Some(file) = navigator {
        let json = serde_json::to_string_pretty(&c.navigator_layer()).expect("a JSON value");
        if let Err(e) = std::fs::write(&file, json + "\n") {
            eprintln!("error: cannot write {}: {e}", file.display());
            return ExitCode::from(2);
        }
        println!("\nATT&CK Navigator layer written to {}", file.display());
    }
    ExitCode::SUCCESS
}

fn test(dir: Option<PathBuf>, filter: Option<String>, config: Option<PathBuf>) -> ExitCode {
    let config = match config {
        Some(path) => Some(path),
        None => Some(PathBuf::from("config.toml")).filter(|p| p.exists()),
    };
    let (dir, max_operations) = match config.map(|p| Config::load_offline(&p)) {
        Some(Ok((c, _))) => (dir.unwrap_or(c.rules.dir), c.rules.max_operations),
        Some(Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
        None => (dir.unwrap_or_else(|| PathBuf::from("rules")), 100_000),
    };
    let stdout = std::io::stdout();
    match hexwatch::rule_tests::run(&dir, filter.as_deref(), max_operations, &mut stdout.lock()) {
        Ok(r) if r.failed == 0 => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(e) => {
            eprintln!(
                "error: cannot read the rules directory {}: {e}",
                dir.display()
            );
            ExitCode::from(2)
        }
    }
}

fn replay(path: PathBuf, files: Vec<PathBuf>, dispatch: bool) -> ExitCode {
    // Only `--dispatch` sends: it needs every secret.
    let config = match dispatch {
        true => load(&path),
        false => load_offline(&path).map(|(c, _)| c),
    };
    let config = match config {
        Ok(c) => c,
        Err(code) => return code,
    };
    let stdout = std::io::stdout();
    match hexwatch::replay::run(&config, &files, &mut stdout.lock()) {
        Ok((alerts, s)) => {
            if dispatch {
                let runtime = tokio::runtime::Runtime::new().expect("starting the tokio runtime");
                match runtime.block_on(hexwatch::dispatch::deliver_now(
                    &config.destinations,
                    &config.delivery,
                    &alerts,
                )) {
                    Ok((delivered, failed)) => {
                        eprintln!("dispatched: {delivered} delivered, {failed} failed")
                    }
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        return ExitCode::from(2);
                    }
                }
            }
            eprintln!(
                "replayed {} records ({} duplicates, {} quarantined) in {:.2}s ({:.0} records/s): {} matches, {} alerts in {} incidents, {} rule errors",
                s.records,
                s.duplicates,
                s.quarantined,
                s.elapsed.as_secs_f64(),
                s.records_per_second(),
                s.matches,
                s.alerts,
                s.incidents.len(),
                s.rule_errors
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
