//! The evaluation stage of the daemon: follows the journal from its cursor,
//! evaluates each record against the current rule set, and applies the matches to
//! the alert windows. A batch is evaluated in memory into its
//! [`Effects`] — rule state, alert windows, outbox rows and the new cursor —
//! which the storage writes in one transaction, so a crash re-evaluates exactly
//! the unfinished batch and never skips or double-counts a record, and
//! evaluation never holds a write lock that ingestion needs.
//!
//! On shared storage (PostgreSQL) only the replica holding the evaluator lease
//! evaluates; the others stand by and take over, from the committed cursor, when
//! it goes away. It runs on its own thread and never blocks ingestion: the
//! journal is the queue.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::alerts::{AlertCache, AlertWindows, BatchAlerts, Window};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::rules::engine;
use crate::rules::eval::{Match, RuleRunner};
use crate::rules::watch::SharedRules;
use crate::state::EvalState;
use crate::storage::{Effects, Role, Storage, StorageError, StoredRecord, EVALUATOR};
use crate::worker::{StopFlag, Worker};

/// Records per transaction.
const BATCH: usize = 500;
/// Rule state (entries, bytes) a batch may write before it is committed early.
const MAX_PENDING_STATE: (usize, usize) = (20_000, 4 << 20);
/// How often a replica without the lease asks for it again.
const STANDBY_POLL: Duration = Duration::from_millis(500);

/// What the evaluator needs besides the rules and storage.
pub struct EvaluatorSettings {
    pub max_operations: u64,
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
        settings: EvaluatorSettings,
        rules: SharedRules,
        windows: AlertWindows,
        committed: watch::Receiver<i64>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Evaluator> {
        let state = Arc::new(EvalState::new(storage.session(Role::Derived)?));
        let runner = RuleRunner::new(
            engine::build(settings.max_operations, state.clone()),
            state.clone(),
        );
        let handle = tokio::runtime::Handle::current();
        let mut stage = Stage {
            storage: storage.clone(),
            state,
            runner,
            rules,
            windows,
            settings,
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
    state: Arc<EvalState>,
    runner: RuleRunner,
    rules: SharedRules,
    windows: AlertWindows,
    settings: EvaluatorSettings,
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
            let from = match cursor {
                Some(c) => c,
                None => match self.take_lease() {
                    Ok(Some(c)) => {
                        cursor = Some(c);
                        c
                    }
                    Ok(None) => {
                        wait(&mut committed, STANDBY_POLL);
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
            let batch = match self.state.with_session(|s| s.read_after(from, BATCH)) {
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
                // Wait for the next commit here (other replicas' commits are seen
                // by polling), or a stop.
                wait(&mut committed, Duration::from_millis(250));
                continue;
            }
            match self.evaluate_batch(from, &batch) {
                Ok(last) => cursor = Some(last),
                Err(StorageError::LeaseLost) => {
                    tracing::warn!("another replica evaluates now; standing by");
                    self.settings.health.set_evaluator(false);
                    cursor = None;
                }
                Err(e) => {
                    tracing::error!(error = %e, "evaluation batch failed; it will be retried");
                    if self.reconnect_after(&e) {
                        cursor = None;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
            if let Some(c) = cursor {
                self.settings
                    .metrics
                    .evaluator_lag
                    .set((*committed.borrow() - c).max(0));
            }
        }
        tracing::info!(?cursor, "evaluator stopped");
    }

    /// Takes the evaluator lease if it is free; returns the committed cursor to
    /// resume from when this replica holds it.
    fn take_lease(&mut self) -> Result<Option<i64>, StorageError> {
        let leased = self.state.with_session(|s| s.try_lease())?;
        self.settings.health.set_evaluator(leased);
        if !leased {
            return Ok(None);
        }
        let cursor = self.state.with_session(|s| s.cursor(EVALUATOR))?;
        // A former lease holder may have written since this replica last read:
        // nothing read or learned before counts.
        self.state.reset();
        self.runner.forget_learned();
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
        if !self.state.with_session(|s| s.is_broken()) {
            return false;
        }
        tracing::warn!(error = %e, "the storage connection is gone; reconnecting");
        self.settings.health.set_evaluator(false);
        match self.storage.session(Role::Derived) {
            Ok(s) => self.state.replace_session(s),
            Err(e) => tracing::error!(error = %e, "cannot reconnect to the storage"),
        }
        self.runner.forget_learned();
        true
    }

    /// Evaluates a batch in memory into its effects, then has the storage write
    /// them in one transaction. Stops early when the rule state written grows
    /// past [`MAX_PENDING_STATE`], so the commit stays short; returns the last
    /// sequence number done.
    fn evaluate_batch(&mut self, from: i64, batch: &[StoredRecord]) -> Result<i64, StorageError> {
        let rules = self.rules.load_full();
        self.state.with_session(|s| s.begin_read())?;
        let mut cache = AlertCache::default();
        let mut created: Vec<Window> = Vec::new();
        let mut matches: Vec<Match> = Vec::new();
        let mut latest_ms = i64::MIN;
        // Wall-clock time only stamps `createdAt` of the alerts this batch creates.
        let now_ms = crate::storage::now_ms();
        let mut last = from;
        let evaluated = (|| -> anyhow::Result<()> {
            for rec in batch {
                let (entries, bytes) = self.state.pending();
                if entries > MAX_PENDING_STATE.0 || bytes > MAX_PENDING_STATE.1 {
                    break;
                }
                last = rec.seq;
                matches.clear();
                let event_ms = rec.event_ms();
                latest_ms = latest_ms.max(event_ms);
                self.runner
                    .evaluate_json(&rules, &rec.action, &rec.json, event_ms, &mut matches);
                if matches.is_empty() {
                    continue;
                }
                let record: serde_json::Value = serde_json::from_str(&rec.json)?;
                let windows = &self.windows;
                self.state.with_session(|session| {
                    let mut store = BatchAlerts {
                        session,
                        cache: &mut cache,
                    };
                    windows.apply_all(
                        &mut store,
                        &matches,
                        event_ms,
                        &record,
                        now_ms,
                        &mut created,
                    )
                })?;
            }
            Ok(())
        })();
        if let Err(e) = evaluated {
            self.state.discard();
            self.runner.forget_learned();
            return Err(StorageError::Other(e.to_string()));
        }

        let effects = Effects {
            state: self.state.take_writes(),
            windows: cache.into_windows(),
            deliveries: created
                .iter()
                .map(|w| (w.alert.alert_id.clone(), w.alert.destinations.clone()))
                .collect(),
            from_cursor: from,
            to_cursor: last,
            evaluated_ms: latest_ms,
        };
        if let Err(e) = self.state.with_session(|s| s.commit(&effects)) {
            // The batch's state writes are gone: learning must not think otherwise.
            self.runner.forget_learned();
            return Err(e);
        }
        self.state.committed(&effects.state);
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
                destinations = ?a.destinations,
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
