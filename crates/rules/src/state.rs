//! Rule state behind one interface ([`StateStore`]: the `counter_incr`, `set_add`, `kv_get`
//! and `kv_set` helpers rules call, plus learned names and baselines).
//!
//! [`EvalState`] is the daemon's: reads go to the storage session, changes
//! collect in an overlay and commit with the batch's effects, in the same
//! transaction as the evaluation cursor (a crash re-evaluates a batch with the
//! state it had before it). [`MemoryState`] serves `hexwatch test` and `replay`.
//!
//! Expiry is measured on *event time* (`p_event_time` of the record being
//! evaluated), so `replay` of a recorded stream gives the same answers as the
//! daemon did live.

use parking_lot::Mutex;

use hexwatch_storage::{Session, StateMap, StateWrites, StorageError};

/// Why a state helper could not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage could not be read. The rule's verdict for this record is
    /// unknown, so the evaluator does not commit it: [`EvalState::take_failure`]
    /// hands the storage's error to the evaluation, which evaluates the batch again.
    #[error("rule state storage: {0}")]
    Unavailable(String),
    #[error("state limit: more than {MAX_STATE_OPS_PER_CALL} state operations in one rule call")]
    TooManyOperations,
    #[error(
        "state limit: more than {MAX_STATE_BYTES_PER_CALL} bytes of state written in one rule call"
    )]
    TooManyBytes,
}

/// Milliseconds after `now_ms` when a TTL runs out; a TTL ≤ 0 never expires.
fn expiry(now_ms: i64, ttl_seconds: i64) -> i64 {
    if ttl_seconds <= 0 {
        i64::MAX
    } else {
        now_ms.saturating_add(ttl_seconds.saturating_mul(1000))
    }
}

/// Persistent state shared by all rules. `now_ms` is the event time.
pub trait StateStore: Send + Sync {
    /// Adds one to a counter and returns the new value; a counter that expired
    /// starts again at 1 with a fresh TTL.
    fn counter_incr(&self, key: &str, ttl_seconds: i64, now_ms: i64) -> Result<i64, StoreError>;
    /// Adds a member; true when it was not there (or had expired). Seeing a member
    /// again renews its TTL.
    fn set_add(
        &self,
        key: &str,
        member: &str,
        ttl_seconds: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError>;
    /// The JSON text stored under `key`, if any and not expired.
    fn kv_get(&self, key: &str, now_ms: i64) -> Result<Option<String>, StoreError>;
    /// Stores JSON text under `key`.
    fn kv_set(
        &self,
        key: &str,
        json: &str,
        ttl_seconds: i64,
        now_ms: i64,
    ) -> Result<(), StoreError>;
    /// Ends one rule function call: its writes are kept when it succeeded and
    /// thrown away when it failed (a rule that hit a limit half-way must leave
    /// nothing behind), and its budget of state operations starts afresh.
    fn end_call(&self, succeeded: bool);
}

/// State operations (reads and writes) one rule function call may make.
pub const MAX_STATE_OPS_PER_CALL: u32 = 1000;
/// Bytes of keys, members and values one rule function call may write.
pub const MAX_STATE_BYTES_PER_CALL: usize = 256 * 1024;

/// What one rule call has used of its state budget.
#[derive(Default)]
struct CallBudget {
    ops: u32,
    bytes: usize,
}

impl CallBudget {
    fn spend(&mut self, written: usize) -> Result<(), StoreError> {
        self.ops += 1;
        self.bytes += written;
        if self.ops > MAX_STATE_OPS_PER_CALL {
            return Err(StoreError::TooManyOperations);
        }
        if self.bytes > MAX_STATE_BYTES_PER_CALL {
            return Err(StoreError::TooManyBytes);
        }
        Ok(())
    }
}

/// State in memory: counters (value, expiry), set members (expiry), values
/// (JSON, expiry). All of `MemoryState`, the pending writes of `EvalState`, and
/// the writes of the rule call in progress.
#[derive(Default)]
struct StateMaps {
    counters: StateMap<String, (i64, i64)>,
    sets: StateMap<(String, String), i64>,
    kv: StateMap<String, (String, i64)>,
    /// Approximate bytes held (keys, members, values).
    bytes: usize,
}

/// The helpers' semantics, once: each looks in the maps first and, for a key
/// they have not seen, asks `stored` (the database, or nothing for memory state).
impl StateMaps {
    fn counter_incr(
        &mut self,
        key: &str,
        ttl_seconds: i64,
        now_ms: i64,
        stored: impl FnOnce() -> Result<Option<(i64, i64)>, StoreError>,
    ) -> Result<i64, StoreError> {
        let current = match self.counters.get(key) {
            Some(c) => Some(*c),
            None => stored()?,
        };
        let next = match current {
            Some((v, exp)) if exp > now_ms => (v + 1, exp),
            _ => (1, expiry(now_ms, ttl_seconds)),
        };
        self.counters.insert(key.to_string(), next);
        Ok(next.0)
    }

