//! Alert state: matches with the same rule id and dedup string within
//! `dedup_minutes` of the window's first match (event time) form one alert. The
//! alert is created when the window's count reaches `threshold`; later matches
//! update its count, last event time and sample events; the first match after the
//! window starts a new one.
//!
//! [`AlertWindows::apply`] is the whole decision, pure and shared by `serve` and
//! `replay`; where windows live is behind [`AlertStore`] (the storage, through
//! the evaluator's batch cache, in the daemon; memory in `replay` and `test`).

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use hexwatch_model::Severity;
use hexwatch_rules::eval::{Match, MatchKind};
use hexwatch_storage::StorageError;

pub use hexwatch_model::alert::{rfc3339, Alert, SampleEvent, Window, WindowKey, MAX_SAMPLES};

/// What a match did to its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Counted; the threshold is not reached yet.
    Pending,
    /// The threshold was reached: a new alert, to be delivered.
    Created,
    /// An existing alert got one more event (no new delivery).
    Updated,
}

/// Where alert windows are kept.
///
/// Windows move in and out rather than being copied: a busy window carries
/// up to `MAX_SAMPLES` records, and a burst updates it once per match.
pub trait AlertStore {
    /// The most recent window for this key if it is still open at `event_ms`,
    /// taken out to be changed and saved back with [`save`](AlertStore::save).
    /// A window that has ended stays where it is, as it is.
    fn take_open(&mut self, key: &WindowKey, event_ms: i64)
        -> Result<Option<Window>, StorageError>;
    /// Stores a window (insert or update, by alert id).
    fn save(&mut self, window: Window) -> Result<(), StorageError>;
}

/// Routing: which configured destinations an alert goes to.
#[derive(Debug, Clone, Default)]
pub struct Router {
    /// (name, min_severity) of every configured destination.
    pub destinations: Vec<(String, Severity)>,
}

impl Router {
    /// The configured destinations with their `min_severity`.
    pub fn from_config(config: &crate::config::Config) -> Router {
        Router {
            destinations: config
                .destinations
                .iter()
                .map(|d| (d.name.clone(), d.min_severity))
                .collect(),
        }
    }

    /// A rule's `destinations()` / `meta.destinations` when given, else every
    /// destination whose `min_severity` admits the severity. Unknown names are dropped.
    pub fn route(&self, wanted: Option<&[String]>, severity: Severity) -> Vec<String> {
        match wanted {
            Some(names) => names
                .iter()
                .filter(|n| {
                    let known = self.destinations.iter().any(|(d, _)| d == *n);
                    if !known {
                        tracing::warn!(destination = %n, "rule names an unknown destination; skipped");
                    }
                    known
                })
                .cloned()
                .collect(),
            None => self
                .destinations
                .iter()
                .filter(|(_, min)| severity >= *min)
                .map(|(n, _)| n.clone())
                .collect(),
        }
    }
}

/// The matched record, for an alert's sample events. A stored record's text
/// is shared, never parsed; a value is written out only when a window takes
/// it as a sample.
pub enum Sample<'a> {
    Value(&'a serde_json::Value),
    Json(&'a str),
}

impl Sample<'_> {
    fn event(&self) -> SampleEvent {
        match self {
            Sample::Value(v) => SampleEvent::from_value(v),
            Sample::Json(text) => SampleEvent::from_json(text),
        }
    }
}

/// Applies matches to windows held in a store.
pub struct AlertWindows {
    pub router: Router,
}

/// A stable alert id: the same window always gets the same id (so a redelivered
/// alert, or a replay of the same stream, carries the same id).
fn alert_id(key: &WindowKey, start_ms: i64) -> String {
    let mut h = Sha256::new();
    for part in [&key.rule_id, &key.kind, &key.dedup] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    h.update(start_ms.to_be_bytes());
    hex::encode(&h.finalize()[..16])
}

impl AlertWindows {
    pub fn new(router: Router) -> AlertWindows {
        AlertWindows { router }
    }

    /// Applies every match one record produced (`serve`, `replay` and `hexwatch
    /// test` all go through here); appends the windows whose alert this created.
    pub fn apply_all(
        &self,
        store: &mut dyn AlertStore,
        matches: &[Match],
        event_ms: i64,
        record: &Sample<'_>,
        now_ms: i64,
        created: &mut Vec<Window>,
    ) -> Result<(), StorageError> {
        for m in matches {
            let (t, window) = self.apply(store, m, event_ms, record, now_ms)?;
            if let (Transition::Created, Some(w)) = (t, window) {
                created.push(w);
            }
        }
        Ok(())
    }

