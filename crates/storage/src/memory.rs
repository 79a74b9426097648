//! Storage in memory, for `hexwatch replay`: the same journal, evaluation
//! and commit of effects as the daemon, with nothing written to disk. One
//! process, one user: the lease is always held and claims never compete.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use super::{
    now_ms, Appended, Attempt, AttemptResult, Batch, DeliveryStatus, Due, Effects, Outcome, Pruned,
    Result, Session, StateWrites, StorageError, StoredRecord, WindowsAt, EVALUATOR,
};
use crate::silences::Silence;
use crate::{NoticeWrite, StoredIncident};
use hexwatch_model::alert::{Alert, Window, WindowKey};
use hexwatch_model::incident::{IncidentWrite, Status};

/// Stores one incident a batch changed.
fn write_incident(db: &mut Db, w: &IncidentWrite, now: i64) {
    let id = w.incident.id.clone();
    let stored = db
        .incidents
        .entry(id.clone())
        .or_insert_with(|| StoredIncident {
            incident: w.incident.clone(),
            status: Status::Open,
            resolution: None,
            assignee: None,
            clock: w.clock,
            created_at: now,
            updated_at: now,
        });
    stored.incident = w.incident.clone();
    stored.clock.notify_at = w.clock.notify_at;
    stored.updated_at = now;
    if w.reopened {
        stored.status = Status::Open;
        stored.resolution = None;
    }
    if w.opened {
        db.by_group
            .entry(w.incident.group_key.clone())
            .or_default()
            .push(id.clone());
    }
    let members = db.members.entry(id).or_default();
    members.extend(w.joined.iter().map(|(_, a)| a.clone()));
}

/// One outbox row.
struct Delivery {
    alert_id: String,
    destination: String,
    status: DeliveryStatus,
    attempts: i64,
    next_attempt_at: i64,
    queued_at: i64,
    created_at: i64,
    claimed_until: Option<i64>,
    /// An incident notification's body (`alert_id` is then its id).
    message: Option<String>,
}

#[derive(Default)]
struct Db {
    /// The journal after the records already forgotten.
    events: std::collections::VecDeque<StoredRecord>,
    /// Records forgotten from the front of the journal (see `forget_evaluated`).
    forgotten: i64,
    /// Idempotency keys seen: aHash (randomly keyed per process, like the
    /// evaluator's caches) rather than SipHash, as `replay` hashes every key.
    keys: HashSet<String, ahash::RandomState>,
    quarantined: usize,
    cursors: HashMap<String, i64>,
    evaluated: Option<i64>,
    state: StateWrites,
    windows: HashMap<String, Window>,
    /// The alert ids of each key's windows, by start.
    by_key: HashMap<WindowKey, BTreeMap<i64, String>>,
    /// Created alerts, in the order they were created.
    created: Vec<String>,
    deliveries: Vec<Delivery>,
    incidents: HashMap<String, StoredIncident>,
    /// Each group's incidents, in the order they opened.
    by_group: HashMap<String, Vec<String>>,
    /// Each incident's alert ids, in the order they joined.
    members: HashMap<String, Vec<String>>,
}

/// Storage in memory; clones share it.
#[derive(Clone, Default)]
pub struct Memory(Arc<Mutex<Db>>);

impl Memory {
    pub fn session(&self) -> MemorySession {
        MemorySession(self.0.clone())
    }

    /// Every created alert as it stands now, in creation order.
    pub fn created_alerts(&self) -> Vec<Alert> {
        let db = self.0.lock();
        db.created
            .iter()
            .filter_map(|id| db.windows.get(id))
            .map(|w| w.alert.clone())
            .collect()
    }

    /// Drops the journal's records the evaluator has committed (their keys
    /// stay, so a repeat is still a duplicate): `replay` reads any amount of
    /// input in bounded memory.
    pub fn forget_evaluated(&self) {
        let mut db = self.0.lock();
        let done = db.cursors.get(EVALUATOR).copied().unwrap_or(0);
        let drop = usize::try_from(done - db.forgotten)
            .unwrap_or(0)
            .min(db.events.len());
        db.events.drain(..drop);
        db.forgotten += drop as i64;
    }

    /// Every incident as it stands, in the order they opened.
    pub fn incidents(&self) -> Vec<(StoredIncident, Vec<String>)> {
        let db = self.0.lock();
        let mut all: Vec<_> = db
            .incidents
            .values()
            .map(|i| {
                let members = db.members.get(&i.incident.id).cloned().unwrap_or_default();
                (i.clone(), members)
            })
            .collect();
        all.sort_by(|a, b| {
            (a.0.incident.first_ms, &a.0.incident.id)
                .cmp(&(b.0.incident.first_ms, &b.0.incident.id))
        });
        all
    }

