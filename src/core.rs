//! The evaluation core, one for `serve` and `replay`: a batch of journal
//! records → its [`Effects`] (rule state, alert windows, created alerts with
//! their outbox rows, the new cursor), computed in memory against what the
//! storage has committed, then written by one transactional
//! [`Session::commit`]. The wall clock comes in
//! as an argument (it only stamps `createdAt`), so both commands give the same
//! alerts for the same records.

use std::sync::Arc;

use crate::alerts::{
    AlertCache, AlertWindows, BatchAlerts, CommittedWindows, Router, Sample, Window,
};
use crate::config::Config;
use crate::rules::engine;
use crate::rules::eval::{Match, MatchKind, RuleRunner};
use crate::rules::ruleset::RuleSet;
use crate::state::EvalState;
use crate::storage::{Effects, Session, StorageError, StoredRecord};

/// Rule state (entries, bytes) a batch may write before it is committed early.
const MAX_PENDING_STATE: (usize, usize) = (20_000, 4 << 20);

/// What evaluation found, for `replay`'s summary.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub matches: usize,
    pub rule_errors: usize,
}

/// Rules, rule state and alert windows over one storage session.
pub struct Core {
    state: Arc<EvalState>,
    runner: RuleRunner,
    windows: AlertWindows,
    committed_windows: CommittedWindows,
    pub counts: Counts,
}

/// One evaluated batch: its effects and the windows whose alert it created.
pub struct Evaluated {
    pub effects: Effects,
    pub created: Vec<Window>,
}

impl Core {
    /// The core for `config` (its rule limits and destinations) on `session`.
    pub fn new(config: &Config, session: Box<dyn Session>) -> Core {
        let state = Arc::new(EvalState::new(session));
        Core {
            runner: RuleRunner::new(
                engine::build(config.rules.max_operations, state.clone()),
                state.clone(),
            ),
            state,
            windows: AlertWindows::new(Router::from_config(config)),
            committed_windows: CommittedWindows::default(),
            counts: Counts::default(),
        }
    }

    /// Runs `f` on the session (journal reads, the lease, reconnecting).
    pub fn with_session<T>(&self, f: impl FnOnce(&mut dyn Session) -> T) -> T {
        self.state.with_session(f)
    }

    /// Replaces a broken session; nothing read or learned before counts.
    pub fn replace_session(&mut self, session: Box<dyn Session>) {
        self.state.replace_session(session);
        self.forget();
    }

    /// Forgets what was read or learned (another evaluator may have written).
    pub fn reset(&mut self) {
        self.state.reset();
        self.forget();
    }

    /// Forgets what rules learned and the windows remembered as committed.
    fn forget(&mut self) {
        self.runner.forget_learned();
        self.committed_windows.clear();
    }

    /// Evaluates the records of `batch` (which follow cursor `from`) into their
    /// effects, writing nothing; a record's tree is freed once evaluated. Stops early when the rule state written grows
    /// past `MAX_PENDING_STATE`, so the commit stays short: `to_cursor` says
    /// how far it got.
    pub fn evaluate(
        &mut self,
        rules: &RuleSet,
        from: i64,
        batch: &mut [StoredRecord],
        now_ms: i64,
    ) -> Result<Evaluated, StorageError> {
        self.state.with_session(|s| s.begin_read())?;
        let mut cache = AlertCache::default();
        let mut created: Vec<Window> = Vec::new();
        let mut matches: Vec<Match> = Vec::new();
        let mut latest_ms = i64::MIN;
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
                self.runner.evaluate_json(
                    rules,
                    &rec.action,
                    &rec.json,
                    rec.tree.take().as_ref(),
                    event_ms,
                    &mut matches,
                );
                if matches.is_empty() {
                    continue;
                }
                for m in &matches {
                    match m.kind {
                        MatchKind::Rule => self.counts.matches += 1,
                        MatchKind::RuleError => self.counts.rule_errors += 1,
                    }
                }
                let windows = &self.windows;
                let committed = &mut self.committed_windows;
                self.state.with_session(|session| {
                    let mut store = BatchAlerts {
                        session,
                        cache: &mut cache,
                        committed,
                    };
                    windows.apply_all(
                        &mut store,
                        &matches,
                        event_ms,
                        &Sample::Json(&rec.json),
                        now_ms,
                        &mut created,
                    )
                })?;
            }
            Ok(())
        })();
        if let Err(e) = evaluated {
            self.discard();
            return Err(StorageError::Other(e.to_string()));
        }
        Ok(Evaluated {
            effects: Effects {
                state: self.state.take_writes(),
                windows: cache.into_windows(),
                deliveries: created
                    .iter()
                    .map(|w| (w.alert.alert_id.clone(), w.alert.destinations.clone()))
                    .collect(),
                from_cursor: from,
                to_cursor: last,
                evaluated_ms: latest_ms,
            },
            created,
        })
    }

    /// Writes a batch's effects in one transaction and returns the cursor
    /// after it. When that fails, what the batch learned is forgotten with
    /// them: the batch will be evaluated again.
    pub fn commit(&mut self, effects: Effects) -> Result<i64, StorageError> {
        match self.state.with_session(|s| s.commit(&effects)) {
            Ok(()) => {
                self.state.committed(&effects.state);
                self.committed_windows.committed(effects.windows);
                Ok(effects.to_cursor)
            }
            Err(e) => {
                self.forget();
                Err(e)
            }
        }
    }

    /// Drops a batch evaluated but not committed.
    fn discard(&mut self) {
        self.state.discard();
        self.forget();
    }

    /// Evaluates and commits everything after the committed cursor (`replay`).
    pub fn catch_up(&mut self, rules: &RuleSet, batch_size: usize) -> Result<(), StorageError> {
        while self.step(rules, batch_size)? {}
        Ok(())
    }

    /// Evaluates and commits at most `batch_size` records after the committed
    /// cursor; false when there were none. `replay` takes one step per batch
    /// journaled, so the reader may run a few batches ahead instead of waiting
    /// for the evaluation to drain the journal.
    pub fn step(&mut self, rules: &RuleSet, batch_size: usize) -> Result<bool, StorageError> {
        let cursor = self
            .state
            .with_session(|s| s.cursor(crate::storage::EVALUATOR))?;
        let mut batch = self
            .state
            .with_session(|s| s.read_after(cursor, batch_size))?;
        if batch.is_empty() {
            return Ok(false);
        }
        let done = self.evaluate(rules, cursor, &mut batch, crate::storage::now_ms())?;
        self.commit(done.effects)?;
        Ok(true)
    }
}