    /// Counts one match at event time `event_ms` with its record, and returns
    /// what happened, with the window when this created its alert. `now_ms`
    /// (wall clock, passed in so the decision stays pure) only stamps `createdAt`.
    pub fn apply(
        &self,
        store: &mut dyn AlertStore,
        m: &Match,
        event_ms: i64,
        record: &Sample<'_>,
        now_ms: i64,
    ) -> Result<(Transition, Option<Window>), StorageError> {
        let meta = &m.rule.meta;
        let key = WindowKey {
            rule_id: meta.id.clone(),
            kind: m.kind.as_str().to_string(),
            dedup: m.dedup.clone(),
        };
        let threshold = match m.kind {
            MatchKind::Rule => meta.threshold,
            MatchKind::RuleError => 1,
        };
        let (window, transition) = match store.take_open(&key, event_ms)? {
            Some(w) => join(w, event_ms, record, now_ms),
            None => self.open(key, m, threshold, event_ms, record, now_ms),
        };
        let created = (transition == Transition::Created).then(|| window.clone());
        store.save(window)?;
        Ok((transition, created))
    }

    /// A new window for a match no open window takes.
    fn open(
        &self,
        key: WindowKey,
        m: &Match,
        threshold: i64,
        event_ms: i64,
        record: &Sample<'_>,
        now_ms: i64,
    ) -> (Window, Transition) {
        let meta = &m.rule.meta;
        let created = threshold <= 1;
        let alert = Alert {
            alert_id: alert_id(&key, event_ms),
            id: meta.id.clone(),
            kind: key.kind.clone(),
            title: m.title.clone(),
            severity: m.severity,
            dedup: m.dedup.clone(),
            created_at: if created {
                rfc3339(now_ms)
            } else {
                String::new()
            },
            first_event_at: rfc3339(event_ms),
            last_event_at: rfc3339(event_ms),
            event_count: 1,
            description: m.description.clone(),
            runbook: m.runbook.clone(),
            reference: m.reference.clone(),
            tags: meta.tags.clone(),
            reports: meta.reports.clone(),
            alert_context: m.alert_context.clone(),
            destinations: self.router.route(m.destinations.as_deref(), m.severity),
            events: vec![record.event()],
            version: m.rule.version.clone(),
        };
        let w = Window {
            key,
            start_ms: event_ms,
            end_ms: event_ms.saturating_add(meta.dedup_minutes.saturating_mul(60_000)),
            threshold,
            created,
            last_ms: event_ms,
            alert,
            samples_stored: 0,
        };
        let t = if created {
            Transition::Created
        } else {
            Transition::Pending
        };
        (w, t)
    }
}

/// A match joining an open window: counted, its record kept among the
/// samples while there is room, and the alert created at the threshold.
fn join(mut w: Window, event_ms: i64, record: &Sample<'_>, now_ms: i64) -> (Window, Transition) {
    w.alert.event_count += 1;
    if event_ms > w.last_ms {
        w.last_ms = event_ms;
        w.alert.last_event_at = rfc3339(event_ms);
    }
    if w.samples_stored + w.alert.events.len() < MAX_SAMPLES {
        w.alert.events.push(record.event());
    }
    let t = if w.created {
        Transition::Updated
    } else if w.alert.event_count >= w.threshold {
        w.created = true;
        w.alert.created_at = rfc3339(now_ms);
        Transition::Created
    } else {
        Transition::Pending
    };
    (w, t)
}

/// Windows in memory, for `replay`; remembers creation order.
#[derive(Default)]
pub struct MemoryAlerts {
    latest: HashMap<WindowKey, Window>,
    all: HashMap<String, Window>,
    order: Vec<String>,
}

impl MemoryAlerts {
    /// Every created alert, in creation order, as it stands now.
    pub fn created(&self) -> impl Iterator<Item = &Alert> {
        self.order
            .iter()
            .filter_map(|id| self.all.get(id))
            .filter(|w| w.created)
            .map(|w| &w.alert)
    }
}

impl AlertStore for MemoryAlerts {
    fn take_open(
        &mut self,
        key: &WindowKey,
        event_ms: i64,
    ) -> Result<Option<Window>, StorageError> {
        match self.latest.get(key) {
            Some(w) if w.is_open_at(event_ms) => Ok(self.latest.remove(key)),
            _ => Ok(None),
        }
    }