    fn set_add(
        &mut self,
        key: &str,
        member: &str,
        ttl_seconds: i64,
        now_ms: i64,
        stored: impl FnOnce() -> Result<Option<i64>, StoreError>,
    ) -> Result<bool, StoreError> {
        let k = (key.to_string(), member.to_string());
        let prev = match self.sets.get(&k) {
            Some(exp) => Some(*exp),
            None => stored()?,
        };
        self.sets.insert(k, expiry(now_ms, ttl_seconds));
        Ok(prev.is_none_or(|p| p <= now_ms))
    }

    fn kv_get(
        &self,
        key: &str,
        now_ms: i64,
        stored: impl FnOnce() -> Result<Option<(String, i64)>, StoreError>,
    ) -> Result<Option<String>, StoreError> {
        let found = match self.kv.get(key) {
            Some(entry) => Some(entry.clone()),
            None => stored()?,
        };
        Ok(found.filter(|(_, exp)| *exp > now_ms).map(|(v, _)| v))
    }

    fn kv_set(&mut self, key: &str, json: &str, ttl_seconds: i64, now_ms: i64) {
        self.kv.insert(
            key.to_string(),
            (json.to_string(), expiry(now_ms, ttl_seconds)),
        );
    }

    fn len(&self) -> usize {
        self.counters.len() + self.sets.len() + self.kv.len()
    }

    /// Takes over `newer`'s entries (a finished call's writes), leaving it
    /// empty with its room kept for the next call.
    fn absorb(&mut self, newer: &mut StateMaps) {
        self.bytes += std::mem::take(&mut newer.bytes);
        self.counters.extend(newer.counters.drain());
        self.sets.extend(newer.sets.drain());
        self.kv.extend(newer.kv.drain());
    }

    /// Forgets every entry, keeping the room.
    fn clear(&mut self) {
        self.bytes = 0;
        self.counters.clear();
        self.sets.clear();
        self.kv.clear();
    }
}

/// The state a rule call sees: its own writes on top of `base` (the store's
/// maps), on top of whatever `stored` finds (the database). Writes go to `call`
/// and reach `base` only when the call succeeds; every operation is charged to
/// the call's budget.
#[derive(Default)]
struct Layered {
    base: StateMaps,
    call: StateMaps,
    budget: CallBudget,
}

impl Layered {
    fn counter_incr(
        &mut self,
        key: &str,
        ttl_seconds: i64,
        now_ms: i64,
        stored: impl FnOnce() -> Result<Option<(i64, i64)>, StoreError>,
    ) -> Result<i64, StoreError> {
        let size = key.len() + 16;
        self.budget.spend(size)?;
        self.call.bytes += size;
        let base = &self.base;
        self.call
            .counter_incr(key, ttl_seconds, now_ms, || match base.counters.get(key) {
                Some(c) => Ok(Some(*c)),
                None => stored(),
            })
    }

