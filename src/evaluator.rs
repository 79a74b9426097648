//! The evaluation stage of the daemon: follows the journal from its cursor,
//! evaluates each record against the current rule set, and applies the matches to
//! the alert windows. A batch is evaluated in memory into its
//! `Effects` — rule state, alert windows, outbox rows and the new cursor —
//! which the storage writes in one transaction, so a crash re-evaluates exactly
//! the unfinished batch and never skips or double-counts a record, and
//! evaluation never holds a write lock that ingestion needs.
//!
//! On shared storage (PostgreSQL) only the replica holding the evaluator lease
//! evaluates; the others stand by and take over, from the committed cursor, when
//! it goes away. It runs on its own thread and never blocks ingestion: the
//! journal is the queue.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::evaluation::Core;
use crate::health::Health;
use crate::hot_reload::SharedRules;
use crate::incidents::notifier::Notifier;
use crate::metrics::Metrics;
use crate::stage_thread::{StopFlag, Worker};
use hexwatch_storage::{Role, Storage, StorageError, StoredRecord, EVALUATOR};

/// Records read and evaluated at most per transaction. When the evaluator is
/// behind, large batches share one commit (and its wait for the journal's
/// write turn) among many records; when it keeps up, batches are what arrived.
const BATCH: usize = 4000;
/// How often a replica without the lease asks for it again.
const STANDBY_POLL: Duration = Duration::from_millis(500);
/// How often the lease holder renews its lease when it has nothing to commit
/// (well within the lease's length on PostgreSQL).
const RENEW_EVERY: Duration = Duration::from_secs(2);
/// How often every replica measures the journal's head against the cursor.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// Records waiting this long with no evaluation are logged as an outage.
const STALL_LOGGED: Duration = Duration::from_secs(30);

/// Where the evaluator reports.
pub struct EvaluatorSettings {
    /// Woken after a commit that created alerts (the delivery workers).
    pub wake: Arc<Notify>,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
}

/// The running evaluator thread.
pub struct Evaluator(Worker);