    fn save(&mut self, window: Window) -> Result<(), StorageError> {
        let id = &window.alert.alert_id;
        if !self.all.contains_key(id) {
            self.order.push(id.clone());
        }
        self.all.insert(id.clone(), window.clone());
        self.latest.insert(window.key.clone(), window);
        Ok(())
    }
}

/// Windows touched by one evaluation batch, kept in memory until the batch
/// commits (so evaluating never holds the database's write lock).
#[derive(Default)]
pub struct AlertCache {
    latest: HashMap<WindowKey, Window>,
    /// Windows replaced in this batch by a newer window of the same key.
    superseded: Vec<Window>,
}

impl AlertCache {
    /// Every window the batch touched, older ones first: the batch's effects.
    pub fn into_windows(self) -> Vec<Window> {
        let mut all = self.superseded;
        all.extend(self.latest.into_values());
        all
    }
}

/// The latest window of each key as committed, remembered across batches, so
/// a burst of matches does not read (and parse) its window back from the
/// storage in every batch. Valid only while this evaluator is the one writing
/// windows: the core clears it when it takes the lease or a commit fails.
#[derive(Default)]
pub struct CommittedWindows {
    latest: HashMap<WindowKey, Option<Window>>,
}

impl CommittedWindows {
    /// Windows remembered at most (each holds up to `MAX_SAMPLES` records).
    const MAX: usize = 1024;

    pub fn clear(&mut self) {
        self.latest.clear();
    }

    /// A batch's windows were committed (older ones first): they move here.
    pub fn committed(&mut self, windows: Vec<Window>) {
        if self.latest.len() + windows.len() > Self::MAX {
            self.latest.clear();
        }
        for mut w in windows.into_iter().take(Self::MAX) {
            w.samples_stored += w.alert.events.len();
            w.alert.events = Vec::new();
            self.latest.insert(w.key.clone(), Some(w));
        }
    }

    fn remember(&mut self, key: &WindowKey, window: Option<Window>) {
        if self.latest.len() < Self::MAX {
            self.latest.insert(key.clone(), window);
        }
    }
}

/// Reads windows from the storage (through [`CommittedWindows`]), keeps
/// changes in an [`AlertCache`].
pub struct BatchAlerts<'a> {
    pub session: &'a mut dyn hexwatch_storage::Session,
    pub cache: &'a mut AlertCache,
    pub committed: &'a mut CommittedWindows,
}