    /// Records quarantined so far.
    pub fn quarantined(&self) -> usize {
        self.0.lock().quarantined
    }
}

pub struct MemorySession(Arc<Mutex<Db>>);

impl MemorySession {
    fn db(&self) -> parking_lot::MutexGuard<'_, Db> {
        self.0.lock()
    }

    fn delivery(&self, id: i64, f: impl FnOnce(&mut Delivery)) -> Result<()> {
        let mut db = self.db();
        let row = usize::try_from(id - 1)
            .ok()
            .and_then(|i| db.deliveries.get_mut(i))
            .ok_or_else(|| StorageError::Missing {
                what: "delivery",
                id: id.to_string(),
            })?;
        f(row);
        Ok(())
    }
}

impl Session for MemorySession {
    fn append(&mut self, batches: &[&Batch]) -> Result<Appended> {
        let now = now_ms();
        let mut db = self.db();
        let mut last_seq = None;
        let outcomes = batches
            .iter()
            .map(|b| {
                db.quarantined += b.quarantine.len();
                b.entries
                    .iter()
                    .map(|e| {
                        if !db.keys.insert(e.key.clone()) {
                            return Outcome::Duplicate;
                        }
                        let seq = db.forgotten + db.events.len() as i64 + 1;
                        db.events.push_back(StoredRecord {
                            seq,
                            action: e.action.clone(),
                            event_time: e.event_time.clone(),
                            json: e.json.clone(),
                            received_at: now,
                            tree: e.tree.clone(),
                        });
                        last_seq = Some(seq);
                        Outcome::Accepted(seq)
                    })
                    .collect()
            })
            .collect();
        Ok((outcomes, last_seq))
    }

    fn last_seq(&mut self) -> Result<i64> {
        let db = self.db();
        Ok(db.forgotten + db.events.len() as i64)
    }

    fn read_after(&mut self, after: i64, limit: usize) -> Result<Vec<StoredRecord>> {
        let db = self.db();
        let from = usize::try_from(after - db.forgotten)
            .unwrap_or(0)
            .min(db.events.len());
        Ok(db.events.range(from..).take(limit).cloned().collect())
    }

    fn try_lease(&mut self) -> Result<bool> {
        Ok(true)
    }

    fn cursor(&mut self, name: &str) -> Result<i64> {
        Ok(self.db().cursors.get(name).copied().unwrap_or(0))
    }

    fn begin_read(&mut self) -> Result<()> {
        Ok(())
    }

    fn end_read(&mut self) {}

    fn counter(&mut self, key: &str) -> Result<Option<(i64, i64)>> {
        Ok(self.db().state.counters.get(key).copied())
    }

    fn set_member(&mut self, key: &str, member: &str) -> Result<Option<i64>> {
        Ok(self
            .db()
            .state
            .sets
            .get(&(key.to_string(), member.to_string()))
            .copied())
    }

    fn value(&mut self, key: &str) -> Result<Option<(String, i64)>> {
        Ok(self.db().state.kv.get(key).cloned())
    }

    fn windows_at(&mut self, key: &WindowKey, at_ms: i64) -> Result<WindowsAt> {
        let db = self.db();
        let Some(starts) = db.by_key.get(key) else {
            return Ok(WindowsAt::default());
        };
        Ok(WindowsAt {
            starting_by: starts
                .range(..=at_ms)
                .next_back()
                .and_then(|(_, id)| db.windows.get(id))
                .map(|w| w.clone().stored()),
            next_start: starts
                .range(at_ms.saturating_add(1)..)
                .next()
                .map(|(start, _)| *start),
        })
    }

