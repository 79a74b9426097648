//! Wiring for `hexwatch serve`: opens storage, resolves the ingest secret, starts
//! the stages and the HTTP server, and tears them down in order on shutdown so
//! that every acknowledged record is committed before the process exits.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::console::{self, Console};
use crate::dispatch::Dispatcher;
use crate::evaluator::{Evaluator, EvaluatorSettings};
use crate::health::Health;
use crate::hot_reload::{self, RuleWatcher, SharedRules};
use crate::ingest_secret::{IngestSecrets, SecretSource};
use crate::journal::Journal;
use crate::metrics::Metrics;
use crate::receiver::{self, Receiver};
use crate::server;
use crate::tls;
use hexwatch_rules::ruleset::{CounterRegistry, RuleSet};
use hexwatch_storage::{Role, Storage};
use warp::Filter;

/// How often old journal rows are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Runs the daemon on an already-bound listener until `shutdown` resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    boxed(config, listener, Box::pin(shutdown)).await
}

/// A future for Rust to reach only through a pointer. The daemon's server
/// stack is then compiled once, in this crate: Rust compiled it again in every
/// program that started a daemon, and did so even for an `async fn` without
/// type parameters (each one took about a minute in a test build).
#[inline(never)]
fn boxed(
    config: Config,
    listener: TcpListener,
    shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>> {
    Box::pin(run_until(config, listener, shutdown))
}

/// The daemon itself, from opening the storage to the last stage stopped.
async fn run_until(
    config: Config,
    listener: TcpListener,
    shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
) -> anyhow::Result<()> {
    let health = Arc::new(Health::default());
    let metrics = Arc::new(Metrics::new());
    // The one stop signal of every stage (threads and tasks); cancelled when the
    // server stops, or on any early return.
    let stages = CancellationToken::new();
    let _stop_all_on_exit = stages.clone().drop_guard();
    // What can fail on a bad file is set up before any stage starts.
    let tls = tls_acceptor(&config, &stages)?;

    let (secrets, secret_source) = private_storage_and_secret(&config)?;
    let _serve_lock = serve_lock(&config)?;
    let (rules, watcher) = start_rules(&config, &health, &metrics, &stages)?;
    let ui_listener = bind_ui_listener(&config).await?;
    let console_rules = rules.clone();
    // Storage calls block (a network round trip on PostgreSQL): the stages that
    // use storage are built off the async threads.
    let (config_, health_, metrics_, stages_) = (
        config.clone(),
        health.clone(),
        metrics.clone(),
        stages.clone(),
    );
    let (journal, running, storage) = tokio::task::spawn_blocking(move || {
        start_stages(&config_, rules, &health_, &metrics_, &stages_)
    })
    .await??;
    health.set_storage_open();
    let secure = tls.is_some();
    let console = start_console(&config, storage, console_rules, &health, &metrics, secure);
    let console = console.await?;
    if let Some(c) = &console {
        tokio::spawn(c.clone().sample_rate(stages.clone()));
    }

    let rx = Receiver::from_config(&config, journal, secrets, metrics.clone(), health);
    let (rx, stop_reload) = (Arc::new(rx), stages.clone());
    tokio::spawn(crate::ingest_secret::reload(
        rx.secrets.clone(),
        secret_source,
        stop_reload,
    ));
    let limits = server::ConnLimits::from_config(&config.server);
    let stop = stopped(shutdown, stages.clone());
    // The console on its own listener, or on the main one beside ingest.
    let (console, ui_server) = match (console, ui_listener) {
        (Some(c), Some(ui_listener)) => {
            let ui = serve_console_apart(c, ui_listener, &limits, &metrics, &stages)?;
            (None, Some(ui))
        }
        (c, _) => (c, None),
    };
    let main = Listener {
        listener,
        tls,
        limits,
        metrics,
    };
    serve_main(&config, main, console, rx.clone(), stop).await?;

    // One signal stops every stage; each is then waited for, in data-flow order.
    stages.cancel();
    if let Some(ui) = ui_server {
        let _ = ui.await;
    }
    running.stop(watcher, rx).await?;
    tracing::info!("hexwatch stopped");
    Ok(())
}

/// One daemon per SQLite database: the lock is held until `run` returns.
fn serve_lock(config: &Config) -> anyhow::Result<Option<hexwatch_storage::sqlite::ServeLock>> {
    Ok(match &config.storage.url {
        None => Some(hexwatch_storage::sqlite::ServeLock::take(
            &config.storage.path,
        )?),
        Some(_) => None,
    })
}

/// The main listener and what serving it takes.
struct Listener {
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: server::ConnLimits,
    metrics: Arc<Metrics>,
}

/// Serves ingest on the main listener, with the console beside it when it
/// has no listener of its own, until `stop`.
async fn serve_main(
    config: &Config,
    main: Listener,
    console: Option<Arc<Console>>,
    rx: Arc<Receiver>,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let Listener {
        listener,
        tls,
        limits,
        metrics,
    } = main;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let addr = listener.local_addr()?;
    announce(config, scheme, addr);
    if console.is_some() {
        tracing::info!("console on {scheme}://{addr}/ui");
    }
    match console {
        Some(c) => {
            let trust = Arc::new(server::AnyOf(vec![rx.clone(), c.clone()]));
            let routes = console::routes(c).or(receiver::routes(rx)).unify();
            server::serve(listener, tls, routes, trust, limits, metrics, stop).await;
        }
        None => {
            let routes = receiver::routes(rx.clone());
            server::serve(listener, tls, routes, rx, limits, metrics, stop).await;
        }
    }
    Ok(())
}

/// Resolves on the shutdown signal, or when any stage stopped everything.
async fn stopped(shutdown: Pin<Box<dyn Future<Output = ()> + Send>>, stages: CancellationToken) {
    tokio::select! {
        _ = shutdown => {}
        _ = stages.cancelled() => {}
    }
}

/// The line an operator looks for: what is listening where, on which
/// configuration.
fn announce(config: &Config, scheme: &str, addr: std::net::SocketAddr) {
    tracing::info!(
        version = crate::VERSION,
        config = %config.source.display(),
        rules = %config.rules.dir.display(),
        destinations = %destinations(config),
        "hexwatch listening on {scheme}://{addr}{}",
        config.ingest.path,
    );
}

/// Serves the console on a listener of its own (plain HTTP, e.g. on a
/// private interface) until the stages stop.
fn serve_console_apart(
    console: Arc<Console>,
    listener: TcpListener,
    limits: &server::ConnLimits,
    metrics: &Arc<Metrics>,
    stages: &CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    tracing::info!("console on http://{}/ui", listener.local_addr()?);
    let trust = console.clone();
    let routes = console::routes(console)
        .recover(|_| async { Ok::<_, std::convert::Infallible>(receiver::not_found()) })
        .unify();
    Ok(tokio::spawn(server::serve(
        listener,
        None,
        routes,
        trust,
        limits.clone(),
        metrics.clone(),
        stages.clone().cancelled_owned(),
    )))
}

/// The TLS acceptor of the main listener: files that are watched for
/// renewal, or certificates from ACME; none for plain HTTP.
fn tls_acceptor(
    config: &Config,
    stages: &CancellationToken,
) -> anyhow::Result<Option<tokio_rustls::TlsAcceptor>> {
    Ok(match &config.server.tls {
        Some(files) => {
            let current = tls::CurrentCert::new(tls::load(&files.cert, &files.key)?);
            tokio::spawn(tls::watch(
                current.clone(),
                files.cert.clone(),
                files.key.clone(),
                files.reload_every,
                stages.clone(),
            ));
            Some(tls::acceptor(current)?)
        }
        None => match &config.server.acme {
            Some(acme) => Some(tls::acme(acme, stages.clone())?),
            None => None,
        },
    })
}

/// The console's own listener, when it has one: bound up front, so a bad
/// address stops the start before any stage runs.
async fn bind_ui_listener(config: &Config) -> anyhow::Result<Option<TcpListener>> {
    let Some(addr) = config.ui.as_ref().and_then(|u| u.listen) else {
        return Ok(None);
    };
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!(
            "{}: ui.listen: cannot listen on {addr}: {e}",
            config.source.display()
        )
    })?;
    Ok(Some(listener))
}