impl AlertStore for BatchAlerts<'_> {
    fn take_open(
        &mut self,
        key: &WindowKey,
        event_ms: i64,
    ) -> Result<Option<Window>, StorageError> {
        if let Some(w) = self.cache.latest.get(key) {
            let open = w.is_open_at(event_ms);
            return Ok(if open {
                self.cache.latest.remove(key)
            } else {
                None
            });
        }
        // An open window moves into the batch and comes back with the batch's
        // commit; a failed batch clears the committed windows altogether.
        let is_open = |w: &Option<Window>| w.as_ref().is_some_and(|w| w.is_open_at(event_ms));
        if let Some(w) = self.committed.latest.get(key) {
            return Ok(if is_open(w) {
                self.committed.latest.remove(key).flatten()
            } else {
                None
            });
        }
        let w = self.session.latest_window(key)?;
        if is_open(&w) {
            return Ok(w);
        }
        self.committed.remember(key, w);
        Ok(None)
    }

    fn save(&mut self, window: Window) -> Result<(), StorageError> {
        let id = window.alert.alert_id.clone();
        if let Some(old) = self.cache.latest.insert(window.key.clone(), window) {
            if old.alert.alert_id != id {
                self.cache.superseded.push(old);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hexwatch_rules::engine;
    use hexwatch_rules::ruleset::compile;
    use hexwatch_rules::state::MemoryState;
    use std::path::Path;
    use std::sync::Arc;

    fn matched(src: &str, dedup: &str) -> Match {
        let e = engine::build(1000, Arc::new(MemoryState::default()));
        let rule =
            Arc::new(compile(&e, Path::new("r.rhai"), src, None, &Default::default()).unwrap());
        Match {
            title: format!("t {dedup}"),
            dedup: dedup.into(),
            severity: rule.meta.severity,
            alert_context: serde_json::json!({}),
            destinations: None,
            description: String::new(),
            runbook: String::new(),
            reference: String::new(),
            error: None,
            kind: MatchKind::Rule,
            rule,
        }
    }

    const MIN: i64 = 60_000;

    #[test]
    fn threshold_fires_once_then_updates_then_new_window() {
        let m = matched(
            "let meta = #{ id: \"Burst\", severity: \"HIGH\", threshold: 3, dedup_minutes: 10 }; fn rule(e) { true }",
            "ana",
        );
        let windows = AlertWindows::new(Router {
            destinations: vec![
                ("hook".into(), Severity::Medium),
                ("mail".into(), Severity::Critical),
            ],
        });
        let mut store = MemoryAlerts::default();
        let rec = serde_json::json!({"n": 1});
        let rec = Sample::Value(&rec);
        let mut t = |i: i64| windows.apply(&mut store, &m, i * MIN, &rec, 0).unwrap().0;
        assert_eq!(t(0), Transition::Pending);
        assert_eq!(t(1), Transition::Pending);
        assert_eq!(t(2), Transition::Created);
        assert_eq!(t(9), Transition::Updated);
        // 10 minutes after the first match: a new window, pending again.
        assert_eq!(t(10), Transition::Pending);
        let alerts: Vec<&Alert> = store.created().collect();
        assert_eq!(alerts.len(), 1);
        let a = alerts[0];
        assert_eq!(a.event_count, 4);
        assert_eq!(a.first_event_at, "1970-01-01T00:00:00.000Z");
        assert_eq!(a.last_event_at, "1970-01-01T00:09:00.000Z");
        assert_eq!(a.events.len(), 4);
        assert_eq!(a.destinations, vec!["hook".to_string()]);
    }

    /// A burst rule matching every record for "ana", with the windows and an
    /// in-memory storage to keep them.
    fn burst(threshold: i64) -> (Match, AlertWindows, hexwatch_storage::memory::Memory) {
        let src = format!(
            "let meta = #{{ id: \"Burst\", severity: \"HIGH\", threshold: {threshold}, dedup_minutes: 10 }}; fn rule(e) {{ true }}"
        );
        (
            matched(&src, "ana"),
            AlertWindows::new(Router::default()),
            hexwatch_storage::memory::Memory::default(),
        )
    }

    /// Windows move between the batch's cache and the rules instead of being
    /// copied; a window that ends in the middle of a batch must still be
    /// written, unchanged, before the window that follows it.
    #[test]
    fn windows_moved_through_a_batch_keep_every_update_and_the_ended_window() {
        let (m, windows, memory) = burst(2);
        let mut session = memory.session();
        let mut committed = CommittedWindows::default();
        let mut created = Vec::new();
        // One evaluation batch with a match at each of `minutes`; the windows it writes.
        let mut batch = |minutes: &[i64], committed: &mut CommittedWindows| {
            let mut cache = AlertCache::default();
            let rec = serde_json::json!({"n": 1});
            for minute in minutes {
                let mut store = BatchAlerts {
                    session: &mut session,
                    cache: &mut cache,
                    committed: &mut *committed,
                };
                let matches = std::slice::from_ref(&m);
                windows
                    .apply_all(
                        &mut store,
                        matches,
                        minute * MIN,
                        &Sample::Value(&rec),
                        0,
                        &mut created,
                    )
                    .unwrap();
            }
            cache.into_windows()
        };
        let written = batch(&[0, 1, 2, 12], &mut committed);
        assert_eq!(written.len(), 2);
        let (ended, next) = (&written[0], &written[1]);
        assert_eq!(ended.alert.event_count, 3);
        assert_eq!(ended.alert.events.len(), 3);
        assert!(ended.created);
        assert_eq!(next.start_ms, 12 * MIN);
        assert_eq!(next.alert.event_count, 1);
        assert!(!next.created);
        assert_ne!(ended.alert.alert_id, next.alert.alert_id);

        // The next batch: a match after the committed window ended opens a new
        // one and leaves the ended one unwritten.
        committed.committed(written);
        // A match in the open window takes it out of the committed windows
        // (moved, not copied) and writes it updated; the commit brings it back.
        let written = batch(&[13], &mut committed);
        assert_eq!(written.len(), 1);
        assert_eq!(written[0].alert.event_count, 2);
        assert!(!committed.latest.contains_key(&written[0].key));
        committed.committed(written);
        let written = batch(&[30], &mut committed);
        assert_eq!(written.len(), 1);
        assert_eq!(written[0].start_ms, 30 * MIN);
        assert_eq!(created.len(), 2, "each window's alert, at its second match");
        assert_eq!(created[0].alert.event_count, 2);
        assert_eq!(created[1].start_ms, 12 * MIN);
        assert_eq!(created[1].alert.event_count, 2);
    }

    /// A burst spread over batches: between batches its window carries no
    /// samples (they are stored), and the stored alert ends with the first
    /// `MAX_SAMPLES` records in order, as one batch would have taken them.
    #[test]
    fn committed_windows_carry_no_stored_samples() {
        let (m, windows, memory) = burst(4);
        let mut session = memory.session();
        let mut committed = CommittedWindows::default();
        let mut created = Vec::new();
        for batch in 0..5 {
            let mut cache = AlertCache::default();
            for i in batch * 3..batch * 3 + 3 {
                let rec = serde_json::json!({ "n": i });
                let mut store = BatchAlerts {
                    session: &mut session,
                    cache: &mut cache,
                    committed: &mut committed,
                };
                windows
                    .apply_all(
                        &mut store,
                        std::slice::from_ref(&m),
                        i,
                        &Sample::Value(&rec),
                        0,
                        &mut created,
                    )
                    .unwrap();
            }
            let written = cache.into_windows();
            let from = hexwatch_storage::Session::cursor(&mut session, hexwatch_storage::EVALUATOR)
                .unwrap();
            let effects = hexwatch_storage::Effects {
                windows: written,
                deliveries: created
                    .drain(..)
                    .map(|w| (w.alert.alert_id, Vec::new()))
                    .collect(),
                from_cursor: from,
                to_cursor: from,
                evaluated_ms: i64::MIN,
                ..Default::default()
            };
            hexwatch_storage::Session::commit(&mut session, &effects).unwrap();
            committed.committed(effects.windows);
            let w = committed.latest.values().next().unwrap().as_ref().unwrap();
            assert!(w.alert.events.is_empty(), "batch {batch}");
            assert_eq!(
                w.samples_stored,
                ((batch + 1) * 3).min(MAX_SAMPLES as i64) as usize
            );
        }
        let alerts = memory.created_alerts();
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].event_count, 15);
        let ns: Vec<i64> = alerts[0]
            .events
            .iter()
            .map(|e| e.value()["n"].as_i64().unwrap())
            .collect();
        assert_eq!(ns, (0..MAX_SAMPLES as i64).collect::<Vec<_>>());
    }

    /// A stored record taken as a sample is written into the alert as it
    /// was stored (key order and all), and reads back equal, from text or
    /// from a parsed tree.
    #[test]
    fn sample_events_are_written_as_stored_and_read_back() {
        let stored: Arc<str> = r#"{"z":1,"event":{"action":"RUN_CELL"},"a":[true,null]}"#.into();
        let mut a = crate::dispatch::formats::sample_alert(Severity::High);
        a.events = vec![Sample::Json(&stored).event()];
        let json = serde_json::to_string(&a).unwrap();
        assert!(json.contains(&format!("\"events\":[{stored}]")), "{json}");
        let back: Alert = serde_json::from_str(&json).unwrap();
        assert_eq!(back, a);
        let tree: Alert = serde_json::from_value(serde_json::to_value(&a).unwrap()).unwrap();
        assert_eq!(tree.events[0].value(), a.events[0].value());
        assert_eq!(a.events[0].value()["event"]["action"], "RUN_CELL");
    }

    #[test]
    fn dedup_strings_are_separate_and_ids_stable() {
        let windows = AlertWindows::new(Router::default());
        let src = "let meta = #{ id: \"R\", severity: \"LOW\" }; fn rule(e) { true }";
        let rec = serde_json::json!({});
        let rec = Sample::Value(&rec);
        let mut s1 = MemoryAlerts::default();
        let (_, a) = windows
            .apply(&mut s1, &matched(src, "x"), 0, &rec, 0)
            .unwrap();
        let (_, b) = windows
            .apply(&mut s1, &matched(src, "y"), 0, &rec, 0)
            .unwrap();
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_ne!(a.alert.alert_id, b.alert.alert_id);
        let mut s2 = MemoryAlerts::default();
        let (_, again) = windows
            .apply(&mut s2, &matched(src, "x"), 0, &rec, 0)
            .unwrap();
        assert_eq!(a.alert.alert_id, again.unwrap().alert.alert_id);
        for _ in 0..20 {
            windows
                .apply(&mut s1, &matched(src, "x"), 1, &rec, 0)
                .unwrap();
        }
        assert_eq!(s1.created().next().unwrap().events.len(), MAX_SAMPLES);
    }
}