    fn commit(&mut self, e: &Effects) -> Result<()> {
        let mut db = self.db();
        let cursor = db.cursors.entry(EVALUATOR.to_string()).or_insert(0);
        if *cursor != e.from_cursor {
            return Err(StorageError::LeaseLost);
        }
        *cursor = e.to_cursor;
        db.state
            .counters
            .extend(e.state.counters.iter().map(|(k, v)| (k.clone(), *v)));
        db.state
            .sets
            .extend(e.state.sets.iter().map(|(k, v)| (k.clone(), *v)));
        db.state
            .kv
            .extend(e.state.kv.iter().map(|(k, v)| (k.clone(), v.clone())));
        for w in &e.windows {
            let id = w.alert.alert_id.clone();
            db.by_key
                .entry(w.key.clone())
                .or_default()
                .insert(w.start_ms, id.clone());
            // The window carries only the samples taken since it was stored.
            let mut stored = w.clone();
            if let Some(before) = db.windows.get_mut(&id) {
                let mut events = std::mem::take(&mut before.alert.events);
                events.truncate(w.samples_stored);
                events.append(&mut stored.alert.events);
                stored.alert.events = events;
            }
            stored.samples_stored = 0;
            db.windows.insert(id, stored);
        }
        let now = now_ms();
        for (alert_id, destinations) in &e.deliveries {
            db.created.push(alert_id.clone());
            for d in destinations {
                db.deliveries.push(Delivery {
                    alert_id: alert_id.clone(),
                    destination: d.clone(),
                    status: DeliveryStatus::Pending,
                    attempts: 0,
                    next_attempt_at: now,
                    queued_at: now,
                    created_at: now,
                    claimed_until: None,
                    message: None,
                });
            }
        }
        for w in &e.incidents {
            write_incident(&mut db, w, now);
        }
        if e.evaluated_ms != i64::MIN {
            db.evaluated = Some(
                db.evaluated
                    .map_or(e.evaluated_ms, |m| m.max(e.evaluated_ms)),
            );
        }
        Ok(())
    }

    fn claim_due(&mut self, destination: &str, limit: usize, claim_until: i64) -> Result<Vec<Due>> {
        let now = now_ms();
        let mut db = self.db();
        let Db {
            deliveries,
            windows,
            ..
        } = &mut *db;
        let mut out = Vec::new();
        for (i, d) in deliveries.iter_mut().enumerate() {
            if out.len() == limit {
                break;
            }
            let due = d.destination == destination
                && d.status == DeliveryStatus::Pending
                && d.next_attempt_at <= now
                && d.claimed_until.is_none_or(|c| c <= now);
            if due {
                d.claimed_until = Some(claim_until);
                if let Some(body) = &d.message {
                    out.push(Due {
                        id: i as i64 + 1,
                        alert_id: d.alert_id.clone(),
                        attempts: d.attempts,
                        queued_at: d.queued_at,
                        alert_json: body.clone(),
                        incident_notice: true,
                    });
                    continue;
                }
                out.push(Due {
                    id: i as i64 + 1,
                    alert_id: d.alert_id.clone(),
                    attempts: d.attempts,
                    queued_at: d.queued_at,
                    alert_json: serde_json::to_string(
                        &windows
                            .get(&d.alert_id)
                            .ok_or_else(|| StorageError::Missing {
                                what: "alert",
                                id: d.alert_id.clone(),
                            })?
                            .alert,
                    )?,
                    incident_notice: false,
                });
            }
        }
        Ok(out)
    }

    fn incident_of_group(&mut self, group_key: &str) -> Result<Option<StoredIncident>> {
        let db = self.db();
        let ids = db
            .by_group
            .get(group_key)
            .map(Vec::as_slice)
            .unwrap_or_default();
        Ok(ids
            .iter()
            .filter_map(|id| db.incidents.get(id))
            .max_by_key(|i| i.incident.last_ms)
            .cloned())
    }

    fn due_incidents(&mut self, now: i64, limit: usize) -> Result<Vec<StoredIncident>> {
        let db = self.db();
        let mut due: Vec<StoredIncident> = db
            .incidents
            .values()
            .filter(|i| {
                let c = &i.clock;
                c.notify_at.is_some_and(|t| t <= now)
                    || (c.remind_at.is_some_and(|t| t <= now) && i.status == Status::Open)
            })
            .cloned()
            .collect();
        due.sort_by(|a, b| a.incident.id.cmp(&b.incident.id));
        due.truncate(limit);
        Ok(due)
    }

    fn incident_alerts(&mut self, id: &str, from: i64, limit: usize) -> Result<Vec<Alert>> {
        let db = self.db();
        let members = db.members.get(id).map(Vec::as_slice).unwrap_or_default();
        Ok(members
            .iter()
            .skip(usize::try_from(from).unwrap_or(0))
            .take(limit)
            .filter_map(|a| db.windows.get(a))
            .map(|w| Alert {
                events: Vec::new(),
                ..w.alert.clone()
            })
            .collect())
    }