/// The console, when configured (built off the async threads: it opens
/// storage sessions).
async fn start_console(
    config: &Config,
    storage: Storage,
    rules: SharedRules,
    health: &Arc<Health>,
    metrics: &Arc<Metrics>,
    tls: bool,
) -> anyhow::Result<Option<Arc<Console>>> {
    let Some(ui) = &config.ui else {
        return Ok(None);
    };
    // Cookies are `Secure` when the console is served over TLS.
    let secure = ui.listen.is_none() && tls;
    let (ui, health, metrics) = (ui.clone(), health.clone(), metrics.clone());
    let console = tokio::task::spawn_blocking(move || {
        Console::new(&ui, &storage, rules, health, metrics, secure)
    })
    .await??;
    Ok(Some(console))
}

/// The stages that use storage, running (the journal's handle goes to the
/// receiver).
struct Running {
    writer: crate::journal::WriterThread,
    dispatcher: Dispatcher,
    evaluator: Evaluator,
    pruner: tokio::task::JoinHandle<()>,
    checkpointer: Option<hexwatch_storage::sqlite::Checkpointer>,
}

impl Running {
    /// Waits for every stage, in data-flow order, once the stop signal is given.
    async fn stop(self, watcher: Option<RuleWatcher>, rx: Arc<Receiver>) -> anyhow::Result<()> {
        let _ = self.pruner.await;
        // Stop evaluating (the rest resumes from the cursor on the next start).
        let evaluator = self.evaluator;
        tokio::task::spawn_blocking(move || {
            evaluator.stop();
            if let Some(w) = watcher {
                w.stop();
            }
        })
        .await?;
        self.dispatcher.stop().await;
        // The routes held the last handles to the journal: once they are gone the
        // writer commits what is queued and stops.
        // (A connection still open after the grace period keeps a handle; its
        // acknowledged records are committed already, so do not wait for it forever.)
        drop(rx);
        let writer = self.writer;
        let joined = tokio::task::spawn_blocking(move || writer.join());
        if tokio::time::timeout(Duration::from_secs(5), joined)
            .await
            .is_err()
        {
            tracing::warn!("journal writer still busy at exit");
        }
        if let Some(c) = self.checkpointer {
            tokio::task::spawn_blocking(move || c.stop()).await?;
        }
        Ok(())
    }
}

