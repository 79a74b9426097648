//! The evaluation stage of the daemon: follows the journal from its cursor,
//! evaluates each record against the current rule set, and applies the matches to
//! the alert windows. A batch is evaluated in memory, then its effects — rule
//! state, alert windows, outbox rows and the cursor — are written in one short
//! transaction, so a crash re-evaluates exactly the unfinished batch and never
//! skips or double-counts a record, and evaluation never holds the database's
//! write lock that ingestion needs.
//!
//! It runs on its own thread and never blocks ingestion: the journal is the queue.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::watch;

use crate::alerts::{AlertCache, AlertWindows, BatchAlerts, Window};
use crate::journal::{self, StoredRecord};
use crate::metrics::Metrics;
use crate::rules::engine;
use crate::rules::eval::{Match, RuleRunner};
use crate::rules::watch::SharedRules;
use crate::store::SqliteState;
use crate::worker::{StopFlag, Worker};
use tokio_util::sync::CancellationToken;

/// The evaluator's cursor name in the `cursors` table.
pub const CURSOR: &str = "evaluator";
/// Records per transaction.
const BATCH: usize = 500;
/// Rule state (entries, bytes) a batch may write before it is committed early.
const MAX_PENDING_STATE: (usize, usize) = (20_000, 4 << 20);

/// Receives alerts as they are created, inside the evaluator's transaction
/// (the delivery outbox writes its rows here).
pub trait AlertSink: Send {
    fn created(&mut self, conn: &Connection, window: &Window) -> anyhow::Result<()>;
    /// Called after the transaction holding `created` rows has committed.
    fn committed(&mut self) {}
}

pub struct EvaluatorSettings {
    pub db_path: PathBuf,
    pub max_operations: u64,
}

/// The running evaluator thread.
pub struct Evaluator(Worker);

impl Evaluator {
    pub fn start(
        settings: EvaluatorSettings,
        rules: SharedRules,
        windows: AlertWindows,
        sink: Box<dyn AlertSink>,
        committed: watch::Receiver<i64>,
        metrics: Arc<Metrics>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Evaluator> {
        let conn = crate::db::open_and_migrate(&settings.db_path)?;
        crate::db::relax_sync(&conn)?;
        let state = Arc::new(SqliteState::new(
            conn,
            crate::db::write_gate(&settings.db_path),
        ));
        let runner = RuleRunner::new(
            engine::build(settings.max_operations, state.clone()),
            state.clone(),
        );
        let handle = tokio::runtime::Handle::current();
        let mut stage = Stage {
            state,
            runner,
            rules,
            windows,
            sink,
            metrics,
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
    state: Arc<SqliteState>,
    runner: RuleRunner,
    rules: SharedRules,
    windows: AlertWindows,
    sink: Box<dyn AlertSink>,
    metrics: Arc<Metrics>,
}

impl Stage {
    fn run(
        &mut self,
        mut committed: watch::Receiver<i64>,
        handle: tokio::runtime::Handle,
        stop: StopFlag,
    ) {
        let mut cursor = match self.state.with_conn(|c| journal::cursor(c, CURSOR)) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "evaluator cannot read its cursor; not evaluating");
                return;
            }
        };
        tracing::info!(cursor, "evaluator started");
        while !stop.stopped() {
            let batch = match self
                .state
                .with_conn(|c| journal::read_after(c, cursor, BATCH))
            {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "evaluator cannot read the journal; retrying");
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            };
            if batch.is_empty() {
                // Wait for the next commit (or poll, so a stop is seen promptly).
                handle.block_on(async {
                    let _ =
                        tokio::time::timeout(Duration::from_millis(250), committed.changed()).await;
                });
                continue;
            }
            match self.evaluate_batch(&batch) {
                Ok(last) => cursor = last,
                Err(e) => {
                    tracing::error!(error = %e, "evaluation batch failed; it will be retried");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
            self.metrics
                .evaluator_lag
                .set((*committed.borrow() - cursor).max(0));
        }
        tracing::info!(cursor, "evaluator stopped");
    }

    /// Evaluates a batch in memory, then writes its effects (rule state, alert
    /// windows, outbox rows, cursor) in one short transaction. Stops early when
    /// the rule state written grows past [`MAX_PENDING_STATE`], so the commit
    /// stays short; returns the last sequence number done.
    fn evaluate_batch(&mut self, batch: &[StoredRecord]) -> anyhow::Result<i64> {
        let rules = self.rules.load_full();
        self.state.begin_read()?;
        let mut cache = AlertCache::default();
        let mut created: Vec<Window> = Vec::new();
        let mut matches: Vec<Match> = Vec::new();
        let mut latest_ms = i64::MIN;
        // Wall-clock time only stamps `createdAt` of the alerts this batch creates.
        let now_ms = crate::db::now_ms();
        let mut last = 0;
        let evaluated = (|| -> anyhow::Result<()> {
            for rec in batch {
                last = rec.seq;
                let (entries, bytes) = self.state.pending();
                if entries > MAX_PENDING_STATE.0 || bytes > MAX_PENDING_STATE.1 {
                    last -= 1;
                    break;
                }
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
                self.state.with_conn(|c| {
                    let mut store = BatchAlerts {
                        conn: c,
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
            return Err(e);
        }

        let sink = &mut self.sink;
        let committed = self.state.commit(|conn| {
            cache.write(conn)?;
            for w in &created {
                sink.created(conn, w)?;
            }
            journal::set_cursor(conn, CURSOR, last)?;
            journal::raise_watermark(conn, journal::EVALUATED, latest_ms)?;
            Ok(())
        });
        if let Err(e) = committed {
            // The batch's state writes are gone: learning must not think otherwise.
            self.runner.forget_learned();
            return Err(e);
        }
        self.sink.committed();
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
            self.metrics
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
