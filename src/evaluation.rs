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
use crate::config::incidents::IncidentsConfig;
use crate::config::{Config, NotifyMode};
use crate::incidents::silence::Silences;
use crate::incidents::{IncidentBatch, Joining};
use hexwatch_rules::engine;
use hexwatch_rules::eval::{Match, MatchKind, RuleRunner};
use hexwatch_rules::ruleset::RuleSet;
use hexwatch_rules::state::EvalState;
use hexwatch_storage::{Effects, Session, StorageError, StoredRecord};

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
    incidents: IncidentsConfig,
    /// Destinations that take every alert on its own (`notify = "alert"`).
    per_alert: Vec<String>,
    silences: Silences,
    pub counts: Counts,
}

/// What a batch's created alerts bring besides their windows.
#[derive(Default)]
struct Routed {
    incidents: IncidentBatch,
    /// (alert id, destinations that take it on its own) of every created alert.
    deliveries: Vec<(String, Vec<String>)>,
    /// (alert id, silence id).
    silenced: Vec<(String, String)>,
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
            incidents: config.incidents.clone(),
            per_alert: config
                .destinations
                .iter()
                .filter(|d| d.notify == NotifyMode::Alert)
                .map(|d| d.name.clone())
                .collect(),
            silences: Silences::default(),
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
        self.silences.forget();
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
        let silences = &mut self.silences;
        self.state.with_session(|s| silences.refresh(s, now_ms))?;
        let mut routed = Routed::default();
        let mut cache = AlertCache::default();
        let mut created: Vec<Window> = Vec::new();
        let mut matches: Vec<Match> = Vec::new();
        let mut latest_ms = i64::MIN;
        let mut last = from;
        for rec in batch {
            let (entries, bytes) = self.state.pending();
            if entries > MAX_PENDING_STATE.0 || bytes > MAX_PENDING_STATE.1 {
                break;
            }
            last = rec.seq;
            matches.clear();
            let event_ms = rec.event_ms();
            let bounded = watermark_ms(event_ms, rec.received_at);
            if bounded < event_ms {
                tracing::warn!(seq = rec.seq, event_time = %rec.event_time,
                    "record dated more than an hour after it was received: evaluated at its own time, but it does not move the watermark that prunes rule state");
            }
            latest_ms = latest_ms.max(bounded);
            self.runner.evaluate_json(
                rules,
                &rec.action,
                &rec.json,
                rec.tree.take().as_ref(),
                event_ms,
                &mut matches,
            );
            // A state read that failed turned into an error inside a rule: its
            // verdict is unknown, so the batch is evaluated again rather than
            // committed with a RULE_ERROR in its place.
            if let Some(e) = self.state.take_failure() {
                self.discard();
                return Err(e);
            }
            let before = created.len();
            let applied = self
                .apply_matches(
                    &matches,
                    event_ms,
                    &rec.json,
                    now_ms,
                    &mut cache,
                    &mut created,
                )
                .and_then(|()| {
                    let new = &created[before..];
                    self.route(new, &matches, &rec.json, event_ms, now_ms, &mut routed)
                });
            if let Err(e) = applied {
                self.discard();
                return Err(e);
            }
        }
        Ok(Evaluated {
            effects: Effects {
                state: self.state.take_writes(),
                windows: cache.into_windows(),
                deliveries: routed.deliveries,
                incidents: routed.incidents.into_writes(),
                silenced: routed.silenced,
                from_cursor: from,
                to_cursor: last,
                evaluated_ms: latest_ms,
            },
            created,
        })
    }

    /// Counts a record's matches and applies them to their alert windows.
    fn apply_matches(
        &mut self,
        matches: &[Match],
        event_ms: i64,
        json: &str,
        now_ms: i64,
        cache: &mut AlertCache,
        created: &mut Vec<Window>,
    ) -> Result<(), StorageError> {
        if matches.is_empty() {
            return Ok(());
        }
        for m in matches {
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
                cache,
                committed,
            };
            windows.apply_all(
                &mut store,
                matches,
                event_ms,
                &Sample::Json(json),
                now_ms,
                created,
            )
        })
    }

    /// Routes the alerts one record created: silences, per-alert
    /// destinations, and the incident each joins.
    fn route(
        &mut self,
        new: &[Window],
        matches: &[Match],
        json: &str,
        event_ms: i64,
        now_ms: i64,
        routed: &mut Routed,
    ) -> Result<(), StorageError> {
        if new.is_empty() {
            return Ok(());
        }
        let record: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
        for w in new {
            let alert = &w.alert;
            let silence = self.silences.holding(alert, &record, now_ms);
            if let Some(s) = silence {
                routed.silenced.push((alert.alert_id.clone(), s.id.clone()));
            }
            let (per_alert, per_incident): (Vec<String>, Vec<String>) = alert
                .destinations
                .iter()
                .cloned()
                .partition(|d| self.per_alert.contains(d));
            let held = silence.is_some();
            // Every created alert has its entry (the memory storage lists
            // created alerts from them), with no destination when held back.
            let per_alert = if held { Vec::new() } else { per_alert };
            routed.deliveries.push((alert.alert_id.clone(), per_alert));
            let rule_group_by = matches
                .iter()
                .find(|m| m.rule.meta.id == w.key.rule_id)
                .and_then(|m| m.rule.meta.group_by.as_deref());
            let joining = Joining {
                alert,
                rule_group_by,
                record: &record,
                event_ms,
                notify: if held { Vec::new() } else { per_incident },
            };
            let incidents = &mut routed.incidents;
            let config = &self.incidents;
            self.state
                .with_session(|s| incidents.join(config, s, &joining, now_ms))?;
        }
        Ok(())
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
            .with_session(|s| s.cursor(hexwatch_storage::EVALUATOR))?;
        let mut batch = self
            .state
            .with_session(|s| s.read_after(cursor, batch_size))?;
        if batch.is_empty() {
            return Ok(false);
        }
        let done = self.evaluate(rules, cursor, &mut batch, hexwatch_storage::now_ms())?;
        self.commit(done.effects)?;
        Ok(true)
    }
}