/// The configured destinations as `name (type)`, for the startup log (no URLs:
/// a webhook URL can carry a token).
fn destinations(config: &Config) -> String {
    if config.destinations.is_empty() {
        return "none".into();
    }
    let names: Vec<String> = config
        .destinations
        .iter()
        .map(|d| format!("{} ({})", d.name, d.type_name()))
        .collect();
    names.join(", ")
}

/// Opens the storage (migrating its schema) and starts the journal writer, the
/// delivery workers, the evaluator and the pruner.
/// Blocking: called off the async threads.
fn start_stages(
    config: &Config,
    rules: SharedRules,
    health: &Arc<Health>,
    metrics: &Arc<Metrics>,
    stages: &CancellationToken,
) -> anyhow::Result<(Journal, Running, Storage)> {
    let storage = Storage::open(&config.storage).with_context(|| match &config.storage.url {
        Some(url) => format!("cannot open the PostgreSQL storage {}", url.url),
        None => format!("cannot open the database {}", config.storage.path.display()),
    })?;
    tracing::info!(storage = %storage.describe(), "storage open");
    // Before the stages open their sessions: they leave checkpoints to it.
    let checkpointer = storage.start_checkpointer()?;
    let (journal, writer) = Journal::open(&storage).context("cannot open the journal")?;
    let wake = Arc::new(tokio::sync::Notify::new());
    let dispatcher = Dispatcher::start(
        &storage,
        &config.destinations,
        &config.delivery,
        wake.clone(),
        metrics.clone(),
        stages,
    )?;
    let evaluator = Evaluator::start(
        &storage,
        config,
        EvaluatorSettings {
            wake,
            health: health.clone(),
            metrics: metrics.clone(),
        },
        rules,
        journal.committed(),
        stages,
    )?;
    let pruner = spawn_pruner(
        &storage,
        config.storage.retention,
        health.clone(),
        metrics.clone(),
        stages.clone(),
    )?;
    Ok((
        journal,
        Running {
            writer,
            dispatcher,
            evaluator,
            pruner,
            checkpointer,
        },
        storage,
    ))
}