    fn record_notice(&mut self, n: &NoticeWrite) -> Result<bool> {
        let now = now_ms();
        let mut db = self.db();
        let Some(i) = db.incidents.get_mut(&n.incident_id) else {
            return Ok(false);
        };
        if i.clock.notices != n.before.notices || i.clock.notified != n.before.notified {
            return Ok(false);
        }
        i.clock = n.after;
        for d in &n.destinations {
            db.deliveries.push(Delivery {
                alert_id: n.message_id.clone(),
                destination: d.clone(),
                status: DeliveryStatus::Pending,
                attempts: 0,
                next_attempt_at: now,
                queued_at: now,
                created_at: now,
                claimed_until: None,
                message: Some(n.body.clone()),
            });
        }
        Ok(true)
    }

    fn live_silences(&mut self, _now: i64) -> Result<Vec<Silence>> {
        Ok(Vec::new())
    }

    fn next_due(&mut self, destination: &str) -> Result<Option<i64>> {
        let now = now_ms();
        Ok(self
            .db()
            .deliveries
            .iter()
            .filter(|d| {
                d.destination == destination
                    && d.status == DeliveryStatus::Pending
                    && d.claimed_until.is_none_or(|c| c <= now)
            })
            .map(|d| d.next_attempt_at)
            .min())
    }

    fn pending(&mut self, destination: &str) -> Result<i64> {
        Ok(self
            .db()
            .deliveries
            .iter()
            .filter(|d| d.destination == destination && d.status == DeliveryStatus::Pending)
            .count() as i64)
    }

    fn record_attempts(&mut self, done: &[Attempt]) -> Result<()> {
        let now = now_ms();
        for a in done {
            self.delivery(a.id, |d| {
                d.claimed_until = None;
                match &a.result {
                    AttemptResult::Delivered => {
                        d.status = DeliveryStatus::Delivered;
                        d.attempts = a.attempts;
                    }
                    AttemptResult::Failed { retry_at, .. } => {
                        (d.status, d.next_attempt_at) =
                            DeliveryStatus::after_failure(*retry_at, now);
                        d.attempts = a.attempts;
                    }
                    AttemptResult::Unsent => {}
                }
            })?;
        }
        Ok(())
    }

    fn release_claims(&mut self) -> Result<usize> {
        let mut db = self.db();
        let mut n = 0;
        for d in db
            .deliveries
            .iter_mut()
            .filter(|d| d.claimed_until.is_some())
        {
            d.claimed_until = None;
            n += 1;
        }
        Ok(n)
    }

    fn requeue_failed(
        &mut self,
        destination: Option<&str>,
        since_ms: Option<i64>,
    ) -> Result<usize> {
        let now = now_ms();
        let mut db = self.db();
        let mut n = 0;
        for d in db.deliveries.iter_mut().filter(|d| {
            d.status == DeliveryStatus::Failed
                && destination.is_none_or(|want| d.destination == want)
                && since_ms.is_none_or(|since| d.created_at >= since)
        }) {
            d.status = DeliveryStatus::Pending;
            d.attempts = 0;
            d.next_attempt_at = now;
            d.queued_at = now;
            n += 1;
        }
        Ok(n)
    }

    /// Nothing is pruned in memory: a replay keeps all it read.
    /// Rule state and windows that never became alerts, older than the
    /// retention in event time; created alerts stay, as `replay` reports them
    /// all at the end. The journal forgets what was evaluated on its own.
    fn prune(&mut self, retention: Duration) -> Result<Pruned> {
        let mut db = self.0.lock();
        let Some(evaluated) = db.evaluated else {
            return Ok(Pruned::default());
        };
        let closed_before = evaluated.saturating_sub(retention.as_millis() as i64);
        let state = &mut db.state;
        let before = state.counters.len() + state.sets.len() + state.kv.len();
        state.counters.retain(|_, (_, exp)| *exp >= closed_before);
        state.sets.retain(|_, exp| *exp >= closed_before);
        state.kv.retain(|_, (_, exp)| *exp >= closed_before);
        let after = state.counters.len() + state.sets.len() + state.kv.len();
        let windows = db.windows.len();
        db.windows
            .retain(|_, w| w.created || w.end_ms >= closed_before);
        let alerts = windows - db.windows.len();
        let Db {
            windows, by_key, ..
        } = &mut *db;
        for starts in by_key.values_mut() {
            starts.retain(|_, id| windows.contains_key(id));
        }
        by_key.retain(|_, starts| !starts.is_empty());
        Ok(Pruned {
            state: before - after,
            alerts,
            ..Pruned::default()
        })
    }
}