    fn set_add(
        &mut self,
        key: &str,
        member: &str,
        ttl_seconds: i64,
        now_ms: i64,
        stored: impl FnOnce() -> Result<Option<i64>, StoreError>,
    ) -> Result<bool, StoreError> {
        let size = key.len() + member.len() + 8;
        self.budget.spend(size)?;
        self.call.bytes += size;
        let base = &self.base;
        self.call.set_add(key, member, ttl_seconds, now_ms, || {
            match base.sets.get(&(key.to_string(), member.to_string())) {
                Some(exp) => Ok(Some(*exp)),
                None => stored(),
            }
        })
    }

    fn kv_get(
        &mut self,
        key: &str,
        now_ms: i64,
        stored: impl FnOnce() -> Result<Option<(String, i64)>, StoreError>,
    ) -> Result<Option<String>, StoreError> {
        self.budget.spend(0)?;
        let base = &self.base;
        self.call.kv_get(key, now_ms, || match base.kv.get(key) {
            Some(entry) => Ok(Some(entry.clone())),
            None => stored(),
        })
    }

    fn kv_set(
        &mut self,
        key: &str,
        json: &str,
        ttl_seconds: i64,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let size = key.len() + json.len() + 8;
        self.budget.spend(size)?;
        self.call.bytes += size;
        self.call.kv_set(key, json, ttl_seconds, now_ms);
        Ok(())
    }

    fn end_call(&mut self, succeeded: bool) {
        if succeeded {
            self.base.absorb(&mut self.call);
        } else {
            self.call.clear();
        }
        self.budget = CallBudget::default();
    }
}

/// In-memory state for `test` (fresh per case) and `replay`: rule state with
/// no storage under it, so every write stays in the overlay.
pub type MemoryState = EvalState;

/// Bytes of committed state the evaluator's read cache holds before it starts afresh.
const READ_CACHE_BYTES: usize = 64 << 20;

/// Committed state by key; `None`: known to be absent.
#[derive(Default)]
struct ReadCache {
    counters: StateMap<String, Option<(i64, i64)>>,
    sets: StateMap<(String, String), Option<i64>>,
    kv: StateMap<String, Option<(String, i64)>>,
    bytes: usize,
}

impl ReadCache {
    /// Makes room for `size` more bytes: past the bound, everything goes
    /// (simple, and rare: the working set of rules is far smaller).
    fn room(&mut self, size: usize) {
        self.bytes += size;
        if self.bytes > READ_CACHE_BYTES {
            *self = ReadCache {
                bytes: size,
                ..ReadCache::default()
            };
        }
    }

    fn committed(&mut self, w: &StateWrites) {
        for (k, v) in &w.counters {
            self.room(k.len() + 48);
            self.counters.insert(k.clone(), Some(*v));
        }
        for ((k, m), exp) in &w.sets {
            self.room(k.len() + m.len() + 64);
            self.sets.insert((k.clone(), m.clone()), Some(*exp));
        }
        for (k, (v, exp)) in &w.kv {
            self.room(k.len() + v.len() + 64);
            self.kv.insert(k.clone(), Some((v.clone(), *exp)));
        }
    }
}

/// Rule state for the daemon's evaluator, on a storage [`Session`] (or on none:
/// [`MemoryState`]).
///
/// Rules read committed state through the session, but their writes collect in
/// an in-memory overlay that [`take_writes`](Self::take_writes) hands over as
/// part of the batch's [`hexwatch_storage::Effects`], committed in one transaction
/// with the cursor and alerts. Evaluating (CPU work, a rule that runs to its
/// operation limit) therefore never holds a write lock that ingestion needs; and
/// a failed batch leaves no partial state behind.
#[derive(Default)]
pub struct EvalState {
    session: Mutex<Option<Box<dyn Session>>>,
    /// Committed state already read or written: while this evaluator holds the
    /// lease it is the only writer, so what it saw stays true, and a repeated
    /// read (a network round trip on PostgreSQL) is answered here.
    cache: Mutex<ReadCache>,
    /// What the batch being evaluated has written (and the call in progress).
    overlay: Mutex<Layered>,
    /// The first storage read that failed since the last look: a rule got an
    /// error instead of the state, so the batch must not be committed.
    failure: Mutex<Option<StorageError>>,
}

impl EvalState {
    pub fn new(session: Box<dyn Session>) -> EvalState {
        EvalState {
            session: Mutex::new(Some(session)),
            cache: Mutex::default(),
            overlay: Mutex::default(),
            failure: Mutex::default(),
        }
    }