impl Evaluator {
    pub fn start(
        storage: &Storage,
        config: &Config,
        settings: EvaluatorSettings,
        rules: SharedRules,
        committed: watch::Receiver<i64>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Evaluator> {
        let core = Core::new(config, storage.session(Role::Derived)?);
        let handle = tokio::runtime::Handle::current();
        let mut stage = Stage {
            storage: storage.clone(),
            core,
            rules,
            settings,
            progress: Progress::default(),
            notifier: Notifier {
                config: config.incidents.clone(),
                external_url: config.ui.as_ref().and_then(|u| u.external_url.clone()),
            },
            next_notice: Instant::now(),
        };
        Ok(Evaluator(Worker::spawn(
            "evaluator",
            shutdown,
            move |stop| stage.run(committed, handle, stop),
        )))
    }

    /// Stops after the batch in progress.
    pub fn stop(self) {
        self.0.stop();
    }
}

struct Stage {
    storage: Storage,
    core: Core,
    rules: SharedRules,
    settings: EvaluatorSettings,
    progress: Progress,
    notifier: Notifier,
    /// When due incident notifications are next looked for.
    next_notice: Instant,
}

/// How often the lease holder looks for incident notifications that fell due.
const NOTICES_EVERY: Duration = Duration::from_millis(500);

/// The cluster's evaluation as this replica last measured it.
struct Progress {
    next_check: Instant,
    cursor: i64,
    /// When the cursor last moved, or nothing waited.
    moved_at: Instant,
    logged: bool,
    /// When the lease was last taken or renewed.
    renewed_at: Instant,
}

impl Default for Progress {
    fn default() -> Self {
        let now = Instant::now();
        Progress {
            next_check: now,
            cursor: 0,
            moved_at: now,
            logged: false,
            renewed_at: now,
        }
    }
}

impl Stage {
    fn run(
        &mut self,
        mut committed: watch::Receiver<i64>,
        handle: tokio::runtime::Handle,
        stop: StopFlag,
    ) {
        // The cursor while this replica holds the lease.
        let mut cursor: Option<i64> = None;
        let wait = |committed: &mut watch::Receiver<i64>, d: Duration| {
            handle.block_on(async {
                let _ = tokio::time::timeout(d, committed.changed()).await;
            })
        };
        while !stop.stopped() {
            self.check_progress();
            cursor = cursor.filter(|_| self.still_leased());
            let from = match cursor {
                Some(c) => c,
                None => match self.take_lease() {
                    Ok(Some(c)) => {
                        cursor = Some(c);
                        c
                    }
                    Ok(None) => {
                        // Not woken by this replica's commits: a standby asks
                        // for the lease at its own pace.
                        std::thread::sleep(STANDBY_POLL);
                        continue;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "evaluator cannot reach the storage; retrying");
                        self.reconnect_after(&e);
                        std::thread::sleep(Duration::from_secs(1));
                        continue;
                    }
                },
            };
            self.notify_due(false);
            let mut batch = match self.core.with_session(|s| s.read_after(from, BATCH)) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "evaluator cannot read the journal; retrying");
                    if self.reconnect_after(&e) {
                        cursor = None;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            };
            if batch.is_empty() {
                // Wait for the next commit (other replicas' are seen by polling).
                wait(&mut committed, Duration::from_millis(250));
                continue;
            }
            match self.evaluate_batch(from, &mut batch) {
                Ok(last) => {
                    cursor = Some(last);
                    self.notify_due(true);
                }
                Err(StorageError::LeaseLost) => {
                    tracing::warn!("another replica evaluates now; standing by");
                    self.settings.health.set_evaluator(false);
                    cursor = None;
                }
                Err(e) => {
                    if e.is_transient() {
                        tracing::warn!(error = %e, "evaluation batch interrupted; it will be evaluated again");
                    } else {
                        tracing::error!(error = %e, "evaluation batch failed; it will be retried");
                    }
                    if self.reconnect_after(&e) {
                        cursor = None;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
        tracing::info!(cursor = cursor.unwrap_or(-1), "evaluator stopped");
    }

    /// Makes the incident notifications that fell due (at most every
    /// [`NOTICES_EVERY`], or `now` after a batch that may have made one due
    /// at once) and wakes the delivery workers when it made any. Failures
    /// are logged: the next pass tries again.
    fn notify_due(&mut self, now: bool) {
        let at = Instant::now();
        if !now && at < self.next_notice {
            return;
        }
        self.next_notice = at + NOTICES_EVERY;
        let notifier = &self.notifier;
        let made = self
            .core
            .with_session(|s| notifier.run_due(s, hexwatch_storage::now_ms()));
        match made {
            Ok(0) => {}
            Ok(n) => {
                self.settings
                    .metrics
                    .incident_notifications
                    .inc_by(n as u64);
                self.settings.wake.notify_waiters();
            }
            Err(e) => {
                tracing::warn!(error = %e, "incident notifications not made yet; trying again");
                self.reconnect_after(&e);
            }
        }
    }

    /// Renews the lease when due; false when it is gone (another replica took
    /// it after this one stopped making progress, or the connection is gone).
    fn still_leased(&mut self) -> bool {
        if self.progress.renewed_at.elapsed() < RENEW_EVERY {
            return true;
        }
        match self.core.with_session(|s| s.try_lease()) {
            Ok(true) => {
                self.progress.renewed_at = Instant::now();
                true
            }
            Ok(false) => {
                tracing::warn!(
                    "the evaluator lease ran out and another replica holds it; standing by"
                );
                self.settings.health.set_evaluator(false);
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew the evaluator lease; taking it again");
                self.reconnect_after(&e);
                self.settings.health.set_evaluator(false);
                false
            }
        }
    }

    /// Measures, at most every [`PROGRESS_EVERY`], how far the cluster's
    /// evaluator is behind the journal's head and how long it has not moved
    /// with records waiting: a metric and `/readyz` on every replica, and an
    /// error in the log once it lasts [`STALL_LOGGED`]. Failures to measure
    /// are left to the evaluation path, which reports and reconnects.
    fn check_progress(&mut self) {
        let now = Instant::now();
        if now < self.progress.next_check {
            return;
        }
        self.progress.next_check = now + PROGRESS_EVERY;
        let measured = self
            .core
            .with_session(|s| Ok::<_, StorageError>((s.last_seq()?, s.cursor(EVALUATOR)?)));
        let Ok((head, cursor)) = measured else {
            return;
        };
        let p = &mut self.progress;
        let lag = (head - cursor).max(0);
        if lag == 0 || cursor != p.cursor {
            (p.cursor, p.moved_at) = (cursor, now);
            if p.logged {
                tracing::info!(cursor, lag, "evaluation moves again");
            }
            p.logged = false;
        }
        let stalled = now.duration_since(p.moved_at);
        if stalled >= STALL_LOGGED && !p.logged {
            p.logged = true;
            tracing::error!(
                lag,
                cursor,
                stalled_seconds = stalled.as_secs(),
                "no replica is evaluating: records wait in the journal and no alert can be raised"
            );
        }
        let stalled = stalled.as_secs() as i64;
        self.settings.metrics.evaluator_lag.set(lag);
        self.settings.metrics.evaluation_stalled.set(stalled);
        self.settings.health.set_evaluation(lag, stalled);
    }

    /// Takes the evaluator lease if it is free; returns the committed cursor to
    /// resume from when this replica holds it.
    fn take_lease(&mut self) -> Result<Option<i64>, StorageError> {
        let leased = self.core.with_session(|s| s.try_lease())?;
        self.settings.health.set_evaluator(leased);
        if !leased {
            return Ok(None);
        }
        self.progress.renewed_at = Instant::now();
        let cursor = self.core.with_session(|s| s.cursor(EVALUATOR))?;
        // A former lease holder may have written since this replica last read:
        // nothing read or learned before counts.
        self.core.reset();
        tracing::info!(
            cursor,
            storage = %self.storage.describe(),
            "evaluator lease held; evaluating from the committed cursor"
        );
        Ok(Some(cursor))
    }

    /// Opens a new session when the old one is broken (its lease is gone with
    /// it); returns whether it did.
    fn reconnect_after(&mut self, e: &StorageError) -> bool {
        if !self.core.with_session(|s| s.is_broken()) {
            return false;
        }
        tracing::warn!(error = %e, "the storage connection is gone; reconnecting");
        self.settings.health.set_evaluator(false);
        match self.storage.session(Role::Derived) {
            Ok(s) => self.core.replace_session(s),
            Err(e) => tracing::error!(error = %e, "cannot reconnect to the storage"),
        }
        true
    }

    /// Evaluates a batch into its effects and has the storage write them in
    /// one transaction; returns the last sequence number done.
    fn evaluate_batch(
        &mut self,
        from: i64,
        batch: &mut [StoredRecord],
    ) -> Result<i64, StorageError> {
        let rules = self.rules.load_full();
        let done = self
            .core
            .evaluate(&rules, from, batch, hexwatch_storage::now_ms())?;
        let silenced: Vec<String> = done
            .effects
            .silenced
            .iter()
            .filter_map(|(alert_id, _)| {
                let w = done
                    .created
                    .iter()
                    .find(|w| &w.alert.alert_id == alert_id)?;
                Some(w.alert.id.clone())
            })
            .collect();
        let last = self.core.commit(done.effects)?;
        for rule in silenced {
            let labels = vec![("rule", rule)];
            self.settings
                .metrics
                .alerts_silenced
                .get_or_create(&labels)
                .inc();
        }
        let created = done.created;
        if !created.is_empty() {
            self.settings.wake.notify_waiters();
        }
        for w in &created {
            let a = &w.alert;
            tracing::info!(
                alert_id = %a.alert_id,
                rule = %a.id,
                severity = %a.severity,
                title = %a.title,
                destinations = %a.destinations.join(","),
                "alert"
            );
            self.settings
                .metrics
                .alerts
                .get_or_create(&vec![
                    ("rule", a.id.clone()),
                    ("severity", a.severity.to_string()),
                ])
                .inc();
        }
        Ok(last)
    }
}
