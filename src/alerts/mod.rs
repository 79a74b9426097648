//! Alert state: matches with the same rule id and dedup string within
//! `dedup_minutes` of the window's first match (event time) form one alert. The
//! alert is created when the window's count reaches `threshold`; later matches
//! update its count, last event time and sample events; the first match after the
//! window starts a new one. Windows hold only matches within their own span:
//! a match that arrives late joins the window its own time belongs to, or
//! opens one that ends no later than the next window of its key starts.
//!
//! [`AlertWindows::apply`] is the whole decision, pure and shared by `serve` and
//! `replay`; where windows live is behind [`AlertStore`] (the storage, through
//! the evaluator's batch cache, in the daemon; memory in `replay` and `test`).

use sha2::{Digest, Sha256};

use hexwatch_model::Severity;
use hexwatch_rules::eval::{Match, MatchKind};
use hexwatch_storage::StorageError;

mod stores;

pub use hexwatch_model::alert::{rfc3339, Alert, SampleEvent, Window, WindowKey, MAX_SAMPLES};
pub use stores::{AlertCache, BatchAlerts, CommittedWindows, MemoryAlerts};

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
    /// The window of this key that holds `event_ms`, taken out to be changed
    /// and saved back with [`save`](AlertStore::save); else when the key's
    /// next window after `event_ms` starts, if there is one.
    fn take_at(&mut self, key: &WindowKey, event_ms: i64) -> Result<Place, StorageError>;
    /// Stores a window (insert or update, by alert id).
    fn save(&mut self, window: Window) -> Result<(), StorageError>;
}

/// Where a match falls among its key's windows. Made and taken apart once
/// per match, so the window moves through unboxed, as an `Option` would.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Place {
    /// Inside this window.
    In(Window),
    /// Outside every window; a new one must end by the given start of the
    /// next one, if any.
    Between { next_start: Option<i64> },
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
        let (window, transition) = match store.take_at(&key, event_ms)? {
            Place::In(w) => join(w, event_ms, record, now_ms),
            Place::Between { next_start } => {
                let mut opened = self.open(key, m, threshold, event_ms, record, now_ms);
                if let Some(next) = next_start {
                    opened.0.end_ms = opened.0.end_ms.min(next);
                }
                opened
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use hexwatch_rules::engine;
    use hexwatch_rules::ruleset::compile;
    use hexwatch_rules::state::MemoryState;
    use std::path::Path;
    use std::sync::Arc;

    pub(super) fn matched(src: &str, dedup: &str) -> Match {
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

    pub(super) const MIN: i64 = 60_000;

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