    /// The storage error a state read met since the last call, if any. The
    /// evaluation that sees one drops its batch and evaluates it again, rather
    /// than commit a `RULE_ERROR` for what was only a lost connection.
    pub fn take_failure(&self) -> Option<StorageError> {
        self.failure.lock().take()
    }

    /// Runs `f` on the session (journal reads, window reads, the commit).
    ///
    /// # Panics
    /// On a [`MemoryState`], which has no session.
    pub fn with_session<T>(&self, f: impl FnOnce(&mut dyn Session) -> T) -> T {
        let mut session = self.session.lock();
        f(session.as_deref_mut().expect("rule state on storage"))
    }

    /// Replaces a broken session (a network engine closed it).
    pub fn replace_session(&self, session: Box<dyn Session>) {
        *self.session.lock() = Some(session);
        self.reset();
    }

    /// Forgets the overlay and every cached read: when this evaluator takes the
    /// lease, another may have written meanwhile.
    pub fn reset(&self) {
        self.clear();
        *self.cache.lock() = ReadCache::default();
    }

    /// Tells the read cache what a batch committed.
    pub fn committed(&self, writes: &StateWrites) {
        self.cache.lock().committed(writes);
    }

    /// Forgets every write not committed (all of a [`MemoryState`]; between
    /// test cases).
    pub fn clear(&self) {
        *self.overlay.lock() = Layered::default();
    }

    /// What the storage holds (nothing for a [`MemoryState`]), through the
    /// read cache: `cached` picks the cache's map, `read` asks the session.
    fn stored<K, T: Clone>(
        &self,
        key: K,
        size: usize,
        cached: impl Fn(&mut ReadCache) -> &mut StateMap<K, Option<T>>,
        read: impl FnOnce(&mut dyn Session, &K) -> hexwatch_storage::Result<Option<T>>,
    ) -> Result<Option<T>, StoreError>
    where
        K: std::hash::Hash + Eq,
    {
        if let Some(hit) = cached(&mut self.cache.lock()).get(&key) {
            return Ok(hit.clone());
        }
        let found = match self.session.lock().as_deref_mut() {
            Some(s) => match read(s, &key) {
                Ok(found) => found,
                Err(e) => {
                    let said = StoreError::Unavailable(e.to_string());
                    self.failure.lock().get_or_insert(e);
                    return Err(said);
                }
            },
            None => return Ok(None),
        };
        let mut cache = self.cache.lock();
        cache.room(size);
        cached(&mut cache).insert(key, found.clone());
        Ok(found)
    }

    /// The batch's state writes, for its effects; the overlay starts afresh.
    pub fn take_writes(&self) -> StateWrites {
        let m = std::mem::take(&mut *self.overlay.lock()).base;
        StateWrites {
            counters: m.counters,
            sets: m.sets,
            kv: m.kv,
        }
    }

    /// Drops the overlay (the batch will be evaluated again).
    pub fn discard(&self) {
        self.clear();
        if let Some(s) = self.session.lock().as_deref_mut() {
            s.end_read();
        }
    }

    /// Entries and bytes the batch has written so far: the evaluator commits
    /// early when they grow large, so one commit stays short however hard rules
    /// use the state helpers.
    pub fn pending(&self) -> (usize, usize) {
        let o = self.overlay.lock();
        (o.base.len(), o.base.bytes)
    }
}

impl StateStore for EvalState {
    fn counter_incr(&self, key: &str, ttl_seconds: i64, now_ms: i64) -> Result<i64, StoreError> {
        self.overlay
            .lock()
            .counter_incr(key, ttl_seconds, now_ms, || {
                self.stored(
                    key.to_string(),
                    key.len() + 48,
                    |c| &mut c.counters,
                    |s, k| s.counter(k),
                )
            })
    }