/// Makes the storage directory private, then resolves the ingest secret (from
/// the environment, else generated into that directory).
fn private_storage_and_secret(config: &Config) -> anyhow::Result<(IngestSecrets, SecretSource)> {
    // Private storage first: the generated secret and the database go there.
    match hexwatch_storage::sqlite::ensure_private(&config.storage.path) {
        Ok(Some(warning)) => tracing::warn!("{warning}"),
        Ok(None) => {}
        Err(e) => {
            return Err(anyhow::anyhow!(
                "cannot create the database {} with private permissions: {e}",
                config.storage.path.display()
            ))
        }
    }
    let (secrets, source) = IngestSecrets::resolve(
        &config.ingest.auth_secret_env,
        config.ingest.secret.as_deref(),
        config.ingest.previous_secret.as_deref(),
        config.storage.dir(),
    )
    .with_context(|| {
        format!(
            "cannot read or create the ingest secret in {}",
            config.storage.dir().display()
        )
    })?;
    match &source {
        SecretSource::Env(var) => tracing::info!(
            previous = secrets.has_previous(),
            "ingest secret taken from ${var}"
        ),
        SecretSource::File { path, created } => tracing::warn!(
            file = %path.display(),
            created,
            "{} is not set: using the generated ingest secret stored in {}; enter it in Hex as the auth header value",
            config.ingest.auth_secret_env,
            path.display()
        ),
    }

    Ok((secrets, source))
}

/// Loads the rules before serving, then follows edits (when `hot_reload`).
fn start_rules(
    config: &Config,
    health: &Arc<Health>,
    metrics: &Arc<Metrics>,
    stages: &CancellationToken,
) -> anyhow::Result<(SharedRules, Option<RuleWatcher>)> {
    let mut loader = config.rules_loader(Some(metrics.clone() as Arc<dyn CounterRegistry>), true);
    let first = loader.scan().with_context(|| {
        format!(
            "rules.dir: cannot read the rules directory {}",
            config.rules.dir.display()
        )
    })?;
    let rules: SharedRules = Arc::new(ArcSwap::from_pointee(RuleSet::default()));
    hot_reload::publish(first, &rules, health, metrics);
    health.set_rules_loaded();
    let watcher = if config.rules.hot_reload {
        Some(
            RuleWatcher::start(
                loader,
                rules.clone(),
                health.clone(),
                metrics.clone(),
                stages,
            )
            .context("cannot watch the rules directory")?,
        )
    } else {
        None
    };

    Ok((rules, watcher))
}

/// Prunes on its own session, opened once at start: opening one later could
/// create a fresh, empty SQLite database where the real one was deleted, hiding
/// the loss (the journal refuses to acknowledge instead). On shared storage
/// only the replica holding the evaluator lease prunes.
/// How often a replica without the evaluator lease checks whether it has it
/// now, to prune.
const LEASE_RECHECK: Duration = Duration::from_secs(1);

fn spawn_pruner(
    storage: &Storage,
    retention: Duration,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let session = Arc::new(parking_lot::Mutex::new(
        storage
            .session(Role::Derived)
            .context("opening the storage for pruning")?,
    ));
    let (storage, shared) = (storage.clone(), storage.shared());
    Ok(tokio::spawn(async move {
        let mut due = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {}
                _ = stop.cancelled() => break,
            }
            if shared && !health.readiness().evaluator {
                // Only the lease holder prunes. This replica may take the lease
                // any moment (at start, or when the holder dies): look again
                // soon rather than a whole period later.
                due = tokio::time::Instant::now() + LEASE_RECHECK;
                continue;
            }
            due = tokio::time::Instant::now() + PRUNE_EVERY;
            let (session, storage) = (session.clone(), storage.clone());
            let result = tokio::task::spawn_blocking(move || {
                let mut session = session.lock();
                if session.is_broken() {
                    *session = storage.session(Role::Derived)?;
                }
                session.prune(retention)
            })
            .await;
            match result {
                Ok(Ok(p)) => {
                    let counts = [
                        ("events", p.events),
                        ("quarantine", p.quarantine),
                        ("alerts", p.alerts),
                        ("state", p.state),
                    ];
                    for (table, n) in counts {
                        metrics
                            .pruned_rows
                            .get_or_create(&vec![("table", table.to_string())])
                            .inc_by(n as u64);
                    }
                    if counts.iter().any(|(_, n)| *n > 0) {
                        tracing::info!(
                            events = p.events,
                            quarantine = p.quarantine,
                            alerts = p.alerts,
                            state = p.state,
                            "pruned rows past the retention period"
                        );
                    }
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "pruning failed; will retry"),
                Err(e) => tracing::warn!(error = %e, "pruning task failed"),
            }
        }
    }))
}
