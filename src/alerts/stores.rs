//! Where alert windows are kept: in memory for `replay` and `test`; for the
//! daemon, in the storage, read through the windows this evaluator committed
//! last and changed in a batch cache until the batch commits.

use std::collections::{BTreeMap, HashMap};

use hexwatch_storage::StorageError;

use super::{AlertStore, Place, Window, WindowKey};

/// A key's windows by start, as one store holds them.
type ByStart = BTreeMap<i64, Window>;

/// Takes the window holding `event_ms` out of `windows`, else reports the
/// next window's start.
fn take_from(windows: &mut ByStart, event_ms: i64) -> Place {
    let holding = windows
        .range(..=event_ms)
        .next_back()
        .filter(|(_, w)| w.holds(event_ms))
        .map(|(start, _)| *start);
    match holding.and_then(|start| windows.remove(&start)) {
        Some(w) => Place::In(w),
        None => Place::Between {
            next_start: next_start(windows, event_ms),
        },
    }
}

/// When the first window after `event_ms` starts.
fn next_start(windows: &ByStart, event_ms: i64) -> Option<i64> {
    windows
        .range(event_ms.saturating_add(1)..)
        .next()
        .map(|(start, _)| *start)
}

/// The earlier of two optional starts.
fn earliest(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Windows in memory, for `replay`; remembers creation order.
#[derive(Default)]
pub struct MemoryAlerts {
    windows: HashMap<WindowKey, ByStart>,
    /// Where each window is, in the order the windows opened.
    order: Vec<(WindowKey, i64)>,
}

impl MemoryAlerts {
    /// Every created alert, in the order its window opened, as it stands now.
    pub fn created(&self) -> impl Iterator<Item = &super::Alert> {
        self.order
            .iter()
            .filter_map(|(key, start)| self.windows.get(key)?.get(start))
            .filter(|w| w.created)
            .map(|w| &w.alert)
    }
}

impl AlertStore for MemoryAlerts {
    fn take_at(&mut self, key: &WindowKey, event_ms: i64) -> Result<Place, StorageError> {
        Ok(match self.windows.get_mut(key) {
            Some(windows) => take_from(windows, event_ms),
            None => Place::Between { next_start: None },
        })
    }

    fn save(&mut self, window: Window) -> Result<(), StorageError> {
        // A window comes back here with its first match only when it opened.
        if window.alert.event_count == 1 {
            self.order.push((window.key.clone(), window.start_ms));
        }
        let windows = self.windows.entry(window.key.clone()).or_default();
        windows.insert(window.start_ms, window);
        Ok(())
    }
}

/// Windows touched by one evaluation batch, kept in memory until the batch
/// commits (so evaluating never holds the database's write lock).
#[derive(Default)]
pub struct AlertCache {
    windows: HashMap<WindowKey, ByStart>,
}

impl AlertCache {
    /// Every window the batch touched, each key's in order of start: the
    /// batch's effects.
    pub fn into_windows(self) -> Vec<Window> {
        self.windows
            .into_values()
            .flat_map(|w| w.into_values())
            .collect()
    }
}

/// What this evaluator knows of a key's latest window in the storage.
#[derive(Debug)]
enum Latest {
    /// The key has no window.
    Absent,
    /// This one, as committed.
    Here(Box<Window>),
    /// The window starting here is out in the current batch.
    Out(i64),
}

/// The latest window of each key as committed, remembered across batches, so
/// a burst of matches does not read (and parse) its window back from the
/// storage in every batch. Valid only while this evaluator is the one writing
/// windows: the core clears it when it takes the lease or a commit fails.
#[derive(Default)]
pub struct CommittedWindows {
    latest: HashMap<WindowKey, Latest>,
}

impl CommittedWindows {
    /// Windows remembered at most (each holds up to `MAX_SAMPLES` records).
    const MAX: usize = 1024;

    pub fn clear(&mut self) {
        self.latest.clear();
    }

    /// A batch's windows were committed (each key's in order of start): a
    /// key's latest moves here when this evaluator knew its latest before.
    pub fn committed(&mut self, windows: Vec<Window>) {
        for mut w in windows {
            let later = match self.latest.get(&w.key) {
                Some(Latest::Here(l)) => w.start_ms >= l.start_ms,
                Some(Latest::Out(start)) => w.start_ms >= *start,
                Some(Latest::Absent) => true,
                None => false,
            };
            if later {
                w.samples_stored += w.alert.events.len();
                w.alert.events = Vec::new();
                self.latest.insert(w.key.clone(), Latest::Here(Box::new(w)));
            }
        }
        // A key whose latest stayed out was not written: forget it.
        self.latest.retain(|_, l| !matches!(l, Latest::Out(_)));
    }

    fn remember(&mut self, key: &WindowKey, latest: Latest) {
        if self.latest.len() < Self::MAX || self.latest.contains_key(key) {
            self.latest.insert(key.clone(), latest);
        }
    }

    /// Where `event_ms` falls when this evaluator knows the key's latest
    /// window and the match is not before it; `None` when the storage
    /// must be asked.
    fn place(&mut self, key: &WindowKey, event_ms: i64) -> Option<Place> {
        let between = Place::Between { next_start: None };
        match self.latest.get(key)? {
            Latest::Absent => Some(between),
            Latest::Out(start) => (event_ms >= *start).then_some(between),
            Latest::Here(l) if event_ms < l.start_ms => None,
            Latest::Here(l) if !l.holds(event_ms) => Some(between),
            Latest::Here(l) => {
                let start = l.start_ms;
                match self.latest.insert(key.clone(), Latest::Out(start)) {
                    Some(Latest::Here(w)) => Some(Place::In(*w)),
                    _ => None,
                }
            }
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
    fn take_at(&mut self, key: &WindowKey, event_ms: i64) -> Result<Place, StorageError> {
        // A window the batch touched is newer than any stored copy of it.
        let cached_next = match self.cache.windows.get_mut(key) {
            Some(windows) => match take_from(windows, event_ms) {
                Place::In(w) => return Ok(Place::In(w)),
                Place::Between { next_start } => next_start,
            },
            None => None,
        };
        let place = match self.committed.place(key, event_ms) {
            Some(place) => place,
            None => self.stored_place(key, event_ms)?,
        };
        Ok(match place {
            Place::Between { next_start } => Place::Between {
                next_start: earliest(next_start, cached_next),
            },
            holding => holding,
        })
    }

    fn save(&mut self, window: Window) -> Result<(), StorageError> {
        self.cache
            .windows
            .entry(window.key.clone())
            .or_default()
            .insert(window.start_ms, window);
        Ok(())
    }
}

impl BatchAlerts<'_> {
    /// Asks the storage, and remembers the key's latest window when the
    /// answer shows it (no window starts after `event_ms`).
    fn stored_place(&mut self, key: &WindowKey, event_ms: i64) -> Result<Place, StorageError> {
        let around = self.session.windows_at(key, event_ms)?;
        let (holding, before) = match around.starting_by {
            Some(w) if w.holds(event_ms) => (Some(w), None),
            other => (None, other),
        };
        if around.next_start.is_none() {
            let latest = match (&holding, before) {
                (Some(w), _) => Latest::Out(w.start_ms),
                (None, Some(w)) => Latest::Here(Box::new(w)),
                (None, None) => Latest::Absent,
            };
            self.committed.remember(key, latest);
        }
        Ok(match holding {
            Some(w) => Place::In(w),
            None => Place::Between {
                next_start: around.next_start,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{matched, MIN};
    use super::super::{AlertWindows, Match, Router, Sample, MAX_SAMPLES};
    use super::*;

    /// Commits a batch's windows and created alerts, as the evaluator does.
    fn commit_batch(
        session: &mut dyn hexwatch_storage::Session,
        cache: AlertCache,
        created: impl IntoIterator<Item = Window>,
        committed: &mut CommittedWindows,
    ) {
        let from = session.cursor(hexwatch_storage::EVALUATOR).unwrap();
        let effects = hexwatch_storage::Effects {
            windows: cache.into_windows(),
            deliveries: created
                .into_iter()
                .map(|w| (w.alert.alert_id, Vec::new()))
                .collect(),
            from_cursor: from,
            to_cursor: from,
            evaluated_ms: i64::MIN,
            ..Default::default()
        };
        session.commit(&effects).unwrap();
        committed.committed(effects.windows);
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
        assert!(matches!(
            committed.latest.get(&written[0].key),
            Some(Latest::Out(_))
        ));
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
            commit_batch(&mut session, cache, created.drain(..), &mut committed);
            let Some(Latest::Here(w)) = committed.latest.values().next() else {
                panic!("batch {batch}: the latest window is remembered")
            };
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

    /// Six matches two hours apart with 60-minute windows, fed newest first
    /// (as late delivery does) after one dated a day ahead: each is its own
    /// alert, and a match between two windows opens one that ends where the
    /// next begins. Through replay's windows and through a daemon's batches.
    #[test]
    fn alert_windows_absorb_no_matches_from_before_their_start() {
        let src = "let meta = #{ id: \"Share\", severity: \"HIGH\", dedup_minutes: 60 }; fn rule(e) { true }";
        let m = matched(src, "ana");
        let windows = AlertWindows::new(Router::default());
        let hour = 60 * MIN;
        let mut times = vec![24 * hour];
        times.extend((0..6).rev().map(|i| i * 2 * hour));
        times.push(23 * hour + 30 * MIN);
        let rec = serde_json::json!({});
        let expect = |alerts: Vec<(i64, i64, i64)>| {
            let mut spans = alerts;
            spans.sort();
            let mut want: Vec<(i64, i64, i64)> = (0..6)
                .map(|i| (i * 2 * hour, i * 2 * hour + hour, 1))
                .collect();
            want.push((23 * hour + 30 * MIN, 24 * hour, 1));
            want.push((24 * hour, 25 * hour, 1));
            assert_eq!(spans, want);
        };

        let mut memory = MemoryAlerts::default();
        let mut created = Vec::new();
        for t in &times {
            let matches = std::slice::from_ref(&m);
            windows
                .apply_all(
                    &mut memory,
                    matches,
                    *t,
                    &Sample::Value(&rec),
                    0,
                    &mut created,
                )
                .unwrap();
        }
        expect(
            created
                .iter()
                .map(|w| (w.start_ms, w.end_ms, w.alert.event_count))
                .collect(),
        );

        // The daemon's path: two matches per batch, committed in between.
        let storage = hexwatch_storage::memory::Memory::default();
        let mut session = storage.session();
        let mut committed = CommittedWindows::default();
        for pair in times.chunks(2) {
            let mut cache = AlertCache::default();
            let mut created = Vec::new();
            for t in pair {
                let mut store = BatchAlerts {
                    session: &mut session,
                    cache: &mut cache,
                    committed: &mut committed,
                };
                let matches = std::slice::from_ref(&m);
                windows
                    .apply_all(
                        &mut store,
                        matches,
                        *t,
                        &Sample::Value(&rec),
                        0,
                        &mut created,
                    )
                    .unwrap();
            }
            commit_batch(&mut session, cache, created, &mut committed);
        }
        assert_eq!(storage.created_alerts().len(), 8);
        let key = &created[0].key;
        let stored = times
            .iter()
            .map(|t| {
                let w = hexwatch_storage::Session::windows_at(&mut session, key, *t).unwrap();
                let w = w.starting_by.unwrap();
                (w.start_ms, w.end_ms, w.alert.event_count)
            })
            .collect();
        expect(stored);
    }
}