/// How far ahead of its receipt a record's event time may move the
/// evaluated watermark, which prunes rule state and alert windows. Event time
/// comes from the sender and is not trusted: one record dated 2999 would
/// otherwise make every baseline look centuries old. Such a record is still
/// kept and evaluated at its own time; only the watermark is bounded.
pub const WATERMARK_AHEAD_MS: i64 = 60 * 60 * 1000;

/// What a record moves the evaluated watermark to: its event time, at most
/// [`WATERMARK_AHEAD_MS`] past its receipt.
pub fn watermark_ms(event_ms: i64, received_at: i64) -> i64 {
    event_ms.min(received_at.saturating_add(WATERMARK_AHEAD_MS))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProcessEnv;
    use crate::event::ParseContext;
    use hexwatch_storage::memory::Memory;
    use hexwatch_storage::{Batch, Role, Storage, EVALUATOR};
    use std::path::Path;

    /// A session that fails one rule-state read, as a PostgreSQL backend
    /// terminated mid-batch or a busy SQLite would; everything else passes through.
    struct FailsOneStateRead {
        inner: Box<dyn Session>,
        reads_left: usize,
    }

    impl FailsOneStateRead {
        fn read<T>(
            &mut self,
            read: impl FnOnce(&mut dyn Session) -> hexwatch_storage::Result<T>,
        ) -> hexwatch_storage::Result<T> {
            if self.reads_left == 1 {
                self.reads_left = 0;
                let busy = rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY);
                return Err(StorageError::Sqlite(rusqlite::Error::SqliteFailure(
                    busy, None,
                )));
            }
            self.reads_left = self.reads_left.saturating_sub(1);
            read(self.inner.as_mut())
        }
    }

    impl Session for FailsOneStateRead {
        fn append(&mut self, b: &[&Batch]) -> hexwatch_storage::Result<hexwatch_storage::Appended> {
            self.inner.append(b)
        }
        fn last_seq(&mut self) -> hexwatch_storage::Result<i64> {
            self.inner.last_seq()
        }
        fn read_after(
            &mut self,
            after: i64,
            limit: usize,
        ) -> hexwatch_storage::Result<Vec<StoredRecord>> {
            self.inner.read_after(after, limit)
        }
        fn try_lease(&mut self) -> hexwatch_storage::Result<bool> {
            self.inner.try_lease()
        }
        fn cursor(&mut self, name: &str) -> hexwatch_storage::Result<i64> {
            self.inner.cursor(name)
        }
        fn begin_read(&mut self) -> hexwatch_storage::Result<()> {
            self.inner.begin_read()
        }
        fn end_read(&mut self) {
            self.inner.end_read()
        }
        fn counter(&mut self, key: &str) -> hexwatch_storage::Result<Option<(i64, i64)>> {
            self.read(|s| s.counter(key))
        }
        fn set_member(&mut self, key: &str, member: &str) -> hexwatch_storage::Result<Option<i64>> {
            self.read(|s| s.set_member(key, member))
        }
        fn value(&mut self, key: &str) -> hexwatch_storage::Result<Option<(String, i64)>> {
            self.read(|s| s.value(key))
        }
        fn windows_at(
            &mut self,
            key: &hexwatch_model::alert::WindowKey,
            at_ms: i64,
        ) -> hexwatch_storage::Result<hexwatch_storage::WindowsAt> {
            self.inner.windows_at(key, at_ms)
        }
        fn commit(&mut self, effects: &Effects) -> hexwatch_storage::Result<()> {
            self.inner.commit(effects)
        }
        fn incident_of_group(
            &mut self,
            key: &str,
        ) -> hexwatch_storage::Result<Option<hexwatch_storage::StoredIncident>> {
            self.inner.incident_of_group(key)
        }
        fn due_incidents(
            &mut self,
            now: i64,
            limit: usize,
        ) -> hexwatch_storage::Result<Vec<hexwatch_storage::StoredIncident>> {
            self.inner.due_incidents(now, limit)
        }
        fn incident_alerts(
            &mut self,
            id: &str,
            from: i64,
            limit: usize,
        ) -> hexwatch_storage::Result<Vec<crate::alerts::Alert>> {
            self.inner.incident_alerts(id, from, limit)
        }
        fn record_notice(
            &mut self,
            n: &hexwatch_storage::NoticeWrite,
        ) -> hexwatch_storage::Result<bool> {
            self.inner.record_notice(n)
        }
        fn live_silences(
            &mut self,
            now: i64,
        ) -> hexwatch_storage::Result<Vec<hexwatch_storage::silences::Silence>> {
            self.inner.live_silences(now)
        }
        fn claim_due(
            &mut self,
            d: &str,
            limit: usize,
            until: i64,
        ) -> hexwatch_storage::Result<Vec<hexwatch_storage::Due>> {
            self.inner.claim_due(d, limit, until)
        }
        fn next_due(&mut self, d: &str) -> hexwatch_storage::Result<Option<i64>> {
            self.inner.next_due(d)
        }
        fn pending(&mut self, d: &str) -> hexwatch_storage::Result<i64> {
            self.inner.pending(d)
        }
        fn record_attempts(
            &mut self,
            done: &[hexwatch_storage::Attempt],
        ) -> hexwatch_storage::Result<()> {
            self.inner.record_attempts(done)
        }
        fn release_claims(&mut self) -> hexwatch_storage::Result<usize> {
            self.inner.release_claims()
        }
        fn requeue_failed(
            &mut self,
            d: Option<&str>,
            since: Option<i64>,
        ) -> hexwatch_storage::Result<usize> {
            self.inner.requeue_failed(d, since)
        }
        fn prune(
            &mut self,
            r: std::time::Duration,
        ) -> hexwatch_storage::Result<hexwatch_storage::Pruned> {
            self.inner.prune(r)
        }
    }

    /// The incident sample journaled in memory, and its storage.
    fn journaled_incident() -> (Memory, Storage) {
        let memory = Memory::default();
        let storage = Storage::Memory(memory.clone());
        let text = std::fs::read("examples/samples/incident.json").unwrap();
        let ctx = ParseContext::new("hex");
        let mut batch = Batch::default();
        crate::replay::for_each_item(&mut text.as_slice(), |item| {
            batch
                .entries
                .push(crate::ingest::admit(item, &ctx).expect("a valid record"));
            Ok(())
        })
        .unwrap();
        storage
            .session(Role::Journal)
            .unwrap()
            .append(&[&batch])
            .unwrap();
        (memory, storage)
    }

    /// Evaluates everything journaled as the daemon's evaluator does: a batch
    /// that fails is evaluated again. Returns the failures seen.
    fn evaluate_all(core: &mut Core, rules: &RuleSet) -> usize {
        let mut failures = 0;
        loop {
            match core.step(rules, 256) {
                Ok(true) => {}
                Ok(false) => return failures,
                Err(e) => {
                    assert!(e.is_transient(), "{e}");
                    failures += 1;
                    assert!(failures < 10, "the batch keeps failing: {e}");
                }
            }
        }
    }

    /// Each alert as JSON text without what the wall clock stamps
    /// (`createdAt`; a sample's `p_parse_time` and the `p_row_id` made with it).
    fn alerts_of(memory: &Memory) -> Vec<String> {
        let mut alerts = Vec::new();
        for a in memory.created_alerts() {
            let mut a = serde_json::to_value(a).unwrap();
            a.as_object_mut().unwrap().remove("createdAt");
            for e in a["events"].as_array_mut().unwrap() {
                let e = e.as_object_mut().unwrap();
                e.remove("p_parse_time");
                e.remove("p_row_id");
            }
            alerts.push(a.to_string());
        }
        alerts
    }

    /// Defect: a rule-state read that failed for a transient storage reason
    /// was turned into text, reached the rule as an error and was committed as
    /// a `RULE_ERROR` match, losing the rule's verdict for that record.
    #[test]
    fn a_rule_state_read_failing_once_gives_no_rule_error_and_the_same_alerts() {
        let config = Config::parse(Path::new("config.toml"), "", &ProcessEnv).unwrap();
        let rules = config.rules_loader(None, false).scan().unwrap().rules;

        let (clean_memory, clean) = journaled_incident();
        let mut core = Core::new(&config, clean.session(Role::Derived).unwrap());
        assert_eq!(evaluate_all(&mut core, &rules), 0);
        let expected = alerts_of(&clean_memory);
        assert!(expected.len() > 10, "the incident raises its alerts");

        let (flaky_memory, flaky) = journaled_incident();
        let session = FailsOneStateRead {
            inner: flaky.session(Role::Derived).unwrap(),
            reads_left: 5,
        };
        let mut core = Core::new(&config, Box::new(session));
        assert_eq!(
            evaluate_all(&mut core, &rules),
            1,
            "the one failure is retried"
        );
        assert_eq!(core.counts.rule_errors, 0);
        let alerts = alerts_of(&flaky_memory);
        assert_eq!(alerts.len(), expected.len());
        assert!(
            alerts == expected,
            "the alerts differ from a clean evaluation"
        );
        let cursor = core.with_session(|s| s.cursor(EVALUATOR)).unwrap();
        assert_eq!(
            cursor,
            flaky.session(Role::Journal).unwrap().last_seq().unwrap()
        );
    }
}