    fn set_add(
        &self,
        key: &str,
        member: &str,
        ttl_seconds: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        self.overlay
            .lock()
            .set_add(key, member, ttl_seconds, now_ms, || {
                self.stored(
                    (key.to_string(), member.to_string()),
                    key.len() + member.len() + 64,
                    |c| &mut c.sets,
                    |s, (k, m)| s.set_member(k, m),
                )
            })
    }

    fn kv_get(&self, key: &str, now_ms: i64) -> Result<Option<String>, StoreError> {
        self.overlay.lock().kv_get(key, now_ms, || {
            self.stored(
                key.to_string(),
                key.len() + 64,
                |c| &mut c.kv,
                |s, k| s.value(k),
            )
        })
    }

    fn kv_set(
        &self,
        key: &str,
        json: &str,
        ttl_seconds: i64,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.overlay.lock().kv_set(key, json, ttl_seconds, now_ms)
    }

    fn end_call(&self, succeeded: bool) {
        self.overlay.lock().end_call(succeeded);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(s: &dyn StateStore) {
        let t = 1_000_000;
        assert_eq!(s.counter_incr("c", 60, t).unwrap(), 1);
        assert_eq!(s.counter_incr("c", 60, t + 1000).unwrap(), 2);
        // Expired after 60 s of event time: starts again.
        assert_eq!(s.counter_incr("c", 60, t + 60_000).unwrap(), 1);

        assert!(s.set_add("ips:u1", "1.2.3.4", 3600, t).unwrap());
        assert!(!s.set_add("ips:u1", "1.2.3.4", 3600, t + 1000).unwrap());
        assert!(s.set_add("ips:u1", "5.6.7.8", 3600, t).unwrap());
        assert!(s
            .set_add("ips:u1", "1.2.3.4", 3600, t + 1000 + 3_600_000)
            .unwrap());

        assert_eq!(s.kv_get("k", t).unwrap(), None);
        s.kv_set("k", "{\"a\":1}", 10, t).unwrap();
        assert_eq!(
            s.kv_get("k", t + 9_999).unwrap().as_deref(),
            Some("{\"a\":1}")
        );
        assert_eq!(s.kv_get("k", t + 10_000).unwrap(), None);
        s.kv_set("forever", "1", 0, t).unwrap();
        assert_eq!(
            s.kv_get("forever", i64::MAX - 1).unwrap().as_deref(),
            Some("1")
        );
    }

    #[test]
    fn writes_of_a_failed_call_are_discarded_and_calls_are_capped() {
        let s = MemoryState::default();
        s.kv_set("kept", "1", 0, 0).unwrap();
        s.end_call(true);
        s.kv_set("dropped", "2", 0, 0).unwrap();
        assert_eq!(
            s.kv_get("dropped", 0).unwrap().as_deref(),
            Some("2"),
            "seen within the call"
        );
        s.end_call(false);
        assert_eq!(s.kv_get("dropped", 0).unwrap(), None);
        assert_eq!(s.kv_get("kept", 0).unwrap().as_deref(), Some("1"));
        s.end_call(true);
        // Operations: the budget runs out, then starts afresh with the next call.
        let mut last = Ok(0);
        for i in 0..=MAX_STATE_OPS_PER_CALL {
            last = s.counter_incr(&format!("c{i}"), 60, 0);
        }
        assert!(matches!(last.unwrap_err(), StoreError::TooManyOperations));
        s.end_call(false);
        assert_eq!(
            s.counter_incr("c0", 60, 0).unwrap(),
            1,
            "nothing of the failed call kept"
        );
        s.end_call(true);
        // Bytes.
        let big = "x".repeat(MAX_STATE_BYTES_PER_CALL / 2);
        s.kv_set("a", &big, 0, 0).unwrap();
        assert!(matches!(
            s.kv_set("b", &big, 0, 0).unwrap_err(),
            StoreError::TooManyBytes
        ));
    }

    #[test]
    fn memory_state() {
        let s = MemoryState::default();
        exercise(&s);
        s.clear();
        assert_eq!(s.kv_get("forever", 0).unwrap(), None);
    }
}
